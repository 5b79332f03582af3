"""A plain-Python Wordle with the rules of ``envs_jax.games.wordle``.

The hidden word is an input (``reset(answer)``): the JAX game draws it from
its reset key, which plain Python cannot reproduce, so the differential test
gives the reference the word the JAX game drew. Strings, ints and lists only.
"""

from __future__ import annotations

from typing import Sequence


def marks(answer: str, guess: str) -> list[str]:
  """The G/Y/X mark of each letter of ``guess`` against ``answer``.

  The two passes of Wordle: exact matches first (each uses up its letter of
  the answer), then the other letters left to right, Y while an unused copy
  is left in the answer (using it up), X otherwise.
  """
  out = ["X"] * len(guess)
  unused = list(answer)
  for i, ch in enumerate(guess):
    if ch == answer[i]:
      out[i] = "G"
      unused[i] = None
  for i, ch in enumerate(guess):
    if out[i] != "G" and ch in unused:
      out[i] = "Y"
      unused[unused.index(ch)] = None
  return out


class PyWordle:
  """One attempt at a time; action i guesses ``words[i]``."""

  def __init__(self, words: Sequence[str], max_turns: int = 10,
               reward_win: float = 1.0):
    self.words = list(words)
    self.max_turns = max_turns
    self.reward_win = reward_win
    self.answer = ""
    self.rows: list[tuple[str, list[str]]] = []
    self.steps = 0
    self.wasted = ""          # the latest turn's note ("" when it was not wasted)
    self.done = self.won = self.truncated = False

  def reset(self, answer: str) -> str:
    """Starts an attempt at ``answer``; returns the observation text."""
    self.answer = answer
    self.rows = []
    self.steps = 0
    self.wasted = ""
    self.done = self.won = self.truncated = False
    return self.render_text()

  def step(self, action: int) -> tuple[float, bool, bool, bool, bool]:
    """Scores one guess: (reward, done, won, truncated, invalid).

    A finished attempt is left unchanged: (0.0, True, won, truncated, False).
    """
    if self.done:
      return 0.0, True, self.won, self.truncated, False
    self.steps += 1
    invalid = True
    self.wasted = "Not a valid guess.\n"
    if 0 <= action < len(self.words):
      guess = self.words[action]
      self.wasted = "Already guessed.\n"
      if all(guess != g for g, _ in self.rows):
        self.rows.append((guess, marks(self.answer, guess)))
        invalid = False
        self.wasted = ""
        self.won = guess == self.answer
    if not self.won and self.steps >= self.max_turns:
      self.truncated = True
    self.done = self.won or self.truncated
    reward = self.reward_win if self.won else 0.0
    return reward, self.done, self.won, self.truncated, invalid

  def legal(self) -> list[bool]:
    """The action mask: words not guessed yet."""
    guessed = {g for g, _ in self.rows}
    return [w not in guessed for w in self.words]

  def render_text(self) -> str:
    """The latest guess and its marks (or the wasted turn's note), turns left."""
    if self.wasted:
      head = self.wasted
    elif self.rows:
      guess, m = self.rows[-1]
      head = f"Guess {len(self.rows)}: {guess} -> {''.join(m)}\n"
    else:
      head = "No guesses yet.\n"
    return head + f"Turns left: {self.max_turns - self.steps}\n"
