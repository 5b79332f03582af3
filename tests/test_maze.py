"""Tests for envs_jax.games.maze (ORBIT's maze) and its Python reference."""

from __future__ import annotations

import functools
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.games.maze import Maze, MazeState
from envs_jax.reference.maze import PyMaze, farthest_cells
from envs_jax.text import TextCodec
from lamer_jax.models.tokenizer import ByteTokenizer

ENV = Maze()
PARAMS = ENV.default_params
KEY = jax.random.key(0)   # the maze is deterministic: its steps ignore the key
UP, DOWN, LEFT, RIGHT = range(4)
DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))

_reset = jax.jit(ENV.reset)
_step = jax.jit(ENV.step)
_reset_batch = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))
_step_batch = jax.jit(jax.vmap(ENV.step, in_axes=(None, 0, 0, None)))
_views = jax.jit(jax.vmap(lambda s: (ENV.render_symbols(s, PARAMS),
                                     ENV.action_mask(s, PARAMS), ENV.state_key(s))))
_from_maze = jax.jit(ENV.state_from_maze)


@functools.cache
def _tasks(batch: int, seed: int):
  """``batch`` initial states of one key, as numpy arrays (drawn once)."""
  states, ts = _reset_batch(jax.random.split(jax.random.key(seed), batch), PARAMS)
  return jax.device_get(states), jax.device_get(ts)


def _index(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def bfs(walls: np.ndarray, source) -> dict:
  """Distances from ``source`` over the open cells (the test's own BFS)."""
  dist = {tuple(int(x) for x in source): 0}
  queue = deque(dist)
  while queue:
    r, c = queue.popleft()
    for dr, dc in DELTAS:
      n = (r + dr, c + dc)
      if (0 <= n[0] < walls.shape[0] and 0 <= n[1] < walls.shape[1]
          and not walls[n] and n not in dist):
        dist[n] = dist[(r, c)] + 1
        queue.append(n)
  return dist


def hand_maze(rows: list[str]) -> MazeState:
  """A fresh attempt from a 7x7 picture: # wall, . path, S start, G goal."""
  grid = np.array([list(r) for r in rows])
  assert grid.shape == (7, 7)
  start = [int(x) for x in np.argwhere(grid == "S")[0]]
  goal = [int(x) for x in np.argwhere(grid == "G")[0]]
  return _from_maze(grid == "#", jnp.asarray(start), jnp.asarray(goal))


def test_static_description():
  assert ENV.name == "maze" and ENV.max_turns == 9
  assert ENV.action_strings == ("up", "down", "left", "right")
  for a in ENV.action_strings:   # prefix-free candidates
    assert not any(b != a and b.startswith(a) for b in ENV.action_strings)
  assert np.asarray(ENV.action_mask(None, PARAMS)).tolist() == [True] * 4
  assert ENV.max_symbols == len(ENV.symbol_slots) == 17
  assert len(set(ENV.symbols)) == len(ENV.symbols)
  assert "up, down, left or right" in ENV.instructions
  assert "9 moves" in ENV.instructions
  assert (ENV.height, ENV.width) == (7, 7)
  with pytest.raises(ValueError, match="max_turns"):
    Maze(max_turns=0)
  with pytest.raises(ValueError, match="shortest_path"):
    Maze(shortest_path_min=9, shortest_path_max=8)
  with pytest.raises(ValueError, match="shapes"):
    Maze(shapes=((2, 6),))
  assert Maze(shapes=[[6, 6], [7, 7]]).shapes == ((6, 6), (7, 7))


def test_generated_mazes_have_a_farthest_goal_7_or_8_moves_away():
  s, ts = _tasks(1024, 1)
  assert not ts.done.any() and (ts.reward == 0).all() and (s.steps == 0).all()
  sizes = {}
  for b in range(1024):
    walls, (h, w) = s.walls[b], s.size[b]
    start, goal = tuple(s.position[b]), tuple(s.goal[b])
    sizes[(int(h), int(w))] = sizes.get((int(h), int(w)), 0) + 1
    # Walled all around within its size; the padding is wall too.
    assert walls[:, :1].all() and walls[:1, :].all()
    assert walls[h - 1:, :].all() and walls[:, w - 1:].all()
    assert not walls[start] and not walls[goal] and start != goal
    dist = bfs(walls, start)
    far = max(dist.values())
    assert goal in dist and dist[goal] == far and 7 <= far <= 8, b
    # The first farthest cell in row-major order; every open cell reachable.
    assert goal == min(c for c, d in dist.items() if d == far)
    assert len(dist) == int((~walls).sum())
    # The reference's BFS agrees (it is the differential test's oracle too).
    assert farthest_cells(walls.tolist(), start)[:2] == (far, sorted(
        c for c, d in dist.items() if d == far))
  # Every size occurs; 7x7 mazes pass the distance test most often.
  assert set(sizes) == {(6, 6), (6, 7), (7, 6), (7, 7)}
  assert sizes[(7, 7)] > sizes[(6, 7)] > sizes[(6, 6)] > 30
  # Tasks differ. The space is small (a maximal tree of corridors in a 4x4
  # to 5x5 interior), so some repeat: ORBIT's generator gives 850 distinct
  # (maze, start) pairs in its first 1024 accepted draws.
  assert len({(s.walls[b].tobytes(), tuple(s.position[b])) for b in range(1024)}) > 850


def test_generation_grows_a_maximal_tree_of_corridors_then_adds_loops():
  # Without loops: a tree (open cells - 1 adjacent open pairs), one cell wide
  # (no 2x2 open block), maximal (no inner wall cell touches exactly one
  # open cell), grown from the start.
  env = Maze(num_loops=(0, 0))
  draw = jax.jit(jax.vmap(env._draw_maze))
  walls, size, start, _, _ = jax.device_get(draw(jax.random.split(jax.random.key(3), 256)))
  for b in range(256):
    o = ~walls[b]
    h, w = size[b]
    assert o.reshape(-1)[start[b]]
    edges = int((o[1:] & o[:-1]).sum() + (o[:, 1:] & o[:, :-1]).sum())
    assert edges == int(o.sum()) - 1
    assert not (o[1:, 1:] & o[:-1, 1:] & o[1:, :-1] & o[:-1, :-1]).any()
    p = np.pad(o, 1).astype(int)
    touching = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    inner = np.zeros_like(o)
    inner[1:h - 1, 1:w - 1] = True
    assert not (inner & ~o & (touching == 1)).any()
  # The default's 2 or 3 loop cells each add at least one edge to the tree,
  # when a wall cell between exactly two open cells is left.
  s, _ = _tasks(1024, 1)
  extra = []
  for b in range(256):
    o = ~s.walls[b]
    edges = int((o[1:] & o[:-1]).sum() + (o[:, 1:] & o[:, :-1]).sum())
    extra.append(edges - (int(o.sum()) - 1))
  assert max(extra) <= 6 and np.mean(extra) > 1.2, np.bincount(extra)


def test_same_key_same_task():
  a, _ = _reset(jax.random.key(5), PARAMS)
  b, _ = _reset(jax.random.key(5), PARAMS)
  c, _ = _reset(jax.random.key(6), PARAMS)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not (np.array_equal(a.walls, c.walls) and np.array_equal(a.position, c.position))
  # The batched reset draws exactly the single reset's task.
  s, _ = _tasks(1024, 1)
  one, _ = _reset(jax.random.split(jax.random.key(1), 1024)[7], PARAMS)
  jax.tree.map(np.testing.assert_array_equal, _index(s, 7), jax.device_get(one))


# A hand-made maze: the start S at (3, 3) has walls up and down, the goal
# left and a path right.
HAND = ["#######",
        "#..#..#",
        "##.#.##",
        "#.GS..#",
        "#.#####",
        "#.....#",
        "#######"]


def test_observation_names_the_four_neighbours():
  state = hand_maze(HAND)
  assert ENV.render_text(state, PARAMS) == (
      "Last move: none\nPosition: (3, 3)\n"
      "Up: wall, down: wall, left: goal, right: path\n")
  assert np.asarray(ENV.neighbours(state)).tolist() == [0, 0, 2, 1]
  state, ts = _step(KEY, state, jnp.int32(RIGHT), PARAMS)
  assert ENV.render_text(state, PARAMS) == (
      "Last move: right, moved\nPosition: (3, 4)\n"
      "Up: path, down: wall, left: path, right: path\n")
  assert not bool(ts.invalid) and not bool(ts.done) and float(ts.reward) == 0.0
  state, _ = _step(KEY, state, jnp.int32(UP), PARAMS)
  state, _ = _step(KEY, state, jnp.int32(UP), PARAMS)
  assert ENV.render_text(state, PARAMS) == (
      "Last move: up, moved\nPosition: (1, 4)\n"
      "Up: wall, down: path, left: wall, right: path\n")
  for s in (hand_maze(HAND), state):
    assert ENV.symbols_to_text(ENV.render_symbols(s, PARAMS)) == ENV.render_text(s, PARAMS)


def test_wall_hit_takes_the_turn_and_changes_nothing_else():
  state = hand_maze(HAND)
  nxt, ts = _step(KEY, state, jnp.int32(DOWN), PARAMS)
  assert bool(ts.invalid) and not bool(ts.done) and float(ts.reward) == 0.0
  assert int(ts.steps) == int(nxt.steps) == 1
  assert np.asarray(nxt.position).tolist() == [3, 3]
  assert ENV.render_text(nxt, PARAMS).startswith("Last move: down, hit a wall\n")
  assert int(ENV.state_key(nxt)) != int(ENV.state_key(state))


def test_reaching_the_goal_wins_and_later_steps_are_noops():
  state = hand_maze(HAND)
  won, ts = _step(KEY, state, jnp.int32(LEFT), PARAMS)
  assert bool(ts.done) and bool(ts.won) and not bool(ts.truncated)
  assert float(ts.reward) == 1.0 and not bool(ts.invalid)
  assert ENV.render_text(won, PARAMS) == (
      "Last move: left, reached the goal\nPosition: (3, 2)\n"
      "Up: path, down: wall, left: path, right: path\n")
  for action in range(4):
    after, ts2 = _step(KEY, won, jnp.int32(action), PARAMS)
    assert float(ts2.reward) == 0.0 and bool(ts2.done) and bool(ts2.won)
    assert not bool(ts2.invalid) and int(ts2.steps) == 1
    jax.tree.map(np.testing.assert_array_equal, after, won)
  # reward_win is a param.
  _, ts = _step(KEY, state, jnp.int32(LEFT), PARAMS.replace(reward_win=jnp.float32(3.0)))
  assert float(ts.reward) == 3.0


def test_turn_limit_truncates_but_a_win_on_the_last_turn_counts():
  state = hand_maze(HAND)
  for turn in range(1, 10):
    state, ts = _step(KEY, state, jnp.int32(DOWN), PARAMS)
    assert bool(ts.done) == (turn == 9) == bool(ts.truncated)
    assert not bool(ts.won) and int(ts.steps) == turn
  # Eight wall hits, then the goal on turn 9.
  state = hand_maze(HAND)
  for _ in range(8):
    state, ts = _step(KEY, state, jnp.int32(DOWN), PARAMS)
  state, ts = _step(KEY, state, jnp.int32(LEFT), PARAMS)
  assert bool(ts.won) and bool(ts.done) and not bool(ts.truncated)
  assert float(ts.reward) == 1.0 and int(ts.steps) == 9


def test_out_of_range_actions_are_clipped():
  state = hand_maze(HAND)
  for action, expected in ((-3, UP), (7, RIGHT)):
    a, _ = _step(KEY, state, jnp.int32(action), PARAMS)
    b, _ = _step(KEY, state, jnp.int32(expected), PARAMS)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _greedy_or_random(walls, goal, position, rng) -> int:
  """A move towards the goal with probability 0.75, else a random move."""
  if rng.random() < 0.25 or tuple(position) == tuple(goal):
    return int(rng.integers(4))
  dist = bfs(walls, goal)
  r, c = position
  best = [a for a, (dr, dc) in enumerate(DELTAS)
          if dist.get((r + dr, c + dc), 99) < dist[(r, c)]]
  return best[0]


def test_matches_python_reference_on_mixed_play():
  # 256 tasks, max_turns + 3 steps: mostly goal-seeking moves (so attempts
  # are won, at different turns) mixed with random ones (walls, truncation).
  batch, turns = 256, ENV.max_turns + 3
  s, _ = _tasks(1024, 2)
  state = _index(s, slice(0, batch))
  rng = np.random.default_rng(0)
  refs = []
  for b in range(batch):
    ref = PyMaze()
    text = ref.reset(state.walls[b].tolist(), tuple(state.position[b]),
                     tuple(state.goal[b]))
    assert ENV.render_text(_index(state, b), PARAMS) == text
    refs.append(ref)
  outcomes = {"won": 0, "truncated": 0, "invalid": 0}
  for t in range(turns):
    actions = np.array([_greedy_or_random(state.walls[b], tuple(state.goal[b]),
                                          tuple(state.position[b]), rng)
                        for b in range(batch)], np.int32)
    state, ts = jax.device_get(_step_batch(KEY, state, jnp.asarray(actions), PARAMS))
    symbols, masks, _ = jax.device_get(_views(state))
    assert masks.all()
    for b in range(batch):
      reward, done, won, invalid = refs[b].step(int(actions[b]))
      assert (float(ts.reward[b]), bool(ts.done[b]), bool(ts.won[b]),
              bool(ts.invalid[b])) == (reward, done, won, invalid), (b, t)
      assert bool(ts.truncated[b]) == refs[b].truncated
      assert int(ts.steps[b]) == refs[b].steps
      text = ENV.render_text(_index(state, b), PARAMS)
      assert text == refs[b].render_text()
      assert ENV.symbols_to_text(symbols[b]) == text
      outcomes["invalid"] += invalid
  outcomes["won"] = sum(r.won for r in refs)
  outcomes["truncated"] = sum(r.truncated for r in refs)
  assert all(r.done for r in refs)
  assert min(outcomes.values()) > 20, outcomes
  assert len({r.steps for r in refs if r.won}) >= 2   # wins at 7, 8, 9 moves


def test_state_key_hashes_what_is_observable():
  s, _ = _tasks(1024, 1)
  state = _index(s, slice(0, 64))
  by_text = {}
  for t in range(4):
    state, _ = _step_batch(KEY, state, jnp.full((64,), t, jnp.int32), PARAMS)
    _, _, keys = jax.device_get(_views(state))
    assert keys.dtype == np.uint32
    for b in range(64):
      text = ENV.render_text(_index(state, b), PARAMS)
      by_text.setdefault(text, set()).add(int(keys[b]))
  assert all(len(k) == 1 for k in by_text.values())
  assert len({next(iter(k)) for k in by_text.values()}) == len(by_text) > 50


def test_renderings_follow_the_symbol_slots():
  s, _ = _tasks(1024, 1)
  state = _index(s, slice(0, 128))
  actions = jax.random.randint(jax.random.key(9), (ENV.max_turns, 128), 0, 4)
  rows = [jax.device_get(_views(state))[0]]
  for a in actions:
    state, _ = _step_batch(KEY, state, a, PARAMS)
    rows.append(jax.device_get(_views(state))[0])
  symbols = np.concatenate(rows)
  assert (symbols >= 0).all()   # never padded
  for p, allowed in enumerate(ENV.symbol_slots):
    seen = set(np.unique(symbols[:, p]).tolist())
    assert seen <= set(allowed), (p, seen - set(allowed))
  # A byte-level codec restores the text within its slot-sized buffer.
  codec = TextCodec.for_env(ByteTokenizer(), ENV)
  sample = symbols[::9]
  buffers = jax.device_get(jax.jit(jax.vmap(codec.encode))(jnp.asarray(sample)))
  for i, row in enumerate(sample):
    assert codec.decode(_index(buffers, i)) == ENV.symbols_to_text(row)
  assert int(buffers.length.max()) <= codec.max_tokens


def test_step_compiles_once():
  step = jax.jit(ENV.step)
  state, _ = _reset(jax.random.key(1), PARAMS)
  for a in range(4):
    state, _ = step(KEY, state, jnp.int32(a), PARAMS)
  other, _ = _reset(jax.random.key(2), PARAMS)
  step(KEY, other, jnp.int32(2), PARAMS.replace(reward_win=jnp.float32(2.0)))
  assert step._cache_size() == 1


def test_registered():
  import envs_jax
  assert envs_jax.make("maze") == ENV
  assert ENV.max_turns == 9
