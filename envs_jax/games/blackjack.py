"""ORBIT's Blackjack: a fixed shuffled deck whose card slots the player picks.

ORBIT's training game (see REFERENCES.md, "ORBIT's game suite"; the rules
below follow ORBIT's own ``envs/blackjack_env_adapter.py``, which does not use
GEM). A *task* is one shuffled 52-card deck, drawn in ``reset``; every attempt
restarted from the saved initial state deals the same deck, so an agent that
remembers earlier attempts can learn where the good cards lie.

The deal: the first two cards of the deck are the dealer's hand, the next two
the player's; the other 48 cards stay face down in *deck slots* 0..47, in
deck order. ORBIT reshuffles (up to 50 times) until the dealer's two cards
total at least 17; here the deck is drawn exactly from that conditional
distribution (a uniform ordered pair among the 924 ordered pairs of the 52
cards that total 17 or more, then a uniform order of the other 50 cards), so
the dealer's total is always 17..21 (ORBIT keeps a low hand after 50 failed
reshuffles, a chance of about 3e-10, which this game never does).

Card values: an ace counts 1, or 11 when that does not take the hand over 21
(at most one ace can count 11); 2..10 their face value; J, Q, K 10. Cards are
shown by value only, as in ORBIT: ``A``, ``2``..``10`` (a king shows ``10``).
The state keeps the 52 distinct cards (ids 0..51, rank ``id % 13``).

Each turn the player plays ``hit <slot>``, drawing the face-down card in that
slot into the hand (a slot can be drawn once per attempt), or ``stand``. The
dealer never draws. The attempt ends:

* on ``stand``: won (reward ``reward_win``) when the player's total, at most
  21, is above the dealer's; a tie or a lower total loses;
* on a hit that takes the total over 21 (bust): lost;
* after ``max_turns`` (4, ORBIT's turns per episode) hits without a bust or a
  stand: lost, and ``truncated`` (the game itself had not ended it).

A natural 21 is not paid on its own: the player still has to stand. ORBIT
turns a hit of a slot already drawn into a stand; so does this game, and it
reports such a hit (and any action index out of range) as ``invalid``. The
action mask rules those hits out.

Candidates: ``hit 00`` .. ``hit 47`` and ``stand`` (49). The slot index is
zero-padded to two digits so that the table is prefix-free as strings
(``hit 1`` would be a prefix of ``hit 10``); the observation writes the slots
the same way, so the action names exactly what the agent reads. ORBIT writes
``hit 9`` unpadded: a formatting choice only.

The observation: the turns taken, the attempt's status, the dealer's hand,
the player's hand with its total and the slots drawn in this attempt with
their cards, in draw order, e.g. after one hit::

    Turns taken: 1 of 4
    Status: in play
    Dealer (?): 10, ?
    Your hand (13): 2, 4, 7
    Drawn: 02:7

(``Drawn: none`` before the first hit). The dealer's second card and total
show ``?`` until the attempt ends, when they are revealed (as ORBIT reveals
them). ORBIT's observation re-renders the whole deck every turn (``0:? 1:?
... 47:?`` with the drawn slots face up, then the list of available slots)
and starts with the last action (``You chose to hit 2 and drew 7.``). Here
the deck view is left out: every slot not listed under ``Drawn`` is face
down and still available (the instructions say the slots are 00..47), so the
drawn list carries the same information in a tenth of the width; the last
action is the agent's own answer, already in its transcript, as are the
draws of every earlier episode of a continuous trial. The codec sizes every
turn's observation slot by the widest possible rendering, so the 48-slot
deck view (335 of the 488 bytes of the widest rendering) made most of every
turn's width.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays

NUM_CARDS = 52
NUM_SLOTS = NUM_CARDS - 4          # the face-down cards after the deal
STAND = NUM_SLOTS                  # the action index of "stand"
DEALER_MIN = 17                    # the dealer's two cards total at least this

# Outcomes (``BlackjackState.outcome``), in the order of ``STATUS_TEXTS``.
IN_PLAY, WON, STOOD_LOST, BUST, OUT_OF_TURNS = range(5)
STATUS_TEXTS = ("in play", "you stood above the dealer: you win",
                "you stood without beating the dealer: you lose",
                "bust (over 21): you lose", "out of turns: you lose")


def card_value(card: jax.Array) -> jax.Array:
  """Blackjack values of card ids (0..51, rank ``id % 13``): ace 1, J/Q/K 10."""
  return jnp.minimum(jnp.asarray(card, jnp.int32) % 13 + 1, 10)


def card_text(value: int) -> str:
  """How a card of ``value`` (1..10) is written."""
  return "A" if value == 1 else str(value)


def hand_total(values: jax.Array) -> jax.Array:
  """Best total of card values int32[..., K] (0: no card), aces soft.

  One ace counts 11 (the sum plus 10) when that keeps the total at most 21.
  """
  total = jnp.sum(values, axis=-1)
  soft = jnp.any(values == 1, axis=-1) & (total + 10 <= 21)
  return jnp.where(soft, total + 10, total).astype(jnp.int32)


def _dealer_pairs() -> np.ndarray:
  """int32[N, 2]: the ordered pairs of distinct cards totalling >= 17."""
  def total(a, b):
    t = a + b
    return t + 10 if 1 in (a, b) and t + 10 <= 21 else t
  values = [min(c % 13 + 1, 10) for c in range(NUM_CARDS)]
  pairs = [(i, j) for i, j in itertools.permutations(range(NUM_CARDS), 2)
           if total(values[i], values[j]) >= DEALER_MIN]
  return np.asarray(pairs, np.int32)


DEALER_PAIRS = _dealer_pairs()     # 924 pairs


@struct.dataclass
class BlackjackParams:
  """Attributes: reward_win, float32 reward of a winning stand."""

  reward_win: jax.Array


@struct.dataclass
class BlackjackState:
  """One attempt on one deck.

  Attributes:
    deck: int32[52] card ids (a permutation of 0..51), the task: [0:2] the
      dealer's hand, [2:4] the player's first two cards, [4:] slots 0..47.
    taken: bool[48], the slots drawn in this attempt.
    hits: int32[max_turns], the slots drawn, in order (-1 after the last).
    turns: int32 actions taken in this attempt.
    last_action: int32, the last action played (-1 before any; a slot, or
      ``STAND``, also for a hit of a drawn slot, which stands). Not rendered:
      the agent's answer is in its transcript, and the drawn list and the
      status show what it did.
    outcome: int32, ``IN_PLAY`` or how the attempt ended.
  """

  deck: jax.Array
  taken: jax.Array
  hits: jax.Array
  turns: jax.Array
  last_action: jax.Array
  outcome: jax.Array

  @property
  def done(self) -> jax.Array:
    return self.outcome != IN_PLAY

  @property
  def won(self) -> jax.Array:
    return self.outcome == WON

  @property
  def truncated(self) -> jax.Array:
    return self.outcome == OUT_OF_TURNS


@dataclasses.dataclass(frozen=True)
class Blackjack(Environment):
  """ORBIT's Blackjack: hit chosen deck slots or stand; the dealer never draws.

  Attributes:
    name: registry name.
    max_turns: actions per attempt (ORBIT: 4); an attempt of that many hits
      without a bust ends lost, truncated.
  """

  name: str = "blackjack"
  max_turns: int = 4

  def __post_init__(self):
    if not 1 <= self.max_turns <= NUM_SLOTS:
      raise ValueError(f"max_turns must be in [1, {NUM_SLOTS}], got {self.max_turns}")

  # ---- static description ------------------------------------------------
  # Symbols: the numbers 0..largest first (a number's id is its value; cards
  # 2..10 use them too), then "A", "?", the slot labels, the statuses and the
  # fixed pieces.
  @property
  def _largest_number(self) -> int:
    # A hand is at most 21 before its last hit, so at most 31 after it.
    return max(31, self.max_turns)

  @property
  def _pieces(self) -> tuple[str, ...]:
    return ("Turns taken: ", f" of {self.max_turns}\n", "Status: ", "\n",
            "Dealer (", "): ", ", ", "Your hand (", "Drawn:", " none")

  @property
  def symbols(self) -> tuple[str, ...]:
    numbers = tuple(str(i) for i in range(self._largest_number + 1))
    labels = tuple(f" {i:02d}:" for i in range(NUM_SLOTS))
    return numbers + ("A", "?") + labels + STATUS_TEXTS + self._pieces

  @property
  def _ace_id(self) -> int:
    return self._largest_number + 1

  @property
  def _hidden_id(self) -> int:
    return self._largest_number + 2

  @property
  def _label_id(self) -> int:
    """Id of the label " 00:"; slot i's label is this + i."""
    return self._largest_number + 3

  @property
  def _status_id(self) -> int:
    return self._label_id + NUM_SLOTS

  def _piece_id(self, piece: str) -> int:
    return self._status_id + len(STATUS_TEXTS) + self._pieces.index(piece)

  @property
  def action_strings(self) -> tuple[str, ...]:
    return tuple(f"hit {i:02d}" for i in range(NUM_SLOTS)) + ("stand",)

  @property
  def max_symbols(self) -> int:
    return len(self.symbol_slots)

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """The positions of ``render_symbols``, one group per line: 3 + 3 + 7 +
    (6 + 2T + 1) + (1 + 2T + 1), T = ``max_turns``.

    The hand's cards after the first two and the drawn list's entries are
    -1 until drawn (the first entry is `` none`` and -1 before any hit);
    every other position always holds a symbol.
    """
    p = self._piece_id
    number = tuple(range(self._largest_number + 1))
    cards = (self._ace_id,) + tuple(range(2, 11))
    hidden = (self._hidden_id,)
    dealer_total = hidden + tuple(range(DEALER_MIN, 22))
    labels = tuple(range(self._label_id, self._label_id + NUM_SLOTS))
    statuses = tuple(range(self._status_id, self._status_id + len(STATUS_TEXTS)))
    head = ((p("Turns taken: "),), tuple(range(self.max_turns + 1)),
            (p(f" of {self.max_turns}\n"),),
            (p("Status: "),), statuses, (p("\n"),),
            (p("Dealer ("),), dealer_total, (p("): "),), cards, (p(", "),),
            cards + hidden, (p("\n"),),
            (p("Your hand ("),), number, (p("): "),), cards, (p(", "),), cards)
    hand = ((p(", "),), cards) * self.max_turns + ((p("\n"),),)
    drawn = (((p("Drawn:"),), labels + (p(" none"),), cards)
             + (labels, cards) * (self.max_turns - 1) + ((p("\n"),),))
    return head + hand + drawn

  @property
  def instructions(self) -> str:
    n = self.max_turns
    return (
        "You are playing a simplified Blackjack against a dealer.\n"
        "Card values: 2 to 10 count their face value, J, Q and K count 10 "
        "(they are shown as 10), and an ace (A) counts 11, or 1 when 11 would "
        "take the hand over 21.\n"
        "The dealer holds exactly two cards, one shown and one hidden, whose "
        "total is between 17 and 21; the dealer never draws.\n"
        "You start with two cards. The other 48 cards of the deck lie face "
        "down in slots 00 to 47. Each turn you either hit a slot, drawing the "
        "card that lies there into your hand, or stand. Each slot can be "
        "drawn once per game; 'Drawn:' lists the slots you drew in this game "
        "and their cards (e.g. 'Drawn: 07:10 21:3').\n"
        "Standing ends the game: you win if your total is higher than the "
        "dealer's (a tie loses). Going over 21 loses at once. You have at "
        f"most {n} actions: after {n} hits without standing you lose.\n"
        "The deck is shuffled once: every new game against this dealer deals "
        "the same cards, and every slot holds the same card as before, so "
        "remember which slots held good cards. Reward: 1 for a win, 0 "
        "otherwise.\n"
        "Each turn, answer with one action: 'hit' and a two-digit slot "
        "number you have not drawn in this game, e.g. hit 07, or stand.")

  @property
  def default_params(self) -> BlackjackParams:
    return BlackjackParams(reward_win=jnp.asarray(1.0, jnp.float32))

  # ---- dynamics ------------------------------------------------------------
  def deal(self, key: jax.Array) -> jax.Array:
    """Draws a deck, int32[52] card ids: a uniform shuffle whose first two
    cards (the dealer's) total at least 17.

    One ``jax.random.bits`` call: word 0 picks the dealer's ordered pair
    (a modulo bias below 924 / 2**32), words 1.. are sort scores of the 52
    cards, with the dealer's two forced to the front. The scores keep 31
    random bits, so a tie between two cards, which would order them by id,
    has a chance below 1e-6 per deck.
    """
    bits = jax.random.bits(key, (1 + NUM_CARDS,), jnp.uint32)
    pairs = jnp.asarray(DEALER_PAIRS)
    pair = pairs[(bits[0] % jnp.uint32(len(DEALER_PAIRS))).astype(jnp.int32)]
    scores = (bits[1:] | jnp.uint32(2)).at[pair[0]].set(0).at[pair[1]].set(1)
    return jnp.argsort(scores, stable=True).astype(jnp.int32)

  def state_from_deck(self, deck: jax.Array) -> BlackjackState:
    """A fresh attempt on the given deck (int32[52] card ids; jittable)."""
    none = jnp.full((), -1, jnp.int32)
    return BlackjackState(
        deck=jnp.asarray(deck, jnp.int32), taken=jnp.zeros((NUM_SLOTS,), jnp.bool_),
        hits=jnp.full((self.max_turns,), -1, jnp.int32),
        turns=jnp.zeros((), jnp.int32), last_action=none,
        outcome=jnp.full((), IN_PLAY, jnp.int32))

  def reset(self, key: jax.Array, params: BlackjackParams):
    """Draws the deck (the task); nothing played yet."""
    del params
    return self.state_from_deck(self.deal(key)), TimeStep.first()

  def hand_values(self, state: BlackjackState) -> jax.Array:
    """int32[2 + max_turns]: the player's card values in draw order, 0-padded."""
    values = card_value(state.deck)
    drawn = jnp.where(state.hits >= 0, values[4 + jnp.maximum(state.hits, 0)], 0)
    return jnp.concatenate([values[2:4], drawn]).astype(jnp.int32)

  def dealer_total(self, state: BlackjackState) -> jax.Array:
    return hand_total(card_value(state.deck[:2]))

  def step(self, key: jax.Array, state: BlackjackState, action: jax.Array,
           params: BlackjackParams):
    """Plays ``hit <slot>`` (action = slot, 0..47) or ``stand`` (48).

    Deterministic: ``key`` is ignored (the deck was drawn in ``reset``). A
    hit of a drawn slot, or an index out of range, stands (``invalid``).
    Stepping a finished attempt returns it unchanged, reward 0.
    """
    del key
    live = ~state.done
    action = jnp.asarray(action, jnp.int32)
    slot = jnp.clip(action, 0, NUM_SLOTS - 1)
    hit = live & (action >= 0) & (action < NUM_SLOTS) & ~state.taken[slot]
    invalid = live & ~hit & (action != STAND)
    stand = live & ~hit
    taken = state.taken | (hit & (jnp.arange(NUM_SLOTS) == slot))
    hits = jnp.where(hit & (jnp.arange(self.max_turns) == state.turns), slot,
                     state.hits)
    turns = state.turns + live.astype(jnp.int32)
    new = state.replace(taken=taken, hits=hits, turns=turns)
    total = hand_total(self.hand_values(new))
    bust = hit & (total > 21)
    won = stand & (total <= 21) & (total > self.dealer_total(state))
    out_of_turns = hit & ~bust & (turns >= self.max_turns)
    outcome = jnp.select(
        [~live, won, stand, bust, out_of_turns],
        [state.outcome, WON, STOOD_LOST, BUST, OUT_OF_TURNS], IN_PLAY)
    new = new.replace(
        last_action=jnp.where(live, jnp.where(hit, slot, STAND), state.last_action),
        outcome=outcome.astype(jnp.int32))
    ts = TimeStep(reward=jnp.where(won, params.reward_win, 0.0).astype(jnp.float32),
                  done=new.done, won=new.won, truncated=new.truncated,
                  invalid=invalid, steps=turns)
    return new, ts

  # ---- views -----------------------------------------------------------------
  def _card_symbol(self, value: jax.Array) -> jax.Array:
    return jnp.where(value == 1, self._ace_id, value)

  def render_symbols(self, state: BlackjackState, params: BlackjackParams) -> jax.Array:
    """int32[max_symbols]: the five lines (undrawn cards are -1)."""
    del params
    p = self._piece_id
    c = lambda i: jnp.asarray(i, jnp.int32)
    card = self._card_symbol
    values = card_value(state.deck)
    done = state.done
    hand = self.hand_values(state)
    hidden = c(self._hidden_id)
    made = (state.hits >= 0)[:, None]
    extra = jnp.stack([jnp.full((self.max_turns,), p(", ")), card(hand[2:])], axis=1)
    extra = jnp.where(made, extra, -1).reshape(-1)
    drawn = jnp.stack([self._label_id + state.hits, card(hand[2:])], axis=1)
    drawn = jnp.where(made, drawn, -1).reshape(-1)
    drawn = jnp.where(state.hits[0] >= 0, drawn,
                      drawn.at[0].set(p(" none")))
    head = jnp.stack([
        c(p("Turns taken: ")), state.turns, c(p(f" of {self.max_turns}\n")),
        c(p("Status: ")), self._status_id + state.outcome, c(p("\n")),
        c(p("Dealer (")), jnp.where(done, self.dealer_total(state), hidden),
        c(p("): ")), card(values[0]), c(p(", ")),
        jnp.where(done, card(values[1]), hidden), c(p("\n")),
        c(p("Your hand (")), hand_total(hand), c(p("): ")), card(hand[0]),
        c(p(", ")), card(hand[1])])
    return jnp.concatenate([
        head, extra, c([p("\n"), p("Drawn:")]), drawn,
        c([p("\n")])]).astype(jnp.int32)

  def render_text(self, state: BlackjackState, params: BlackjackParams) -> str:
    """Host-side rendering from the state arrays."""
    del params
    s = jax.device_get(state)
    values = [min(int(x) % 13 + 1, 10) for x in s.deck]
    outcome = int(s.outcome)
    done = outcome != IN_PLAY
    slots = [int(h) for h in s.hits if int(h) >= 0]
    hand = values[2:4] + [values[4 + h] for h in slots]

    def best(cards):
      t = sum(cards)
      return t + 10 if 1 in cards and t <= 11 else t

    hole = card_text(values[1]) if done else "?"
    dealer = str(best(values[:2])) if done else "?"
    drawn = "".join(f" {h:02d}:{card_text(values[4 + h])}" for h in slots)
    return (f"Turns taken: {int(s.turns)} of {self.max_turns}\n"
            f"Status: {STATUS_TEXTS[outcome]}\n"
            f"Dealer ({dealer}): {card_text(values[0])}, {hole}\n"
            f"Your hand ({best(hand)}): {', '.join(card_text(v) for v in hand)}\n"
            f"Drawn:{drawn or ' none'}\n")

  def action_mask(self, state: BlackjackState, params: BlackjackParams) -> jax.Array:
    """bool[49]: the slots not drawn yet, and ``stand``."""
    del params
    return jnp.concatenate([~state.taken, jnp.ones((1,), jnp.bool_)])

  def state_key(self, state: BlackjackState) -> jax.Array:
    """uint32 hash of what the observation shows (values, not card ids)."""
    values = card_value(state.deck)
    shown = jnp.concatenate([
        state.hits, self.hand_values(state),
        values[:1], jnp.where(state.done, values[1:2], 0),
        jnp.stack([state.turns, state.outcome])])
    return hash_arrays(shown)
