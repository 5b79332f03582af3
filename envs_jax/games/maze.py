"""Maze: walk from the start to the goal, seeing only the four cells around you.

ORBIT's held-out game (see REFERENCES.md, "ORBIT's game suite"; the rules
follow ORBIT's ``envs/maze_env_adapter.py``). A *task* is a maze drawn in
``reset``: its size among ``shapes`` (ORBIT: 6x6, 6x7, 7x6 and 7x7, the outer
ring of cells being wall), a random start among the inner cells, and the goal
on a cell farthest from the start by the shortest path. Mazes whose farthest
distance falls outside [``shortest_path_min``, ``shortest_path_max``] = [7, 8]
are redrawn, size included (ORBIT redraws with the next seed), so the goal is
always 7 or 8 moves away. The same maze is replayed attempt after attempt: an
agent that remembers the corridors it explored can walk straight to the goal.

Each turn the agent moves one cell: ``up``, ``down``, ``left`` or ``right``
(up lowers the row). A move into a wall leaves the agent in place and still
takes the turn (``invalid``), as in ORBIT, where it answers "You hit the wall":
all four moves are always allowed (the mask is all True), since bumping into
walls is part of exploring a maze. Reaching the goal wins the attempt (reward
``reward_win``, 1.0, ORBIT's reward per solved episode); an attempt not won
after ``max_turns`` (9) moves is truncated. Out-of-range action indices are
clipped to a direction.

The observation names the last move and its outcome, the agent's position
(row, column; 0-based, counted from the top-left corner, so the outer wall is
row and column 0 and the inner cells start at 1, as in ORBIT) and what lies
one step up, down, left and right, e.g.::

    Last move: left, moved
    Position: (3, 2)
    Up: path, down: wall, left: goal, right: path

Choices where ORBIT is loose or does not fit a static-shape game:

- Generation (ORBIT grows corridors with Python's ``random``; not
  reproducible here, so written anew with the same kind of maze): a random
  growth from the start carves, one at a time, a uniformly chosen wall cell of
  the interior that touches exactly one open cell (4-neighbourhood), until no
  such cell is left, which gives a maximal tree of one-cell-wide corridors
  (ORBIT's carving rule, "at most one open neighbour"); then 2 or 3 loops
  (``num_loops``; ORBIT: ``randint(2, max(3, h * w // 30))``, which is 2 or 3
  at these sizes) each open a uniformly chosen interior wall cell with exactly
  two open neighbours. ORBIT's later phases (extending dead ends, reconnecting
  unreachable cells) have nothing left to do after a maximal growth, so they
  have no counterpart. The farthest-distance histograms are close to ORBIT's
  per size: 11% of 6x6 draws are accepted here (ORBIT: 8%), 36% of 6x7 and
  7x6 ones (32-36%), 53% of 7x7 ones (56%); 34% overall (33%).
- Every maze is padded to the largest shape (7x7 by default) with wall
  cells; the padding is never adjacent to an inner cell, so it never shows.
- Ties for the farthest cell go to the first in row-major order (ORBIT: the
  first in its breadth-first order).
- ORBIT's wall message replaces the observation ("You hit the wall. Please
  choose another direction."); here every observation has the same three
  lines, the first of which says that the move hit a wall.
- Distances come from ``shortest_path_max`` rounds of vectorised relaxation
  (each open cell takes the least neighbour distance + 1); a maze with an open
  cell still unreached after them has a farther cell than allowed and is
  redrawn. The redraws are a bounded ``lax.while_loop`` (``_MAX_MAZE_DRAWS``);
  with a third of the draws accepted, running out has probability below
  1e-10 (the last draw is then kept).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays

# Direction order shared with the action strings and the Python reference.
DIRECTION_NAMES = ("up", "down", "left", "right")
DIRECTIONS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], np.int32)
# What a neighbouring cell can be, in symbol order.
CELL_NAMES = ("wall", "path", "goal")
WALL, PATH, GOAL = range(3)
# Outcomes of the last move (-1: no move yet).
MOVED, HIT_WALL, REACHED_GOAL = range(3)
OUTCOME_TEXT = ("moved", "hit a wall", "reached the goal")

# Maze redraws. About a third of the draws have their farthest cell at 7 or 8
# moves, so 64 draws all fail with probability below 0.67**64 < 1e-10; the
# bound only keeps the loop finite.
_MAX_MAZE_DRAWS = 64
_FAR = 1 << 20   # "not reached yet" in the distance relaxation


def last_move_text(move: int, outcome: int) -> str:
  """The text after "Last move: " for ``move`` (-1: none) and its outcome."""
  if move < 0:
    return "none"
  return f"{DIRECTION_NAMES[move]}, {OUTCOME_TEXT[outcome]}"


@struct.dataclass
class MazeParams:
  """Task-distribution knobs (the maze sizes and distances are static).

  Attributes:
    reward_win: float32, reward of the move that reaches the goal.
  """

  reward_win: jax.Array


@struct.dataclass
class MazeState:
  """One attempt in one maze.

  Attributes:
    walls: bool[H, W], True on walls; the maze fills the top-left
      ``size`` corner, the rest is wall padding.
    size: int32[2], (height, width) of the drawn maze, outer wall included.
    goal: int32[2], (row, col) of the goal.
    position: int32[2], (row, col) of the agent (the start after ``reset``).
    last_move: int32, direction of the last move (-1 before any).
    last_outcome: int32, MOVED, HIT_WALL or REACHED_GOAL (-1 before any).
    steps: int32 moves taken in this attempt.
    done: bool, the attempt is over (won or truncated).
    won: bool, the agent reached the goal.
    truncated: bool, the attempt ran out of turns.
  """

  walls: jax.Array
  size: jax.Array
  goal: jax.Array
  position: jax.Array
  last_move: jax.Array
  last_outcome: jax.Array
  steps: jax.Array
  done: jax.Array
  won: jax.Array
  truncated: jax.Array


def open_neighbours(open_cells: jax.Array) -> jax.Array:
  """int32[H, W]: open cells among each cell's 4 neighbours (none outside)."""
  p = jnp.pad(open_cells.astype(jnp.int32), 1)
  return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]


def distances(open_cells: jax.Array, start: jax.Array, rounds: int) -> jax.Array:
  """int32[H, W] shortest-path distances from ``start`` (``_FAR``: farther
  than ``rounds`` moves, unreachable, or a wall).

  Args:
    open_cells: bool[H, W], the cells one can stand on.
    start: bool[H, W], one-hot.
    rounds: static number of relaxation rounds; distances up to it are exact.
  """
  def relax(_, dist):
    p = jnp.pad(dist, 1, constant_values=_FAR)
    near = jnp.minimum(jnp.minimum(p[:-2, 1:-1], p[2:, 1:-1]),
                       jnp.minimum(p[1:-1, :-2], p[1:-1, 2:]))
    return jnp.where(open_cells, jnp.minimum(dist, near + 1), _FAR)

  init = jnp.where(start & open_cells, 0, _FAR).astype(jnp.int32)
  return jax.lax.fori_loop(0, rounds, relax, init)


@dataclasses.dataclass(frozen=True)
class Maze(Environment):
  """ORBIT's maze: reach the farthest cell, seeing only your four neighbours.

  Attributes:
    name: registry name.
    max_turns: moves per attempt (ORBIT: 9).
    shapes: the (height, width) sizes a maze is drawn from, uniformly, outer
      wall included; every maze is padded to the largest height and width.
    shortest_path_min, shortest_path_max: the range of the goal's distance
      from the start; mazes outside it are redrawn.
    num_loops: (least, most) cells opened after the growth to make loops,
      drawn uniformly in that range.
  """

  name: str = "maze"
  max_turns: int = 9
  shapes: tuple[tuple[int, int], ...] = ((6, 6), (6, 7), (7, 6), (7, 7))
  shortest_path_min: int = 7
  shortest_path_max: int = 8
  num_loops: tuple[int, int] = (2, 3)

  def __post_init__(self):
    shapes = tuple(tuple(s) for s in self.shapes)   # lists from a config
    object.__setattr__(self, "shapes", shapes)
    object.__setattr__(self, "num_loops", tuple(self.num_loops))
    if not shapes or any(len(s) != 2 or min(s) < 3 for s in shapes):
      raise ValueError(f"shapes must be (height, width) pairs >= 3, got {shapes}")
    if max(max(s) for s in shapes) > 10:
      raise ValueError("positions are rendered as one digit: shapes must be "
                       f"at most 10x10, got {shapes}")
    if not 1 <= self.shortest_path_min <= self.shortest_path_max:
      raise ValueError("need 1 <= shortest_path_min <= shortest_path_max, got "
                       f"{self.shortest_path_min}, {self.shortest_path_max}")
    lo, hi = self.num_loops
    if not 0 <= lo <= hi:
      raise ValueError(f"num_loops must be (least, most), 0 <= least <= most, "
                       f"got {self.num_loops}")
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")

  @property
  def height(self) -> int:
    """Height of the padded grid (the largest maze height)."""
    return max(h for h, _ in self.shapes)

  @property
  def width(self) -> int:
    """Width of the padded grid (the largest maze width)."""
    return max(w for _, w in self.shapes)

  # ---- static description ------------------------------------------------
  # Symbols: the digits 0..max(H, W) - 1 first (a digit's id is its value),
  # then the cell names (id = _cell_base + WALL / PATH / GOAL), the fixed
  # pieces, the last-move symbols ("none" and the 4 x 3 (move, outcome)
  # pairs, id = _move_base + 1 + 3 * move + outcome).
  _PIECES = ("Last move: ", "\n", "Position: (", ", ", ")\n", "Up: ",
             ", down: ", ", left: ", ", right: ")

  @property
  def _cell_base(self) -> int:
    return max(self.height, self.width)

  def _piece_id(self, piece: str) -> int:
    return self._cell_base + len(CELL_NAMES) + self._PIECES.index(piece)

  @property
  def _move_base(self) -> int:
    return self._cell_base + len(CELL_NAMES) + len(self._PIECES)

  @property
  def symbols(self) -> tuple[str, ...]:
    digits = tuple(str(i) for i in range(self._cell_base))
    moves = ("none",) + tuple(last_move_text(m, o) for m in range(4)
                              for o in range(3))
    return digits + CELL_NAMES + self._PIECES + moves

  @property
  def action_strings(self) -> tuple[str, ...]:
    return DIRECTION_NAMES

  @property
  def max_symbols(self) -> int:
    return len(self.symbol_slots)

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """The 17 positions of ``render_symbols`` (never padded)."""
    p = self._piece_id
    rows = tuple(range(1, self.height - 1))
    cols = tuple(range(1, self.width - 1))
    cell = tuple(self._cell_base + i for i in range(len(CELL_NAMES)))
    moves = tuple(range(self._move_base, self._move_base + 13))
    return ((p("Last move: "),), moves, (p("\n"),),
            (p("Position: ("),), rows, (p(", "),), cols, (p(")\n"),),
            (p("Up: "),), cell, (p(", down: "),), cell, (p(", left: "),), cell,
            (p(", right: "),), cell, (p("\n"),))

  @property
  def instructions(self) -> str:
    return (
        "You are in a maze: a grid of cells, each a wall or a path, with a "
        "wall all around it. Walk from your start to the goal.\n"
        "You never see the whole maze. Each turn you see your last move, your "
        "position as (row, column), counted from (0, 0) at the top-left "
        "corner, and what lies one step up, down, left and right of you: "
        "wall, path or goal.\n"
        "Moves: up, down, left, right; up lowers the row, left lowers the "
        "column. A move into a wall leaves you where you are, but the turn "
        "is spent.\n"
        "The maze, the start and the goal are the same in every attempt: "
        "remember the way.\n"
        f"You have {self.max_turns} moves to reach the goal. Reward: 1 for "
        "reaching the goal, 0 otherwise.\n"
        "Each turn, answer with one move: up, down, left or right.")

  @property
  def default_params(self) -> MazeParams:
    return MazeParams(reward_win=jnp.asarray(1.0, jnp.float32))

  # ---- maze generation ---------------------------------------------------
  def _draw_maze(self, key: jax.Array):
    """One draw: (walls bool[H, W], size int32[2], start flat int32, goal
    flat int32, accepted bool)."""
    h, w = self.height, self.width
    grow_steps = (h - 2) * (w - 2) - 1   # carves at most every inner cell
    lo, hi = self.num_loops
    u = jax.random.uniform(key, (2 + grow_steps + hi, h * w))
    shapes = jnp.asarray(self.shapes, jnp.int32)
    n = len(self.shapes)
    size = shapes[jnp.minimum(jnp.floor(n * u[0, 0]).astype(jnp.int32), n - 1)]
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    inner = ((rows >= 1) & (rows <= size[0] - 2) &
             (cols >= 1) & (cols <= size[1] - 2))

    def pick(candidates, scores):
      """A uniformly chosen candidate cell, one-hot (all False if none)."""
      best = jnp.argmax(jnp.where(candidates.reshape(-1), scores, -1.0))
      hot = (jnp.arange(h * w) == best).reshape(h, w)
      return hot & jnp.any(candidates)

    start = pick(inner, u[1])

    def grow(i, open_cells):
      frontier = inner & ~open_cells & (open_neighbours(open_cells) == 1)
      return open_cells | pick(frontier, u[2 + i])

    open_cells = jax.lax.fori_loop(0, grow_steps, grow, start)
    loops = lo + jnp.minimum(jnp.floor((hi - lo + 1) * u[0, 1]).astype(jnp.int32),
                             hi - lo)

    def add_loop(i, open_cells):
      between = inner & ~open_cells & (open_neighbours(open_cells) == 2)
      return open_cells | (pick(between, u[2 + grow_steps + i]) & (i < loops))

    open_cells = jax.lax.fori_loop(0, hi, add_loop, open_cells)
    dist = distances(open_cells, start, self.shortest_path_max)
    reached = open_cells & (dist < _FAR)
    far = jnp.max(jnp.where(reached, dist, -1))
    accepted = (jnp.all(reached == open_cells) & (far >= self.shortest_path_min)
                & (far <= self.shortest_path_max))
    goal = jnp.argmax((reached & (dist == far)).reshape(-1)).astype(jnp.int32)
    start_flat = jnp.argmax(start.reshape(-1)).astype(jnp.int32)
    return ~open_cells, size, start_flat, goal, accepted

  def generate(self, key: jax.Array):
    """Draws mazes until one is accepted (bounded): (walls, size, start, goal).

    ``start`` and ``goal`` are flat row-major indices into the padded grid.
    """
    def cond(carry):
      tries, *_, accepted = carry
      return ~accepted & (tries < _MAX_MAZE_DRAWS)

    def body(carry):
      tries = carry[0]
      return (tries + 1, *self._draw_maze(jax.random.fold_in(key, tries)))

    first = self._draw_maze(jax.random.fold_in(key, 0))
    _, walls, size, start, goal, _ = jax.lax.while_loop(
        cond, body, (jnp.ones((), jnp.int32), *first))
    return walls, size, start, goal

  def state_from_maze(self, walls: jax.Array, start: jax.Array,
                      goal: jax.Array, size: jax.Array | None = None) -> MazeState:
    """A fresh attempt in a given maze (jittable; tests and hand-made mazes).

    Args:
      walls: bool[H, W], True on walls (the outer ring must be wall).
      start: int32[2], (row, col) of the start.
      goal: int32[2], (row, col) of the goal.
      size: int32[2], (height, width) of the maze; default the full grid.
    """
    none = jnp.full((), -1, jnp.int32)
    false = jnp.zeros((), jnp.bool_)
    if size is None:
      size = (self.height, self.width)
    return MazeState(
        walls=jnp.asarray(walls, jnp.bool_), size=jnp.asarray(size, jnp.int32),
        goal=jnp.asarray(goal, jnp.int32), position=jnp.asarray(start, jnp.int32),
        last_move=none, last_outcome=none, steps=jnp.zeros((), jnp.int32),
        done=false, won=false, truncated=false)

  # ---- dynamics ------------------------------------------------------------
  def reset(self, key: jax.Array, params: MazeParams):
    """Draws a maze, its start and its goal; the agent stands on the start."""
    del params
    walls, size, start, goal = self.generate(key)
    w = self.width
    state = self.state_from_maze(walls, jnp.stack([start // w, start % w]),
                                 jnp.stack([goal // w, goal % w]), size)
    return state, TimeStep.first()

  def step(self, key: jax.Array, state: MazeState, action: jax.Array,
           params: MazeParams):
    """Moves one cell (int32 action: up, down, left, right; clipped).

    Deterministic: ``key`` is ignored. A move into a wall takes the turn and
    changes nothing else (``invalid``). Stepping a finished attempt returns
    it unchanged, reward 0.
    """
    del key
    live = ~state.done
    move = jnp.clip(jnp.asarray(action, jnp.int32), 0, 3)
    target = state.position + jnp.asarray(DIRECTIONS)[move]
    target = jnp.clip(target, 0, jnp.asarray([self.height - 1, self.width - 1]))
    blocked = state.walls[target[0], target[1]]
    position = jnp.where(blocked, state.position, target)
    reached = ~blocked & jnp.all(target == state.goal)
    steps = state.steps + 1
    truncated = ~reached & (steps >= self.max_turns)
    done = reached | truncated
    outcome = jnp.select([blocked, reached], [HIT_WALL, REACHED_GOAL], MOVED)
    live_state = state.replace(
        position=position, last_move=move, last_outcome=outcome.astype(jnp.int32),
        steps=steps, done=done, won=reached, truncated=truncated)
    live_ts = TimeStep(
        reward=jnp.where(reached, params.reward_win, 0.0).astype(jnp.float32),
        done=done, won=reached, truncated=truncated, invalid=blocked, steps=steps)
    over_ts = TimeStep(reward=jnp.zeros((), jnp.float32), done=state.done,
                       won=state.won, truncated=state.truncated,
                       invalid=jnp.zeros((), jnp.bool_), steps=state.steps)
    pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(live, x, y), a, b)
    return pick(live_state, state), pick(live_ts, over_ts)

  # ---- views -----------------------------------------------------------------
  def neighbours(self, state: MazeState) -> jax.Array:
    """int32[4]: WALL, PATH or GOAL one step up, down, left and right."""
    cells = state.position[None, :] + jnp.asarray(DIRECTIONS)            # [4, 2]
    cells = jnp.clip(cells, 0, jnp.asarray([self.height - 1, self.width - 1]))
    wall = state.walls[cells[:, 0], cells[:, 1]]
    goal = jnp.all(cells == state.goal[None, :], axis=1)
    return jnp.where(wall, WALL, jnp.where(goal, GOAL, PATH)).astype(jnp.int32)

  def render_symbols(self, state: MazeState, params: MazeParams) -> jax.Array:
    """int32[17]: the three lines of the observation (never padded)."""
    del params
    p = self._piece_id
    move = jnp.where(state.last_move >= 0,
                     self._move_base + 1 + 3 * state.last_move + state.last_outcome,
                     self._move_base)
    cell = self._cell_base + self.neighbours(state)
    c = lambda i: jnp.asarray(i, jnp.int32)
    return jnp.stack([
        c(p("Last move: ")), move, c(p("\n")),
        c(p("Position: (")), state.position[0], c(p(", ")), state.position[1],
        c(p(")\n")),
        c(p("Up: ")), cell[0], c(p(", down: ")), cell[1], c(p(", left: ")),
        cell[2], c(p(", right: ")), cell[3], c(p("\n"))]).astype(jnp.int32)

  def render_text(self, state: MazeState, params: MazeParams) -> str:
    """Host-side rendering from the state arrays (without the symbol table)."""
    del params
    s = jax.device_get(state)
    walls = np.asarray(s.walls)
    r, c = (int(x) for x in s.position)
    goal = tuple(int(x) for x in s.goal)

    def kind(rr: int, cc: int) -> str:
      inside = 0 <= rr < walls.shape[0] and 0 <= cc < walls.shape[1]
      if not inside or walls[rr, cc]:
        return "wall"
      return "goal" if (rr, cc) == goal else "path"

    up, down, left, right = (kind(r + dr, c + dc) for dr, dc in DIRECTIONS)
    last = last_move_text(int(s.last_move), int(s.last_outcome))
    return (f"Last move: {last}\n"
            f"Position: ({r}, {c})\n"
            f"Up: {up}, down: {down}, left: {left}, right: {right}\n")

  def action_mask(self, state: MazeState, params: MazeParams) -> jax.Array:
    """bool[4], all True: a move into a wall is allowed (and takes a turn)."""
    del state, params
    return jnp.ones((4,), jnp.bool_)

  def state_key(self, state: MazeState) -> jax.Array:
    """uint32 hash of what the observation shows: the last move and its
    outcome, the position and the four neighbours (the hidden rest of the
    maze does not enter it)."""
    return hash_arrays(state.last_move, state.last_outcome, state.position,
                       self.neighbours(state))
