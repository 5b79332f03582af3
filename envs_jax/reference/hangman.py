"""A plain-Python Hangman with the rules of ``envs_jax.games.hangman``.

The hidden word is an input (``reset(word)``): the JAX game draws it from its
reset key, which plain Python cannot reproduce, so the differential test
gives the reference the word the JAX game drew. Strings, ints and lists only.
"""

from __future__ import annotations

from typing import Sequence

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


class PyHangman:
  """One attempt at a time.

  Actions are ints: 0-25 guess the letter ``ALPHABET[a]``, 26 + i guesses the
  word ``words[i]`` (the order of ``Hangman.action_strings``).
  """

  def __init__(self, words: Sequence[str], max_turns: int = 10,
               reward_win: float = 1.0):
    self.words = list(words)
    self.max_turns = max_turns
    self.reward_win = reward_win
    self.word = ""
    self.guessed: list[str] = []
    self.tried: list[str] = []
    self.steps = 0
    self.note = ""            # what the latest guess did ("" before the first)
    self.done = self.won = self.truncated = False

  def reset(self, word: str) -> str:
    """Starts an attempt at ``word``; returns the observation text."""
    self.word = word
    self.guessed = []
    self.tried = []
    self.steps = 0
    self.note = ""
    self.done = self.won = self.truncated = False
    return self.render_text()

  def step(self, action: int) -> tuple[float, bool, bool, bool, bool]:
    """Applies one guess: (reward, done, won, truncated, invalid).

    A finished attempt is left unchanged: (0.0, True, won, truncated, False).
    """
    if self.done:
      return 0.0, True, self.won, self.truncated, False
    self.steps += 1
    invalid = True
    self.note = "Not a valid guess.\n"
    if 0 <= action < 26:
      letter = ALPHABET[action]
      self.note = "Already guessed.\n"
      if letter not in self.guessed:
        self.guessed.append(letter)
        invalid = False
        self.note = ("In the word.\n" if letter in self.word
                     else "Not in the word.\n")
    elif 26 <= action < 26 + len(self.words):
      guess = self.words[action - 26]
      self.note = "Already guessed.\n"
      if guess == self.word:
        self.won = True
        invalid = False
        self.note = "You guessed the word!\n"
      elif guess not in self.tried:
        self.tried.append(guess)
        invalid = False
        self.note = "Wrong word.\n"
    if not self.won and self.steps >= self.max_turns:
      self.truncated = True
    self.done = self.won or self.truncated
    reward = self.reward_win if self.won else 0.0
    return reward, self.done, self.won, self.truncated, invalid

  def legal(self) -> list[bool]:
    """The action mask: letters and words not guessed yet."""
    return ([c not in self.guessed for c in ALPHABET]
            + [w not in self.tried for w in self.words])

  def render_text(self) -> str:
    """What the latest guess did, the word's letters found so far, turns left."""
    cells = []
    for ch in self.word:
      cells.append(ch if self.won or ch in self.guessed else "_")
    return (f"{self.note}Word: {' '.join(cells)}\n"
            f"Turns left: {self.max_turns - self.steps}\n")
