"""The word lists shipped with the package (Hangman, Wordle).

The files live in ``envs_jax/data/`` (``words3.txt``: 3-letter words,
``words5.txt``: 5-letter words), one lowercase a-z word per line, most frequent
first, after ``#`` header lines that name their source. They are made once by
``scripts/make_wordlists.py`` from a word-frequency package; nothing is
downloaded at run time.
"""

from __future__ import annotations

import functools
import importlib.resources

import numpy as np

REGENERATE = "python scripts/make_wordlists.py"
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def parse_words(text: str, source: str) -> tuple[str, ...]:
  """The words of a word file's text, checked.

  Args:
    text: the file's contents: ``#`` comment lines and blank lines are skipped,
      every other line is one word.
    source: the file's name, for error messages.

  Returns:
    The words, in file order.

  Raises:
    ValueError: a line that is not lowercase a-z, a repeated word, words of
      different lengths, or no word at all. The message names ``source`` and
      the script that rewrites it.
  """
  def bad(why: str) -> ValueError:
    return ValueError(f"word list {source} is malformed: {why}; regenerate it "
                      f"with `{REGENERATE}`")

  words: list[str] = []
  seen: set[str] = set()
  for number, line in enumerate(text.splitlines(), start=1):
    word = line.strip()
    if not word or word.startswith("#"):
      continue
    if not (word.isascii() and word.isalpha() and word.islower()):
      raise bad(f"line {number} is {line!r}, not a lowercase a-z word")
    if word in seen:
      raise bad(f"line {number} repeats {word!r}")
    if words and len(word) != len(words[0]):
      raise bad(f"line {number} has the {len(word)}-letter word {word!r} among "
                f"{len(words[0])}-letter words")
    seen.add(word)
    words.append(word)
  if not words:
    raise bad("it holds no word")
  return tuple(words)


@functools.lru_cache(maxsize=None)
def load_words(name: str) -> tuple[str, ...]:
  """The words of the shipped list ``name`` (``"words3"``, ``"words5"``).

  Reads ``envs_jax/data/<name>.txt`` once per process (cached).

  Raises:
    FileNotFoundError: no such file; the message names it and the script that
      writes it.
    ValueError: the file is malformed (see ``parse_words``).
  """
  resource = importlib.resources.files("envs_jax").joinpath("data").joinpath(f"{name}.txt")
  try:
    text = resource.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise FileNotFoundError(
        f"word list envs_jax/data/{name}.txt is missing; make it with "
        f"`{REGENERATE}`") from None
  return parse_words(text, f"envs_jax/data/{name}.txt")


@functools.lru_cache(maxsize=None)
def word_codes(name: str) -> np.ndarray:
  """int32[N, L] (read-only): the letters of every word of list ``name``,
  as codes 0-25 (``ALPHABET.index``)."""
  codes = np.array([[ALPHABET.index(c) for c in w] for w in load_words(name)],
                   np.int32)
  codes.setflags(write=False)
  return codes


class WordListMixin:
  """The word-list part of a word game (Hangman, Wordle): a frozen dataclass
  with ``max_turns`` and ``word_list`` fields mixes this in."""

  max_turns: int
  word_list: str

  def __post_init__(self):
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
    load_words(self.word_list)   # fail early on a missing or malformed list

  @property
  def words(self) -> tuple[str, ...]:
    return load_words(self.word_list)

  @property
  def word_length(self) -> int:
    return len(self.words[0])
