"""Wordle (ORBIT's training game): find a hidden 5-letter word in 10 guesses.

ORBIT's training game (see REFERENCES.md, "ORBIT's game suite"), built on
GEM's ``game:Wordle-v0-hard`` (5-letter words; ORBIT caps an episode at 10
turns). A *task* is a hidden word drawn in ``reset`` uniformly from the first
``WordleParams.num_words`` words of the shipped list ``envs_jax/data/words5.txt``
(1500 common 5-letter English words, most frequent first; ``envs_jax.words``).

Each turn the agent guesses a word and gets one mark per letter:

* ``G``: the right letter in the right place;
* ``Y``: the letter is in the word, elsewhere;
* ``X``: the letter is not in the word (or all its copies are already marked).

Repeated letters take the standard two passes (as GEM's ``_evaluate_guess``):
first every exact match is marked G and uses up that letter of the answer;
then, left to right, each other guess letter is marked Y while unused copies
of it remain in the answer (using one up), and X after that. Answer "abbey",
guess "babes": YYGGX.

A guess equal to the word wins (reward ``reward_win``, 1.0, done). After
``max_turns`` (10) turns without it the attempt ends, truncated. Guessing a
word already guessed changes nothing but uses the turn (GEM: "already guessed
before", an invalid action): ``TimeStep.invalid`` says so, no guess is
recorded, and the action mask forbids it. An out-of-range action index is
treated the same.

Candidates are the words of the list themselves (``crane``): all have five
letters and differ, so no candidate is a prefix of another. ORBIT does not
check guesses against a dictionary (any five letters are scored); here the
allowed guesses are the shipped list, which holds every possible answer, so
the table (1500 entries) stays a decoding table and every guess is a real
word. Nonsense probes (five letters picked only to test them) are the one
strategy this rules out.

The observation shows the latest guess with its marks and the turns left,
e.g. for the word "board" after the guesses "crane" and "roast"::

    Guess 2: roast -> YGGXX
    Turns left: 8

``No guesses yet.`` takes the guess line's place before the first guess, and
a wasted turn shows its note there instead: ``Already guessed.`` for a word
guessed before, ``Not a valid guess.`` for an out-of-range action. Earlier
guesses are not listed: in a continuous trial (``envs_jax.continuous``) the
context holds every turn's observation and action, so the transcript already
carries the history, while the text codec sizes every turn's observation by
its longest possible rendering, so a board of all ``max_turns`` rows would
multiply the context (a ten-row board in each of a trial's 30 turns did not
fit SmolLM2's 8192 positions). This is also what ORBIT's agent sees: GEM's
Wordle observation is the latest feedback alone ("At turn 2, you guessed
ROAST / Feedback: ROAST / YGGXX", or "... which has been already guessed
before"), and ORBIT appends each one to its chat transcript as it is. The
marks are written together, as GEM writes them. A guessed word and its marks
are rendered as one symbol per letter, so a tokenizer sees each letter and
each mark as its own token, the marks lined up with the letters (the text is
the same); single-byte symbols also keep the text codec's slot layout cheap
to compile with the byte-level tokenizer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays
from envs_jax.words import ALPHABET, WordListMixin, word_codes

NUM_LETTERS = len(ALPHABET)
# Marks, in the order of their codes: 0 not in the word, 1 elsewhere, 2 here.
MARKS = ("X", "Y", "G")

# The notes of a wasted turn, in the order of ``WordleState.wasted`` (1, 2).
NOTES = ("Already guessed.\n", "Not a valid guess.\n")

# Symbol ids: letters 0..25, the marks X Y G, the fixed pieces (the notes
# among them), then one label per guess row ("Guess 1: "...), then the
# numbers 0..max_turns.
_FIRST_MARK = NUM_LETTERS
_PIECES = (" -> ", "\n", "No guesses yet.\n", "Turns left: ") + NOTES
_FIRST_PIECE = _FIRST_MARK + len(MARKS)
_FIRST_LABEL = _FIRST_PIECE + len(_PIECES)


def _piece(text: str) -> int:
  return _FIRST_PIECE + _PIECES.index(text)


def score_guess(answer: jax.Array, guess: jax.Array) -> jax.Array:
  """int32[L] marks (0 X, 1 Y, 2 G) of ``guess`` against ``answer``.

  Both are int32[L] letter codes. Jittable and vmappable, no loop: the
  left-to-right pass gives guess position i a Y exactly when the answer has
  more unmatched copies of its letter (positions not marked G) than the
  guess has non-G copies of it before i, which is the count the sequential
  pass would have left.
  """
  green = answer == guess
  same = guess[:, None] == guess[None, :]                        # [i, j]
  unmatched = jnp.sum((guess[:, None] == answer[None, :]) & ~green[None, :], axis=1)
  before = jnp.tril(jnp.ones_like(same), -1)                     # j < i
  earlier = jnp.sum(same & before & ~green[None, :], axis=1)
  yellow = ~green & (earlier < unmatched)
  return jnp.where(green, 2, jnp.where(yellow, 1, 0)).astype(jnp.int32)


@struct.dataclass
class WordleParams:
  """Task-distribution knobs.

  Attributes:
    reward_win: float32, reward of the guess that finds the word.
    num_words: int32, the hidden word is drawn from the first ``num_words``
      words of the list (the most frequent; clipped to [1, list size]).
  """

  reward_win: jax.Array
  num_words: jax.Array


@struct.dataclass
class WordleState:
  """One attempt.

  Attributes:
    answer: int32 index of the hidden word in ``Wordle.words`` (the task).
    guesses: int32[max_turns], the words guessed (indices) in order, padded
      with -1.
    marks: int32[max_turns, L], each guess's marks (0 X, 1 Y, 2 G; 0 in
      padding rows).
    steps: int32 turns taken.
    wasted: int32, what the latest turn wasted: 0 nothing (or no turn yet),
      1 it repeated an earlier guess, 2 its action was no word (out of range).
    done: bool, the attempt is over.
    won: bool, the word was found.
    truncated: bool, the turns ran out first.
  """

  answer: jax.Array
  guesses: jax.Array
  marks: jax.Array
  steps: jax.Array
  wasted: jax.Array
  done: jax.Array
  won: jax.Array
  truncated: jax.Array


@dataclasses.dataclass(frozen=True)
class Wordle(WordListMixin, Environment):
  """Wordle with G/Y/X marks; the allowed guesses are the word list.

  Attributes:
    name: registry name.
    max_turns: guesses per attempt (ORBIT's Wordle: 10).
    word_list: the shipped list the words come from (``envs_jax.words``).
  """

  name: str = "wordle"
  max_turns: int = 10
  word_list: str = "words5"

  # ---- static description ------------------------------------------------
  @property
  def symbols(self) -> tuple[str, ...]:
    return (tuple(ALPHABET) + MARKS + _PIECES
            + tuple(f"Guess {r}: " for r in range(1, self.max_turns + 1))
            + tuple(str(i) for i in range(self.max_turns + 1)))

  @property
  def _first_number(self) -> int:
    return _FIRST_LABEL + self.max_turns

  @property
  def action_strings(self) -> tuple[str, ...]:
    return self.words

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """The positions of ``render_symbols``: the first holds the latest guess's
    label or a line that replaces the guess (its other positions are -1
    then), and the turns left close it."""
    letters = tuple(range(NUM_LETTERS))
    marks = tuple(range(_FIRST_MARK, _FIRST_MARK + len(MARKS)))
    n = self.word_length
    head = (tuple(range(_FIRST_LABEL, _FIRST_LABEL + self.max_turns))
            + (_piece("No guesses yet.\n"),) + tuple(_piece(t) for t in NOTES))
    numbers = tuple(range(self._first_number, self._first_number + self.max_turns + 1))
    return ((head,) + (letters,) * n + ((_piece(" -> "),),) + (marks,) * n
            + ((_piece("\n"),), (_piece("Turns left: "),), numbers, (_piece("\n"),)))

  @property
  def max_symbols(self) -> int:
    return len(self.symbol_slots)

  @property
  def instructions(self) -> str:
    n, t = self.word_length, self.max_turns
    return (
        f"You are playing Wordle. Find the secret {n}-letter English word "
        f"within {t} guesses.\n"
        f"Each guess must be a common {n}-letter English word. After each "
        "guess, every letter is marked: G (green) the right letter in the "
        "right place; Y (yellow) the letter is in the word but elsewhere; X "
        "the letter is not in the word. A letter that occurs more often in "
        "your guess than in the secret word is marked G or Y only as many "
        "times as the word holds it (G first, then Y from left to right), X "
        "after that.\n"
        "After each guess you see that guess with its marks and the turns "
        "left; your earlier guesses stay above in the conversation. Guessing a "
        "word again changes nothing and wastes the turn.\n"
        "Reward: 1 for finding the word, 0 otherwise.\n"
        f"Each turn, answer with your guess: one {n}-letter word in lowercase, "
        f"e.g. {self.words[0]}.")

  @property
  def default_params(self) -> WordleParams:
    return WordleParams(reward_win=jnp.asarray(1.0, jnp.float32),
                        num_words=jnp.asarray(len(self.words), jnp.int32))

  # ---- dynamics ------------------------------------------------------------
  def initial_state(self, answer: jax.Array) -> WordleState:
    """A fresh attempt at the word of index ``answer`` (jittable)."""
    false = jnp.zeros((), jnp.bool_)
    return WordleState(
        answer=jnp.asarray(answer, jnp.int32),
        guesses=jnp.full((self.max_turns,), -1, jnp.int32),
        marks=jnp.zeros((self.max_turns, self.word_length), jnp.int32),
        steps=jnp.zeros((), jnp.int32), wasted=jnp.zeros((), jnp.int32),
        done=false, won=false, truncated=false)

  def reset(self, key: jax.Array, params: WordleParams):
    """Draws the hidden word uniformly from the first ``num_words`` words."""
    count = jnp.clip(params.num_words, 1, len(self.words))
    answer = jax.random.randint(key, (), 0, count, dtype=jnp.int32)
    return self.initial_state(answer), TimeStep.first()

  def step(self, key: jax.Array, state: WordleState, action: jax.Array,
           params: WordleParams):
    """Scores one guess; deterministic (``key`` is ignored).

    A repeated guess, or an index out of range, uses the turn and changes
    nothing else (``invalid``). Stepping a finished attempt returns it
    unchanged, reward 0.
    """
    del key
    codes = jnp.asarray(word_codes(self.word_list))
    action = jnp.asarray(action, jnp.int32)
    guess = jnp.clip(action, 0, len(self.words) - 1)
    in_range = (action >= 0) & (action < len(self.words))
    new = in_range & ~jnp.any(state.guesses == guess)
    won = new & (guess == state.answer)
    row = jnp.arange(self.max_turns) == jnp.sum(state.guesses >= 0)
    marks = score_guess(codes[state.answer], codes[guess])
    wasted = jnp.where(new, 0, jnp.where(in_range, 1, 2)).astype(jnp.int32)
    steps = state.steps + 1
    truncated = ~won & (steps >= self.max_turns)
    done = won | truncated
    live_state = WordleState(
        answer=state.answer,
        guesses=jnp.where(new & row, guess, state.guesses),
        marks=jnp.where((new & row)[:, None], marks[None, :], state.marks),
        steps=steps, wasted=wasted, done=done, won=won, truncated=truncated)
    live_ts = TimeStep(
        reward=jnp.where(won, params.reward_win, 0.0).astype(jnp.float32), done=done,
        won=won, truncated=truncated, invalid=~new, steps=steps)
    over_ts = TimeStep(reward=jnp.zeros((), jnp.float32), done=state.done,
                       won=state.won, truncated=state.truncated,
                       invalid=jnp.zeros((), jnp.bool_), steps=state.steps)
    pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(state.done, x, y), a, b)
    return pick(state, live_state), pick(over_ts, live_ts)

  # ---- views -----------------------------------------------------------------
  def render_symbols(self, state: WordleState, params: WordleParams) -> jax.Array:
    """int32[max_symbols]: the latest guess (or the line replacing it), the
    turns left; unused positions -1."""
    del params
    codes = jnp.asarray(word_codes(self.word_list))
    count = jnp.sum(state.guesses >= 0)
    last = jnp.maximum(count - 1, 0)
    c = lambda *ids: jnp.asarray(ids, jnp.int32)
    row = jnp.concatenate([
        codes[jnp.maximum(state.guesses[last], 0)], c(_piece(" -> ")),
        _FIRST_MARK + state.marks[last], c(_piece("\n"))])          # [2L + 2]
    shows_row = (state.wasted == 0) & (count > 0)
    # The notes are consecutive pieces, in the order of ``wasted``.
    head = jnp.where(state.wasted > 0, _piece(NOTES[0]) + state.wasted - 1,
                     jnp.where(count > 0, _FIRST_LABEL + last,
                               _piece("No guesses yet.\n")))
    return jnp.concatenate([
        head[None], jnp.where(shows_row, row, -1),
        c(_piece("Turns left: "), 0, _piece("\n")).at[1].set(
            self._first_number + self.max_turns - state.steps),
    ]).astype(jnp.int32)

  def render_text(self, state: WordleState, params: WordleParams) -> str:
    """Host-side rendering from the state arrays."""
    del params
    s = jax.device_get(state)
    rows = [int(g) for g in s.guesses if int(g) >= 0]
    wasted = int(s.wasted)
    if wasted:
      head = NOTES[wasted - 1]
    elif rows:
      r = len(rows) - 1
      marks = "".join(MARKS[int(m)] for m in s.marks[r])
      head = f"Guess {r + 1}: {self.words[rows[r]]} -> {marks}\n"
    else:
      head = "No guesses yet.\n"
    return head + f"Turns left: {self.max_turns - int(s.steps)}\n"

  def action_mask(self, state: WordleState, params: WordleParams) -> jax.Array:
    """bool[N]: the words not guessed yet."""
    del params
    n = len(self.words)
    return ~jnp.zeros((n,), jnp.bool_).at[
        jnp.where(state.guesses >= 0, state.guesses, n)].set(True, mode="drop")

  def state_key(self, state: WordleState) -> jax.Array:
    """uint32 hash of what the attempt has shown (not the hidden word).

    The board, every guess with its marks in order, the turns taken and the
    latest turn's note: the observation shows only the latest guess, the
    transcript holds the others, so two turns are the same anchor state when
    their boards are, not merely their latest lines.
    """
    return hash_arrays(state.guesses, state.marks, state.steps, state.wasted)
