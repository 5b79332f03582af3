"""Hangman (ORBIT's "Hangman-easy"): find a hidden 3-letter word.

ORBIT's training game (see REFERENCES.md, "ORBIT's game suite"), built on
GEM's ``game:Hangman-v0-easy`` (3-letter words, 10 turns). A *task* is a hidden
word drawn in ``reset`` uniformly from the first ``HangmanParams.num_words``
words of the shipped list ``envs_jax/data/words3.txt`` (350 common 3-letter
English words, most frequent first; ``envs_jax.words``). There are no lives:
the attempt lasts at most ``max_turns`` (10) turns.

Each turn the agent guesses one letter or the whole word:

* ``letter e``: every position of the word holding that letter is revealed (a
  repeated letter reveals all its positions at once). A letter not in the
  word only uses up the turn.
* ``word cat``: if it is the hidden word the attempt is won (reward
  ``reward_win``, 1.0, done); otherwise the turn is used and the word joins
  the list of wrong guesses.

As in GEM, the attempt is won **only** by a correct whole-word guess:
revealing every letter with letter guesses does not end it, the agent must
still spend a turn naming the word (GEM's ``step`` ends an episode as won
only on a right whole-word guess, and ORBIT counts an episode a success only
when it ends terminated, not truncated, with a positive reward). After
``max_turns`` turns without the word the attempt ends, truncated. Guessing a
letter or a word already guessed changes nothing but still uses the turn
(GEM: "already guessed", an invalid action); ``TimeStep.invalid`` says so and
the action mask forbids it. An out-of-range action index is treated the same.

Candidates: the 26 ``letter x`` and one ``word xyz`` per listed word (376 in
all). Whole-word guesses are limited to the list, which always holds the
answer; GEM accepts any string of letters, but a word outside the list can
never be right, so leaving it out loses nothing but a wasted turn. The two
prefixes keep the table prefix-free ("a" alone would be a prefix of "ant")
and read as what they do.

The observation, e.g. for the word "hat" after the guesses e, a, t and the
word "cab"::

    Word: _ a t
    Letters guessed: a e t
    Words guessed: cab
    Turns left: 6

Letters are listed in alphabetical order and words in the order guessed
("none" when there are none). A won attempt shows the whole word and ends with
the line ``You guessed the word!``; the word of a lost attempt is never shown
(the same task is replayed in the next attempt).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays
from envs_jax.words import ALPHABET, load_words, word_codes

NUM_LETTERS = len(ALPHABET)

# Symbol ids: bare letters 0..25 (in listed words), spaced letters 26..51
# (" a": the pattern and the letter list), the blank, then the fixed pieces,
# then the numbers 0..max_turns.
_SPACED = NUM_LETTERS
_BLANK = 2 * NUM_LETTERS
_PIECES = ("Word:", "\n", "Letters guessed:", " none", "Words guessed:", " ",
           "Turns left: ", "You guessed the word!\n")
_FIRST_PIECE = _BLANK + 1
_FIRST_NUMBER = _FIRST_PIECE + len(_PIECES)


def _piece(text: str) -> int:
  return _FIRST_PIECE + _PIECES.index(text)


@struct.dataclass
class HangmanParams:
  """Task-distribution knobs.

  Attributes:
    reward_win: float32, reward of the turn that guesses the word.
    num_words: int32, the hidden word is drawn from the first ``num_words``
      words of the list (the most frequent; clipped to [1, list size]).
  """

  reward_win: jax.Array
  num_words: jax.Array


@struct.dataclass
class HangmanState:
  """One attempt.

  Attributes:
    word: int32 index of the hidden word in ``Hangman.words`` (the task).
    guessed: bool[26], letters guessed so far.
    tried: int32[max_turns], wrong whole-word guesses (word indices) in the
      order made, padded with -1.
    steps: int32 turns taken.
    done: bool, the attempt is over.
    won: bool, the word was guessed.
    truncated: bool, the turns ran out first.
  """

  word: jax.Array
  guessed: jax.Array
  tried: jax.Array
  steps: jax.Array
  done: jax.Array
  won: jax.Array
  truncated: jax.Array


@dataclasses.dataclass(frozen=True)
class Hangman(Environment):
  """Hangman with a turn cap and no lives; won only by naming the word.

  Attributes:
    name: registry name.
    max_turns: turns per attempt (ORBIT's Hangman-easy: 10).
    word_list: the shipped list the words come from (``envs_jax.words``).
  """

  name: str = "hangman"
  max_turns: int = 10
  word_list: str = "words3"

  def __post_init__(self):
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
    load_words(self.word_list)   # fail early on a missing or malformed list

  # ---- the word list -------------------------------------------------------
  @property
  def words(self) -> tuple[str, ...]:
    return load_words(self.word_list)

  @property
  def word_length(self) -> int:
    return len(self.words[0])

  @property
  def _codes(self) -> np.ndarray:
    """int32[N, L]: the letters (0-25) of every word."""
    return word_codes(self.word_list)

  @property
  def _letter_slots(self) -> int:
    """Entries of the letter list: at most one new letter per turn."""
    return min(NUM_LETTERS, self.max_turns)

  # ---- static description ------------------------------------------------
  @property
  def symbols(self) -> tuple[str, ...]:
    return (tuple(ALPHABET) + tuple(" " + c for c in ALPHABET) + (" _",) + _PIECES
            + tuple(str(i) for i in range(self.max_turns + 1)))

  @property
  def action_strings(self) -> tuple[str, ...]:
    return (tuple(f"letter {c}" for c in ALPHABET)
            + tuple(f"word {w}" for w in self.words))

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """The positions of ``render_symbols``, line by line (-1 pads lists)."""
    spaced = tuple(range(_SPACED, _SPACED + NUM_LETTERS))
    bare = tuple(range(NUM_LETTERS))
    p = _piece
    word = (((p("Word:"),),) + (spaced + (_BLANK,),) * self.word_length
            + ((p("\n"),),))
    letters = ((p("Letters guessed:"),), spaced + (p(" none"),),
               *(spaced,) * (self._letter_slots - 1), (p("\n"),))
    words = ((p("Words guessed:"),),
             *(((p(" "), p(" none")),) + (bare,) * self.word_length) * self.max_turns,
             (p("\n"),))
    numbers = tuple(range(_FIRST_NUMBER, _FIRST_NUMBER + self.max_turns + 1))
    turns = ((p("Turns left: "),), numbers, (p("\n"),))
    return word + letters + words + turns + ((p("You guessed the word!\n"),),)

  @property
  def max_symbols(self) -> int:
    return len(self.symbol_slots)

  @property
  def instructions(self) -> str:
    n, t = self.word_length, self.max_turns
    return (
        f"You are playing Hangman. A secret {n}-letter English word is hidden; "
        "the observation shows each of its letters as _ until you find it.\n"
        "Each turn, guess one letter or the whole word. A letter in the word is "
        "revealed at every position where it occurs; a letter not in the word "
        "only uses up the turn. A word guess wins if it is the secret word; a "
        "wrong word only uses up the turn.\n"
        "You win only by guessing the whole word: revealing every letter is not "
        "enough, you still have to name the word. There are no lives, only a "
        f"limit of {t} turns. Guessing a letter or word again changes nothing "
        "and wastes the turn.\n"
        "Reward: 1 for guessing the word, 0 otherwise.\n"
        "Each turn, answer with `letter x` to guess a letter (e.g. letter e) or "
        f"`word xyz` to guess a common {n}-letter word (e.g. word "
        f"{self.words[0]}).")

  @property
  def default_params(self) -> HangmanParams:
    return HangmanParams(reward_win=jnp.asarray(1.0, jnp.float32),
                         num_words=jnp.asarray(len(self.words), jnp.int32))

  # ---- dynamics ------------------------------------------------------------
  def initial_state(self, word: jax.Array) -> HangmanState:
    """A fresh attempt at the word of index ``word`` (jittable)."""
    false = jnp.zeros((), jnp.bool_)
    return HangmanState(
        word=jnp.asarray(word, jnp.int32), guessed=jnp.zeros((NUM_LETTERS,), jnp.bool_),
        tried=jnp.full((self.max_turns,), -1, jnp.int32),
        steps=jnp.zeros((), jnp.int32), done=false, won=false, truncated=false)

  def reset(self, key: jax.Array, params: HangmanParams):
    """Draws the hidden word uniformly from the first ``num_words`` words."""
    count = jnp.clip(params.num_words, 1, len(self.words))
    word = jax.random.randint(key, (), 0, count, dtype=jnp.int32)
    return self.initial_state(word), TimeStep.first()

  def step(self, key: jax.Array, state: HangmanState, action: jax.Array,
           params: HangmanParams):
    """Applies one guess; deterministic (``key`` is ignored).

    A repeated letter or word, or an index out of range, uses the turn and
    changes nothing else (``invalid``). Stepping a finished attempt returns it
    unchanged, reward 0.
    """
    del key
    action = jnp.asarray(action, jnp.int32)
    in_range = (action >= 0) & (action < self.num_actions)
    is_letter = in_range & (action < NUM_LETTERS)
    is_word = in_range & (action >= NUM_LETTERS)
    letter = jnp.clip(action, 0, NUM_LETTERS - 1)
    word = jnp.clip(action - NUM_LETTERS, 0, len(self.words) - 1)
    new_letter = is_letter & ~state.guessed[letter]
    won = is_word & (word == state.word)
    wrong_word = is_word & ~won & ~jnp.any(state.tried == word)
    num_tried = jnp.sum(state.tried >= 0)
    steps = state.steps + 1
    truncated = ~won & (steps >= self.max_turns)
    done = won | truncated
    live_state = HangmanState(
        word=state.word,
        guessed=state.guessed | (new_letter & (jnp.arange(NUM_LETTERS) == letter)),
        tried=jnp.where(wrong_word & (jnp.arange(self.max_turns) == num_tried), word,
                        state.tried),
        steps=steps, done=done, won=won, truncated=truncated)
    live_ts = TimeStep(
        reward=jnp.where(won, params.reward_win, 0.0).astype(jnp.float32), done=done,
        won=won, truncated=truncated, invalid=~(new_letter | won | wrong_word),
        steps=steps)
    over_ts = TimeStep(reward=jnp.zeros((), jnp.float32), done=state.done,
                       won=state.won, truncated=state.truncated,
                       invalid=jnp.zeros((), jnp.bool_), steps=state.steps)
    pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(state.done, x, y), a, b)
    return pick(state, live_state), pick(over_ts, live_ts)

  # ---- views -----------------------------------------------------------------
  def _pattern(self, state: HangmanState) -> jax.Array:
    """int32[L]: the letter shown at each position, -1 for a blank."""
    letters = jnp.asarray(self._codes)[state.word]
    return jnp.where(state.guessed[letters] | state.won, letters, -1)

  def render_symbols(self, state: HangmanState, params: HangmanParams) -> jax.Array:
    """int32[max_symbols]: the observation's symbols, lists padded with -1."""
    del params
    p = _piece
    c = lambda *ids: jnp.asarray(ids, jnp.int32)
    pattern = self._pattern(state)
    shown = jnp.where(pattern >= 0, _SPACED + pattern, _BLANK)
    # Guessed letters in alphabetical order: letter i goes to entry rank(i).
    k = self._letter_slots
    rank = jnp.cumsum(state.guessed) - 1
    letters = jnp.full((k,), -1, jnp.int32).at[
        jnp.where(state.guessed, rank, k)].set(
            _SPACED + jnp.arange(NUM_LETTERS, dtype=jnp.int32), mode="drop")
    letters = letters.at[0].set(jnp.where(state.guessed.any(), letters[0], p(" none")))
    # Wrong words: " " and the word's letters per entry, padding after the last.
    listed = state.tried >= 0
    spelled = jnp.asarray(self._codes)[jnp.maximum(state.tried, 0)]      # [T, L]
    entries = jnp.concatenate(
        [jnp.full((self.max_turns, 1), p(" "), jnp.int32), spelled], axis=1)
    entries = jnp.where(listed[:, None], entries, -1)
    none = jnp.full((self.word_length + 1,), -1, jnp.int32).at[0].set(p(" none"))
    entries = entries.at[0].set(jnp.where(listed[0], entries[0], none))
    left = _FIRST_NUMBER + self.max_turns - state.steps
    return jnp.concatenate([
        c(p("Word:")), shown, c(p("\n")),
        c(p("Letters guessed:")), letters, c(p("\n")),
        c(p("Words guessed:")), entries.reshape(-1), c(p("\n")),
        c(p("Turns left: ")), left[None], c(p("\n")),
        jnp.where(state.won, p("You guessed the word!\n"), -1)[None],
    ]).astype(jnp.int32)

  def render_text(self, state: HangmanState, params: HangmanParams) -> str:
    """Host-side rendering from the state arrays."""
    del params
    s = jax.device_get(state)
    word = self.words[int(s.word)]
    guessed = {ALPHABET[i] for i in range(NUM_LETTERS) if bool(s.guessed[i])}
    won = bool(s.won)
    pattern = " ".join(ch if ch in guessed or won else "_" for ch in word)
    letters = " ".join(sorted(guessed)) or "none"
    tried = " ".join(self.words[int(i)] for i in s.tried if int(i) >= 0) or "none"
    text = (f"Word: {pattern}\nLetters guessed: {letters}\nWords guessed: {tried}\n"
            f"Turns left: {self.max_turns - int(s.steps)}\n")
    return text + ("You guessed the word!\n" if won else "")

  def action_mask(self, state: HangmanState, params: HangmanParams) -> jax.Array:
    """bool[26 + N]: letters not guessed yet and words not tried yet."""
    del params
    n = len(self.words)
    tried = jnp.zeros((n,), jnp.bool_).at[
        jnp.where(state.tried >= 0, state.tried, n)].set(True, mode="drop")
    return jnp.concatenate([~state.guessed, ~tried])

  def state_key(self, state: HangmanState) -> jax.Array:
    """uint32 hash of what the observation shows (not the hidden word)."""
    return hash_arrays(self._pattern(state), state.guessed, state.tried, state.steps,
                       state.won)
