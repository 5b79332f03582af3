"""Tests for PPO with a value head and GAE (estimator ``"gae"``) in the
on-policy train step (``lamer_jax.algos.lamer``).

Two small steps (tiny-llama, guess with 3 numbers, single episodes), each
compiled once per module:

* ``ppo``: 2 turns per attempt, two minibatches, two epochs, the LLM and the
  value head both learning;
* ``fixed``: every guess pays 1, so every value target is 1; the LLM is frozen
  (lr 0) and only the value head learns, which must fit that return.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.games.guess import GuessParams
from lamer_jax.agent.layout import TrialShape, build_layout
from lamer_jax.agent.scoring import row_logprobs, state_hidden
from lamer_jax.agent.trial import RolloutConfig
from lamer_jax.algos import lamer as train_lib
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

MCFG = llama.TINY_CONFIGS["tiny-llama"]
SETUPS = {
    "ppo": dict(turns=2, params=None, steps=2, algo=train_lib.AlgoConfig(
        estimator="gae", normalize_std=True, lr=1e-3, value_lr=1e-3,
        value_hidden=(32, 32), num_minibatches=2, ppo_epochs=2,
        value_clip=0.5)),
    "fixed": dict(turns=1, params=GuessParams(reward_win=jnp.float32(1.0),
                                              reward_wrong=jnp.float32(1.0)),
                  steps=8, algo=train_lib.AlgoConfig(
                      estimator="gae", lr=0.0, value_lr=1e-3,
                      value_hidden=(32,), ppo_epochs=4)),
}


def _layout(turns: int, attempts: int = 1, memory: str = "none"):
  env = envs_jax.make("guess", num_options=3, max_turns=turns)
  shape = TrialShape(num_tasks=2, group_size=4, num_attempts=attempts,
                     num_turns=turns)
  return env, build_layout(ByteTokenizer(), env, shape, memory=memory,
                           reflection_tokens=4)


class Run:
  """A compiled gae train step and the states/metrics of its calls."""

  def __init__(self, name: str):
    spec = SETUPS[name]
    env, layout = _layout(spec["turns"])
    self.algo = spec["algo"]
    self.step = train_lib.make_train_step(env, MCFG, layout, RolloutConfig(),
                                          self.algo, env_params=spec["params"])
    params = llama.init_params(MCFG, jax.random.key(0))
    state = train_lib.init_train_state(params, self.algo, jax.random.key(1))
    # The step donates its input state: keep host copies of what we compare.
    self.params0 = jax.tree.map(np.array, state.params)
    self.extra0 = jax.tree.map(np.array, state.extra)
    self.metrics = []
    for _ in range(spec["steps"]):
      state, metrics = self.step(state)
      self.metrics.append(jax.tree.map(float, metrics))
    self.cache_size = self.step._cache_size()
    self.state = state


@functools.lru_cache(maxsize=None)
def _run(name: str) -> Run:
  return Run(name)


def _max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_init_builds_the_value_head_only_for_gae():
  params = llama.init_params(MCFG, jax.random.key(0))
  algo = train_lib.AlgoConfig(estimator="gae", value_hidden=[16, 8])
  assert algo.value_hidden == (16, 8)   # a list (JSON, CLI) becomes a tuple
  state = train_lib.init_train_state(params, algo, jax.random.key(1))
  layers = state.extra["value"]["layers"]
  assert [l["w"].shape for l in layers] == [(MCFG.hidden_size, 16), (16, 8), (8, 1)]
  assert set(state.extra) == {"value", "value_opt"}
  for estimator in ("grpo", "gigpo"):
    other = train_lib.init_train_state(
        params, train_lib.AlgoConfig(estimator=estimator), jax.random.key(1))
    assert other.extra is None


def test_gae_step_compiles_once_and_reports_value_metrics():
  run = _run("ppo")
  assert run.cache_size == 1
  assert int(run.state.step) == 2
  for m in run.metrics:
    assert all(np.isfinite(v) for v in m.values()), m
    for key in ("loss/value", "value/mean", "value/explained_variance",
                "loss/value_grad_norm", "loss/value_clip_frac"):
      assert key in m, key
    assert m["loss/value"] > 0 and m["loss/value_grad_norm"] > 0
    # The first minibatch of the first epoch is still on-policy.
    assert abs(m["loss/ratio_mean"] - 1.0) < 1e-5
    assert m["nonfinite/skipped_updates"] == 0
  # A fresh head predicts 0, so step 1's values are 0; both models moved.
  assert run.metrics[0]["value/mean"] == 0.0
  assert _max_abs_diff(run.params0, run.state.params) > 1e-6
  assert _max_abs_diff(run.extra0["value"], run.state.extra["value"]) > 1e-6


def test_value_head_fits_a_fixed_return():
  run = _run("fixed")
  values = [m["loss/value"] for m in run.metrics]
  # V = 0 at first: 0.5 * (0 - 1)^2.
  assert abs(values[0] - 0.5) < 1e-6
  assert all(b < a for a, b in zip(values, values[1:])), values
  assert values[-1] < 0.1 * values[0], values
  means = [m["value/mean"] for m in run.metrics]
  assert all(b > a for a, b in zip(means, means[1:])), means
  assert 0.6 < means[-1] < 1.2, means
  assert all(m["value/target_mean"] == pytest.approx(1.0) for m in run.metrics)
  # lr 0: the LLM is frozen however the value loss's gradient reaches it.
  assert _max_abs_diff(run.params0, run.state.params) == 0.0


def test_state_hidden_is_the_loss_forwards():
  """``row_logprobs(with_state_hidden=True)`` hands out exactly the hidden
  states ``state_hidden`` computes, at the last slot of each turn prompt."""
  _, layout = _layout(2)
  slots = layout.state_slots()
  assert [layout.action_start(t) - 1 for t in range(2)] == list(slots)
  rng = np.random.default_rng(0)
  c = layout.context_len
  batch = {"tokens": jnp.asarray(rng.integers(0, 200, (3, c)), jnp.int32),
           "positions": jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (3, c)),
           "token_mask": jnp.ones((3, c), bool),
           "action_allowed": jnp.ones((3, 2, 3), bool)}
  params = llama.init_params(MCFG, jax.random.key(0))
  logp, ent, hidden = row_logprobs(params, MCFG, layout, batch, 1.0, False,
                                   with_state_hidden=True)
  assert hidden.shape == (3, 2, MCFG.hidden_size)
  np.testing.assert_array_equal(hidden, state_hidden(params, MCFG, layout, batch))
  plain = row_logprobs(params, MCFG, layout, batch, 1.0, False)
  np.testing.assert_array_equal(plain[0], logp)
  np.testing.assert_array_equal(plain[1], ent)


def test_row_logprobs_of_actions_equal_the_whole_vocabulary_reference():
  """The loss scores constrained action tokens on the table's columns of the
  LM head only; that equals masking the full projection, per token, with the
  same entropies."""
  from lamer_jax.models import sampling  # pylint: disable=g-import-not-at-top
  _, layout = _layout(2, attempts=2, memory="reflection_only")
  codec, la = layout.codec, layout.action_len
  rng = np.random.default_rng(1)
  c, rows = layout.context_len, 3
  tokens = rng.integers(0, 200, (rows, c)).astype(np.int32)
  mask = np.ones((rows, c), bool)
  slots, constrained = layout.loss_slot_kinds(True)
  a_slots = slots[constrained].reshape(-1, la)          # [turns, La]
  turns = a_slots.shape[0]
  allowed = np.ones((rows, turns, 3), bool)
  allowed[0, 1] = [False, True, False]
  allowed[1, turns - 1] = False          # a row-turn with nothing allowed
  choice = rng.integers(0, 3, (rows, a_slots.shape[0]))
  choice[0, 1] = 1
  for r in range(rows):
    for t, s in enumerate(a_slots):
      n = codec.action_lengths[choice[r, t]]
      tokens[r, s] = codec.pad_id
      tokens[r, s[:n]] = codec.action_tokens[choice[r, t], :n]
      mask[r, s[n:]] = False
  mask[1, a_slots[turns - 1]] = False
  batch = {"tokens": jnp.asarray(tokens),
           "positions": jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (rows, c)),
           "token_mask": jnp.asarray(mask), "action_allowed": jnp.asarray(allowed)}
  params = llama.init_params(MCFG, jax.random.key(2), scale=0.5)
  logp, ent = row_logprobs(params, MCFG, layout, batch, 1.3, True)

  logits, _, _ = llama.forward(params, MCFG, batch["tokens"], batch["positions"],
                               token_mask=batch["token_mask"])
  a_logits = logits[:, a_slots.reshape(-1) - 1].reshape(-1, la, MCFG.vocab_size)
  ref, ref_allowed = sampling.action_token_logprobs(
      a_logits, batch["tokens"][:, a_slots].reshape(-1, la),
      batch["token_mask"][:, a_slots].reshape(-1, la),
      jnp.asarray(codec.action_tokens), jnp.asarray(codec.action_lengths),
      batch["action_allowed"].reshape(-1, 3), 1.3, return_allowed=True)
  from lamer_jax.agent.scoring import masked_entropy  # pylint: disable=g-import-not-at-top
  ref_ent = masked_entropy(a_logits, ref_allowed, 1.3)
  np.testing.assert_allclose(logp[:, constrained].reshape(-1, la), ref, atol=1e-5)
  np.testing.assert_allclose(ent[:, constrained].reshape(-1, la), ref_ent, atol=1e-5)
  assert float(ref[1, 0]) == 0.0                  # a forced choice: log 1
  assert np.all(np.asarray(ref)[np.asarray(batch["token_mask"][:, a_slots]
                                           ).reshape(-1, la)] < 0.1)
  free = ~constrained                            # reflections: whole vocabulary
  f_lp = jax.nn.log_softmax(logits[:, slots[free] - 1] / 1.3, axis=-1)
  np.testing.assert_allclose(
      logp[:, free], jnp.take_along_axis(f_lp, batch["tokens"][:, slots[free]][..., None],
                                         axis=-1)[..., 0], atol=1e-5)


@pytest.mark.parametrize("attempts,memory", [(3, "none"), (1, "history_only")])
def test_gae_with_attempts_or_memory_names_the_fix(attempts, memory):
  env, layout = _layout(1, attempts=attempts, memory=memory)
  with pytest.raises(ValueError, match=r"set rollout.num_attempts=1 and "
                     rf"rollout.memory='none'.*num_attempts={attempts}"):
    train_lib.make_train_step(env, MCFG, layout, RolloutConfig(),
                              train_lib.AlgoConfig(estimator="gae"))
