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
  ``reward_win``, 1.0, done); otherwise only the turn is used.

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

The observation says what the latest guess did, then shows the word with the
letters found so far and the turns left, e.g. for the word "hat" after the
guesses e, a, t and the word "cab"::

    Wrong word.
    Word: _ a t
    Turns left: 6

The first line is ``In the word.`` or ``Not in the word.`` after a new
letter, ``Wrong word.`` after a wrong new word, ``Already guessed.`` after a
repeated letter or word, ``Not a valid guess.`` after an out-of-range
action, and ``You guessed the word!`` once the word is named (the attempt's
last observation, which shows the whole word); there is none before the
first guess. The word of a lost attempt is never shown (the same task is
replayed in the next attempt). The letters and words guessed so far are not
listed: in a continuous trial (``envs_jax.continuous``) the context holds
every turn's observation and action, so the transcript already carries the
history, while the text codec sizes every turn's observation by its longest
possible rendering, so the lists (up to ``max_turns`` letters and
``max_turns`` words, reserved in every turn whether used or not) would be
most of the context. This is also what ORBIT's agent sees: GEM's Hangman
observation is what the latest guess did ("At turn 3, you guessed a letter
'T' that is not in the secret word.", "... which is incorrect.", "...
already guessed before") followed by the grid of the word, and ORBIT
appends each one to its chat transcript as it is.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays
from envs_jax.words import ALPHABET, WordListMixin, word_codes

NUM_LETTERS = len(ALPHABET)

# What the latest guess did, in the order of ``HangmanState.last`` (1..6).
NOTES = ("In the word.\n", "Not in the word.\n", "Wrong word.\n",
         "Already guessed.\n", "Not a valid guess.\n", "You guessed the word!\n")

# Symbol ids: spaced letters 0..25 (" a", the pattern's cells), the blank,
# then the fixed pieces (the notes last, in order), then the numbers
# 0..max_turns.
_BLANK = NUM_LETTERS
_PIECES = ("Word:", "\n", "Turns left: ") + NOTES
_FIRST_PIECE = _BLANK + 1
_FIRST_NOTE = _FIRST_PIECE + _PIECES.index(NOTES[0])
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
    last: int32, what the latest turn did: 0 no turn yet, 1 a new letter in
      the word, 2 a new letter not in it, 3 a new wrong word, 4 a letter or
      word guessed before, 5 an out-of-range action, 6 the word (``NOTES``).
    done: bool, the attempt is over.
    won: bool, the word was guessed.
    truncated: bool, the turns ran out first.
  """

  word: jax.Array
  guessed: jax.Array
  tried: jax.Array
  steps: jax.Array
  last: jax.Array
  done: jax.Array
  won: jax.Array
  truncated: jax.Array


@dataclasses.dataclass(frozen=True)
class Hangman(WordListMixin, Environment):
  """Hangman with a turn cap and no lives; won only by naming the word.

  Attributes:
    name: registry name.
    max_turns: turns per attempt (ORBIT's Hangman-easy: 10).
    word_list: the shipped list the words come from (``envs_jax.words``).
  """

  name: str = "hangman"
  max_turns: int = 10
  word_list: str = "words3"

  @property
  def _codes(self) -> np.ndarray:
    """int32[N, L]: the letters (0-25) of every word."""
    return word_codes(self.word_list)

  # ---- static description ------------------------------------------------
  @property
  def symbols(self) -> tuple[str, ...]:
    return (tuple(" " + c for c in ALPHABET) + (" _",) + _PIECES
            + tuple(str(i) for i in range(self.max_turns + 1)))

  @property
  def action_strings(self) -> tuple[str, ...]:
    return (tuple(f"letter {c}" for c in ALPHABET)
            + tuple(f"word {w}" for w in self.words))

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """The positions of ``render_symbols``: the note (-1 before the first
    guess), the word's line, the turns left."""
    p = _piece
    note = tuple(range(_FIRST_NOTE, _FIRST_NOTE + len(NOTES)))
    cells = tuple(range(NUM_LETTERS)) + (_BLANK,)
    numbers = tuple(range(_FIRST_NUMBER, _FIRST_NUMBER + self.max_turns + 1))
    return ((note, (p("Word:"),)) + (cells,) * self.word_length
            + ((p("\n"),), (p("Turns left: "),), numbers, (p("\n"),)))

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
        "After each guess you see what it did, the word with the letters found "
        "so far, and the turns left; your earlier guesses stay above in the "
        "conversation.\n"
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
        steps=jnp.zeros((), jnp.int32), last=jnp.zeros((), jnp.int32),
        done=false, won=false, truncated=false)

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
    hit = jnp.any(jnp.asarray(self._codes)[state.word] == letter)
    last = jnp.select(
        [new_letter & hit, new_letter, wrong_word, won, in_range],
        [1, 2, 3, 6, 4], 5).astype(jnp.int32)
    steps = state.steps + 1
    truncated = ~won & (steps >= self.max_turns)
    done = won | truncated
    live_state = HangmanState(
        word=state.word,
        guessed=state.guessed | (new_letter & (jnp.arange(NUM_LETTERS) == letter)),
        tried=jnp.where(wrong_word & (jnp.arange(self.max_turns) == num_tried), word,
                        state.tried),
        steps=steps, last=last, done=done, won=won, truncated=truncated)
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
    """int32[max_symbols]: the note (-1 before the first guess), the word's
    line and the turns left."""
    del params
    p = _piece
    c = lambda *ids: jnp.asarray(ids, jnp.int32)
    pattern = self._pattern(state)
    shown = jnp.where(pattern >= 0, pattern, _BLANK)
    note = jnp.where(state.last > 0, _FIRST_NOTE + state.last - 1, -1)
    left = _FIRST_NUMBER + self.max_turns - state.steps
    return jnp.concatenate([
        note[None], c(p("Word:")), shown, c(p("\n")),
        c(p("Turns left: ")), left[None], c(p("\n")),
    ]).astype(jnp.int32)

  def render_text(self, state: HangmanState, params: HangmanParams) -> str:
    """Host-side rendering from the state arrays."""
    del params
    s = jax.device_get(state)
    word = self.words[int(s.word)]
    guessed = {ALPHABET[i] for i in range(NUM_LETTERS) if bool(s.guessed[i])}
    won = bool(s.won)
    pattern = " ".join(ch if ch in guessed or won else "_" for ch in word)
    note = NOTES[int(s.last) - 1] if int(s.last) else ""
    return f"{note}Word: {pattern}\nTurns left: {self.max_turns - int(s.steps)}\n"

  def action_mask(self, state: HangmanState, params: HangmanParams) -> jax.Array:
    """bool[26 + N]: letters not guessed yet and words not tried yet."""
    del params
    n = len(self.words)
    tried = jnp.zeros((n,), jnp.bool_).at[
        jnp.where(state.tried >= 0, state.tried, n)].set(True, mode="drop")
    return jnp.concatenate([~state.guessed, ~tried])

  def state_key(self, state: HangmanState) -> jax.Array:
    """uint32 hash of what the attempt has shown (not the hidden word).

    The pattern, the letters and wrong words guessed, the turns taken and the
    latest note: the observation shows only the latest guess's effect, the
    transcript holds the others, so two turns are the same anchor state when
    all of these agree, not merely their latest observations.
    """
    return hash_arrays(self._pattern(state), state.guessed, state.tried, state.steps,
                       state.last)
