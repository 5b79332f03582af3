"""Tests for envs_jax.games.blackjack (ORBIT's Blackjack) and its Python reference."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.games import blackjack
from envs_jax.games.blackjack import Blackjack
from envs_jax.reference.blackjack import PyBlackjack, best_total, value_of
from envs_jax.text import TextCodec
from lamer_jax.models.tokenizer import ByteTokenizer

ENV = Blackjack()
PARAMS = ENV.default_params
KEY = jax.random.key(0)   # Blackjack is deterministic: its steps ignore the key
STAND = 48
# Tolerance of the frequency tests, in standard errors: each test makes at
# most ~30 comparisons, and P(|N(0, 1)| > 4.5) = 6.8e-6, so a correct game
# fails one with probability below 2.1e-4 (a union bound), while the biases
# these tests look for (an unconditioned dealer, a card dealt twice) are tens
# of standard errors wide.
Z = 4.5

BATCH, TURNS = 256, ENV.max_turns + 2   # random play: tasks, steps per attempt

_step = jax.jit(ENV.step)
_from_deck = jax.jit(ENV.state_from_deck)
_deal = jax.jit(jax.vmap(ENV.deal))
_vreset = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))


def _views(states):
  """Per state: (render_symbols, action_mask, state_key)."""
  return (jax.vmap(ENV.render_symbols, in_axes=(0, None))(states, PARAMS),
          jax.vmap(ENV.action_mask, in_axes=(0, None))(states, PARAMS),
          jax.vmap(ENV.state_key)(states))


@jax.jit
def _play(task_key, action_key):
  """BATCH random attempts of TURNS steps, with their views.

  Actions: a quarter stand, the rest hit, half of those among slots 0..5 so
  that hits of drawn slots (played as stands) happen too. A fifth of the
  attempts instead hit the slots of the deck's lowest cards (and so often
  run out of turns without a bust), with a stand now and then.

  Returns:
    (initial states [B], initial views, int32[B, T] actions, states [B, T],
    TimeSteps [B, T], views [B, T]).
  """
  initial, _ = jax.vmap(ENV.reset, in_axes=(0, None))(
      jax.random.split(task_key, BATCH), PARAMS)
  u = jax.random.uniform(action_key, (3, BATCH, TURNS))
  slot = jnp.where(u[1] < 0.5, jnp.floor(6 * u[2]), jnp.floor(48 * u[2]))
  actions = jnp.where(u[0] < 0.25, STAND, slot).astype(jnp.int32)
  lowest = jnp.argsort(blackjack.card_value(initial.deck[:, 4:]), axis=1)[:, :TURNS]
  low = jnp.where(u[0] < 0.1, STAND, lowest).astype(jnp.int32)
  actions = jnp.where(u[1, :, :1] < 0.2, low, actions)

  def attempt(state, acts):
    def one(s, a):
      s, ts = ENV.step(KEY, s, a, PARAMS)
      return s, (s, ts)
    return jax.lax.scan(one, state, acts)[1]

  states, steps = jax.vmap(attempt)(initial, actions)
  flat = jax.tree.map(lambda x: x.reshape(BATCH * TURNS, *x.shape[2:]), states)
  views = jax.tree.map(lambda x: x.reshape(BATCH, TURNS, *x.shape[1:]), _views(flat))
  return initial, _views(initial), actions, states, steps, views


@functools.lru_cache(maxsize=None)
def _played(seed: int):
  """``_play`` of task key ``seed`` and action key ``seed + 1``, on the host,
  shared by the tests."""
  return jax.device_get(_play(jax.random.key(seed), jax.random.key(seed + 1)))


def _index(tree, *i):
  return jax.tree.map(lambda x: x[i], tree)


def card_of(value: int, used: set[int]) -> int:
  """An unused card id of ``value`` (1..10)."""
  for card in range(52):
    if card not in used and value_of(card) == value:
      used.add(card)
      return card
  raise ValueError(f"no card of value {value} left")


def make_deck(dealer, player, slots=()) -> np.ndarray:
  """A deck (card ids) with the given values up front, the rest after."""
  used: set[int] = set()
  head = [card_of(v, used) for v in [*dealer, *player, *slots]]
  return np.asarray(head + [c for c in range(52) if c not in used], np.int32)


def play(deck, actions):
  """Steps a fresh attempt on ``deck``: the states and TimeSteps."""
  state = _from_deck(jnp.asarray(deck))
  out = []
  for a in actions:
    state, ts = _step(KEY, state, jnp.int32(a), PARAMS)
    out.append((state, ts))
  return out


def text(state) -> str:
  return ENV.render_text(state, PARAMS)


# ---- static description ---------------------------------------------------


def test_static_description():
  assert ENV.name == "blackjack" and ENV.max_turns == 4
  assert len(ENV.action_strings) == ENV.num_actions == 49
  assert ENV.action_strings[:2] == ("hit 00", "hit 01")
  assert ENV.action_strings[-2:] == ("hit 47", "stand")
  # Prefix-free as strings (so as token sequences too).
  for a, b in itertools.permutations(ENV.action_strings, 2):
    assert not b.startswith(a), (a, b)
  assert ENV.max_symbols == len(ENV.symbol_slots) == 3 + 3 + 7 + 7 + 2 + 4 * 4
  assert len(set(ENV.symbols)) == len(ENV.symbols)
  assert "hit 07" in ENV.instructions and "stand" in ENV.instructions
  assert "slots 00 to 47" in ENV.instructions
  assert "Each slot can be drawn once" in ENV.instructions
  assert "'Drawn: 07:10 21:3'" in ENV.instructions
  assert ENV.instructions.rstrip().endswith("or stand.")
  assert len(blackjack.DEALER_PAIRS) == 924
  for bad in (0, 49):
    with pytest.raises(ValueError, match="max_turns"):
      Blackjack(max_turns=bad)


def test_initial_observation():
  deck = make_deck([10, 7], [10, 6])
  state = _from_deck(jnp.asarray(deck))
  assert text(state) == (
      "Turns taken: 0 of 4\nStatus: in play\n"
      "Dealer (?): 10, ?\nYour hand (16): 10, 6\nDrawn: none\n")
  assert np.asarray(ENV.action_mask(state, PARAMS)).all()


def test_drawn_cards_are_listed_with_their_slots_in_draw_order():
  deck = make_deck([10, 7], [2, 2], [3, 1, 4, 10, 5])
  steps = play(deck, [4, 3, 1])
  assert text(steps[0][0]) == (
      "Turns taken: 1 of 4\nStatus: in play\n"
      "Dealer (?): 10, ?\nYour hand (9): 2, 2, 5\nDrawn: 04:5\n")
  assert text(steps[2][0]) == (
      "Turns taken: 3 of 4\nStatus: in play\nDealer (?): 10, ?\n"
      "Your hand (20): 2, 2, 5, 10, A\nDrawn: 04:5 03:10 01:A\n")
  mask = np.asarray(ENV.action_mask(steps[2][0], PARAMS))
  assert np.flatnonzero(~mask).tolist() == [1, 3, 4]


# ---- totals --------------------------------------------------------------


@pytest.mark.parametrize("values,total", [
    ([1, 1], 12), ([1, 9], 20), ([1, 9, 5], 15), ([1, 1, 9], 21),
    ([1, 1, 1, 1], 14), ([1, 6], 17), ([1, 6, 10], 17), ([10, 10, 1], 21),
    ([1, 10], 21), ([5, 6], 11), ([10, 10, 5], 25), ([1, 5, 5], 21),
    ([1, 1, 10], 12), ([2, 2], 4), ([1, 2, 3, 4, 1], 21), ([10, 9, 2, 10], 31),
])
def test_hand_totals(values, total):
  assert best_total(values) == total
  padded = jnp.asarray(values + [0] * (6 - len(values)), jnp.int32)
  assert int(blackjack.hand_total(padded)) == total
  # Through the game: the player's hand shows that total.
  deck = make_deck([10, 8], values[:2], values[2:])
  state = _from_deck(jnp.asarray(deck))
  for slot in range(len(values) - 2):
    state = state.replace(taken=state.taken.at[slot].set(True),
                          hits=state.hits.at[slot].set(slot))
  assert f"Your hand ({total}): " in text(state)


def test_card_values():
  # Ranks 0..12 of each suit: A, 2..10, J, Q, K.
  values = np.asarray(blackjack.card_value(jnp.arange(52)))
  assert values.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10] * 4
  assert [value_of(c) for c in range(52)] == values.tolist()


# ---- hand-written attempts ------------------------------------------------


def test_standing_above_the_dealer_wins():
  (state, ts), = play(make_deck([10, 8], [10, 9]), [STAND])
  assert float(ts.reward) == 1.0 and bool(ts.done) and bool(ts.won)
  assert not bool(ts.truncated) and not bool(ts.invalid) and int(ts.steps) == 1
  t = text(state)
  assert "Status: you stood above the dealer: you win\n" in t
  assert "Dealer (18): 10, 8\n" in t and t.endswith("Drawn: none\n")
  assert int(state.last_action) == STAND


def test_a_tie_or_less_loses():
  for player in ([10, 8], [10, 7]):
    (state, ts), = play(make_deck([10, 8], player), [STAND])
    assert float(ts.reward) == 0.0 and bool(ts.done) and not bool(ts.won)
    assert not bool(ts.truncated)
    assert "Status: you stood without beating the dealer: you lose\n" in text(state)


def test_a_natural_must_still_stand():
  steps = play(make_deck([10, 7], [1, 10], [10]), [0, STAND])
  (_, ts0), (state, ts1) = steps
  assert not bool(ts0.done) and float(ts0.reward) == 0.0   # 21 -> hit -> 21 hard
  assert "Your hand (21): A, 10, 10\n" in text(steps[0][0])
  assert bool(ts1.won) and float(ts1.reward) == 1.0


def test_bust_loses_and_the_attempt_stays_over():
  steps = play(make_deck([10, 7], [10, 6], [10]), [0, STAND, 5])
  (state, ts), *after = steps
  assert bool(ts.done) and not bool(ts.won) and float(ts.reward) == 0.0
  assert not bool(ts.truncated) and not bool(ts.invalid)
  assert "Status: bust (over 21): you lose\n" in text(state)
  assert "Dealer (17): 10, 7\n" in text(state)      # revealed at the end
  assert "Your hand (26): 10, 6, 10\n" in text(state)
  for s, t in after:   # stepping a finished attempt changes nothing
    jax.tree.map(np.testing.assert_array_equal, state, s)
    assert float(t.reward) == 0.0 and bool(t.done) and not bool(t.invalid)
    assert int(t.steps) == 1


def test_soft_ace_becomes_hard_instead_of_busting():
  steps = play(make_deck([10, 10], [1, 5], [3, 5, 6, 10]), [3, 1, STAND])
  assert "Your hand (16): A, 5, 10\n" in text(steps[0][0])
  assert not bool(steps[0][1].done)
  assert "Your hand (21): A, 5, 10, 5\n" in text(steps[1][0])
  state, ts = steps[2]
  assert bool(ts.won) and float(ts.reward) == 1.0
  assert text(state).endswith("Your hand (21): A, 5, 10, 5\nDrawn: 03:10 01:5\n")


def test_hitting_a_drawn_slot_stands():
  # ORBIT plays a hit of an unavailable slot as a stand; it is flagged invalid.
  deck = make_deck([10, 7], [5, 6], [8])
  (s0, ts0), (s1, ts1) = play(deck, [0, 0])
  assert not bool(ts0.invalid) and not bool(ts0.done)
  mask = np.asarray(ENV.action_mask(s0, PARAMS))
  assert not mask[0] and mask[1:].all()
  assert bool(ts1.invalid) and bool(ts1.done) and bool(ts1.won)   # 19 > 17
  assert int(s1.last_action) == STAND
  assert "Status: you stood above the dealer: you win\n" in text(s1)
  assert text(s1).endswith("Drawn: 00:8\n")      # the slot is listed once
  # An index outside the table stands too.
  (s2, ts2), = play(deck, [99])
  assert bool(ts2.invalid) and bool(ts2.done) and not bool(ts2.won)


def test_out_of_turns_is_truncated():
  steps = play(make_deck([10, 7], [2, 2], [2, 2, 3, 3]), [0, 1, 2, 3, STAND])
  for s, ts in steps[:3]:
    assert not bool(ts.done)
  state, ts = steps[3]
  assert bool(ts.done) and bool(ts.truncated) and not bool(ts.won)
  assert float(ts.reward) == 0.0 and int(ts.steps) == 4
  assert "Status: out of turns: you lose\n" in text(state)
  assert "Your hand (14): 2, 2, 2, 2, 3, 3\n" in text(state)
  jax.tree.map(np.testing.assert_array_equal, state, steps[4][0])
  # A stand on the last turn is the game's own end, not a truncation.
  state, ts = play(make_deck([10, 7], [10, 2], [2, 2, 3]), [0, 1, 2, STAND])[-1]
  assert bool(ts.won) and not bool(ts.truncated)


def test_soft_dealer_total_shows_after_the_end():
  (state, _), = play(make_deck([1, 6], [10, 8]), [STAND])
  assert "Dealer (17): A, 6\n" in text(state)


def test_step_compiles_once():
  # The hand-written attempts above and this one all share one compilation.
  play(make_deck([10, 8], [3, 4], [5]), [0, 7, STAND])
  assert _step._cache_size() == 1


# ---- random play against the reference ------------------------------------


def test_matches_python_reference_on_random_play():
  initial, init_views, actions, states, steps, views = _played(1)
  outcomes, invalid = set(), 0
  for b in range(BATCH):
    ref = PyBlackjack()
    t0 = ref.reset(initial.deck[b].tolist())
    s = _index(initial, b)
    assert text(s) == t0 == ENV.symbols_to_text(init_views[0][b])
    assert np.asarray(init_views[1][b]).tolist() == ref.legal()
    for t in range(TURNS):
      expected = ref.step(int(actions[b, t]))
      ts, s = _index(steps, b, t), _index(states, b, t)
      got = (float(ts.reward), bool(ts.done), bool(ts.won), bool(ts.truncated),
             bool(ts.invalid))
      assert got == expected, (b, t)
      assert int(ts.steps) == ref.turns
      observation = text(s)
      assert observation == ref.render_text()
      assert ENV.symbols_to_text(views[0][b, t]) == observation
      assert views[1][b, t].tolist() == ref.legal()
      invalid += expected[4]
    outcomes.add(ref.status)
  # Random play meets every ending, and hits of drawn slots.
  assert outcomes == {"won", "stood", "bust", "turns"}
  assert invalid > 5


def test_renderings_follow_the_symbol_slots():
  _, init_views, _, _, _, views = _played(1)
  symbols = np.concatenate([init_views[0], views[0].reshape(-1, ENV.max_symbols)])
  slots = ENV.symbol_slots
  for p, allowed in enumerate(slots):
    seen = set(np.unique(symbols[:, p]).tolist()) - {-1}
    assert seen <= set(allowed), (p, seen - set(allowed))
  # Only the drawn cards, in the hand and in the drawn list, may be missing:
  # the hand's (", ", card) pairs after the first two cards, and the list's
  # cards and its labels after the first (which says " none" before a hit).
  t = ENV.max_turns
  hand = range(19, 19 + 2 * t)
  drawn = range(22 + 2 * t, 21 + 4 * t)
  assert (symbols[:, [p for p in range(len(slots))
                      if p not in hand and p not in drawn]] >= 0).all()
  made = symbols[:, hand][:, 1::2] >= 0
  assert (symbols[:, hand][:, ::2] >= 0).tolist() == made.tolist()
  assert (symbols[:, drawn][:, ::2] >= 0).tolist() == made.tolist()
  assert (symbols[:, drawn][:, 1::2] >= 0).tolist() == made[:, 1:].tolist()
  none = symbols[:, 21 + 2 * t] == ENV.symbols.index(" none")
  assert none.tolist() == (~made[:, 0]).tolist() and none.any() and made.all(1).any()
  # The codec sizes its buffer by the slots: every rendering's tokens (a
  # byte-level tokenizer's, the tiny models') fit, and decode to its text.
  codec = TextCodec.for_env(ByteTokenizer(), ENV)
  for row in symbols[::7]:
    ids = [int(t) for i in row if i >= 0
           for t in codec.symbol_tokens[i, :codec.symbol_lengths[i]]]
    assert len(ids) <= codec.max_tokens
    assert codec.tokenizer.decode(ids) == ENV.symbols_to_text(row)
  lengths = np.where(symbols >= 0, codec.symbol_lengths[np.maximum(symbols, 0)], 0)
  # ... and the buffer is tight: some rendering comes close to filling it.
  assert 0.85 * codec.max_tokens <= lengths.sum(1).max() <= codec.max_tokens


def test_state_key_hashes_what_is_observable():
  _, init_views, _, _, _, views = _played(1)
  symbols = np.concatenate([init_views[0], views[0].reshape(-1, ENV.max_symbols)])
  state_keys = np.concatenate([init_views[2], views[2].reshape(-1)])
  # Renderings have a fixed layout: equal symbol rows are equal observations.
  by_text: dict[bytes, set[int]] = {}
  for row, key in zip(symbols, state_keys):
    by_text.setdefault(row.tobytes(), set()).add(int(key))
  assert state_keys.dtype == np.uint32
  assert all(len(k) == 1 for k in by_text.values())
  assert len({next(iter(k)) for k in by_text.values()}) == len(by_text) > 200
  # Two decks that differ only in which ten-valued cards lie where (a ten
  # and a king swapped) look alike, and hash alike.
  a = make_deck([10, 8], [10, 6])
  b = a.copy()
  ten, king = np.flatnonzero(a % 13 == 9)[0], np.flatnonzero(a % 13 == 12)[0]
  b[[ten, king]] = b[[king, ten]]
  sa, sb = _from_deck(jnp.asarray(a)), _from_deck(jnp.asarray(b))
  assert text(sa) == text(sb) and not (a == b).all()
  assert int(ENV.state_key(sa)) == int(ENV.state_key(sb))


# ---- the task distribution ------------------------------------------------


def _exact_distributions():
  """Exact laws under the conditioned shuffle, by enumeration.

  Returns:
    (dealer total -> probability, dealer's first card value -> probability,
    a later card's value -> probability); the later card (any of positions
    2..51) is uniform over the 50 cards the dealer did not take.
  """
  values = [value_of(c) for c in range(52)]
  pairs = [(i, j) for i, j in itertools.permutations(range(52), 2)
           if best_total([values[i], values[j]]) >= 17]
  totals, first, later = {}, {}, {}
  for i, j in pairs:
    w = 1 / len(pairs)
    t = best_total([values[i], values[j]])
    totals[t] = totals.get(t, 0) + w
    first[values[i]] = first.get(values[i], 0) + w
    for c in range(52):
      if c not in (i, j):
        later[values[c]] = later.get(values[c], 0) + w / 50
  return totals, first, later


def _assert_frequencies(observed: np.ndarray, probs: dict, n: int):
  for k, p in probs.items():
    se = np.sqrt(p * (1 - p) / n)
    assert abs((observed == k).mean() - p) < Z * se, (k, (observed == k).mean(), p)
  assert np.isin(observed, list(probs)).all()


def test_deal_is_a_conditioned_uniform_shuffle():
  n = 20_000
  decks = np.asarray(_deal(jax.random.split(jax.random.key(7), n)))
  assert (np.sort(decks, axis=1) == np.arange(52)).all()   # a permutation of 52
  values = np.minimum(decks % 13 + 1, 10)
  first, second = values[:, 0], values[:, 1]
  soft = ((first == 1) | (second == 1)) & (first + second <= 11)
  dealer = first + second + 10 * soft
  assert dealer.min() >= 17 and dealer.max() <= 21
  totals, first_law, later_law = _exact_distributions()
  _assert_frequencies(dealer, totals, n)
  _assert_frequencies(first, first_law, n)
  for position in (2, 3, 4, 51):   # the player's cards and two slots
    _assert_frequencies(values[:, position], later_law, n)
  # Card ids, not just values, are spread over the deck: each physical card
  # lands in the last slot with probability 1/52 up to the conditioning.
  counts = np.bincount(decks[:, 51], minlength=52)
  assert counts.min() > 0.5 * n / 52 and counts.max() < 1.5 * n / 52


def test_reset_is_deterministic_in_its_key():
  keys = jax.random.split(jax.random.key(8), 64)
  a, _ = jax.device_get(_vreset(keys, PARAMS))
  b, _ = jax.device_get(_vreset(keys, PARAMS))
  np.testing.assert_array_equal(a.deck, b.deck)
  assert len({d.tobytes() for d in a.deck}) == 64   # distinct keys, distinct decks
  assert not a.taken.any() and (a.hits == -1).all() and (a.turns == 0).all()
  assert (a.outcome == blackjack.IN_PLAY).all()
  # reset deals exactly ``deal``'s deck.
  np.testing.assert_array_equal(a.deck, np.asarray(_deal(keys)))
