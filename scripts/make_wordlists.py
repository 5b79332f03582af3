"""Writes the word lists of Hangman and Wordle: envs_jax/data/words{3,5}.txt.

Run once, from the repository root, after ``pip install wordfreq english-words``:

    python scripts/make_wordlists.py

The games read the files this writes (``envs_jax.words.load_words``); nothing
is downloaded at run time. Each file holds one lowercase a-z word per line,
most frequent first, after ``#`` header lines naming the sources, the filter
and this command.

Sources and filter:

* Frequency: ``wordfreq.top_n_list("en", 100000)``, wordfreq's ranking of the
  100,000 most frequent English tokens (its "best" word list, drawn from
  subtitles, Wikipedia, books, news, web text and social media). wordfreq
  lowercases its tokens, so on its own it cannot tell "cat" from "Tom", "usa"
  or "lol".
* Dictionary: a word must be a lowercase entry of Webster's Second
  International (``english_words``' "web2" list, which keeps the dictionary's
  case: proper names are capitalized there, so "paris" and "john" fail) and a
  headword of the GCIDE dictionary (``english_words``' "gcide" list, compared
  lowercased). This drops abbreviations ("etc", "usa", "dvd"), internet slang
  ("lol", "idk"), names and places wordfreq counts often, and, as web2 has no
  inflected forms, most plurals and past tenses ("years", "moved"): the kind
  of answer list Wordle itself uses.
* A hand-written blocklist (``BLOCKLIST``) for what the dictionaries let
  through: given names and place names that also have a rare dictionary sense
  ("tom", "peter", "china"), word fragments and foreign words ("non", "ist",
  "der"), and profanity, slurs and sexual terms, which have no place in a
  training game.

Sizes: the lists are cut at a fixed length, so each game's candidate table
(one action per word) has a known size.

* ``WORDS3_SIZE`` = 350 three-letter words. Past about that many (wordfreq's
  Zipf frequency near 3.5, once per three million tokens), what remains after
  the filter is mostly obscure or archaic ("orb", "tau", "ort"). Hangman's
  candidates are then 26 letters + 350 words. GEM's Hangman-easy draws its
  3-letter words from NLTK's Basic English list, far fewer; a larger list
  makes the hidden word harder to guess from priors alone, without making the
  words rare.
* ``WORDS5_SIZE`` = 1500 five-letter words, all of Zipf frequency above about
  3.15 (once per 700,000 tokens): about two thirds of the size of the
  original Wordle's answer list (2,315 common words), and all of them words
  an LLM knows. Wordle's candidates (the allowed guesses) are this list.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import sys

WORDS3_SIZE = 350
WORDS5_SIZE = 1500
TOP_N = 100_000      # wordfreq tokens scanned, most frequent first

DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "envs_jax" / "data"
COMMAND = "python scripts/make_wordlists.py"

# Words that pass both dictionaries but are, in the frequency list, mostly
# something else (or are unfit for a game). Grouped by reason.
BLOCKLIST = frozenset("""
  abu ala alt ana ann ava ave bae bam bel bey bis bom bon bot cal cam cha col
  cor cox dan dee dev dis dod dom dow dun gen gif gon goa han hud ing iso ist
  joe kai kan kat ken lam lan las lea lee lew lim lin lux mac mag mal mao mil
  min mir mon nam nat neo non pac pam pax pic poe raj rep rex sai sal sam sao
  sec sen sig sis soc sol sup sur tai tho til tom tor tri vis wah wen yea yer
  obi roc lac ben amy ted hah
  china japan peter henry harry lewis jimmy dutch roger maria billy larry barry
  jerry laura terry bobby perry swiss tommy welsh costa ralph colin betty homer
  jenny burke molly brett yahoo donna silva pedro brock brent monte stein hogan
  paddy willy benny weber chevy morse ryder cisco levin paolo wigan cheng dixie
  tammy ethel gemma norma rowan garth rhine fitch kodak missy slade serge chico
  darby conte firth hurst tonga bafta savoy amman faust marge merle banco sahib
  scala hough ariel inter crore playa carte masse pasha petit mater natal
  laird patty buffy cajun sally
  ass cum fag tit sex
  bitch pussy penis whore sperm horny dildo semen kinky boner titty negro queer
  prick butch pubic fecal feces booty booby spank thong gypsy jihad satan moron
""".split())


def _version(package: str) -> str:
  return importlib.metadata.version(package)


def common_words(length: int, size: int) -> list[str]:
  """The ``size`` most frequent words of ``length`` letters that pass the filter.

  Raises:
    SystemExit: fewer than ``size`` words pass (a changed source package).
  """
  from english_words import get_english_words_set
  from wordfreq import top_n_list

  web2 = get_english_words_set(["web2"], lower=False, alpha=True)
  gcide = get_english_words_set(["gcide"], lower=True, alpha=True)
  out = []
  for word in top_n_list("en", TOP_N):
    if (len(word) == length and word.isascii() and word.isalpha()
        and word.islower() and word in web2 and word in gcide
        and word not in BLOCKLIST):
      out.append(word)
      if len(out) == size:
        return out
  raise SystemExit(f"only {len(out)} {length}-letter words pass the filter, "
                   f"{size} wanted")


def header(length: int, size: int, game: str) -> list[str]:
  """The ``#`` lines at the top of a word file."""
  return [
      f"# {size} common {length}-letter English words for {game}, most frequent first.",
      f"# Source: wordfreq {_version('wordfreq')}, top_n_list('en', {TOP_N}) order.",
      f"# Filter: only a-z; a lowercase entry of web2 and a headword of gcide "
      f"(english-words {_version('english-words')}); not in the blocklist of "
      f"scripts/make_wordlists.py.",
      f"# Made by: {COMMAND}",
  ]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, default=DATA_DIR,
                      help="folder to write words3.txt and words5.txt into")
  args = parser.parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  for length, size, game in ((3, WORDS3_SIZE, "Hangman"), (5, WORDS5_SIZE, "Wordle")):
    words = common_words(length, size)
    path = args.out / f"words{length}.txt"
    path.write_text("\n".join(header(length, size, game) + words) + "\n",
                    encoding="utf-8")
    print(f"wrote {len(words)} words to {path}", file=sys.stderr)


if __name__ == "__main__":
  main()
