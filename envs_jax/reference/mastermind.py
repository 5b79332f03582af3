"""A plain-Python Mastermind with the rules of ``envs_jax.games.mastermind``.

The hidden code is an input (``reset(code)``): the JAX game draws it from its
reset key, which plain Python cannot reproduce. Ints and lists only.
"""

from __future__ import annotations

import itertools
from typing import Sequence


def all_codes(code_length: int, num_digits: int) -> list[list[int]]:
  """Every code of distinct digits 1..num_digits, lexicographic (action order)."""
  return [list(c) for c in itertools.permutations(range(1, num_digits + 1),
                                                  code_length)]


def score(code: Sequence[int], guess: Sequence[int]) -> tuple[int, int]:
  """(black, white) pegs by the two-pass count (right place first, then the
  remaining digits, each code digit matched at most once)."""
  code_left = [c for c, g in zip(code, guess) if c != g]
  guess_left = [g for c, g in zip(code, guess) if c != g]
  black = len(code) - len(code_left)
  white = 0
  for g in guess_left:
    if g in code_left:
      code_left.remove(g)
      white += 1
  return black, white


class PyMastermind:
  """One attempt at a time; actions index ``all_codes``."""

  def __init__(self, max_turns: int = 3, code_length: int = 3, num_digits: int = 6,
               reward_win: float = 1.0):
    self.max_turns = max_turns
    self.code_length = code_length
    self.codes = all_codes(code_length, num_digits)
    self.reward_win = reward_win
    self.reset(self.codes[0])

  def reset(self, code: Sequence[int]) -> str:
    self.code = [int(d) for d in code]
    self.history: list[tuple[int, int, int]] = []   # (action, black, white)
    self.won = False
    return self.render_text()

  @property
  def turns(self) -> int:
    return len(self.history)

  @property
  def done(self) -> bool:
    return self.won or self.turns >= self.max_turns

  def legal(self) -> list[bool]:
    guessed = {a for a, _, _ in self.history}
    return [a not in guessed for a in range(len(self.codes))]

  def step(self, action: int) -> tuple[float, bool, bool, bool, bool]:
    """Guesses code ``action``: (reward, done, won, truncated, invalid).

    A finished attempt is left unchanged: reward 0, invalid False.
    """
    if self.done:
      return 0.0, True, self.won, not self.won, False
    index = min(max(int(action), 0), len(self.codes) - 1)
    invalid = index != int(action) or not self.legal()[index]
    black, white = score(self.code, self.codes[index])
    self.history.append((index, black, white))
    self.won = black == self.code_length
    return (self.reward_win if self.won else 0.0, self.done, self.won,
            self.done and not self.won, invalid)

  def render_text(self) -> str:
    if self.history:
      index, black, white = self.history[-1]
      guess = "".join(map(str, self.codes[index]))
      out = (f"At turn {self.turns}, you guessed {guess}. This guess receives "
             f"{black} black peg(s) and {white} white peg(s).\n")
    else:
      out = "No guesses yet.\n"
    if self.won:
      out += f"Congratulations! You guessed the correct code in {self.turns} turn(s).\n"
    elif self.done:
      out += f"You have reached the maximum number of turns ({self.max_turns}).\n"
    else:
      out += f"Turns left: {self.max_turns - self.turns}\n"
    return out
