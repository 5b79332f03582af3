"""Tests for the pure-JAX MineSweeper and its plain-Python reference."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs_jax
from envs_jax.games import minesweeper
from envs_jax.games.minesweeper import MineSweeper, MineSweeperState
from envs_jax.reference.minesweeper import PyMineSweeper

ENV = MineSweeper()
PARAMS = ENV.default_params
KEY = jax.random.key(0)  # MineSweeper is deterministic: its steps ignore the key
# max_turns large enough that no board in the hand-made tests truncates.
LONG = MineSweeper(max_turns=100)

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
FAST = settings(max_examples=25, deadline=None)


@functools.lru_cache(maxsize=None)
def jitted(env: MineSweeper):
  """(reset, step, from_board, batched reset, batched step), compiled once."""
  return (jax.jit(env.reset), jax.jit(env.step), jax.jit(env.state_from_board),
          jax.jit(jax.vmap(env.reset, in_axes=(0, None))),
          jax.jit(jax.vmap(env.step, in_axes=(None, 0, 0, None))))


def host_counts(mines: np.ndarray) -> np.ndarray:
  h, w = mines.shape
  out = np.zeros((h, w), np.int64)
  for r in range(h):
    for c in range(w):
      block = mines[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
      out[r, c] = block.sum() - mines[r, c]
  return out


def host_cascade(mines: np.ndarray, r: int, c: int) -> np.ndarray:
  """Zero region 8-connected to (r, c) plus its border, by BFS (stack)."""
  counts = host_counts(mines)
  h, w = mines.shape
  out = np.zeros_like(mines)
  todo = [(r, c)]
  while todo:
    y, x = todo.pop()
    if out[y, x]:
      continue
    out[y, x] = True
    if counts[y, x] == 0:
      todo += [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
               if 0 <= y + dy < h and 0 <= x + dx < w]
  return out


def random_board(seed: int, num_mines: int = 3) -> np.ndarray:
  """bool[6, 6] with ``num_mines`` mines at random cells."""
  rng = np.random.default_rng(seed)
  mines = np.zeros(36, bool)
  mines[rng.choice(36, num_mines, replace=False)] = True
  return mines.reshape(6, 6)


def host(state: MineSweeperState):
  return jax.tree.map(np.asarray, jax.device_get(state))


def test_static_description():
  assert ENV.action_strings[:3] == ("(1, 1)", "(1, 2)", "(1, 3)")
  assert ENV.action_strings[-1] == "(6, 6)" and ENV.num_actions == 36
  for s in ("?", ".", "1", "8", " ", "\n", "Row 1: ", "Row 6: "):
    assert s in ENV.symbols
  assert "(row, col)" in ENV.instructions and "+10" in ENV.instructions
  with pytest.raises(ValueError):
    MineSweeper(num_mines=0)
  with pytest.raises(ValueError):
    MineSweeper(height=2, width=2, num_mines=3)


@pytest.mark.parametrize("batch", [1, 1024])
def test_jit_vmap_compile(batch):
  *_, vreset, vstep = jitted(ENV)
  states, ts = vreset(jax.random.split(jax.random.key(batch), batch), PARAMS)
  assert states.revealed.shape == (batch, 6, 6) and ts.reward.shape == (batch,)
  actions = jax.random.randint(jax.random.key(7), (3, batch), 0, 36)
  for a in actions:
    states, ts = vstep(KEY, states, a, PARAMS)
  assert ts.reward.dtype == jnp.float32 and ts.done.dtype == jnp.bool_
  assert int(ts.steps.max()) <= 3
  symbols = jax.vmap(ENV.render_symbols, in_axes=(0, None))(states, PARAMS)
  assert symbols.shape == (batch, ENV.max_symbols)
  assert jax.vmap(ENV.state_key)(states).dtype == jnp.uint32


@pytest.mark.parametrize("name", ["minesweeper", "minesweeper-hard",
                                  "minesweeper-4x4", "minesweeper-8x8"])
def test_reset_properties_batched(name):
  env = envs_jax.make(name)
  params = env.default_params
  *_, vreset, vstep = jitted(env)
  states, _ = vreset(jax.random.split(jax.random.key(3), 256), params)
  s = host(states)
  assert (s.mines.sum((1, 2)) == env.num_mines).all()
  assert not (s.mines & s.revealed).any()         # the first reveal never loses
  assert (s.revealed.sum((1, 2)) >= 1).all()
  assert not (s.revealed | s.mines).all((1, 2)).any()  # never solved at reset
  assert not s.done.any() and (s.steps == 0).all()
  # Boards differ across keys (4x4 / 2 mines has only 120 boards).
  distinct = math.comb(env.height * env.width, env.num_mines)
  assert len({m.tobytes() for m in s.mines}) > min(200, distinct // 2)
  # Playing on: every safe-cell click keeps the game consistent.
  safe = np.argmax((~s.mines & ~s.revealed).reshape(256, -1), axis=1)
  states, ts = vstep(KEY, states, jnp.asarray(safe, jnp.int32), params)
  assert not np.asarray(ts.invalid).any()
  assert not np.asarray(ts.won & ~ts.done).any()
  assert (np.asarray(ts.reward) > 0).all()


def test_params_num_mines_varies_without_recompiling_shapes():
  reset, *_ = jitted(ENV)
  state, _ = reset(jax.random.key(0), PARAMS.replace(num_mines=jnp.int32(7)))
  assert int(state.mines.sum()) == 7
  state, _ = reset(jax.random.key(0), PARAMS.replace(num_mines=jnp.int32(99)))
  assert int(state.mines.sum()) == 34  # clipped to H*W - 2


@FAST
@given(seed=SEEDS)
def test_initial_reveal_is_a_cascade_and_numbers_are_right(seed):
  reset, *_ = jitted(ENV)
  state, ts = reset(jax.random.key(seed), PARAMS)
  s = host(state)
  assert float(ts.reward) == 0.0 and not bool(ts.done)
  assert (s.counts == host_counts(s.mines)).all()
  # The opened set is the cascade of one (unknown) first click.
  clicks = list(zip(*np.nonzero(s.revealed)))
  assert any((host_cascade(s.mines, r, c) == s.revealed).all()
             for r, c in clicks)
  # Every opened cell shows its adjacent-mine count.
  rows = ENV.render_text(state, PARAMS).splitlines()
  counts = host_counts(s.mines)
  for r, line in enumerate(rows):
    label, cells = line.split(": ")
    assert label == f"Row {r + 1}"
    for c, ch in enumerate(cells.split(" ")):
      if s.revealed[r, c]:
        assert ch == ("." if counts[r, c] == 0 else str(counts[r, c]))
      else:
        assert ch == "?"


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, pick=st.integers(0, 10**6), num_mines=st.integers(1, 12))
def test_click_opens_exactly_the_host_cascade(seed, pick, num_mines):
  _, step, from_board, *_ = jitted(LONG)
  mines = random_board(seed, num_mines)
  safe = np.flatnonzero(~mines)
  cell = int(safe[pick % len(safe)])
  state = from_board(mines, np.zeros_like(mines))
  nxt, ts = step(KEY, state, jnp.int32(cell), PARAMS)
  expected = host_cascade(mines, *divmod(cell, 6))
  assert (np.asarray(nxt.revealed) == expected).all()
  if (expected | mines).all():
    assert bool(ts.won) and float(ts.reward) == 10.0
  else:
    assert float(ts.reward) == (2.0 if expected.sum() > 1 else 0.5)
    assert not bool(ts.done) and not bool(ts.invalid)


def test_cascade_crosses_diagonal_links():
  # Zero cells (1, 1) and (2, 2) touch only diagonally: their orthogonal
  # neighbours (1, 2) and (2, 1) are 1s. With 8-connectivity one click in the
  # top-left corner opens both zero areas.
  _, step, from_board, *_ = jitted(LONG)
  mines = np.zeros((6, 6), bool)
  mines[0, 3] = mines[3, 0] = True
  state, ts = step(KEY, from_board(mines, np.zeros_like(mines)), jnp.int32(0),
                   PARAMS)
  revealed = np.asarray(state.revealed)
  assert revealed[5, 5] and revealed[2, 2] and revealed[1, 2]
  assert (revealed == host_cascade(mines, 0, 0)).all()
  assert (revealed | mines).all() and bool(ts.won)


def test_win_when_all_safe_cells_open():
  _, step, from_board, *_ = jitted(LONG)
  mines = np.zeros((6, 6), bool)
  mines[0, 0] = mines[2, 4] = mines[5, 1] = True
  state = from_board(mines, np.zeros_like(mines))
  clicks = 0
  for cell in np.flatnonzero(~mines):
    if bool(np.asarray(state.revealed).reshape(-1)[cell]):
      continue  # already opened by a cascade
    state, ts = step(KEY, state, jnp.int32(cell), PARAMS)
    clicks += 1
    last = bool((np.asarray(state.revealed) | mines).all())
    assert bool(ts.done) == last and bool(ts.won) == last
    if last:
      assert float(ts.reward) == 10.0 and not bool(ts.truncated)
  assert bool(state.won) and clicks > 1


def test_ineffective_click_changes_nothing():
  _, step, from_board, *_ = jitted(ENV)
  mines = random_board(1)
  revealed = host_cascade(mines, *np.argwhere(~mines)[0])
  state = from_board(mines, revealed)
  cell = int(np.flatnonzero(revealed)[0])
  for action in (cell, -1, 36):  # opened cell, then out-of-range indices
    nxt, ts = step(KEY, state, jnp.int32(action), PARAMS)
    assert float(ts.reward) == -1.0 and bool(ts.invalid) and not bool(ts.done)
    assert (np.asarray(nxt.revealed) == revealed).all()
    assert int(nxt.steps) == 1
    assert int(ENV.state_key(nxt)) == int(ENV.state_key(state))


def test_mine_ends_the_attempt_and_later_steps_are_noops():
  _, step, from_board, *_ = jitted(ENV)
  mines = random_board(2)
  state = from_board(mines, np.zeros_like(mines))
  mine = int(np.flatnonzero(mines)[0])
  lost, ts = step(KEY, state, jnp.int32(mine), PARAMS)
  assert np.isclose(float(ts.reward), -0.1)
  assert bool(ts.done) and not bool(ts.won) and not bool(ts.truncated)
  assert not np.asarray(lost.revealed).any()  # mines are never shown
  for action in (mine, int(np.flatnonzero(~mines)[0])):
    after, ts2 = step(KEY, lost, jnp.int32(action), PARAMS)
    assert float(ts2.reward) == 0.0 and bool(ts2.done) and not bool(ts2.invalid)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(lost)):
      assert (np.asarray(a) == np.asarray(b)).all()


def test_truncation_after_max_turns():
  env = MineSweeper(max_turns=3)
  _, step, from_board, *_ = jitted(env)
  mines = random_board(4)
  revealed = host_cascade(mines, *np.argwhere(~mines)[0])
  state = from_board(mines, revealed)
  cell = jnp.int32(int(np.flatnonzero(revealed)[0]))
  for turn in range(1, 4):
    state, ts = step(KEY, state, cell, PARAMS)
    assert bool(ts.done) == (turn == 3) and bool(ts.truncated) == (turn == 3)
    assert not bool(ts.won) and int(ts.steps) == turn
  state2, ts = step(KEY, state, cell, PARAMS)
  assert float(ts.reward) == 0.0 and int(state2.steps) == 3


@FAST
@given(seed=SEEDS)
def test_render_and_mask_agree(seed):
  reset, step, *_ = jitted(ENV)
  state, _ = reset(jax.random.key(seed), PARAMS)
  state, _ = step(KEY, state, jnp.int32(seed % 36), PARAMS)
  text = ENV.render_text(state, PARAMS)
  symbols = ENV.render_symbols(state, PARAMS)
  assert symbols.shape == (ENV.max_symbols,)
  assert ENV.symbols_to_text(symbols) == text
  assert text.count("\n") == 6 and text.startswith("Row 1: ")
  mask = np.asarray(ENV.action_mask(state, PARAMS))
  assert (mask == ~np.asarray(state.revealed).reshape(-1)).all()


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, name=st.sampled_from(["minesweeper", "minesweeper-4x4",
                                         "minesweeper-8x8", "short"]))
def test_differential_against_python_reference(seed, name):
  # "short": few turns and many mines, so truncation and losses both occur.
  env = (MineSweeper(num_mines=6, max_turns=4) if name == "short"
         else envs_jax.make(name))
  params = env.default_params
  reset, step, *_ = jitted(env)
  state, _ = reset(jax.random.key(seed), params)
  py = PyMineSweeper(env.height, env.width, env.num_mines, env.max_turns)
  assert py.from_state(np.asarray(state.mines), np.asarray(state.revealed)) \
      == env.render_text(state, params)
  rng = np.random.default_rng(seed)
  hw = env.height * env.width
  for _ in range(env.max_turns + 2):
    # Mostly unopened cells (so games progress), sometimes any index.
    hidden = np.flatnonzero(~np.asarray(state.revealed).reshape(-1))
    action = int(rng.choice(hidden) if rng.random() < 0.7
                 else rng.integers(-1, hw + 1))
    state, ts = step(KEY, state, jnp.int32(action), params)
    reward, done, won = py.step(action)
    assert np.isclose(float(ts.reward), reward)
    assert (bool(ts.done), bool(ts.won)) == (done, won)
    assert env.render_text(state, params) == py.render_text()


@FAST
@given(seed=SEEDS)
def test_python_reference_reset(seed):
  py = PyMineSweeper()
  text = py.reset(seed)
  mines = np.array(py.mines)
  revealed = np.array(py.revealed)
  assert mines.sum() == 3 and not (mines & revealed).any()
  assert revealed.any() and not (mines | revealed).all()
  assert text.count("?") == 36 - revealed.sum()
  assert py.reset(seed) == text  # its own seeded RNG


def test_state_key_tracks_the_revealed_mask():
  _, step, from_board, *_ = jitted(LONG)
  mines = random_board(5)
  state = from_board(mines, np.zeros_like(mines))
  keys = {int(ENV.state_key(state))}
  for cell in np.flatnonzero(~mines)[:4]:
    state, ts = step(KEY, state, jnp.int32(int(cell)), PARAMS)
    if not bool(ts.invalid):
      keys.add(int(ENV.state_key(state)))
  assert len(keys) >= 3


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, shape=st.sampled_from([(6, 6), (3, 5), (8, 8), (12, 12)]))
def test_cascade_masks_open_exactly_the_cascade(seed, shape):
  # Every safe cell: the cells sharing a mask bit with it (what step opens)
  # are its host cascade. 12x12 has 36 2x2 blocks: two mask words.
  h, w = shape
  rng = np.random.default_rng(seed)
  mines = np.zeros(h * w, bool)
  mines[rng.choice(h * w, rng.integers(1, h * w // 4 + 2), replace=False)] = True
  mines = mines.reshape(h, w)
  env = MineSweeper(height=h, width=w, num_mines=int(mines.sum()))
  state = jax.jit(env.state_from_board)(mines, np.zeros_like(mines))
  words = minesweeper.num_mask_words(h, w)
  assert words == (2 if h == 12 else 1)
  assert state.cascades.shape == (h, w, words)
  opened = jax.jit(jax.vmap(env._opened, in_axes=(None, 0)))(
      state, jnp.arange(h * w))
  for cell in np.flatnonzero(~mines.reshape(-1)):
    expected = host_cascade(mines, *divmod(int(cell), w))
    assert (np.asarray(opened[cell]) == expected).all(), (seed, cell)


@settings(max_examples=10, deadline=None)
@given(seed=SEEDS)
def test_differential_on_a_board_with_two_mask_words(seed):
  env = MineSweeper(height=12, width=12, num_mines=14, max_turns=30)
  params = env.default_params
  reset, step, *_ = jitted(env)
  state, _ = reset(jax.random.key(seed), params)
  py = PyMineSweeper(12, 12, 14, 30)
  py.from_state(np.asarray(state.mines), np.asarray(state.revealed))
  rng = np.random.default_rng(seed)
  for _ in range(env.max_turns):
    hidden = np.flatnonzero(~np.asarray(state.revealed).reshape(-1))
    action = int(rng.choice(hidden))
    state, ts = step(KEY, state, jnp.int32(action), params)
    reward, done, won = py.step(action)
    assert np.isclose(float(ts.reward), reward)
    assert (bool(ts.done), bool(ts.won)) == (done, won)
    assert env.render_text(state, params) == py.render_text()
    if done:
      break
