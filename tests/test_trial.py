"""The one trial loop (agent.trial.play_trials): the games' keys, the trial's
bookkeeping, and both of its policies (the language model, uniform random)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from experiments.random_baseline import RandomPolicy, random_trials
from lamer_jax.agent.layout import TrialShape, build_layout
from lamer_jax.agent.trial import (RolloutConfig, env_turn, eval_seeds,
                                   play_trials, rollout, task_key)
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

MCFG = llama.TINY_CONFIGS["tiny-llama"]


@functools.lru_cache(maxsize=None)
def _rps_player(num_tasks: int, attempts: int):
  """Jitted random play of Rock-Paper-Scissors (a game with chance) on
  held-out tasks: key -> TrialResult (compiled once per shape)."""
  env = envs_jax.make("rps")
  params = env.default_params

  @jax.jit
  def play(key):
    init, _ = jax.vmap(env.reset, in_axes=(0, None))(
        jax.vmap(task_key)(eval_seeds(num_tasks)), params)
    return play_trials(env, params, init, RandomPolicy(env.max_turns),
                       jax.random.split(key, attempts), env.max_turns)

  return play


def _rps_trials(key, num_tasks=64, attempts=3):
  return _rps_player(num_tasks, attempts)(key)


def test_a_game_with_chance_draws_with_the_trial_keys():
  """The same attempts replayed: one key repeats exactly; with another key the
  opponent moves differ, while the agent's draws (split(attempt key, T)) are
  the policy's and the levels (task seeds) stay the same."""
  a = _rps_trials(jax.random.key(0))
  b = _rps_trials(jax.random.key(0))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  c = _rps_trials(jax.random.key(1))
  assert not np.array_equal(a.records.reward, c.records.reward) or not np.array_equal(
      a.records.state_key, c.records.state_key)


def test_the_env_key_alone_changes_the_opponent():
  """Same state, same actions, two env keys: env_turn's outcome differs for some
  row (the opponent's move is drawn from the step's key)."""
  env = envs_jax.make("rps")
  params = env.default_params
  rows = 64
  init, _ = jax.vmap(env.reset, in_axes=(0, None))(
      jax.vmap(task_key)(eval_seeds(rows)), params)
  active = jnp.ones(rows, bool)
  action = jnp.zeros(rows, jnp.int32)      # always rock
  allowed = jnp.ones((rows, env.num_actions), bool)
  turn = jax.jit(lambda k: env_turn(env, params, k, init, active, action, active,
                                    allowed, 0.0))
  s0, _, _ = turn(jax.random.key(5))
  s1, _, _ = turn(jax.random.key(5))
  s2, _, _ = turn(jax.random.key(6))
  key_of = jax.vmap(env.state_key)
  np.testing.assert_array_equal(key_of(s0), key_of(s1))
  assert np.mean(np.asarray(key_of(s0)) != np.asarray(key_of(s2))) > 0.2


def test_env_turn_invalid_action_leaves_the_game_and_costs_the_penalty():
  env = envs_jax.make("guess", num_options=3)
  params = env.default_params
  init, _ = jax.vmap(env.reset, in_axes=(0, None))(
      jax.vmap(task_key)(eval_seeds(2)), params)
  active = jnp.array([True, True])
  parsed = jnp.array([True, False])
  allowed = jnp.ones((2, env.num_actions), bool)
  state, still, rec = env_turn(env, params, jax.random.key(0), init, active,
                               jnp.zeros(2, jnp.int32), parsed, allowed, -0.5)
  assert float(rec.reward[1]) == -0.5 and bool(rec.invalid[1])
  assert not bool(rec.played[1]) and bool(rec.played[0])
  # Row 1's game did not move.
  for new, old in zip(jax.tree.leaves(state), jax.tree.leaves(init)):
    np.testing.assert_array_equal(np.asarray(new)[1], np.asarray(old)[1])
  assert bool(still[1])


def test_trial_bookkeeping_stops_at_first_success():
  result = _rps_trials(jax.random.key(2))
  won, valid = np.asarray(result.won), np.asarray(result.attempt_valid)
  assert valid[:, 0].all()
  for n in range(1, won.shape[1]):
    # Attempt n runs exactly when attempts 0..n-1 all failed.
    np.testing.assert_array_equal(valid[:, n], ~won[:, :n].any(1))
  assert won.any() and (~won).any()
  # A won attempt ends on its winning turn: no turn is played after it.
  rec = result.records
  after = np.cumsum(np.asarray(rec.won), axis=2) - np.asarray(rec.won)
  assert not (np.asarray(rec.valid) & (after > 0)).any()


def test_random_baseline_runs_on_the_shared_loop():
  """guess with 3 options, 3 attempts: the exact odds of uniform memoryless
  play, pass@k = 1 - (2/3)^k, on 4096 tasks."""
  env = envs_jax.make("guess", num_options=3)
  m = random_trials(env, 4096, 3, jax.random.key(0))
  for k in (1, 2, 3):
    expected = 1 - (2 / 3) ** k
    assert abs(m[f"pass@{k}"] - expected) < 4 * np.sqrt(expected * (1 - expected) / 4096)
  with pytest.raises(ValueError, match="num_tasks and attempts must be >= 1"):
    random_trials(env, 0, 3, jax.random.key(0))


def test_language_model_rollout_on_a_game_with_chance():
  """The LLM policy on rps: a rollout is a pure function of its key."""
  env = envs_jax.make("rps")
  layout = build_layout(ByteTokenizer(), env, TrialShape(2, 2, 2, 3),
                        memory="history_only")
  params = llama.init_params(MCFG, jax.random.key(0))
  play = jax.jit(lambda k: rollout(params, k, env.default_params, env=env,
                                   mcfg=MCFG, layout=layout, cfg=RolloutConfig()))
  a, b, c = play(jax.random.key(3)), play(jax.random.key(3)), play(jax.random.key(4))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.tokens, c.tokens)
  assert a.tokens.shape == (4, 2, layout.context_len)
