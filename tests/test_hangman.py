"""Tests for envs_jax.games.hangman, its Python reference and the word lists."""

from __future__ import annotations

import functools
import importlib.resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax import words as words_module
from envs_jax.continuous import Continuous
from envs_jax.games import hangman as hangman_module
from envs_jax.games.hangman import Hangman
from envs_jax.reference.hangman import ALPHABET, PyHangman
from envs_jax.text import TextCodec
from lamer_jax.models.tokenizer import ByteTokenizer

ENV = Hangman()
PARAMS = ENV.default_params
WORDS = ENV.words
KEY = jax.random.key(0)   # Hangman is deterministic: its steps ignore the key
# Frequency tests: P(|N(0, 1)| > 4.5) = 6.8e-6 per comparison.
Z = 4.5

BATCH, TURNS = 256, ENV.max_turns + 2   # random play: tasks, steps per attempt

_step = jax.jit(ENV.step)
_initial = jax.jit(ENV.initial_state)
_vreset = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))


def letter(c: str) -> int:
  return ALPHABET.index(c)


def word(w: str) -> int:
  return ENV.action_strings.index(f"word {w}")


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


def _policy(rng: np.random.Generator, answer: str) -> list[int]:
  """TURNS mixed actions for one attempt at ``answer``.

  Letters of the answer (so every letter gets revealed, without a win, in
  some attempts), other letters (repeats included), a few words from a small
  pool (so wrong words repeat), the answer now and then, and out-of-range
  indices.
  """
  pool = [26 + int(i) for i in rng.integers(0, len(WORDS), 3)]
  out = []
  for _ in range(TURNS):
    u = rng.random()
    if u < 0.07:
      out.append(word(answer))
    elif u < 0.45:
      out.append(letter(answer[rng.integers(0, len(answer))]))
    elif u < 0.75:
      out.append(int(rng.integers(0, 26)))
    elif u < 0.97:
      out.append(pool[rng.integers(0, 3)])
    else:
      out.append(int(rng.choice([-1, ENV.num_actions])))
  return out


@functools.lru_cache(maxsize=None)
def _played(seed: int):
  """Random play on BATCH fresh tasks: (initial, initial views, actions,
  states, TimeSteps, views), all on the host."""
  initial, _ = _vreset(jax.random.split(jax.random.key(seed), BATCH), PARAMS)
  rng = np.random.default_rng(seed)
  actions = np.array([_policy(rng, WORDS[int(w)]) for w in np.asarray(initial.word)],
                     np.int32)
  states, steps, views = _run(initial, jnp.asarray(actions))
  return jax.device_get((initial, jax.jit(_views)(initial), actions, states, steps,
                         views))


def _index(tree, *i):
  return jax.tree.map(lambda x: x[i], tree)


def _play_word(w: str, actions, env: Hangman = ENV):
  """Steps through ``actions`` from a fresh attempt at ``w``; (state, ts list)."""
  state, out, _ = _play_and_render(w, actions, env)
  return state, out


def _observations(w: str, actions, env: Hangman = ENV) -> list[str]:
  """The observation after each action; checks that both renderings agree."""
  return _play_and_render(w, actions, env)[2]


def _play_and_render(w: str, actions, env: Hangman = ENV):
  initial, step = (_initial, _step) if env is ENV else (
      jax.jit(env.initial_state), jax.jit(env.step))
  params = env.default_params
  state = initial(jnp.int32(env.words.index(w)))
  out, texts = [], []
  for a in actions:
    state, ts = step(KEY, state, jnp.int32(a), params)
    out.append(jax.device_get(ts))
    text = env.render_text(state, params)
    assert env.symbols_to_text(env.render_symbols(state, params)) == text
    texts.append(text)
  return state, out, texts


# ---- the word lists ------------------------------------------------------------

@pytest.mark.parametrize("name,length,size,first", [
    ("words3", 3, 350, ("the", "and", "for")),
    ("words5", 5, 1500, ("about", "their", "there")),
])
def test_shipped_word_lists_parse(name, length, size, first):
  words = words_module.load_words(name)
  assert len(words) == size == len(set(words))
  assert all(len(w) == length and w.isascii() and w.isalpha() and w.islower()
             for w in words)
  assert words[:3] == first          # most frequent first
  text = (importlib.resources.files("envs_jax") / "data" / f"{name}.txt").read_text(
      encoding="utf-8")
  header = [line for line in text.splitlines() if line.startswith("#")]
  assert text.startswith("#") and any("wordfreq" in line for line in header)
  assert any("python scripts/make_wordlists.py" in line for line in header)
  # The filter dropped abbreviations, names, slang and profanity.
  assert not {"usa", "etc", "lol", "tom", "joe", "dvd", "ass", "paris", "peter",
              "bitch"} & set(words)


def test_missing_word_list_names_the_script():
  with pytest.raises(FileNotFoundError, match=r"words9\.txt.*scripts/make_wordlists\.py"):
    words_module.load_words("words9")


@pytest.mark.parametrize("text,why", [
    ("# header\ncat\nDog\n", "line 3 .*not a lowercase a-z word"),
    ("cat\ndog\ncat\n", "line 3 repeats 'cat'"),
    ("cat\nhorse\n", "line 2 has the 5-letter word"),
    ("# only a header\n\n", "holds no word"),
    ("cat\nd0g\n", "line 2"),
])
def test_malformed_word_list_names_the_file_and_the_script(text, why):
  with pytest.raises(ValueError, match=why) as info:
    words_module.parse_words(text, "some/words.txt")
  assert "some/words.txt" in str(info.value)
  assert "scripts/make_wordlists.py" in str(info.value)
  assert words_module.parse_words("# h\ncat\n\ndog\n", "x") == ("cat", "dog")


# ---- static description -----------------------------------------------------------

def test_static_description():
  assert ENV.max_turns == 10 and ENV.word_length == 3
  assert ENV.action_strings[:2] == ("letter a", "letter b")
  assert ENV.action_strings[26] == f"word {WORDS[0]}"
  assert ENV.num_actions == 26 + 350
  strings = ENV.action_strings
  assert not [(a, b) for a in strings for b in strings if a != b and b.startswith(a)]
  assert "letter e" in ENV.instructions and "word" in ENV.instructions
  assert "10 turns" in ENV.instructions
  assert "earlier guesses stay above" in ENV.instructions
  # The note, "Word:", 3 cells, "\n", turns left (3).
  assert ENV.max_symbols == len(ENV.symbol_slots) == 1 + 1 + 3 + 1 + 3
  with pytest.raises(ValueError, match="max_turns"):
    Hangman(max_turns=0)
  with pytest.raises(FileNotFoundError, match="make_wordlists"):
    Hangman(word_list="nope")
  assert envs_jax.make("hangman") == ENV


def test_initial_observation():
  state, ts = jax.jit(ENV.reset)(jax.random.key(1), PARAMS)
  assert ENV.render_text(state, PARAMS) == "Word: _ _ _\nTurns left: 10\n"
  assert ENV.symbols_to_text(ENV.render_symbols(state, PARAMS)) == (
      "Word: _ _ _\nTurns left: 10\n")
  assert float(ts.reward) == 0.0 and not bool(ts.done) and int(ts.steps) == 0
  assert np.asarray(ENV.action_mask(state, PARAMS)).all()


# ---- rules, by hand ----------------------------------------------------------------

@pytest.mark.parametrize("w,guess,shown", [
    ("eye", "e", "e _ e"),    # a repeated letter: every position at once
    ("see", "e", "_ e e"),
    ("add", "d", "_ d d"),
    ("too", "o", "_ o o"),
    ("eye", "y", "_ y _"),
    ("eye", "a", "_ _ _"),    # a miss reveals nothing
])
def test_a_letter_reveals_every_position_it_holds(w, guess, shown):
  state, (ts,) = _play_word(w, [letter(guess)])
  note = "In the word.\n" if guess in w else "Not in the word.\n"
  assert ENV.render_text(state, PARAMS) == f"{note}Word: {shown}\nTurns left: 9\n"
  assert not ts.invalid and not ts.done and float(ts.reward) == 0.0


def test_the_docstring_example():
  state, _ = _play_word("hat", [letter("e"), letter("a"), letter("t"), word("cab")])
  text = ENV.render_text(state, PARAMS)
  assert text == "Wrong word.\nWord: _ a t\nTurns left: 6\n"
  assert "    " + text.replace("\n", "\n    ").rstrip() in hangman_module.__doc__


def test_revealing_every_letter_does_not_win_naming_the_word_does():
  state, tss = _play_word("eye", [letter("e"), letter("y"), word("eye")])
  first_two = tss[:2]
  assert [(t.done, t.won, float(t.reward)) for t in first_two] == [(False, False, 0.0)] * 2
  assert (tss[2].done, tss[2].won, tss[2].truncated, float(tss[2].reward)) == (
      True, True, False, 1.0)
  assert ENV.render_text(state, PARAMS) == (
      "You guessed the word!\nWord: e y e\nTurns left: 7\n")
  # The word can be named straight away, too; the win shows it whole.
  state, (ts,) = _play_word("cat", [word("cat")])
  assert ts.won and float(ts.reward) == 1.0 and int(ts.steps) == 1
  assert ENV.render_text(state, PARAMS) == (
      "You guessed the word!\nWord: c a t\nTurns left: 9\n")


def test_wrong_words_and_repeats_waste_the_turn():
  actions = [word("dog"), letter("a"), word("top"), word("dog"), letter("a"),
             letter("z")]
  state, tss = _play_word("cat", actions)
  assert [bool(t.invalid) for t in tss] == [False, False, False, True, True, False]
  assert not any(bool(t.done) for t in tss) and int(tss[-1].steps) == 6
  # Only the latest guess's effect: the transcript holds the earlier ones.
  assert _observations("cat", actions) == [
      "Wrong word.\nWord: _ _ _\nTurns left: 9\n",
      "In the word.\nWord: _ a _\nTurns left: 8\n",
      "Wrong word.\nWord: _ a _\nTurns left: 7\n",
      "Already guessed.\nWord: _ a _\nTurns left: 6\n",
      "Already guessed.\nWord: _ a _\nTurns left: 5\n",
      "Not in the word.\nWord: _ a _\nTurns left: 4\n"]
  mask = np.asarray(ENV.action_mask(state, PARAMS))
  assert not mask[letter("a")] and not mask[word("dog")] and not mask[word("top")]
  assert not mask[letter("z")]
  assert mask.sum() == ENV.num_actions - 4 and mask[word("cat")]


@pytest.mark.parametrize("action", [-1, ENV.num_actions, 10_000])
def test_out_of_range_actions_waste_the_turn(action):
  state, (ts,) = _play_word("cat", [action])
  assert ts.invalid and int(ts.steps) == 1 and not ts.done
  assert ENV.render_text(state, PARAMS) == (
      "Not a valid guess.\nWord: _ _ _\nTurns left: 9\n")


def test_turn_limit_truncates_and_the_attempt_stays_over():
  misses = [letter(c) for c in "bdefghijkl"]           # none is in "cat"
  state, tss = _play_word("cat", misses + [word("cat")])
  assert [bool(t.done) for t in tss[:9]] == [False] * 9
  last = tss[9]
  assert (last.done, last.won, last.truncated, int(last.steps)) == (True, False, True, 10)
  # The eleventh step (the right word) changes nothing: reward 0, same flags.
  after = tss[10]
  assert (after.done, after.won, after.truncated, float(after.reward),
          bool(after.invalid), int(after.steps)) == (True, False, True, 0.0, False, 10)
  # The word is never shown; the rendering is that of the tenth turn.
  assert ENV.render_text(state, PARAMS) == (
      "Not in the word.\nWord: _ _ _\nTurns left: 0\n")


def test_a_win_on_the_last_turn_counts():
  state, tss = _play_word("cat", [letter(c) for c in "bdefghijk"] + [word("cat")])
  last = tss[-1]
  assert (last.done, last.won, last.truncated, float(last.reward)) == (True, True, False, 1.0)
  assert ENV.render_text(state, PARAMS) == (
      "You guessed the word!\nWord: c a t\nTurns left: 0\n")


def test_a_long_attempt_guesses_every_letter():
  env = Hangman(max_turns=30)
  texts = _observations("fox", [letter(c) for c in ALPHABET[::-1]], env)
  assert texts[0] == "Not in the word.\nWord: _ _ _\nTurns left: 29\n"      # z
  assert texts[2] == "In the word.\nWord: _ _ x\nTurns left: 27\n"          # x
  assert texts[-1] == "Not in the word.\nWord: f o x\nTurns left: 4\n"      # a
  state, tss = _play_word("fox", [letter(c) for c in ALPHABET[::-1]], env)
  assert not any(bool(t.done) for t in tss) and int(tss[-1].steps) == 26
  assert not np.asarray(env.action_mask(state, env.default_params))[:26].any()


def test_a_continuous_trial_shows_the_last_guess_at_the_episode_boundary():
  env = Continuous(ENV, episodes=3)
  cat = ENV.initial_state(jnp.int32(WORDS.index("cat")))
  state, _ = env.reset(KEY, PARAMS)
  state = state.replace(game=cat, initial=cat, last=cat)
  for a in [letter("a"), word("cat")]:
    state, ts = env.step(KEY, state, jnp.int32(a), PARAMS)
  assert float(ts.reward) == 1.0 and int(state.episode) == 1
  text = env.render_text(state, PARAMS)
  assert text == ("You guessed the word!\nWord: c a t\nTurns left: 8\nResult: solved.\n"
                  "[Episode 2] New episode begins.\nWord: _ _ _\nTurns left: 10\n")
  assert env.symbols_to_text(env.render_symbols(state, PARAMS)) == text


# ---- random play against the reference -----------------------------------------

def test_matches_python_reference_on_random_play():
  initial, init_views, actions, states, steps, views = _played(2)
  symbols, masks, _ = views
  outcomes = {"won": 0, "truncated": 0, "invalid": 0, "all shown": 0,
              **{note: 0 for note in hangman_module.NOTES}}
  for b in range(BATCH):
    ref = PyHangman(WORDS, ENV.max_turns)
    text = ref.reset(WORDS[int(initial.word[b])])
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
      outcomes["invalid"] += invalid
      word_line = next(line for line in text.splitlines() if line.startswith("Word:"))
      outcomes["all shown"] += not done and "_" not in word_line
      for note in hangman_module.NOTES:
        outcomes[note] += text.startswith(note)
    outcomes["won"] += ref.won
    outcomes["truncated"] += ref.truncated
  # Random play meets every case: wins, time-outs, wasted turns, words
  # revealed in full by letters without a win, and every note.
  assert all(v > 10 for v in outcomes.values()), outcomes
  assert outcomes["won"] + outcomes["truncated"] == BATCH


def test_renderings_follow_the_symbol_slots():
  _, init_views, _, _, _, views = _played(3)
  symbols = np.concatenate([init_views[0], views[0].reshape(-1, ENV.max_symbols)])
  for p, allowed in enumerate(ENV.symbol_slots):
    seen = set(np.unique(symbols[:, p]).tolist()) - {-1}
    assert seen <= set(allowed), (p, seen - set(allowed))
  codec = TextCodec.for_env(ByteTokenizer(), ENV)     # also checks prefix-freedom
  buffers = jax.device_get(jax.jit(jax.vmap(codec.encode))(jnp.asarray(symbols[::40])))
  for i in range(len(symbols[::40])):
    one = jax.tree.map(lambda x: x[i], buffers)
    assert codec.decode(one) == ENV.symbols_to_text(symbols[::40][i])
  # The slot-sized buffer, in bytes: the longest note, "You guessed the
  # word!\n" (22), "Word:" and three cells " a" and "\n" (5 + 6 + 1), and
  # "Turns left: 10\n" (15).
  assert int(buffers.length.max()) <= codec.max_tokens == 22 + 12 + 15


def test_state_key_hashes_what_is_observable():
  _, init_views, actions, _, _, views = _played(4)
  symbols, _, keys = views
  assert keys.dtype == np.uint32
  # The key is a function of what the attempt has shown (its transcript:
  # every observation so far and the actions between them) and determines
  # the latest observation; attempts whose latest observations agree but
  # whose earlier guesses differ get different keys.
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
  assert len(by_key) > 500
  assert len(by_key) > len({next(iter(v)) for v in by_key.values()})


# ---- tasks ---------------------------------------------------------------------------

def test_reset_is_deterministic_in_its_key():
  keys = jax.random.split(jax.random.key(5), BATCH)
  first, _ = _vreset(keys, PARAMS)
  again, _ = _vreset(keys, PARAMS)
  np.testing.assert_array_equal(first.word, again.word)
  # 256 draws from 350 words: about 256 * (1 - 256/700) = 162 distinct expected.
  assert len(set(np.asarray(first.word).tolist())) > 130


def test_num_words_draws_uniformly_from_the_most_frequent():
  n = 4000
  keys = jax.random.split(jax.random.key(6), n)
  states, _ = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))(
      keys, PARAMS.replace(num_words=jnp.int32(4)))
  freq = np.bincount(np.asarray(states.word), minlength=4) / n
  assert len(freq) == 4
  assert (np.abs(freq - 0.25) < Z * np.sqrt(0.25 * 0.75 / n)).all(), freq
  states, _ = _vreset(keys[:64], PARAMS.replace(num_words=jnp.int32(0)))
  assert (np.asarray(states.word) == 0).all()       # clipped to one word


def test_step_compiles_once():
  step = jax.jit(ENV.step)
  state = _initial(jnp.int32(7))
  for a in [0, 5, 26, 40, -3, 375, 5]:
    state, _ = step(jax.random.key(a % 5), state, jnp.int32(a), PARAMS)
  state = _initial(jnp.int32(100))
  step(KEY, state, jnp.int32(1), PARAMS.replace(reward_win=jnp.float32(2.0)))
  assert step._cache_size() == 1
