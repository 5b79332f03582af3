"""Tests for envs_jax.games.rps (a game with chance) and its Python reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.games.rps import RockPaperScissors, RPSState
from envs_jax.reference.rps import PyRockPaperScissors

ENV = RockPaperScissors()
PARAMS = ENV.default_params
ROCK, PAPER, SCISSORS = range(3)
# Tolerance of the frequency tests, in standard errors: each test makes at
# most ~30 comparisons, and P(|N(0, 1)| > 4.5) = 6.8e-6, so a correct game
# fails one with probability below 2.1e-4 (a union bound), while the biases
# these tests look for (a wrong move order, a skipped draw) are tens of
# standard errors wide.
Z = 4.5

BATCH, TURNS = 256, ENV.max_turns + 2   # random play: tasks, steps per attempt

_reset = jax.jit(ENV.reset)
_step = jax.jit(ENV.step)


def _attempt(state, keys, actions):
  """(initial state, key[T], int32[T] actions) -> per-step (states, steps)."""
  def one(s, xs):
    s, ts = ENV.step(xs[0], s, xs[1], PARAMS)
    return s, (s, ts)
  return jax.lax.scan(one, state, (keys, actions))[1]


@jax.jit
def _play(task_key, step_key, action_key):
  """BATCH random attempts of TURNS steps, one fresh step key per step.

  Returns:
    (initial states [B], int32[B, T] actions, states [B, T], TimeSteps [B, T]).
  """
  initial, _ = jax.vmap(ENV.reset, in_axes=(0, None))(
      jax.random.split(task_key, BATCH), PARAMS)
  keys = jax.random.split(step_key, BATCH * TURNS).reshape(BATCH, TURNS)
  actions = jax.random.randint(action_key, (BATCH, TURNS), 0, 3)
  states, steps = jax.vmap(_attempt)(initial, keys, actions)
  return initial, actions, states, steps


def _index(tree, *i):
  return jax.tree.map(lambda x: x[i], tree)


def _fixed_opponent(move: int) -> RPSState:
  """An initial state whose opponent always plays ``move``."""
  state, _ = _reset(jax.random.key(0), PARAMS)
  return state.replace(probs=jnp.zeros(3, jnp.float32).at[move].set(1.0))


def test_static_description():
  assert envs_jax.make("rps") == ENV
  assert ENV.action_strings == ("rock", "paper", "scissors")
  assert ENV.max_turns == 5 and ENV.wins_needed == 3
  assert "3 round wins" in ENV.instructions and "rock" in ENV.instructions
  assert ENV.max_symbols == len(ENV.symbol_slots) == 13
  with pytest.raises(ValueError, match="max_turns"):
    RockPaperScissors(max_turns=0)
  state, ts = _reset(jax.random.key(1), PARAMS)
  assert ENV.render_text(state, PARAMS) == (
      "Rounds played: 0 of 5\nLast round: none\n"
      "Score: wins 0, losses 0, draws 0\n")
  assert float(ts.reward) == 0.0 and not bool(ts.done)
  assert np.asarray(ENV.action_mask(state, PARAMS)).all()


@pytest.mark.parametrize("moves,opponent,rounds,won", [
    ([PAPER] * 5, ROCK, 3, True),             # three wins: won at round 3
    ([SCISSORS] * 5, ROCK, 3, False),         # three losses: 3 wins out of reach
    ([ROCK] * 5, ROCK, 3, False),             # three draws count as no win
    ([PAPER, PAPER, SCISSORS, SCISSORS, PAPER], ROCK, 5, True),
    ([PAPER, SCISSORS, SCISSORS, PAPER, ROCK], ROCK, 5, False),
    ([PAPER, ROCK, PAPER, SCISSORS, PAPER], ROCK, 5, True),
])
def test_match_ends_when_decided(moves, opponent, rounds, won):
  state = _fixed_opponent(opponent)
  keys = jax.random.split(jax.random.key(2), len(moves))
  rewards = []
  for key, move in zip(keys, moves):
    before = state
    state, ts = _step(key, state, jnp.int32(move), PARAMS)
    assert int(state.last_opponent) == opponent
    rewards.append(float(ts.reward))
    if bool(before.done):   # stepping a decided match changes nothing
      jax.tree.map(np.testing.assert_array_equal, before, state)
  assert int(state.rounds) == int(ts.steps) == rounds
  assert bool(ts.done) and bool(ts.won) == won and not bool(ts.truncated)
  # Reward 1 on the winning round only.
  expected = [0.0] * len(moves)
  if won:
    expected[rounds - 1] = 1.0
  assert rewards == expected


def test_matches_python_reference_on_random_play():
  # The reference cannot draw the JAX opponent's moves, so it is given them:
  # the move drawn at step t is the last opponent move of the state after t.
  _, actions, states, steps = jax.device_get(
      _play(jax.random.key(3), jax.random.key(4), jax.random.key(5)))
  symbols = np.asarray(jax.vmap(jax.vmap(ENV.render_symbols, in_axes=(0, None)),
                                in_axes=(0, None))(states, PARAMS))
  lengths = set()
  for b in range(BATCH):
    live = [t == 0 or not bool(steps.done[b, t - 1]) for t in range(TURNS)]
    drawn = [int(states.last_opponent[b, t]) for t in range(TURNS) if live[t]]
    ref = PyRockPaperScissors()
    ref.reset(drawn)
    for t in range(TURNS):
      reward, done, won = ref.step(int(actions[b, t]))
      ts, s = _index(steps, b, t), _index(states, b, t)
      assert (float(ts.reward), bool(ts.done), bool(ts.won)) == (reward, done, won)
      assert int(ts.steps) == ref.rounds
      text = ENV.render_text(s, PARAMS)
      assert text == ref.render_text()
      assert ENV.symbols_to_text(symbols[b, t]) == text
    lengths.add(ref.rounds)
  assert lengths == {3, 4, 5}   # random play meets every match length


def test_state_key_hashes_what_is_observable():
  _, _, states, _ = jax.device_get(
      _play(jax.random.key(6), jax.random.key(7), jax.random.key(8)))
  state_keys = np.asarray(jax.vmap(jax.vmap(ENV.state_key))(states))
  assert state_keys.dtype == np.uint32
  by_text = {}
  for b in range(BATCH):
    for t in range(TURNS):
      text = ENV.render_text(_index(states, b, t), PARAMS)
      by_text.setdefault(text, set()).add(int(state_keys[b, t]))
  # One key per observation (the hidden probs differ across these tasks and
  # do not enter it), and distinct observations get distinct keys.
  assert all(len(k) == 1 for k in by_text.values())
  assert len({next(iter(k)) for k in by_text.values()}) == len(by_text) > 50


@pytest.mark.parametrize("seed", range(8))
def test_opponent_frequencies_follow_the_hidden_distribution(seed):
  # 10^4 fresh draws of round 1 from one initial state, one key each.
  n = 10_000
  state, _ = _reset(jax.random.key(100 + seed), PARAMS)
  draw = jax.jit(jax.vmap(lambda k: ENV.step(k, state, jnp.int32(0), PARAMS)[0]))
  moves = np.asarray(draw(jax.random.split(jax.random.key(seed), n)).last_opponent)
  freq = np.bincount(moves, minlength=3) / n
  probs = np.asarray(state.probs, np.float64)
  se = np.sqrt(probs * (1 - probs) / n)
  np.testing.assert_array_less(np.abs(freq - probs), Z * se + 1e-12)


def _beta_moments(a: int, b: int) -> tuple[float, float]:
  return a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))


def _assert_moments(x: np.ndarray, mean: float, var: float):
  """Sample mean and variance of ``x`` within Z standard errors of theirs."""
  n = x.size
  assert abs(x.mean() - mean) < Z * np.sqrt(var / n), (x.mean(), mean)
  # The sample variance's standard error, from the sample's 4th moment.
  m4 = ((x - x.mean()) ** 4).mean()
  assert abs(x.var() - var) < Z * np.sqrt((m4 - x.var() ** 2) / n), (x.var(), var)


@pytest.mark.parametrize("beta,dirichlet", [((2, 2), (1, 1)), ((1, 3), (2, 1))])
def test_task_distribution(beta, dirichlet):
  # dominant ~ U{0, 1, 2}; p = 0.4 + 0.6 Beta(a, b) (the default Beta(2, 2):
  # mean 0.7, variance 0.018); the first share of the rest ~ Beta(c, d), the
  # first component of Dirichlet(c, d) (the default: U(0, 1)).
  env = RockPaperScissors(dominant_beta=beta, rest_dirichlet=dirichlet)
  n = 10_000
  keys = jax.random.split(jax.random.key(9), n)
  dominant, probs = jax.device_get(
      jax.jit(jax.vmap(env.opponent_distribution, in_axes=(0, None)))(keys, PARAMS))
  probs = probs.astype(np.float64)
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
  assert (probs >= 0).all()
  rows = np.arange(n)
  p = probs[rows, dominant]
  assert (p >= 0.4 - 1e-6).all() and (p <= 1.0 + 1e-6).all()
  freq = np.bincount(dominant, minlength=3) / n
  assert (np.abs(freq - 1 / 3) < Z * np.sqrt(2 / 9 / n)).all()
  mean, var = _beta_moments(*beta)
  _assert_moments(p, 0.4 + 0.6 * mean, 0.36 * var)
  share = probs[rows, (dominant + 1) % 3] / (1 - p)
  _assert_moments(share, *_beta_moments(*dirichlet))
  # reset draws exactly this distribution from its key.
  state, _ = jax.jit(env.reset)(keys[0], PARAMS)
  np.testing.assert_allclose(state.probs, probs[0], rtol=1e-6)


def test_concentrations_are_checked():
  with pytest.raises(ValueError, match="dominant_beta must be two integers"):
    RockPaperScissors(dominant_beta=(2.5, 2))
  with pytest.raises(ValueError, match="rest_dirichlet must be two integers"):
    RockPaperScissors(rest_dirichlet=(0, 1))


def test_replayed_attempt_repeats_with_the_same_keys_only():
  # The same attempt (same initial states, same actions), replayed: with one
  # key sequence it repeats exactly, with another it meets new opponent moves.
  # Same task key and action key (same initial states, same actions), step
  # keys A, B, then A again (after B: the state holds no random stream).
  tasks, actions = jax.random.key(10), jax.random.key(11)
  first = jax.device_get(_play(tasks, jax.random.key(12), actions))
  other = jax.device_get(_play(tasks, jax.random.key(13), actions))
  again = jax.device_get(_play(tasks, jax.random.key(12), actions))
  jax.tree.map(np.testing.assert_array_equal, first, again)
  jax.tree.map(np.testing.assert_array_equal, first[:2], other[:2])
  # Round 1 is played in every attempt; its opponent moves under the two key
  # sequences differ with probability 1 - sum_i p_i^2 per task.
  initial, _, states, _ = first
  differs = states.last_opponent[:, 0] != other[2].last_opponent[:, 0]
  q = 1 - (np.asarray(initial.probs, np.float64) ** 2).sum(1)
  assert abs(differs.sum() - q.sum()) < Z * np.sqrt((q * (1 - q)).sum())
  assert q.sum() > 0.3 * BATCH   # so that the test above has something to see
