"""Tests for envs_jax.games.sokoban and its plain-Python reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs_jax
from envs_jax.reference.sokoban import PySokoban, solve
from envs_jax.games.sokoban import Sokoban, SokobanState

ENV = Sokoban()
PARAMS = ENV.default_params
KEY = jax.random.key(0)  # Sokoban is deterministic: its steps ignore the key
BATCH = 1024
TURNS = 10  # turns per rollout in the property tests (> max_turns)

_reset_batch = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))
_step_batch = jax.jit(jax.vmap(ENV.step, in_axes=(None, 0, 0, None)))
_step = jax.jit(ENV.step)
_symbols = jax.jit(ENV.render_symbols)


@functools.lru_cache(maxsize=None)
def _rollout_fn(env: Sokoban):
  """A jitted rollout for ``env``: (state, int32[T] actions) -> stacked steps."""
  @jax.jit
  def rollout(state, actions):
    def body(s, a):
      s, ts = env.step(KEY, s, a, PARAMS)
      return s, (s, ts, env.render_symbols(s, PARAMS), env.state_key(s))
    return jax.lax.scan(body, state, actions)[1]
  return rollout


_rollout = _rollout_fn(ENV)
# Same level shapes, but the move limit binds before the turn limit.
SHORT_ENV = Sokoban(max_moves=8)


@functools.lru_cache(maxsize=None)
def _levels():
  """BATCH generated initial states, as numpy arrays (generated once)."""
  states, ts = _reset_batch(jax.random.split(jax.random.key(0), BATCH), PARAMS)
  return jax.device_get(states), jax.device_get(ts)


def _index(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _hand_level(rows: list[str]) -> SokobanState:
  """A state from a picture: # wall, O target, X box, √ box on target, P/S."""
  grid = np.array([list(r) for r in rows])
  walls = grid == "#"
  targets = np.isin(grid, ["O", "√", "S"])
  boxes = np.isin(grid, ["X", "√"])
  player = np.argwhere(np.isin(grid, ["P", "S"]))[0]
  false = jnp.zeros((), jnp.bool_)
  return SokobanState(
      walls=jnp.asarray(walls), targets=jnp.asarray(targets),
      boxes=jnp.asarray(boxes), player=jnp.asarray(player, jnp.int32),
      turns=jnp.int32(0), moves=jnp.int32(0), done=false, won=false,
      truncated=false)


# Two boxes; "right" pushes box 1 onto its target, then "down, left, down" and
# "right" push box 2 onto its target (optimal: 5 moves).
TWO_BOX = ["######",
           "#PXO_#",
           "#____#",
           "#_XO_#",
           "#____#",
           "######"]


def _act(text: str) -> jnp.ndarray:
  return jnp.int32(ENV.action_strings.index(text))


# ---- compilation and shapes ------------------------------------------------


def test_action_strings():
  assert ENV.num_actions == 4 + 16 + 64
  assert ENV.action_strings[:5] == ("up", "down", "left", "right", "up, up")
  assert ENV.action_strings[-1] == "right, right, right"
  assert "down, down, right" in ENV.action_strings
  assert len(set(ENV.action_strings)) == ENV.num_actions
  assert Sokoban(moves_per_turn=1).action_strings == ("up", "down", "left", "right")
  assert bool(jnp.all(ENV.action_mask(_index(_levels()[0], 0), PARAMS)))


def test_reset_step_batch_1():
  states, ts = _reset_batch(jax.random.split(jax.random.key(3), 1), PARAMS)
  assert states.walls.shape == (1, 6, 6) and states.walls.dtype == jnp.bool_
  assert states.player.shape == (1, 2) and states.player.dtype == jnp.int32
  assert not bool(ts.done[0]) and float(ts.reward[0]) == 0.0
  states, ts = _step_batch(KEY, states, jnp.zeros((1,), jnp.int32), PARAMS)
  assert ts.reward.shape == (1,) and ts.reward.dtype == jnp.float32
  assert int(states.turns[0]) == 1 and int(ts.steps[0]) == 1


def test_reset_step_batch_1024():
  states, ts = _levels()
  assert states.boxes.shape == (BATCH, 6, 6)
  assert not ts.done.any() and not states.done.any()
  # No level starts solved, and every box sits on its own floor cell.
  assert ((states.boxes & ~states.targets).sum((1, 2)) > 0).all()
  assert (states.boxes.sum((1, 2)) == ENV.num_boxes).all()
  actions = jax.random.randint(jax.random.key(1), (2, BATCH), 0, ENV.num_actions)
  states, first = _step_batch(KEY, states, actions[0], PARAMS)
  states, ts = _step_batch(KEY, states, actions[1], PARAMS)
  assert ts.done.shape == (BATCH,)
  # An attempt that ended on the first turn does not count the second one.
  np.testing.assert_array_equal(states.turns, 2 - np.asarray(first.done))
  assert (np.asarray(states.boxes).sum((1, 2)) == ENV.num_boxes).all()


def test_registry_overrides_generate_valid_levels():
  for name, boxes, size in (("sokoban-hard", 3, 6), ("sokoban-8x8", 3, 8)):
    env = envs_jax.make(name)
    assert (env.num_boxes, env.height, env.width) == (boxes, size, size)
    keys = jax.random.split(jax.random.key(7), 4)
    states, _ = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(
        keys, env.default_params)
    states = jax.device_get(states)
    for i in range(4):
      s = _index(states, i)
      assert s.boxes.sum() == boxes and s.targets.sum() == boxes
      assert not (s.boxes & s.walls).any() and not (s.targets & s.walls).any()
      assert s.walls[0].all() and s.walls[-1].all()
      assert s.walls[:, 0].all() and s.walls[:, -1].all()
      r, c = s.player
      assert not s.walls[r, c] and not s.boxes[r, c]
      length = solve(s.walls, s.targets, s.boxes, s.player, max_depth=60)
      assert length is not None and length > 0, (name, i)


# ---- rules on hand-built levels ----------------------------------------------


def test_known_solution_rewards_exactly():
  state = _hand_level(TWO_BOX)
  assert solve(state.walls, state.targets, state.boxes, state.player) == 5
  state, ts = _step(KEY, state, _act("right"), PARAMS)
  np.testing.assert_allclose(ts.reward, -0.1 + 1.0, rtol=1e-6)
  assert not bool(ts.done) and not bool(ts.invalid)
  state, ts = _step(KEY, state, _act("down, left, down"), PARAMS)
  np.testing.assert_allclose(ts.reward, -0.3, rtol=1e-6)
  # The turn stops at the solving move: "up, up" is never played.
  state, ts = _step(KEY, state, _act("right, up, up"), PARAMS)
  np.testing.assert_allclose(ts.reward, -0.1 + 1.0 + 10.0, rtol=1e-6)
  assert bool(ts.done) and bool(ts.won) and not bool(ts.truncated)
  assert int(state.moves) == 5 and int(ts.steps) == 3
  assert state.player.tolist() == [3, 2]
  assert ENV.render_text(state, PARAMS) == (
      "Row 1: ######\nRow 2: #__√_#\nRow 3: #____#\nRow 4: #_P√_#\n"
      "Row 5: #____#\nRow 6: ######\n")


def test_push_off_target_into_corner_is_deadlock_and_then_noop():
  state, _ = _step(KEY, _hand_level(TWO_BOX), _act("right"), PARAMS)
  # Pushing the box from its target into the top-right corner: -0.1 - 1.
  state, ts = _step(KEY, state, _act("right, down, down"), PARAMS)
  np.testing.assert_allclose(ts.reward, -1.1, rtol=1e-6)
  assert bool(ts.done) and not bool(ts.won) and not bool(ts.truncated)
  assert int(state.moves) == 2  # the turn stopped at the deadlock
  after, ts2 = _step(KEY, state, _act("left"), PARAMS)
  assert float(ts2.reward) == 0.0 and bool(ts2.done) and not bool(ts2.won)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


def test_blocked_moves_are_invalid_and_truncation_after_max_turns():
  state = _hand_level(TWO_BOX)
  for turn in range(1, ENV.max_turns + 1):
    state, ts = _step(KEY, state, _act("up, left"), PARAMS)  # both into walls
    assert bool(ts.invalid)
    np.testing.assert_allclose(ts.reward, -0.2, rtol=1e-6)
    assert bool(ts.done) == (turn == ENV.max_turns)
  assert bool(ts.truncated) and not bool(ts.won) and int(state.turns) == 7
  # A push into another box or a wall is a no-op too.
  blocked = _hand_level(["######", "#PXX_#", "#____#", "#_OO_#", "#____#",
                         "######"])
  _, ts = _step(KEY, blocked, _act("right"), PARAMS)
  assert bool(ts.invalid)


def test_truncation_after_max_moves_mid_turn():
  env = Sokoban(max_moves=4)
  step = jax.jit(env.step)
  state = _hand_level(TWO_BOX)
  state, ts = step(KEY, state, _act("down, down, up"), PARAMS)
  assert not bool(ts.done) and int(state.moves) == 3
  state, ts = step(KEY, state, _act("up, up, up"), PARAMS)
  assert bool(ts.done) and bool(ts.truncated) and not bool(ts.won)
  assert int(state.moves) == 4
  np.testing.assert_allclose(ts.reward, -0.1, rtol=1e-6)


def test_render_and_instructions():
  state = _hand_level(TWO_BOX)
  text = ENV.render_text(state, PARAMS)
  assert text.splitlines()[1] == "Row 2: #PXO_#"
  ids = _symbols(state, PARAMS)
  assert ids.shape == (ENV.max_symbols,)
  assert ENV.symbols_to_text(ids) == text
  for sym in ("#", "_", "O", "X", "√", "P", "S", "\n", "Row 1: ", "Row 6: "):
    assert sym in ENV.symbols
  assert "Row 1" in ENV.instructions and "√" in ENV.instructions
  assert "comma-separated" in ENV.instructions and "+10" in ENV.instructions


def test_state_key_tracks_player_and_boxes():
  state = _hand_level(TWO_BOX)
  moved, _ = _step(KEY, state, _act("down"), PARAMS)
  back, _ = _step(KEY, moved, _act("up"), PARAMS)
  assert int(ENV.state_key(state)) == int(ENV.state_key(back))
  assert int(ENV.state_key(state)) != int(ENV.state_key(moved))
  assert ENV.state_key(state).dtype == jnp.uint32


# ---- properties over generated levels and random play ------------------------

_level_and_actions = st.tuples(
    st.integers(0, BATCH - 1),
    st.lists(st.integers(0, ENV.num_actions - 1), min_size=TURNS, max_size=TURNS))


@settings(max_examples=30, deadline=None)
@given(_level_and_actions)
def test_invariants_under_random_play(case):
  index, actions = case
  start = _index(_levels()[0], index)
  states, steps, symbols, _ = jax.device_get(
      _rollout(start, jnp.asarray(actions, jnp.int32)))
  prev_done = False
  prev = start
  for t in range(TURNS):
    s, ts = _index(states, t), _index(steps, t)
    np.testing.assert_array_equal(s.walls, start.walls)
    np.testing.assert_array_equal(s.targets, start.targets)
    assert s.boxes.sum() == ENV.num_boxes
    assert not (s.boxes & s.walls).any()
    r, c = s.player
    assert not s.walls[r, c] and not s.boxes[r, c]
    assert bool(ts.won) == bool((s.boxes <= s.targets).all())
    if ts.won:
      assert ts.done
    assert ts.done or s.turns < ENV.max_turns
    if prev_done:  # stepping a finished attempt changes nothing
      assert ts.reward == 0.0 and ts.done
      for a, b in zip(jax.tree.leaves(prev), jax.tree.leaves(s)):
        np.testing.assert_array_equal(a, b)
    assert ENV.symbols_to_text(symbols[t]) == ENV.render_text(s, PARAMS)
    prev_done, prev = bool(ts.done), s
  assert prev_done  # TURNS > max_turns, so the attempt is over


@pytest.mark.parametrize("env", [ENV, SHORT_ENV], ids=["default", "max_moves=8"])
@settings(max_examples=30, deadline=None)
@given(case=_level_and_actions)
def test_matches_python_reference_step_for_step(env, case):
  index, actions = case
  start = _index(_levels()[0], index)
  states, steps, _, _ = jax.device_get(
      _rollout_fn(env)(start, jnp.asarray(actions, jnp.int32)))
  ref = PySokoban.from_state(start.walls.tolist(), start.targets.tolist(),
                             start.boxes.tolist(), start.player.tolist(),
                             max_turns=env.max_turns, max_moves=env.max_moves)
  assert ref.render_text() == ENV.render_text(start, PARAMS)
  for t, a in enumerate(actions):
    reward, done, won = ref.step(a)
    ts = _index(steps, t)
    assert reward == pytest.approx(float(ts.reward), abs=1e-5), t
    assert (done, won) == (bool(ts.done), bool(ts.won)), t
    assert ref.truncated == bool(ts.truncated), t
    assert ref.invalid == bool(ts.invalid), t
    assert (ref.turns, ref.moves) == (int(states.turns[t]), int(states.moves[t]))
    assert ref.render_text() == env.render_text(_index(states, t), PARAMS), t


def test_generated_levels_are_solvable_and_not_trivial():
  states = _levels()[0]
  lengths = []
  for i in range(50):
    s = _index(states, i)
    length = solve(s.walls, s.targets, s.boxes, s.player, max_depth=60)
    assert length is not None and length > 0, i
    lengths.append(length)
  lengths = np.array(lengths)
  print(f"\noptimal solution lengths over 50 levels: min {lengths.min()} "
        f"median {np.median(lengths):g} max {lengths.max()}; "
        f"histogram {np.bincount(lengths).tolist()}")
  # LaMer's levels need 5..21 moves; most of ours should too.
  assert np.mean((lengths >= 5) & (lengths <= 21)) >= 0.8
  assert np.median(lengths) >= 5


def test_python_generator_levels_are_solvable():
  for seed in range(10):
    env = PySokoban().reset(seed)
    walls, targets, boxes = env.grids()
    assert len(env.boxes) == 2 and not env.boxes <= env.targets
    assert solve(walls, targets, boxes, env.player) is not None


def _random_board(seed: int):
  """A walled 6x6 board with random inner walls, targets, boxes (some on
  targets or in corners) and player: states reset never produces."""
  rng = np.random.default_rng(seed)
  walls = np.ones((6, 6), bool)
  walls[1:-1, 1:-1] = rng.random((4, 4)) < 0.2
  floor = np.argwhere(~walls)
  if len(floor) < 2:
    walls[1:-1, 1:-1] = False
    floor = np.argwhere(~walls)
  pick = rng.permutation(len(floor))
  player = floor[pick[0]]
  boxes = np.zeros((6, 6), bool)
  targets = np.zeros((6, 6), bool)
  for r, c in floor[pick[1:1 + rng.integers(0, 4)]]:
    boxes[r, c] = True
  for r, c in floor[rng.permutation(len(floor))[:rng.integers(1, 4)]]:
    targets[r, c] = True
  return walls, targets, boxes, player


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1),
       actions=st.lists(st.integers(0, ENV.num_actions - 1), min_size=TURNS,
                        max_size=TURNS))
def test_matches_python_reference_on_random_boards(seed, actions):
  # Boxes may start in dead corners, on targets, or all solved: the step's
  # running counts (boxes off target, in corners) must agree with the
  # reference's scans of the board.
  walls, targets, boxes, player = _random_board(seed)
  false = jnp.zeros((), jnp.bool_)
  start = SokobanState(
      walls=jnp.asarray(walls), targets=jnp.asarray(targets),
      boxes=jnp.asarray(boxes), player=jnp.asarray(player, jnp.int32),
      turns=jnp.int32(0), moves=jnp.int32(0), done=false, won=false,
      truncated=false)
  states, steps, _, _ = jax.device_get(
      _rollout(start, jnp.asarray(actions, jnp.int32)))
  ref = PySokoban.from_state(walls.tolist(), targets.tolist(), boxes.tolist(),
                             player.tolist())
  for t, a in enumerate(actions):
    reward, done, won = ref.step(a)
    ts = _index(steps, t)
    assert reward == pytest.approx(float(ts.reward), abs=1e-5), t
    assert (done, won, ref.invalid) == (bool(ts.done), bool(ts.won),
                                        bool(ts.invalid)), t
    assert ref.render_text() == ENV.render_text(_index(states, t), PARAMS), t
