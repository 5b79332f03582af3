"""Env contract: registry errors, step signature and max_turns, guess env."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax

DETERMINISTIC = ("sokoban", "minesweeper", "guess")
GAMES = DETERMINISTIC + ("rps",)


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


def test_contract_version_and_step_signature():
  assert envs_jax.API_VERSION == 2
  for name in envs_jax.registered():
    env = envs_jax.make(name)
    params = list(inspect.signature(env.step).parameters)
    assert params == ["key", "state", "action", "params"], (name, params)


def test_every_env_declares_max_turns():
  for name in envs_jax.registered():
    env = envs_jax.make(name)
    assert isinstance(env.max_turns, int) and env.max_turns >= 1, name


@pytest.mark.parametrize("name", GAMES)
def test_attempt_is_over_after_max_turns(name):
  # max_turns is the contract's attempt limit: after max_turns steps of any
  # actions, the attempt is done.
  env = envs_jax.make(name)
  params = env.default_params

  @jax.jit
  def play(key, actions):
    state, _ = env.reset(key, params)

    def one(state, xs):
      k, a = xs
      state, ts = env.step(k, state, a, params)
      return state, ts.done

    keys = jax.random.split(jax.random.fold_in(key, 1), actions.shape[0])
    return jax.lax.scan(one, state, (keys, actions))[1]

  actions = jax.random.randint(jax.random.key(5), (8, env.max_turns), 0,
                               env.num_actions)
  done = jax.vmap(play)(jax.random.split(jax.random.key(6), 8), actions)
  assert bool(done[:, -1].all())


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_games_ignore_the_step_key(name):
  env = envs_jax.make(name)
  params = env.default_params
  state, _ = env.reset(jax.random.key(7), params)
  step = jax.jit(env.step)
  a = step(jax.random.key(0), state, jnp.int32(1), params)
  b = step(jax.random.key(1), state, jnp.int32(1), params)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_guess_render_text_matches_symbols():
  env = envs_jax.make("guess", num_options=5, max_turns=4)
  params = env.default_params
  state, _ = env.reset(jax.random.key(4), params)
  assert env.render_text(state, params) == "Tried: nothing\n"
  for a in (3, 1):
    state, ts = env.step(jax.random.key(a), state, jnp.int32(a), params)
    assert env.symbols_to_text(env.render_symbols(state, params)) == env.render_text(
        state, params)
  if not bool(state.won):
    assert env.render_text(state, params) == "Tried: 2 4\n"
  # Repeating a guess is flagged invalid.
  if not bool(state.done):
    _, ts = env.step(jax.random.key(0), state, jnp.int32(3), params)
    assert bool(ts.invalid)


def test_hash_arrays_distinguishes_states():
  a = envs_jax.hash_arrays(jnp.array([1, 2]), jnp.array([3]))
  b = envs_jax.hash_arrays(jnp.array([1, 2]), jnp.array([4]))
  assert a.dtype == jnp.uint32 and int(a) != int(b)
