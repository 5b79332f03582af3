"""Tests for ORBIT's MineSweeper: the agent's first click places the mines.

The options ``first_click="agent"``, ``safe_zone="3x3"`` and
``reward_scheme="success"`` of ``envs_jax.games.minesweeper`` (LaMer's
configurations, the defaults, are covered by tests/test_minesweeper.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.games.minesweeper import MineSweeper
from envs_jax.reference.minesweeper import PyMineSweeper

ENV = MineSweeper(height=5, width=5, num_mines=5, max_turns=8, first_click="agent",
                  safe_zone="3x3", reward_scheme="success")
PARAMS = ENV.default_params
KEY = jax.random.key(0)   # steps ignore their key
HW = 25
Z = 4.5   # tolerance of the frequency tests, in standard errors
BATCH = 256


@functools.cache
def jitted(env: MineSweeper):
  """(batched reset, batched step, batched views), compiled once per env."""
  params = env.default_params
  views = lambda s: (env.render_symbols(s, params), env.action_mask(s, params),
                     env.state_key(s))
  return (jax.jit(jax.vmap(env.reset, in_axes=(0, None))),
          jax.jit(jax.vmap(env.step, in_axes=(None, 0, 0, None))),
          jax.jit(jax.vmap(views)))


def _tasks(env: MineSweeper, n: int, seed: int):
  """``n`` initial states (the TimeSteps dropped)."""
  reset, *_ = jitted(env)
  return reset(jax.random.split(jax.random.key(seed), n), env.default_params)[0]


def _index(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def host_counts(mines: np.ndarray) -> np.ndarray:
  p = np.pad(mines.astype(int), 1)
  h, w = mines.shape
  return sum(p[dr:dr + h, dc:dc + w] for dr in range(3) for dc in range(3)) - mines


def host_cascade(mines: np.ndarray, r: int, c: int) -> np.ndarray:
  """The cells opening safe cell (r, c) opens (depth-first over zeros)."""
  counts = host_counts(mines)
  out = np.zeros_like(mines)
  todo = [(r, c)]
  while todo:
    y, x = todo.pop()
    if out[y, x]:
      continue
    out[y, x] = True
    if counts[y, x] == 0:
      todo += [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
               if 0 <= y + dy < mines.shape[0] and 0 <= x + dx < mines.shape[1]]
  return out


def zone(cell: int, h: int = 5, w: int = 5) -> np.ndarray:
  r, c = divmod(cell, w)
  out = np.zeros((h, w), bool)
  out[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = True
  return out


def test_static_description_and_options():
  assert ENV.action_strings[0] == "(1, 1)" and ENV.num_actions == HW
  p = jax.device_get(PARAMS)
  assert [float(x) for x in (p.reward_invalid, p.reward_reveal, p.reward_cascade,
                             p.reward_win, p.reward_mine)] == [0, 0, 0, 1, 0]
  assert int(p.num_mines) == 5 and ENV.max_num_mines == 15
  text = ENV.instructions
  assert "No cell is open yet" in text and "8 cells around it" in text
  assert "Reward: 1 for opening the last safe cell" in text and "8 actions" in text
  assert "+10" not in text and "already been opened" not in text
  for field in ("first_click", "safe_zone", "reward_scheme"):
    with pytest.raises(ValueError, match=field):
      MineSweeper(**{field: "nope"})
  with pytest.raises(ValueError, match="num_mines"):
    ENV.replace(num_mines=16)   # 25 - 9 - 1 = 15 at most with the 3x3 zone
  MineSweeper(height=5, width=5, num_mines=15, safe_zone="3x3")
  # The LaMer rewards with the agent's first click.
  lamer = ENV.replace(reward_scheme="lamer")
  assert float(lamer.default_params.reward_win) == 10.0
  assert "+10" in lamer.instructions and "No cell is open yet" in lamer.instructions


def test_reset_opens_nothing_and_draws_the_task_from_its_key():
  reset, *_ = jitted(ENV)
  states, ts = jax.device_get(reset(jax.random.split(jax.random.key(1), BATCH), PARAMS))
  assert not states.mines.any() and not states.revealed.any()
  assert not ts.done.any() and (ts.reward == 0).all()
  scores = states.mine_scores
  assert scores.shape == (BATCH, 5, 5) and scores.dtype == np.float32
  assert (scores >= 0).all() and (scores < 1).all()
  assert len({s.tobytes() for s in scores}) == BATCH
  one = _index(states, 0)
  assert ENV.render_text(one, PARAMS) == "".join(
      f"Row {r}: ? ? ? ? ?\n" for r in range(1, 6))
  assert np.asarray(ENV.action_mask(one, PARAMS)).all()
  again, _ = jax.jit(ENV.reset)(jax.random.split(jax.random.key(1), BATCH)[0], PARAMS)
  jax.tree.map(np.testing.assert_array_equal, one, jax.device_get(again))


def test_first_click_places_the_mines_outside_its_3x3_and_opens_a_cascade():
  _, step, _ = jitted(ENV)
  states = _tasks(ENV, BATCH, 2)
  clicks = np.random.default_rng(0).integers(0, HW, BATCH).astype(np.int32)
  after, ts = jax.device_get(step(KEY, states, jnp.asarray(clicks), PARAMS))
  assert not ts.invalid.any() and not (ts.done & ~ts.won).any()
  for b in range(BATCH):
    mines, click = after.mines[b], int(clicks[b])
    assert mines.sum() == 5 and not (mines & zone(click)).any()
    assert (after.counts[b] == host_counts(mines)).all()
    r, c = divmod(click, 5)
    assert after.counts[b][r, c] == 0          # always a cascade
    assert (after.revealed[b] == host_cascade(mines, r, c)).all()
    solved = bool((after.revealed[b] | mines).all())
    assert bool(ts.won[b]) == solved and float(ts.reward[b]) == float(solved)
  # A first click rarely opens the whole board (about 0.5% of random first
  # clicks; GEM does not redraw either): see the hand-made case below.
  assert ts.won.sum() < BATCH // 20


def test_the_board_is_a_function_of_the_task_and_the_first_click():
  _, step, _ = jitted(ENV)
  states = _tasks(ENV, BATCH, 3)
  rng = np.random.default_rng(1)
  first = jnp.asarray(rng.integers(0, HW, BATCH), jnp.int32)
  other = jnp.asarray((np.asarray(first) + rng.integers(1, HW, BATCH)) % HW, jnp.int32)
  a, _ = jax.device_get(step(KEY, states, first, PARAMS))
  b, _ = jax.device_get(step(KEY, states, first, PARAMS))   # the attempt replayed
  c, _ = jax.device_get(step(KEY, states, other, PARAMS))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # Another first click moves the safe zone: mostly another board, but the
  # same scores (cells that stay allowed keep their order).
  differ = (a.mines != c.mines).any((1, 2))
  assert differ.mean() > 0.5
  np.testing.assert_array_equal(a.mine_scores, c.mine_scores)
  # Later clicks do not move the mines.
  d, _ = jax.device_get(step(KEY, a, jnp.asarray(other), PARAMS))
  np.testing.assert_array_equal(d.mines, a.mines)


@pytest.mark.parametrize("click", [12, 0, 7])
def test_mines_are_uniform_outside_the_safe_zone(click):
  # Each allowed cell holds a mine with probability 5 / (allowed cells);
  # 8 batches of 256 tasks.
  _, step, _ = jitted(ENV)
  mines = []
  for seed in range(8):
    states = _tasks(ENV, BATCH, 100 * click + seed)
    after, _ = step(KEY, states, jnp.full((BATCH,), click, jnp.int32), PARAMS)
    mines.append(np.asarray(after.mines))
  n = 8 * BATCH
  freq = np.concatenate(mines).mean(0)
  allowed = ~zone(click)
  p = 5 / allowed.sum()
  assert (freq[~allowed] == 0).all()
  se = np.sqrt(p * (1 - p) / n)
  assert (np.abs(freq[allowed] - p) < Z * se).all(), freq


def test_an_out_of_range_first_click_places_nothing():
  _, step, _ = jitted(ENV)
  states = _tasks(ENV, BATCH, 4)
  for bad in (-1, HW):
    after, ts = jax.device_get(step(KEY, states, jnp.full((BATCH,), bad, jnp.int32),
                                    PARAMS))
    assert ts.invalid.all() and (ts.reward == 0).all() and not ts.done.any()
    assert not after.mines.any() and not after.revealed.any()
    assert (after.steps == 1).all()
    # The next in-range click still places the mines, as a first click.
    placed, _ = jax.device_get(step(KEY, after, jnp.full((BATCH,), 6, jnp.int32),
                                    PARAMS))
    assert (placed.mines.sum((1, 2)) == 5).all() and placed.revealed.any((1, 2)).all()


def test_a_first_click_that_opens_the_whole_board_wins():
  # Scores that put the 5 mines in the bottom-right corner: clicking (1, 1)
  # opens every safe cell.
  scores = np.full((5, 5), 0.5, np.float32)
  for i, cell in enumerate([(4, 4), (4, 3), (3, 4), (3, 3), (4, 2)]):
    scores[cell] = 0.01 * i
  state = jax.jit(ENV.state_from_board)(np.zeros((5, 5), bool), np.zeros((5, 5), bool),
                                        scores)
  after, ts = jax.jit(ENV.step)(KEY, state, jnp.int32(0), PARAMS)
  assert bool(ts.won) and bool(ts.done) and float(ts.reward) == 1.0
  assert int(np.asarray(after.mines).sum()) == 5 and bool(np.asarray(after.mines)[4, 4])
  py = PyMineSweeper(5, 5, 5, 8, 0.0, 0.0, 0.0, 1.0, 0.0, first_click="agent",
                     safe_zone="3x3")
  py.reset_unplaced(scores)
  assert py.step(0) == (1.0, True, True)
  assert py.render_text() == ENV.render_text(after, PARAMS)


def _random_actions(rng, revealed: np.ndarray) -> np.ndarray:
  """Per attempt: an unopened cell with probability 0.7, else any index
  in [-1, H * W] (opened cells and out-of-range ones included)."""
  out = []
  for row in revealed.reshape(len(revealed), -1):
    hidden = np.flatnonzero(~row)
    if rng.random() < 0.7 and len(hidden):
      out.append(int(rng.choice(hidden)))
    else:
      out.append(int(rng.integers(-1, HW + 1)))
  return np.asarray(out, np.int32)


@pytest.mark.parametrize("scheme", ["success", "lamer"])
def test_matches_python_reference_on_random_play(scheme):
  env = ENV.replace(reward_scheme=scheme)
  params = env.default_params
  p = jax.device_get(params)
  _, step, views = jitted(env)
  state = jax.device_get(_tasks(env, BATCH, 5))
  refs = []
  for b in range(BATCH):
    ref = PyMineSweeper(5, 5, 5, 8, float(p.reward_invalid), float(p.reward_reveal),
                        float(p.reward_cascade), float(p.reward_win),
                        float(p.reward_mine), first_click="agent", safe_zone="3x3")
    assert ref.reset_unplaced(state.mine_scores[b]) == env.render_text(_index(state, b),
                                                                       params)
    refs.append(ref)
  rng = np.random.default_rng(2)
  ends = {"won": 0, "lost": 0, "truncated": 0, "invalid": 0}
  keys_by_text = {}
  for t in range(env.max_turns + 3):
    actions = _random_actions(rng, state.revealed)
    before = state
    state, ts = jax.device_get(step(KEY, state, jnp.asarray(actions), params))
    symbols, masks, keys = jax.device_get(views(state))
    for b in range(BATCH):
      a = int(actions[b])
      done_before = refs[b].done
      ineffective = not 0 <= a < HW or bool(before.revealed[b].reshape(-1)[a])
      reward, done, won = refs[b].step(a)
      assert np.isclose(float(ts.reward[b]), reward), (b, t)
      assert (bool(ts.done[b]), bool(ts.won[b])) == (done, won), (b, t)
      assert bool(ts.invalid[b]) == (ineffective and not done_before)
      assert int(ts.steps[b]) == refs[b].steps
      text = env.render_text(_index(state, b), params)
      assert text == refs[b].render_text() == env.symbols_to_text(symbols[b])
      assert (masks[b] == ~state.revealed[b].reshape(-1)).all()
      keys_by_text.setdefault(text, set()).add(int(keys[b]))
      if done and not done_before:
        ends["won" if won else ("truncated" if ts.truncated[b] else "lost")] += 1
      ends["invalid"] += bool(ts.invalid[b])
  assert all(r.done for r in refs)
  assert min(ends.values()) >= 5, ends
  # The state key follows the observation (shown cells), across tasks too.
  assert all(len(k) == 1 for k in keys_by_text.values())
  assert len({next(iter(k)) for k in keys_by_text.values()}) == len(keys_by_text)


def test_random_first_click_with_a_3x3_safe_zone():
  # LaMer's random first click, with GEM's safe zone: the opened region is
  # the cascade of a zero cell whose 3x3 holds no mine.
  env = MineSweeper(height=5, width=5, num_mines=5, safe_zone="3x3")
  states = jax.device_get(_tasks(env, 128, 6))
  assert states.mine_scores is None
  for b in range(128):
    mines, revealed = states.mines[b], states.revealed[b]
    assert mines.sum() == 5 and not (revealed | mines).all()
    assert any((host_cascade(mines, r, c) == revealed).all() and
               not (mines & zone(5 * r + c)).any()
               for r, c in zip(*np.nonzero(revealed)))
  py = PyMineSweeper(5, 5, 5, safe_zone="3x3")
  for seed in range(50):
    py.reset(seed)
    mines, revealed = np.array(py.mines), np.array(py.revealed)
    assert mines.sum() == 5 and revealed.sum() > 1 and not (revealed | mines).all()


def test_state_key_tells_apart_boards_with_the_same_open_cells():
  # Same opened cells, different numbers shown: different keys (the mines
  # of an agent-first-click task depend on the first click).
  from_board = jax.jit(ENV.state_from_board)
  revealed = np.zeros((5, 5), bool)
  revealed[0, 0] = True
  a = np.zeros((5, 5), bool)
  a[1, 1] = True
  b = np.zeros((5, 5), bool)
  b[4, 4] = True
  ka, kb = (int(ENV.state_key(from_board(m, revealed))) for m in (a, b))
  assert ka != kb
  assert int(ENV.state_key(from_board(a, revealed))) == ka


def test_step_compiles_once():
  step = jax.jit(ENV.step)
  state, _ = jax.jit(ENV.reset)(jax.random.key(7), PARAMS)
  for a in (12, 3, 3, -1, 24):
    state, _ = step(KEY, state, jnp.int32(a), PARAMS)
  other, _ = jax.jit(ENV.reset)(jax.random.key(8), PARAMS)
  step(KEY, other, jnp.int32(0), PARAMS.replace(reward_win=jnp.float32(2.0)))
  assert step._cache_size() == 1


def test_registered_as_orbit_variant():
  import envs_jax
  env = envs_jax.make("minesweeper-orbit")
  assert env == ENV.replace(name="minesweeper-orbit")
  assert float(env.default_params.reward_win) == 1.0
  for name in ("reward_invalid", "reward_reveal", "reward_cascade", "reward_mine"):
    assert float(getattr(env.default_params, name)) == 0.0
