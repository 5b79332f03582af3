"""Tests for envs_jax.games.mastermind (ORBIT's held-out Mastermind) and its
Python reference."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.games import mastermind
from envs_jax.games.mastermind import Mastermind
from envs_jax.reference.mastermind import PyMastermind, all_codes, score
from envs_jax.text import TextCodec
from lamer_jax.models.tokenizer import ByteTokenizer

ENV = Mastermind()
PARAMS = ENV.default_params
KEY = jax.random.key(0)   # Mastermind is deterministic: its steps ignore the key
CODES = ENV.codes
# Tolerance of the frequency tests, in standard errors: the uniformity test
# makes 120 + 18 comparisons, and P(|N(0, 1)| > 4.5) = 6.8e-6, so a correct
# game fails one with probability below 1e-3 (a union bound), while the
# biases looked for (a code never drawn, a digit order favoured) are tens of
# standard errors wide.
Z = 4.5

BATCH, TURNS = 256, ENV.max_turns + 2   # random play: tasks, steps per attempt

_step = jax.jit(ENV.step)
_from_code = jax.jit(ENV.state_from_code)
_vreset = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))


def action_of(code: str) -> int:
  return ENV.action_strings.index(code)


def _views(states):
  """Per state: (render_symbols, action_mask, state_key)."""
  return (jax.vmap(ENV.render_symbols, in_axes=(0, None))(states, PARAMS),
          jax.vmap(ENV.action_mask, in_axes=(0, None))(states, PARAMS),
          jax.vmap(ENV.state_key)(states))


@jax.jit
def _play(task_key, action_key):
  """BATCH random attempts of TURNS steps, with their views.

  Actions: uniform codes, but 15% of the time the hidden code (so that some
  attempts win) and 15% the previous guess again (a repeat).

  Returns:
    (initial states [B], initial views, int32[B, T] actions, states [B, T],
    TimeSteps [B, T], views [B, T]).
  """
  initial, _ = jax.vmap(ENV.reset, in_axes=(0, None))(
      jax.random.split(task_key, BATCH), PARAMS)
  secret = jnp.argmax(jnp.all(jnp.asarray(CODES)[None] == initial.code[:, None], -1), 1)
  k_rand, k_mix = jax.random.split(action_key)
  rand = jax.random.randint(k_rand, (BATCH, TURNS), 0, ENV.num_codes)
  u = jax.random.uniform(k_mix, (BATCH, TURNS))
  columns = []
  for t in range(TURNS):
    a = jnp.where(u[:, t] < 0.15, secret, rand[:, t])
    if t:
      a = jnp.where((u[:, t] >= 0.15) & (u[:, t] < 0.3), columns[-1], a)
    columns.append(a.astype(jnp.int32))
  actions = jnp.stack(columns, axis=1)

  def attempt(state, acts):
    def one(s, a):
      s, ts = ENV.step(KEY, s, a, PARAMS)
      return s, (s, ts)
    return jax.lax.scan(one, state, acts)[1]

  states, steps = jax.vmap(attempt)(initial, actions)
  flat = jax.tree.map(lambda x: x.reshape(BATCH * TURNS, *x.shape[2:]), states)
  views = jax.tree.map(lambda x: x.reshape(BATCH, TURNS, *x.shape[1:]), _views(flat))
  return initial, _views(initial), actions, states, steps, views


@functools.lru_cache(maxsize=None)
def _played(seed: int):
  """``_play`` of task key ``seed`` and action key ``seed + 1``, on the host,
  shared by the tests."""
  return jax.device_get(_play(jax.random.key(seed), jax.random.key(seed + 1)))


def _index(tree, *i):
  return jax.tree.map(lambda x: x[i], tree)


def play(code: str, guesses):
  """Steps a fresh attempt at ``code`` (e.g. "123"): the states and TimeSteps."""
  state = _from_code(jnp.asarray([int(d) for d in code], jnp.int32))
  out = []
  for g in guesses:
    action = action_of(g) if isinstance(g, str) else g
    state, ts = _step(KEY, state, jnp.int32(action), PARAMS)
    out.append((state, ts))
  return out


def text(state) -> str:
  return ENV.render_text(state, PARAMS)


def line(turn: int, guess: str, black: int, white: int) -> str:
  return (f"At turn {turn}, you guessed {guess}. This guess receives {black} "
          f"black peg(s) and {white} white peg(s).\n")


# ---- static description ---------------------------------------------------


def test_static_description():
  assert ENV.name == "mastermind" and ENV.max_turns == 3
  assert ENV.num_actions == ENV.num_codes == 120
  assert ENV.action_strings[:3] == ("123", "124", "125")
  assert ENV.action_strings[-1] == "654"
  expected = {"".join(map(str, c)) for c in itertools.permutations(range(1, 7), 3)}
  assert set(ENV.action_strings) == expected
  for a, b in itertools.permutations(ENV.action_strings, 2):
    assert not b.startswith(a)
  assert [list(c) for c in CODES] == all_codes(3, 6)
  assert ENV.max_symbols == len(ENV.symbol_slots) == 9 + 3
  assert "from 1 to 6" in ENV.instructions and "e.g. 123" in ENV.instructions
  assert "its pegs and how many turns are left" in ENV.instructions
  state = _from_code(jnp.asarray([1, 2, 3]))
  assert text(state) == "No guesses yet.\nTurns left: 3\n"
  assert np.asarray(ENV.action_mask(state, PARAMS)).all()
  with pytest.raises(ValueError, match="max_turns"):
    Mastermind(max_turns=0)
  with pytest.raises(ValueError, match="code_length"):
    Mastermind(code_length=7)
  with pytest.raises(ValueError, match="candidates"):
    Mastermind(code_length=5, num_digits=9)
  small = Mastermind(code_length=2, num_digits=4, max_turns=5)
  assert small.num_codes == 12 and small.action_strings[:2] == ("12", "13")


# ---- pegs -----------------------------------------------------------------


@pytest.mark.parametrize("code,guess,black,white", [
    ("123", "321", 1, 2), ("123", "123", 3, 0), ("123", "456", 0, 0),
    ("123", "312", 0, 3), ("123", "231", 0, 3), ("123", "145", 1, 0),
    ("123", "215", 0, 2), ("123", "124", 2, 0), ("123", "143", 2, 0),
    ("123", "356", 0, 1), ("456", "465", 1, 2), ("635", "536", 1, 2),
    ("162", "261", 1, 2), ("241", "124", 0, 3), ("516", "651", 0, 3),
    ("516", "612", 1, 1), ("246", "136", 1, 0),
])
def test_pegs(code, guess, black, white):
  c = [int(d) for d in code]
  g = [int(d) for d in guess]
  assert score(c, g) == (black, white)
  b, w = mastermind.pegs(jnp.asarray(c), jnp.asarray(g))
  assert (int(b), int(w)) == (black, white)
  (state, ts), = play(code, [guess])
  assert text(state).startswith(line(1, guess, black, white))
  assert bool(ts.won) == (black == 3)


def test_reference_pegs_count_repeated_digits_once():
  # The reference follows GEM's two passes, which also scores codes with
  # repeated digits (not offered here): a code digit matches one guess digit.
  assert score([1, 1, 2], [1, 2, 1]) == (1, 2)
  assert score([1, 2, 3], [1, 1, 1]) == (1, 0)
  assert score([1, 1, 2], [2, 2, 1]) == (0, 2)


# ---- hand-written attempts ------------------------------------------------


def test_a_win_ends_the_attempt():
  steps = play("352", ["123", "352", "456"])
  (s0, ts0), (s1, ts1), (s2, ts2) = steps
  assert float(ts0.reward) == 0.0 and not bool(ts0.done)
  assert text(s0) == line(1, "123", 0, 2) + "Turns left: 2\n"
  assert float(ts1.reward) == 1.0 and bool(ts1.done) and bool(ts1.won)
  assert not bool(ts1.truncated) and int(ts1.steps) == 2
  assert text(s1) == (line(2, "352", 3, 0)
                      + "Congratulations! You guessed the correct code in 2 turn(s).\n")
  # Stepping a finished attempt changes nothing.
  jax.tree.map(np.testing.assert_array_equal, s1, s2)
  assert float(ts2.reward) == 0.0 and bool(ts2.done) and not bool(ts2.invalid)
  assert int(ts2.steps) == 2


def test_a_win_on_the_last_turn_is_no_truncation():
  state, ts = play("614", ["123", "456", "614"])[-1]
  assert bool(ts.won) and bool(ts.done) and not bool(ts.truncated)
  assert float(ts.reward) == 1.0
  assert text(state) == (line(3, "614", 3, 0)
                         + "Congratulations! You guessed the correct code in 3 turn(s).\n")


def test_three_misses_are_truncated():
  steps = play("614", ["123", "456", "641"])
  for _, ts in steps[:2]:
    assert not bool(ts.done)
  state, ts = steps[-1]
  assert bool(ts.done) and bool(ts.truncated) and not bool(ts.won)
  assert float(ts.reward) == 0.0 and int(ts.steps) == 3
  assert text(steps[1][0]) == line(2, "456", 0, 2) + "Turns left: 1\n"
  assert text(state) == (line(3, "641", 1, 2)
                         + "You have reached the maximum number of turns (3).\n")


def test_a_repeated_guess_uses_a_turn_and_is_invalid():
  (s0, ts0), (s1, ts1) = play("614", ["123", "123"])
  assert not bool(ts0.invalid) and bool(ts1.invalid)
  assert int(ts1.steps) == 2 and not bool(ts1.done)
  assert text(s1) == line(2, "123", 0, 1) + "Turns left: 1\n"
  mask = np.asarray(ENV.action_mask(s0, PARAMS))
  assert not mask[action_of("123")] and mask.sum() == 119
  # An index outside the table is clipped to a code, and flagged.
  (s2, ts2), = play("614", [500])
  assert bool(ts2.invalid) and text(s2).startswith(line(1, "654", 2, 0))


def test_step_compiles_once():
  play("241", ["124", "241"])
  assert _step._cache_size() == 1


# ---- random play against the reference ------------------------------------


def test_matches_python_reference_on_random_play():
  initial, init_views, actions, states, steps, views = _played(1)
  endings, invalid = {"won": 0, "lost": 0}, 0
  for b in range(BATCH):
    ref = PyMastermind()
    t0 = ref.reset(initial.code[b].tolist())
    assert text(_index(initial, b)) == t0 == ENV.symbols_to_text(init_views[0][b])
    assert init_views[1][b].tolist() == ref.legal()
    for t in range(TURNS):
      expected = ref.step(int(actions[b, t]))
      ts, s = _index(steps, b, t), _index(states, b, t)
      got = (float(ts.reward), bool(ts.done), bool(ts.won), bool(ts.truncated),
             bool(ts.invalid))
      assert got == expected, (b, t)
      assert int(ts.steps) == ref.turns
      observation = text(s)
      assert observation == ref.render_text()
      assert ENV.symbols_to_text(views[0][b, t]) == observation
      assert views[1][b, t].tolist() == ref.legal()
      invalid += expected[4]
    endings["won" if ref.won else "lost"] += 1
  assert endings["won"] > 20 and endings["lost"] > 20 and invalid > 20


def test_renderings_follow_the_symbol_slots():
  _, init_views, _, _, _, views = _played(1)
  symbols = np.concatenate([init_views[0], views[0].reshape(-1, ENV.max_symbols)])
  for p, allowed in enumerate(ENV.symbol_slots):
    seen = set(np.unique(symbols[:, p]).tolist()) - {-1}
    assert seen <= set(allowed), (p, seen - set(allowed))
  assert (symbols[:, -3:] >= 0).all()   # the status line is always there
  # The first position always holds the guess line's start or "No guesses
  # yet."; the rest of the line is there exactly when a guess was made.
  none = symbols[:, 0] == ENV.symbols.index("No guesses yet.\n")
  assert (symbols[:, 0] >= 0).all() and none.any() and not none.all()
  assert ((symbols[:, 1:9] >= 0).all(1) == ~none).all()
  assert ((symbols[:, 1:9] < 0).all(1) == none).all()
  # The codec sizes its buffer by the slots: every rendering's tokens (a
  # byte-level tokenizer's, the tiny models') fit, and decode to its text.
  codec = TextCodec.for_env(ByteTokenizer(), ENV)
  for row in symbols[::7]:
    ids = [int(t) for i in row if i >= 0
           for t in codec.symbol_tokens[i, :codec.symbol_lengths[i]]]
    assert len(ids) <= codec.max_tokens
    assert codec.tokenizer.decode(ids) == ENV.symbols_to_text(row)
  lengths = np.where(symbols >= 0, codec.symbol_lengths[np.maximum(symbols, 0)], 0)
  # ... and the buffer is tight: some rendering comes close to filling it.
  assert 0.85 * codec.max_tokens <= lengths.sum(1).max() <= codec.max_tokens


def test_state_key_hashes_what_is_observable():
  initial, init_views, _, states, _, views = _played(1)
  assert views[2].dtype == np.uint32
  # The observation shows the latest guess; the earlier ones are in the
  # agent's transcript. The key is one per transcript (the renderings of the
  # attempt so far, a finished attempt's repeats dropped), whatever the
  # hidden code, and distinct transcripts get distinct keys.
  by_transcript: dict[tuple[bytes, ...], set[int]] = {}
  for b in range(BATCH):
    seen = [init_views[0][b].tobytes()]
    by_transcript.setdefault(tuple(seen), set()).add(int(init_views[2][b]))
    for t in range(TURNS):
      row = views[0][b, t].tobytes()
      if row != seen[-1]:
        seen.append(row)
      by_transcript.setdefault(tuple(seen), set()).add(int(views[2][b, t]))
  assert all(len(k) == 1 for k in by_transcript.values())
  assert len({next(iter(k)) for k in by_transcript.values()}) == len(by_transcript) > 300
  # The same guesses against two codes that give them the same pegs: equal
  # transcripts, equal keys.
  (a, _), = play("123", ["456"])
  (b, _), = play("132", ["456"])
  assert text(a) == text(b) and int(ENV.state_key(a)) == int(ENV.state_key(b))
  # The same latest guess after different earlier ones: equal observations,
  # different transcripts, different keys.
  a = play("614", ["123", "456"])[-1][0]
  b = play("614", ["125", "456"])[-1][0]
  assert text(a) == text(b) and int(ENV.state_key(a)) != int(ENV.state_key(b))


# ---- the task distribution ------------------------------------------------


def test_codes_are_uniform_over_the_distinct_digit_codes():
  n = 24_000
  states, _ = jax.device_get(_vreset(jax.random.split(jax.random.key(9), n), PARAMS))
  code = states.code
  assert ((code >= 1) & (code <= 6)).all()
  assert ((code[:, 0] != code[:, 1]) & (code[:, 0] != code[:, 2])
          & (code[:, 1] != code[:, 2])).all()
  index = (np.all(code[:, None, :] == CODES[None], axis=-1)).argmax(1)
  counts = np.bincount(index, minlength=120)
  p = 1 / 120
  assert (np.abs(counts / n - p) < Z * np.sqrt(p * (1 - p) / n)).all()
  # Chi-square over the 120 cells: 119 degrees of freedom, mean 119 and
  # standard deviation sqrt(238); Z of those above the mean.
  chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
  assert chi2 < 119 + Z * np.sqrt(238), chi2
  for position in range(3):   # each place holds each digit 1/6 of the time
    freq = np.bincount(code[:, position], minlength=7)[1:] / n
    assert (np.abs(freq - 1 / 6) < Z * np.sqrt(5 / 36 / n)).all()


def test_reset_is_deterministic_in_its_key():
  keys = jax.random.split(jax.random.key(10), 64)
  a, ts = jax.device_get(_vreset(keys, PARAMS))
  b, _ = jax.device_get(_vreset(keys, PARAMS))
  np.testing.assert_array_equal(a.code, b.code)
  assert len({c.tobytes() for c in a.code}) > 40   # 64 draws of 120 codes
  assert (a.guesses == -1).all() and (a.turns == 0).all() and not a.won.any()
  assert not ts.done.any() and (ts.reward == 0).all()
