"""Env contract: registry errors, wrappers (vmap, auto-reset, trial), guess env."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax import AutoReset, Trial, VmapEnv


def test_unknown_env_lists_choices():
  with pytest.raises(ValueError, match="Did you mean 'sokoban'") as err:
    envs_jax.make("sokoban2")
  assert "minesweeper" in str(err.value)


def test_unknown_override_lists_keys():
  with pytest.raises(ValueError, match="num_boxes"):
    envs_jax.make("sokoban", boxes=3)


def test_registered_envs_build():
  for name in envs_jax.registered():
    env = envs_jax.make(name)
    assert env.num_actions == len(env.action_strings) > 0
    assert env.instructions


def test_vmap_env_batch():
  env = envs_jax.make("guess", num_options=4)
  venv = VmapEnv(env)
  states, ts = jax.jit(venv.reset)(jax.random.split(jax.random.key(0), 16),
                                   env.default_params)
  assert states.secret.shape == (16,)
  states, ts = jax.jit(venv.step)(states, jnp.zeros(16, jnp.int32), env.default_params)
  np.testing.assert_array_equal(ts.won, np.asarray(states.secret) == 0)
  assert venv.render_symbols(states, env.default_params).shape == (16, env.max_symbols)


def test_auto_reset_starts_new_task():
  env = envs_jax.make("guess", num_options=9)
  wrapped = AutoReset(env)
  state, _ = wrapped.reset(jax.random.key(1), env.default_params)
  secrets = set()
  for i in range(20):
    state, ts = jax.jit(wrapped.step)(state, jnp.int32(i % 9), env.default_params)
    assert bool(ts.done)  # one turn per attempt
    assert int(state.inner.turns) == 0 and not bool(state.inner.done)
    secrets.add(int(state.inner.secret))
  assert len(secrets) > 1


def test_trial_restarts_from_initial_state_and_stops_at_success():
  env = envs_jax.make("guess", num_options=3)
  trial = Trial(env, num_attempts=3)
  params = env.default_params
  state, _ = trial.reset(jax.random.key(2), params)
  secret = int(state.initial.secret)
  wrong = [a for a in range(3) if a != secret]
  step = jax.jit(trial.step)
  state, out = step(state, jnp.int32(wrong[0]), params)
  assert bool(out.attempt_over) and not bool(out.trial_over)
  assert int(state.attempt) == 1
  # The new attempt starts from the saved initial state: nothing tried yet.
  assert not bool(state.current.tried.any())
  state, out = step(state, jnp.int32(secret), params)
  assert bool(out.trial_over) and bool(state.solved) and int(out.attempt) == 1
  # Steps after the trial is over are no-ops.
  before = state
  state, out = step(state, jnp.int32(wrong[1]), params)
  assert float(out.timestep.reward) == 0.0
  jax.tree.map(np.testing.assert_array_equal, before, state)


def test_trial_ends_after_last_attempt():
  env = envs_jax.make("guess", num_options=3)
  trial = Trial(env, num_attempts=2)
  params = env.default_params
  state, _ = trial.reset(jax.random.key(3), params)
  wrong = (int(state.initial.secret) + 1) % 3
  for k in range(2):
    state, out = trial.step(state, jnp.int32(wrong), params)
  assert bool(out.trial_over) and not bool(state.solved)


def test_guess_render_text_matches_symbols():
  env = envs_jax.make("guess", num_options=5, max_turns=4)
  params = env.default_params
  state, _ = env.reset(jax.random.key(4), params)
  assert env.render_text(state, params) == "Tried: nothing\n"
  for a in (3, 1):
    state, ts = env.step(state, jnp.int32(a), params)
    assert env.symbols_to_text(env.render_symbols(state, params)) == env.render_text(
        state, params)
  if not bool(state.won):
    assert env.render_text(state, params) == "Tried: 2 4\n"
  # Repeating a guess is flagged invalid.
  if not bool(state.done):
    _, ts = env.step(state, jnp.int32(3), params)
    assert bool(ts.invalid)


def test_hash_arrays_distinguishes_states():
  a = envs_jax.hash_arrays(jnp.array([1, 2]), jnp.array([3]))
  b = envs_jax.hash_arrays(jnp.array([1, 2]), jnp.array([4]))
  assert a.dtype == jnp.uint32 and int(a) != int(b)
