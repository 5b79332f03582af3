"""Mastermind: crack a hidden code of distinct digits from peg feedback.

ORBIT's held-out game (see REFERENCES.md, "ORBIT's game suite"), GEM's
``game:Mastermind-v0-random`` with ORBIT's settings: a code of
``code_length`` (3) distinct digits from 1 to ``num_digits`` (6), and
``max_turns`` (3) guesses per attempt. A *task* is the hidden code, drawn
uniformly from the 120 ordered triples of distinct digits in ``reset``; every
attempt restarted from the saved initial state hides the same code, so what an
agent learns from one attempt's feedback carries over to the next.

Each turn the agent guesses a code; the guess is marked with black pegs (a
right digit in the right place) and white pegs (a right digit in the wrong
place), as in GEM (its two-pass count, which with distinct digits is: blacks
= equal positions, whites = shared digits - blacks). Three blacks win
(reward ``reward_win``, the attempt ends); a third guess without them ends
the attempt lost and ``truncated`` (GEM reports its turn limit as a
truncation too). ORBIT scores an episode 1 on success and 0 otherwise, so
GEM's partial rewards for new black pegs are left out.

Candidates: every code of distinct digits, written without spaces (``123``):
all of equal length, so the table is prefix-free; 120 of them for ORBIT's
setting. Guesses with a repeated digit, which GEM accepts but which can
never be the code, are not offered. A guess made before in the same attempt
is what GEM calls invalid: it still uses up the turn; here it is flagged
``invalid`` and its (already known) pegs are shown again, where GEM writes
that the guess was made before. The action mask rules such repeats out.
Action indices out of range are clipped to a code and flagged ``invalid``.

The observation is GEM's feedback sentence for the latest guess only (the
guess written like the actions), or ``No guesses yet.`` before the first,
then the turns left, or how the attempt ended, e.g. after two guesses::

    At turn 2, you guessed 132. This guess receives 0 black peg(s) and 3 white peg(s).
    Turns left: 1

GEM's observation is that same latest sentence (its instructions say the
history of the guesses is appended to the agent's context): every earlier
guess and its pegs are already in the agent's transcript, in a continuous
trial those of the earlier attempts too, and the codec sizes every turn's
observation slot by the widest possible rendering, so repeating the history
would multiply the context by the number of guesses. A won attempt ends with
its winning guess's line and ``Congratulations! You guessed the correct code
in 2 turn(s).``, a lost one with the last guess's line and ``You have
reached the maximum number of turns (3).``; GEM's final observation is that
sentence alone (it drops the last guess's pegs and, on a win, spells out the
code), here the last pegs are kept so that a continuous trial's next episode
still sees them, and the code itself is never spelled out, so a lost attempt
does not give it away to the next one.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays

MAX_CODES = 2000     # a bound on the decoding table (and the symbol table)

# The three ways the status line starts and ends, by status (0 in play,
# 1 won, 2 out of turns); the number between them is the turns left, the
# turns used and max_turns.
_STATUS_LEADS = ("Turns left: ", "Congratulations! You guessed the correct code in ",
                 "You have reached the maximum number of turns (")
_STATUS_TAILS = ("\n", " turn(s).\n", ").\n")
_FEEDBACK = ("At turn ", ", you guessed ", ". This guess receives ",
            " black peg(s) and ", " white peg(s).\n", "No guesses yet.\n")


def code_table(code_length: int, num_digits: int) -> np.ndarray:
  """int32[C, code_length]: every code of distinct digits 1..num_digits, in
  lexicographic order (the action order)."""
  codes = list(itertools.permutations(range(1, num_digits + 1), code_length))
  return np.asarray(codes, np.int32).reshape(len(codes), code_length)


def pegs(code: jax.Array, guess: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(black, white) int32 pegs of ``guess`` against ``code`` (int32[..., K]),
  both of distinct digits."""
  black = jnp.sum(code == guess, axis=-1)
  shared = jnp.sum(code[..., :, None] == guess[..., None, :], axis=(-2, -1))
  return black.astype(jnp.int32), (shared - black).astype(jnp.int32)


@struct.dataclass
class MastermindParams:
  """Attributes: reward_win, float32 reward of the guess that cracks the code."""

  reward_win: jax.Array


@struct.dataclass
class MastermindState:
  """One attempt at one code.

  Attributes:
    code: int32[code_length], the hidden digits (the task).
    guesses: int32[max_turns], the guesses' action indices, in order (-1
      after the last).
    blacks: int32[max_turns], their black pegs (0 after the last).
    whites: int32[max_turns], their white pegs (0 after the last).
    turns: int32 guesses made in this attempt.
    won: bool, the code was guessed.
  """

  code: jax.Array
  guesses: jax.Array
  blacks: jax.Array
  whites: jax.Array
  turns: jax.Array
  won: jax.Array

  @property
  def done(self) -> jax.Array:
    return self.won | (self.turns >= self.guesses.shape[-1])

  @property
  def truncated(self) -> jax.Array:
    return self.done & ~self.won


@dataclasses.dataclass(frozen=True)
class Mastermind(Environment):
  """A hidden code of distinct digits; ``max_turns`` guesses with peg feedback.

  Attributes:
    name: registry name.
    max_turns: guesses per attempt (ORBIT: 3).
    code_length: digits in the code (ORBIT: 3).
    num_digits: the digits are 1..num_digits (ORBIT: 6).
  """

  name: str = "mastermind"
  max_turns: int = 3
  code_length: int = 3
  num_digits: int = 6

  def __post_init__(self):
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
    if not 1 <= self.code_length <= self.num_digits <= 9:
      raise ValueError("need 1 <= code_length <= num_digits <= 9, got "
                       f"code_length={self.code_length}, num_digits={self.num_digits}")
    if self.num_codes > MAX_CODES:
      raise ValueError(f"{self.num_codes} codes is more than the {MAX_CODES} "
                       "candidates this game allows")

  @property
  def num_codes(self) -> int:
    return math.perm(self.num_digits, self.code_length)

  @property
  def codes(self) -> np.ndarray:
    """int32[C, code_length], the codes in action order."""
    return code_table(self.code_length, self.num_digits)

  # ---- static description ------------------------------------------------
  # Symbols: the numbers 0..largest first (a number's id is its value), then
  # the codes (in action order), the feedback pieces and the status pieces.
  @property
  def _largest_number(self) -> int:
    return max(self.max_turns, self.code_length)

  @property
  def _code_id(self) -> int:
    return self._largest_number + 1

  def _piece_id(self, piece: str) -> int:
    return self._code_id + self.num_codes + _FEEDBACK.index(piece)

  @property
  def _lead_id(self) -> int:
    return self._code_id + self.num_codes + len(_FEEDBACK)

  @property
  def _tail_id(self) -> int:
    return self._lead_id + len(_STATUS_LEADS)

  @property
  def symbols(self) -> tuple[str, ...]:
    numbers = tuple(str(i) for i in range(self._largest_number + 1))
    return numbers + self.action_strings + _FEEDBACK + _STATUS_LEADS + _STATUS_TAILS

  @property
  def action_strings(self) -> tuple[str, ...]:
    return tuple("".join(str(d) for d in code) for code in self.codes)

  @property
  def max_symbols(self) -> int:
    return len(self.symbol_slots)

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """9 positions of the latest guess's line (``No guesses yet.`` and -1
    before the first guess), then the 3 of the status."""
    p = self._piece_id
    codes = tuple(range(self._code_id, self._code_id + self.num_codes))
    pegs_ = tuple(range(self.code_length + 1))
    latest = ((p("At turn "), p("No guesses yet.\n")),
              tuple(range(1, self.max_turns + 1)), (p(", you guessed "),), codes,
              (p(". This guess receives "),), pegs_, (p(" black peg(s) and "),),
              pegs_, (p(" white peg(s).\n"),))
    status = (tuple(range(self._lead_id, self._lead_id + 3)),
              tuple(range(self.max_turns + 1)),
              tuple(range(self._tail_id, self._tail_id + 3)))
    return latest + status

  @property
  def instructions(self) -> str:
    k, n, t = self.code_length, self.num_digits, self.max_turns
    return (
        "You are playing Mastermind.\n"
        f"A secret code of {k} digits is hidden from you. Its digits are "
        f"from 1 to {n} and all different from each other. You have {t} "
        "turns to find it: each turn you guess a code.\n"
        "Every guess is marked with black and white pegs: a black peg for "
        "each digit that is right and in the right place, a white peg for "
        "each digit that is in the code but in another place. After each "
        "guess you are told its pegs and how many turns are left.\n"
        f"You win when a guess receives {k} black pegs. The secret code is "
        "the same in every new game, so what you learned about it in "
        "earlier games still holds. Reward: 1 for finding the code, 0 "
        "otherwise.\n"
        f"Each turn, answer with your guess: {k} different digits from 1 to "
        f"{n}, written together without spaces, e.g. {self.action_strings[0]}.")

  @property
  def default_params(self) -> MastermindParams:
    return MastermindParams(reward_win=jnp.asarray(1.0, jnp.float32))

  # ---- dynamics ------------------------------------------------------------
  def state_from_code(self, code: jax.Array) -> MastermindState:
    """A fresh attempt at the code int32[code_length] (jittable)."""
    t = self.max_turns
    zeros = jnp.zeros((t,), jnp.int32)
    return MastermindState(code=jnp.asarray(code, jnp.int32),
                           guesses=jnp.full((t,), -1, jnp.int32), blacks=zeros,
                           whites=zeros, turns=jnp.zeros((), jnp.int32),
                           won=jnp.zeros((), jnp.bool_))

  def reset(self, key: jax.Array, params: MastermindParams):
    """Draws the hidden code uniformly among the ``num_codes`` codes."""
    del params
    index = jax.random.randint(key, (), 0, self.num_codes, jnp.int32)
    return self.state_from_code(jnp.asarray(self.codes)[index]), TimeStep.first()

  def step(self, key: jax.Array, state: MastermindState, action: jax.Array,
           params: MastermindParams):
    """Guesses the code ``action`` (an index into ``action_strings``).

    Deterministic: ``key`` is ignored. Stepping a finished attempt returns it
    unchanged, reward 0.
    """
    del key
    live = ~state.done
    action = jnp.asarray(action, jnp.int32)
    index = jnp.clip(action, 0, self.num_codes - 1)
    black, white = pegs(state.code, jnp.asarray(self.codes)[index])
    repeat = jnp.any(state.guesses == index)
    invalid = live & (repeat | (index != action))
    now = live & (jnp.arange(self.max_turns) == state.turns)
    won = live & (black == self.code_length)
    new = state.replace(
        guesses=jnp.where(now, index, state.guesses),
        blacks=jnp.where(now, black, state.blacks),
        whites=jnp.where(now, white, state.whites),
        turns=state.turns + live.astype(jnp.int32), won=state.won | won)
    ts = TimeStep(reward=jnp.where(won, params.reward_win, 0.0).astype(jnp.float32),
                  done=new.done, won=new.won, truncated=new.truncated,
                  invalid=invalid, steps=new.turns)
    return new, ts

  # ---- views -----------------------------------------------------------------
  def render_symbols(self, state: MastermindState, params: MastermindParams) -> jax.Array:
    """int32[12]: the latest guess's line (or ``No guesses yet.``), then the
    status."""
    del params
    p = self._piece_id
    c = lambda i: jnp.asarray(i, jnp.int32)
    t = self.max_turns
    last = jnp.maximum(state.turns - 1, 0)
    line = jnp.stack([
        c(p("At turn ")), state.turns, c(p(", you guessed ")),
        self._code_id + state.guesses[last], c(p(". This guess receives ")),
        state.blacks[last], c(p(" black peg(s) and ")), state.whites[last],
        c(p(" white peg(s).\n"))])
    none = jnp.full((9,), -1, jnp.int32).at[0].set(p("No guesses yet.\n"))
    line = jnp.where(state.turns > 0, line, none)
    status = jnp.where(state.won, 1, jnp.where(state.done, 2, 0))
    number = jnp.select([state.won, state.done], [state.turns, t],
                        t - state.turns)
    tail = jnp.stack([self._lead_id + status, number, self._tail_id + status])
    return jnp.concatenate([line, tail]).astype(jnp.int32)

  def render_text(self, state: MastermindState, params: MastermindParams) -> str:
    """Host-side rendering from the state arrays."""
    del params
    s = jax.device_get(state)
    turns = int(s.turns)
    if turns:
      guess = int(s.guesses[turns - 1])
      digits = "".join(str(d) for d in self.codes[guess])
      text = (f"At turn {turns}, you guessed {digits}. This guess receives "
              f"{int(s.blacks[turns - 1])} black peg(s) and "
              f"{int(s.whites[turns - 1])} white peg(s).\n")
    else:
      text = "No guesses yet.\n"
    if bool(s.won):
      return text + f"Congratulations! You guessed the correct code in {turns} turn(s).\n"
    if turns >= self.max_turns:
      return text + f"You have reached the maximum number of turns ({self.max_turns}).\n"
    return text + f"Turns left: {self.max_turns - turns}\n"

  def action_mask(self, state: MastermindState, params: MastermindParams) -> jax.Array:
    """bool[num_codes]: the codes not guessed yet in this attempt."""
    del params
    codes = jnp.arange(self.num_codes)
    return ~jnp.any(state.guesses[:, None] == codes[None, :], axis=0)

  def state_key(self, state: MastermindState) -> jax.Array:
    """uint32 hash of the attempt's guesses and their pegs (not the hidden
    code): what the agent has seen of this attempt, the latest guess in its
    observation and the earlier ones in its transcript."""
    return hash_arrays(state.guesses, state.blacks, state.whites, state.turns)
