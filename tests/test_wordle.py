"""Tests for envs_jax.games.wordle and its Python reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.continuous import Continuous
from envs_jax.games import wordle as wordle_module
from envs_jax.games.wordle import Wordle, score_guess
from envs_jax.reference.wordle import PyWordle, marks
from envs_jax.text import TextCodec
from envs_jax.words import ALPHABET
from lamer_jax.models.tokenizer import ByteTokenizer

ENV = Wordle()
PARAMS = ENV.default_params
WORDS = ENV.words
KEY = jax.random.key(0)   # Wordle is deterministic: its steps ignore the key
# Frequency tests: P(|N(0, 1)| > 4.5) = 6.8e-6 per comparison.
Z = 4.5

BATCH, TURNS = 256, ENV.max_turns + 2   # random play: tasks, steps per attempt

_step = jax.jit(ENV.step)
_initial = jax.jit(ENV.initial_state)
_vreset = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))
_score = jax.jit(jax.vmap(score_guess))


def codes(w: str) -> list[int]:
  return [ALPHABET.index(c) for c in w]


def jax_marks(answer: str, guess: str) -> str:
  out = _score(jnp.asarray([codes(answer)]), jnp.asarray([codes(guess)]))[0]
  return "".join("XYG"[int(m)] for m in out)


def _views(states):
  """Per state: (render_symbols, action_mask, state_key)."""
  return (jax.vmap(ENV.render_symbols, in_axes=(0, None))(states, PARAMS),
          jax.vmap(ENV.action_mask, in_axes=(0, None))(states, PARAMS),
          jax.vmap(ENV.state_key)(states))


@jax.jit
def _run(initial, actions):
  """(initial states [B], int32[B, T]) -> (states, TimeSteps, views), [B, T]."""
  def attempt(state, acts):
    def one(s, a):
      s, ts = ENV.step(KEY, s, a, PARAMS)
      return s, (s, ts)
    return jax.lax.scan(one, state, acts)[1]

  states, steps = jax.vmap(attempt)(initial, actions)
  flat = jax.tree.map(lambda x: x.reshape(BATCH * TURNS, *x.shape[2:]), states)
  views = jax.tree.map(lambda x: x.reshape(BATCH, TURNS, *x.shape[1:]), _views(flat))
  return states, steps, views


def _policy(rng: np.random.Generator, answer: int) -> list[int]:
  """TURNS mixed guesses: mostly random words, some repeats of earlier
  guesses, the answer now and then, a few out-of-range indices."""
  out: list[int] = []
  for _ in range(TURNS):
    u = rng.random()
    if u < 0.06:
      out.append(answer)
    elif u < 0.2 and out:
      out.append(out[rng.integers(0, len(out))])
    elif u < 0.23:
      out.append(int(rng.choice([-1, len(WORDS)])))
    else:
      out.append(int(rng.integers(0, len(WORDS))))
  return out


@functools.lru_cache(maxsize=None)
def _played(seed: int):
  """Random play on BATCH fresh tasks: (initial, initial views, actions,
  states, TimeSteps, views), all on the host."""
  initial, _ = _vreset(jax.random.split(jax.random.key(seed), BATCH), PARAMS)
  rng = np.random.default_rng(seed)
  actions = np.array([_policy(rng, int(a)) for a in np.asarray(initial.answer)],
                     np.int32)
  states, steps, views = _run(initial, jnp.asarray(actions))
  return jax.device_get((initial, jax.jit(_views)(initial), actions, states, steps,
                         views))


def _index(tree, *i):
  return jax.tree.map(lambda x: x[i], tree)


def _play_word(answer: str, guesses):
  """Steps through ``guesses`` (words or ints) from a fresh attempt."""
  state = _initial(jnp.int32(WORDS.index(answer)))
  out = []
  for g in guesses:
    a = WORDS.index(g) if isinstance(g, str) else g
    state, ts = _step(KEY, state, jnp.int32(a), PARAMS)
    out.append(jax.device_get(ts))
  return state, out


def _observations(answer: str, guesses) -> list[str]:
  """The observation after each of ``guesses``; checks that both renderings
  agree on every one."""
  state = _initial(jnp.int32(WORDS.index(answer)))
  out = []
  for g in guesses:
    a = WORDS.index(g) if isinstance(g, str) else g
    state, _ = _step(KEY, state, jnp.int32(a), PARAMS)
    text = ENV.render_text(state, PARAMS)
    assert ENV.symbols_to_text(ENV.render_symbols(state, PARAMS)) == text
    out.append(text)
  return out


# ---- marks ---------------------------------------------------------------------------

# Worked by hand: G first (each uses up its answer letter), then Y left to
# right while unused copies remain, X after that.
HAND_CASES = [
    # abbey/babes: b(2), e(3) green; the answer's unused a, b(1), y give the
    # b at 0 and the a at 1 a Y each; s is absent.
    ("abbey", "babes", "YYGGX"),
    # crane/eerie: the last e is green, which uses crane's only e, so both
    # leading e are X; r is elsewhere in crane (Y); i is absent.
    ("crane", "eerie", "XXYXG"),
    # eerie/crane: the last e green; r is in eerie (Y); c, a, n absent.
    ("eerie", "crane", "XYXXG"),
    # speed/eerie: no green; speed has two e, so the first two e of eerie are
    # Y and the third is X; r, i absent.
    ("speed", "eerie", "YYXXX"),
    # abide/speed: no green; abide has one e (the first e of speed gets it)
    # and one d (Y at the end).
    ("abide", "speed", "XXYXY"),
    # array/rarer: r at 2 green; the answer's unused a, r(1), a, y: r at 0 Y,
    # a at 1 Y, e X, and the last r X (the one unused r went to position 0).
    ("array", "rarer", "YYGXX"),
    # maxim/mamma: m, a green; one m left (at 4): the m at 2 gets it, the m
    # at 3 is X; the last a X (maxim's only a is matched).
    ("maxim", "mamma", "GGYXX"),
    # hello/llama: no green; hello's two l give the first two l Y; a, m, a X.
    ("hello", "llama", "YYXXX"),
    # A green after a yellow copy: answer "otter", guess "totem": t at 2 G
    # (uses one t), t at 0 gets the other t (Y), o Y, e G, m X.
    ("otter", "totem", "YYGGX"),
    ("crane", "crane", "GGGGG"),
]


@pytest.mark.parametrize("answer,guess,expected", HAND_CASES)
def test_marks_by_hand(answer, guess, expected):
  assert "".join(marks(answer, guess)) == expected
  assert jax_marks(answer, guess) == expected


def test_marks_match_the_reference_on_repeated_letters():
  # Words over three letters repeat letters in almost every pair.
  rng = np.random.default_rng(0)
  pairs = rng.integers(0, 3, (4000, 2, 5))
  out = np.asarray(_score(jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])))
  spell = lambda row: "".join("abc"[int(i)] for i in row)
  for (a, g), got in zip(pairs, out):
    assert "".join("XYG"[int(m)] for m in got) == "".join(marks(spell(a), spell(g)))


# ---- static description -----------------------------------------------------------

def test_static_description():
  assert ENV.max_turns == 10 and ENV.word_length == 5
  assert ENV.action_strings == WORDS and ENV.num_actions == 1500
  assert "G (green)" in ENV.instructions and "Y (yellow)" in ENV.instructions
  assert "10 guesses" in ENV.instructions and WORDS[0] in ENV.instructions
  assert "earlier guesses stay above" in ENV.instructions
  assert "shows all your guesses" not in ENV.instructions
  # One guess line (label, 5 letters, arrow, 5 marks, newline), turns left.
  assert ENV.max_symbols == len(ENV.symbol_slots) == 13 + 3
  with pytest.raises(ValueError, match="max_turns"):
    Wordle(max_turns=0)
  with pytest.raises(FileNotFoundError, match="make_wordlists"):
    Wordle(word_list="nope")
  assert envs_jax.make("wordle") == ENV


def test_initial_observation():
  state, ts = jax.jit(ENV.reset)(jax.random.key(1), PARAMS)
  assert ENV.render_text(state, PARAMS) == "No guesses yet.\nTurns left: 10\n"
  assert ENV.symbols_to_text(ENV.render_symbols(state, PARAMS)) == (
      "No guesses yet.\nTurns left: 10\n")
  assert float(ts.reward) == 0.0 and not bool(ts.done) and int(ts.steps) == 0
  assert np.asarray(ENV.action_mask(state, PARAMS)).all()


# ---- rules, by hand ----------------------------------------------------------------

def test_the_observation_shows_the_latest_guess_with_its_marks():
  state, tss = _play_word("eerie", ["crane", "speed", "abide"])
  assert not any(bool(t.done) or bool(t.invalid) for t in tss)
  assert _observations("eerie", ["crane", "speed", "abide"]) == [
      "Guess 1: crane -> XYXXG\nTurns left: 9\n",
      # No green; eerie has three e: both e of speed are Y.
      "Guess 2: speed -> XXYYX\nTurns left: 8\n",
      # e at 4 green; eerie's i is at 3, so abide's i (2) is Y.
      "Guess 3: abide -> XXYXG\nTurns left: 7\n"]
  # Only the latest guess: the transcript holds the others.
  assert "crane" not in ENV.render_text(state, PARAMS)


def test_the_docstring_example():
  state, _ = _play_word("board", ["crane", "roast"])
  text = ENV.render_text(state, PARAMS)
  assert text == "Guess 2: roast -> YGGXX\nTurns left: 8\n"
  assert "    " + text.replace("\n", "\n    ").rstrip() in wordle_module.__doc__


def test_finding_the_word_wins_and_the_attempt_stays_over():
  state, tss = _play_word("crane", ["eerie", "crane", "abbey"])
  assert (tss[0].done, tss[0].won, float(tss[0].reward)) == (False, False, 0.0)
  assert (tss[1].done, tss[1].won, tss[1].truncated, float(tss[1].reward),
          int(tss[1].steps)) == (True, True, False, 1.0, 2)
  after = tss[2]
  assert (after.done, after.won, float(after.reward), bool(after.invalid),
          int(after.steps)) == (True, True, 0.0, False, 2)
  # The step after the end changes nothing, the rendering included.
  assert ENV.render_text(state, PARAMS) == "Guess 2: crane -> GGGGG\nTurns left: 8\n"


def test_a_repeated_guess_wastes_the_turn_and_adds_no_row():
  guesses = ["abbey", "abbey", -1, len(WORDS), "eerie", "abbey"]
  state, tss = _play_word("crane", guesses)
  assert [bool(t.invalid) for t in tss] == [False, True, True, True, False, True]
  assert int(tss[-1].steps) == 6 and not tss[-1].done
  assert _observations("crane", guesses) == [
      "Guess 1: abbey -> YXXYX\nTurns left: 9\n",
      "Already guessed.\nTurns left: 8\n",
      "Not a valid guess.\nTurns left: 7\n",
      "Not a valid guess.\nTurns left: 6\n",
      # The wasted turns added no row: this is the second guess.
      "Guess 2: eerie -> XXYXG\nTurns left: 5\n",
      "Already guessed.\nTurns left: 4\n"]
  mask = np.asarray(ENV.action_mask(state, PARAMS))
  assert not mask[WORDS.index("abbey")] and not mask[WORDS.index("eerie")]
  assert mask.sum() == len(WORDS) - 2


def test_a_wasted_first_turn_replaces_no_guesses_yet():
  assert _observations("crane", [len(WORDS), "abbey"]) == [
      "Not a valid guess.\nTurns left: 9\n", "Guess 1: abbey -> YXXYX\nTurns left: 8\n"]


def test_turn_limit_truncates_but_a_win_on_the_last_turn_counts():
  nine = [w for w in WORDS[:12] if w != "crane"][:9]
  _, tss = _play_word("crane", nine + ["about" if "about" not in nine else WORDS[20]])
  last = tss[-1]
  assert (last.done, last.won, last.truncated, int(last.steps)) == (True, False, True, 10)
  assert [bool(t.done) for t in tss[:-1]] == [False] * 9
  state, tss = _play_word("crane", nine + ["crane"])
  last = tss[-1]
  assert (last.done, last.won, last.truncated, float(last.reward)) == (True, True, False, 1.0)
  assert ENV.render_text(state, PARAMS) == "Guess 10: crane -> GGGGG\nTurns left: 0\n"


def test_a_continuous_trial_shows_the_final_guess_at_the_episode_boundary():
  env = Continuous(ENV, episodes=3)
  crane = ENV.initial_state(jnp.int32(WORDS.index("crane")))
  state, _ = env.reset(KEY, PARAMS)
  state = state.replace(game=crane, initial=crane, last=crane)
  for w in ["abbey", "crane"]:
    state, ts = env.step(KEY, state, jnp.int32(WORDS.index(w)), PARAMS)
  assert float(ts.reward) == 1.0 and int(state.episode) == 1
  text = env.render_text(state, PARAMS)
  assert text == ("Guess 2: crane -> GGGGG\nTurns left: 8\nResult: solved.\n"
                  "[Episode 2] New episode begins.\nNo guesses yet.\nTurns left: 10\n")
  assert env.symbols_to_text(env.render_symbols(state, PARAMS)) == text


# ---- random play against the reference -----------------------------------------

def test_matches_python_reference_on_random_play():
  initial, init_views, actions, states, steps, views = _played(2)
  symbols, masks, _ = views
  counts = {"won": 0, "truncated": 0, "invalid": 0, "Y": 0, "G": 0,
            "Already guessed": 0, "Not a valid guess": 0}
  for b in range(BATCH):
    ref = PyWordle(WORDS, ENV.max_turns)
    text = ref.reset(WORDS[int(initial.answer[b])])
    assert ENV.render_text(_index(initial, b), PARAMS) == text
    assert ENV.symbols_to_text(init_views[0][b]) == text
    for t in range(TURNS):
      reward, done, won, truncated, invalid = ref.step(int(actions[b, t]))
      ts = _index(steps, b, t)
      assert (float(ts.reward), bool(ts.done), bool(ts.won), bool(ts.truncated),
              bool(ts.invalid), int(ts.steps)) == (
                  reward, done, won, truncated, invalid, ref.steps), (b, t)
      text = ENV.render_text(_index(states, b, t), PARAMS)
      assert text == ref.render_text(), (b, t)
      assert ENV.symbols_to_text(symbols[b, t]) == text
      assert masks[b, t].tolist() == ref.legal()
      counts["invalid"] += invalid
      for note in ("Already guessed", "Not a valid guess"):
        counts[note] += text.startswith(note) and not done
    counts["won"] += ref.won
    counts["truncated"] += ref.truncated
    for _, m in ref.rows:
      counts["Y"] += m.count("Y")
      counts["G"] += m.count("G")
  assert all(v > 20 for v in counts.values()), counts
  assert counts["won"] + counts["truncated"] == BATCH


def test_renderings_follow_the_symbol_slots():
  _, init_views, _, _, _, views = _played(3)
  symbols = np.concatenate([init_views[0], views[0].reshape(-1, ENV.max_symbols)])
  for p, allowed in enumerate(ENV.symbol_slots):
    seen = set(np.unique(symbols[:, p]).tolist()) - {-1}
    assert seen <= set(allowed), (p, seen - set(allowed))
  codec = TextCodec.for_env(ByteTokenizer(), ENV)     # also checks prefix-freedom
  sample = symbols[::40]
  buffers = jax.device_get(jax.jit(jax.vmap(codec.encode))(jnp.asarray(sample)))
  for i in range(len(sample)):
    one = jax.tree.map(lambda x: x[i], buffers)
    assert codec.decode(one) == ENV.symbols_to_text(sample[i])
  # The slot-sized buffer, in bytes: the longest head, "Not a valid guess.\n"
  # (19), then 5 letters + " -> " + 5 marks + "\n" (5 + 4 + 5 + 1), and
  # "Turns left: 10\n" (15).
  assert int(buffers.length.max()) <= codec.max_tokens == 19 + 15 + 15


def test_state_key_hashes_what_is_observable():
  _, init_views, actions, _, _, views = _played(4)
  symbols, _, keys = views
  assert keys.dtype == np.uint32
  # The key is a function of what the attempt has shown (its transcript:
  # every observation so far and the actions between them) and determines
  # the latest observation; boards that differ only in earlier guesses get
  # different keys although their latest lines agree.
  by_transcript: dict[tuple, set[int]] = {}
  by_key: dict[int, set[str]] = {}
  for b in range(BATCH):
    seen = (ENV.symbols_to_text(init_views[0][b]),)
    for t in range(TURNS):
      text = ENV.symbols_to_text(symbols[b, t])
      seen += (int(actions[b, t]), text)
      by_transcript.setdefault(seen, set()).add(int(keys[b, t]))
      by_key.setdefault(int(keys[b, t]), set()).add(text)
  assert all(len(k) == 1 for k in by_transcript.values())
  assert all(len(v) == 1 for v in by_key.values())
  assert len(by_key) > 1000
  assert len(by_key) > len({next(iter(v)) for v in by_key.values()})


# ---- tasks ---------------------------------------------------------------------------

def test_reset_is_deterministic_in_its_key():
  keys = jax.random.split(jax.random.key(5), BATCH)
  first, _ = _vreset(keys, PARAMS)
  again, _ = _vreset(keys, PARAMS)
  np.testing.assert_array_equal(first.answer, again.answer)
  # 256 draws from 1500 words: about 235 distinct expected.
  assert len(set(np.asarray(first.answer).tolist())) > 210


def test_num_words_draws_uniformly_from_the_most_frequent():
  n = 4000
  keys = jax.random.split(jax.random.key(6), n)
  states, _ = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))(
      keys, PARAMS.replace(num_words=jnp.int32(5)))
  freq = np.bincount(np.asarray(states.answer), minlength=5) / n
  assert len(freq) == 5
  assert (np.abs(freq - 0.2) < Z * np.sqrt(0.2 * 0.8 / n)).all(), freq


def test_step_compiles_once():
  step = jax.jit(ENV.step)
  state = _initial(jnp.int32(7))
  for a in [0, 5, 7, 5, -3, 1499, 20]:
    state, _ = step(jax.random.key(a % 5), state, jnp.int32(a), PARAMS)
  step(KEY, _initial(jnp.int32(100)), jnp.int32(1),
       PARAMS.replace(reward_win=jnp.float32(2.0)))
  assert step._cache_size() == 1
