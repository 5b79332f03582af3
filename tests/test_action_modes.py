"""Free-form actions (invalid-action penalty) and thinking tokens.

A random tiny model on guess-the-number (3 numbers, byte-level codec), with
``think_tokens=5`` before every action, in both action modes. Its free-form
action spans are random bytes, so practically every free action is invalid:
the game must not move, the turn must cost ``invalid_penalty``, and the
train step must still be exactly on-policy on thinking and free tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from lamer_jax.agent.layout import ACTION_CLOSE, THINK_CLOSE, TrialShape, build_layout
from lamer_jax.agent.trial import NO_LOSS, RolloutConfig, rollout
from lamer_jax.algos import lamer as train_lib
from lamer_jax.models import llama, sampling
from lamer_jax.models.tokenizer import ByteTokenizer

MCFG = llama.TINY_CONFIGS["tiny-llama"]
TOKENIZER = ByteTokenizer()
THINK = 5
PENALTY = -0.25


@functools.lru_cache(maxsize=None)
def _setup(action_mode: str):
  env = envs_jax.make("guess", num_options=3, max_turns=2)
  shape = TrialShape(num_tasks=2, group_size=4, num_attempts=2, num_turns=2)
  layout = build_layout(TOKENIZER, env, shape, memory="history_only",
                        reflection_tokens=4, action_mode=action_mode,
                        think_tokens=THINK)
  cfg = RolloutConfig(invalid_penalty=PENALTY)
  params = llama.init_params(MCFG, jax.random.key(0))
  fn = jax.jit(functools.partial(rollout, env=env, mcfg=MCFG, layout=layout, cfg=cfg))
  traj = jax.tree.map(np.asarray, fn(params, jax.random.key(3), env.default_params))
  return env, layout, cfg, params, traj


@pytest.fixture(params=["constrained", "free"])
def mode(request):
  return request.param


def test_layout_sizes(mode):
  _, layout, _, _, _ = _setup(mode)
  assert layout.think_len == THINK + len(THINK_CLOSE) + len("\n<action>")
  assert layout.turn_len == (layout.turn_prompt_len + layout.think_len
                             + layout.action_len)
  assert layout.action_start(1) == layout.turn_start(1) + layout.turn_len - layout.action_len
  assert "thinking" in layout.describe() and mode in layout.describe()
  slots, constrained = layout.loss_slot_kinds(True)
  assert len(slots) == 2 * (THINK + layout.action_len)
  assert constrained.sum() == (2 * layout.action_len if mode == "constrained" else 0)
  # By hand: per turn the thinking tokens right after the turn prompt, then
  # the action tokens (history memory: no reflection slots).
  expected, kinds = [], []
  for t in range(layout.num_turns):
    think = layout.turn_start(t) + layout.turn_prompt_len
    expected += [np.arange(think, think + THINK),
                 np.arange(layout.action_start(t),
                           layout.action_start(t) + layout.action_len)]
    kinds += [np.zeros(THINK, bool),
              np.full(layout.action_len, mode == "constrained")]
  np.testing.assert_array_equal(slots, np.concatenate(expected))
  np.testing.assert_array_equal(constrained, np.concatenate(kinds))


def test_turn_text_has_thinking_then_action(mode):
  _, layout, _, _, traj = _setup(mode)
  text = TOKENIZER.decode(traj.tokens[0, 0][traj.token_mask[0, 0]])
  assert text.count("<think>") >= 1
  # Every turn that ran shows "</think>" (written by the model or fed) and
  # then "\n<action>".
  turns = int(traj.turn_valid[0, 0].sum())
  assert turns >= 1 and text.count(THINK_CLOSE + "\n<action>") >= turns


def test_generated_spans_are_in_the_loss_mask(mode):
  _, layout, _, _, traj = _setup(mode)
  for r in range(traj.tokens.shape[0]):
    for n in range(layout.num_attempts):
      for t in range(layout.num_turns):
        think = slice(layout.turn_start(t) + layout.turn_prompt_len,
                      layout.turn_start(t) + layout.turn_prompt_len + THINK)
        act = slice(layout.action_start(t), layout.action_start(t) + layout.action_len)
        ran = traj.turn_valid[r, n, t]
        thought = traj.loss_mask[r, n, think]
        acted = traj.loss_mask[r, n, act]
        assert thought.any() == ran and acted.any() == ran
        # generated tokens form a prefix of their span
        for span in (thought, acted):
          k = span.sum()
          assert span[:k].all() and not span[k:].any()
        assert (traj.token_turn_ids[r, n, think][thought] == t).all()
        # "</think>" is fed only when the model did not write it
        close = slice(think.stop, think.stop + len(THINK_CLOSE))
        wrote = TOKENIZER.decode(traj.tokens[r, n, think][thought]).endswith(THINK_CLOSE)
        assert traj.token_mask[r, n, close].all() == (ran and not wrote)
  assert (traj.token_turn_ids[~traj.loss_mask] == NO_LOSS).all()


def test_free_invalid_actions_cost_the_penalty_and_leave_the_game(mode):
  env, layout, _, _, traj = _setup(mode)
  ran = traj.turn_valid
  if mode == "constrained":   # always a candidate: never the parse penalty
    assert not np.isclose(traj.rewards[ran], PENALTY).any()
    return
  # Random bytes are not "1</action>": every free action is invalid here.
  assert traj.invalid[ran].all()
  np.testing.assert_allclose(traj.rewards[ran], PENALTY)
  assert not traj.won.any()
  # Both turns of every attempt ran (an invalid action does not end it), and
  # the history memory shows no action for them.
  assert ran[:, 0].all()
  text = TOKENIZER.decode(traj.tokens[0, 1][traj.token_mask[0, 1]])
  assert "you took these actions: \n" in text


def test_train_step_is_on_policy_for_thinking_and_free_tokens(mode):
  env, layout, cfg, params, _ = _setup(mode)
  algo = train_lib.AlgoConfig(lr=1e-3, estimator="grpo", entropy_coef=0.01)
  step = train_lib.make_train_step(env, MCFG, layout, cfg, algo)
  state = train_lib.init_train_state(params, algo, jax.random.key(1))
  _, metrics = step(state)
  metrics = jax.device_get(metrics)
  np.testing.assert_allclose(metrics["loss/ratio_mean"], 1.0, atol=1e-5)
  assert abs(metrics["loss/approx_kl"]) < 1e-6
  assert np.isfinite(metrics["loss/grad_norm"]) and metrics["loss/grad_norm"] > 0
  if mode == "free":
    assert metrics["invalid_rate"] == 1.0


def test_match_action():
  table_t = jnp.array([[5, 9, 0], [6, 9, 0], [5, 6, 9]])
  table_l = jnp.array([2, 2, 3])
  tokens = jnp.array([[5, 9, 0, 0], [5, 6, 9, 0], [6, 9, 0, 0], [5, 9, 9, 0],
                      [5, 0, 0, 0]])
  mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0],
                    [1, 0, 0, 0]], bool)
  allowed = jnp.array([[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1]], bool)
  index, parsed = sampling.match_action(tokens, mask, table_t, table_l, allowed)
  np.testing.assert_array_equal(parsed, [True, True, False, False, False])
  np.testing.assert_array_equal(index[:2], [0, 2])


def test_generate_stops_on_a_token_sequence():
  """A model that always writes the same token stops once the stop sequence
  (that token twice) is complete; inactive rows generate nothing."""
  params = llama.init_params(MCFG, jax.random.key(0))
  prompt = jnp.asarray([TOKENIZER.encode("abc")] * 3, jnp.int32)
  mask = jnp.ones(prompt.shape, bool)
  cache, logits, pos = sampling.prefill(
      params, MCFG, prompt, mask, sampling.positions_from_mask(mask),
      llama.init_cache(MCFG, 3, 16))
  greedy = sampling.SamplingConfig(temperature=1e-4)
  first = int(jnp.argmax(logits[0]))
  out = sampling.generate(params, MCFG, jax.random.key(0), cache, logits,
                          pos, max_new_tokens=8,
                          sampling=greedy, stop_sequence=(first,),
                          active=jnp.array([True, True, False]))
  np.testing.assert_array_equal(out.lengths, [1, 1, 0])
  np.testing.assert_array_equal(out.stopped, [True, True, False])
  assert int(out.tokens[0, 0]) == first


def test_build_layout_rejects_bad_modes():
  env = envs_jax.make("guess")
  with pytest.raises(ValueError, match="unknown action mode 'json'"):
    build_layout(TOKENIZER, env, TrialShape(num_attempts=2, num_turns=1),
                 action_mode="json")
  with pytest.raises(ValueError, match="think_tokens must be >= 0"):
    build_layout(TOKENIZER, env, TrialShape(num_attempts=2, num_turns=1),
                 think_tokens=-1)
  assert ACTION_CLOSE == "</action>"
