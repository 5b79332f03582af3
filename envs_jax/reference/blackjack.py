"""A plain-Python Blackjack with the rules of ``envs_jax.games.blackjack``.

The deck is an input (``reset(deck)``, 52 card ids): the JAX game draws it
from its reset key, which plain Python cannot reproduce, so the differential
test feeds the reference the deck the JAX game drew. Ints and lists only.
"""

from __future__ import annotations

from typing import Sequence

NUM_SLOTS = 48
STAND = NUM_SLOTS
STATUS = {"play": "in play", "won": "you stood above the dealer: you win",
          "stood": "you stood without beating the dealer: you lose",
          "bust": "bust (over 21): you lose", "turns": "out of turns: you lose"}


def value_of(card: int) -> int:
  """Value of card id ``card``: ranks 0..12 are A, 2..10, J, Q, K."""
  rank = card % 13
  if rank == 0:
    return 1
  return 10 if rank >= 9 else rank + 1


def best_total(values: Sequence[int]) -> int:
  """The hand's total with one ace raised to 11 when that stays <= 21."""
  total = 0
  aces = 0
  for v in values:
    total += v
    aces += v == 1
  if aces and total + 10 <= 21:
    return total + 10
  return total


def card_name(value: int) -> str:
  return "A" if value == 1 else str(value)


class PyBlackjack:
  """One attempt at a time on a given deck.

  Actions are slot indices 0..47 (hit) and 48 (stand).
  """

  def __init__(self, max_turns: int = 4, reward_win: float = 1.0):
    self.max_turns = max_turns
    self.reward_win = reward_win
    self.deck: list[int] = []
    self.reset(list(range(52)))

  def reset(self, deck: Sequence[int]) -> str:
    """Starts an attempt on ``deck`` (52 card ids); returns the observation."""
    self.deck = [int(c) for c in deck]
    values = [value_of(c) for c in self.deck]
    self.dealer = values[:2]
    self.hand = values[2:4]
    self.slots = values[4:]
    self.drawn: list[int] = []       # slot indices, in draw order
    self.turns = 0
    self.status = "play"
    return self.render_text()

  @property
  def done(self) -> bool:
    return self.status != "play"

  def legal(self) -> list[bool]:
    return [i not in self.drawn for i in range(NUM_SLOTS)] + [True]

  def step(self, action: int) -> tuple[float, bool, bool, bool, bool]:
    """Plays ``action``: (reward, done, won, truncated, invalid).

    A finished attempt is left unchanged: reward 0, invalid False.
    """
    if self.done:
      return 0.0, True, self.status == "won", self.status == "turns", False
    action = int(action)
    self.turns += 1
    if 0 <= action < NUM_SLOTS and action not in self.drawn:
      self.drawn.append(action)
      self.hand.append(self.slots[action])
      invalid = False
      if best_total(self.hand) > 21:
        self.status = "bust"
      elif self.turns >= self.max_turns:
        self.status = "turns"
    else:   # stand, or a hit that is not possible (played as a stand)
      invalid = action != STAND
      mine, theirs = best_total(self.hand), best_total(self.dealer)
      self.status = "won" if theirs < mine <= 21 else "stood"
    won = self.status == "won"
    return (self.reward_win if won else 0.0, self.done, won,
            self.status == "turns", invalid)

  def render_text(self) -> str:
    if self.done:
      dealer = f"Dealer ({best_total(self.dealer)}): {card_name(self.dealer[0])}, " \
               f"{card_name(self.dealer[1])}"
    else:
      dealer = f"Dealer (?): {card_name(self.dealer[0])}, ?"
    cards = ", ".join(card_name(v) for v in self.hand)
    drawn = " ".join(f"{i:02d}:{card_name(self.slots[i])}" for i in self.drawn)
    return "\n".join([
        f"Turns taken: {self.turns} of {self.max_turns}",
        f"Status: {STATUS[self.status]}",
        dealer,
        f"Your hand ({best_total(self.hand)}): {cards}",
        f"Drawn: {drawn or 'none'}",
    ]) + "\n"
