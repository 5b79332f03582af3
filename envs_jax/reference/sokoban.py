"""Plain-Python Sokoban following the rules of ``envs_jax.games.sokoban``.

No JAX and no numpy: the board is a few Python sets of (row, col) cells, and
the step loop is a straightforward interpreter of the move sequence. It serves
as the oracle of the differential test and as the baseline of the JAX-vs-Python
throughput benchmark. ``solve`` is a host-side breadth-first search giving the
optimal number of single moves.

The level generator follows the same algorithm as the JAX env (carving walk,
placement, reverse play with pulls, best-of-several walks, bounded retries) but
draws from ``random.Random``, so a seed gives a different level than in JAX.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from typing import Optional, Sequence

DIRECTION_NAMES = ("up", "down", "left", "right")
DIRECTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))

_CARVE_PATTERNS = (
    ((0, 0),),
    ((0, 0), (0, 1)),
    ((0, 0), (1, 0)),
    ((0, 0), (0, 1), (1, 0), (1, 1)),
    ((0, 0), (0, -1), (0, 1)),
    ((0, 0), (-1, 0), (1, 0)),
)

Cell = tuple[int, int]


def _cells(grid) -> set[Cell]:
  """The True cells of a 2-D grid (nested sequences or an array)."""
  return {(r, c) for r, row in enumerate(grid) for c, v in enumerate(row) if v}


def _corners(walls: set[Cell], height: int, width: int) -> set[Cell]:
  """Non-wall cells with a wall above/below and a wall left/right."""
  out = set()
  for r in range(height):
    for c in range(width):
      if (r, c) in walls:
        continue
      vertical = (r - 1, c) in walls or (r + 1, c) in walls or r in (0, height - 1)
      horizontal = (r, c - 1) in walls or (r, c + 1) in walls or c in (0, width - 1)
      if vertical and horizontal:
        out.add((r, c))
  return out


def _score(boxes: list[Cell], targets: list[Cell], switches: int) -> float:
  """Difficulty of a reverse-play position; same definition as the JAX env."""
  target_set = set(targets)
  n_off = sum(b not in target_set for b in boxes)
  if n_off == len(boxes):
    distance = sum(abs(b[0] - t[0]) + abs(b[1] - t[1])
                   for b, t in zip(boxes, targets))
    return float(switches * distance)
  return 0.01 * n_off


class PySokoban:
  """One Sokoban attempt with the rules and rewards of ``envs_jax.games.sokoban``."""

  def __init__(self, height: int = 6, width: int = 6, num_boxes: int = 2,
               moves_per_turn: int = 3, max_turns: int = 7, max_moves: int = 30,
               carve_steps: Optional[int] = None, reverse_steps: int = 100,
               num_reverse_walks: int = 8, generation_tries: int = 16,
               step_penalty: float = -0.1, box_on_target: float = 1.0,
               box_off_target: float = -1.0, solved_reward: float = 10.0,
               p_change_direction: float = 0.35, pull_probability: float = 0.8,
               min_score: float = 16.0):
    self.height, self.width, self.num_boxes = height, width, num_boxes
    self.moves_per_turn, self.max_turns, self.max_moves = (
        moves_per_turn, max_turns, max_moves)
    self.carve_steps = (carve_steps if carve_steps is not None
                        else int(1.5 * (height + width)))
    self.reverse_steps = reverse_steps
    self.num_reverse_walks = num_reverse_walks
    self.generation_tries = generation_tries
    self.step_penalty, self.box_on_target = step_penalty, box_on_target
    self.box_off_target, self.solved_reward = box_off_target, solved_reward
    self.p_change_direction = p_change_direction
    self.pull_probability = pull_probability
    self.min_score = min_score
    self.sequences = [seq for n in range(1, moves_per_turn + 1)
                      for seq in itertools.product(range(4), repeat=n)]
    self.action_strings = tuple(", ".join(DIRECTION_NAMES[d] for d in s)
                                for s in self.sequences)
    self.walls: set[Cell] = set()
    self.targets: set[Cell] = set()
    self.boxes: set[Cell] = set()
    self.player: Cell = (1, 1)
    self._restart_counters()

  # ---- setup -------------------------------------------------------------
  @classmethod
  def from_state(cls, walls, targets, boxes, player: Sequence[int],
                 **config) -> "PySokoban":
    """Starts an attempt from given bool[H][W] grids and a (row, col) player.

    Height, width and the number of boxes are read from the grids; other
    keyword arguments go to the constructor.
    """
    walls_l = [list(row) for row in walls]
    env = cls(height=len(walls_l), width=len(walls_l[0]),
              num_boxes=len(_cells(boxes)), **config)
    env.walls, env.targets = _cells(walls_l), _cells(targets)
    env.boxes = _cells(boxes)
    env.player = (int(player[0]), int(player[1]))
    env._restart_counters()
    return env

  def _restart_counters(self) -> None:
    self._corner_cells = _corners(self.walls, self.height, self.width)
    self.turns = 0
    self.moves = 0
    self.done = self.won = self.truncated = False
    self.invalid = False

  def reset(self, seed: int) -> "PySokoban":
    """Generates a new level from ``seed`` and starts an attempt on it."""
    rng = random.Random(seed)
    goal = max(self.min_score, 1.0)
    best = (-2.0, None, None, None, None)
    for t in range(self.generation_tries):
      if best[0] >= goal:
        break
      open_room = t == self.generation_tries - 1 and best[0] < 1.0
      new = self._try_level(rng, open_room)
      if new[0] > best[0]:
        best = new
    _, floor, targets, boxes, player = best
    self.walls = {(r, c) for r in range(self.height) for c in range(self.width)
                  if (r, c) not in floor}
    self.targets, self.boxes, self.player = set(targets), set(boxes), player
    self._restart_counters()
    return self

  def _interior(self) -> set[Cell]:
    return {(r, c) for r in range(1, self.height - 1)
            for c in range(1, self.width - 1)}

  def _carve(self, rng: random.Random) -> set[Cell]:
    interior = self._interior()
    pos = (rng.randint(1, self.height - 2), rng.randint(1, self.width - 2))
    direction = rng.randrange(4)
    floor = {pos}
    for _ in range(self.carve_steps):
      if rng.random() < self.p_change_direction:
        direction = rng.randrange(4)
      dr, dc = DIRECTIONS[direction]
      pos = (min(max(pos[0] + dr, 1), self.height - 2),
             min(max(pos[1] + dc, 1), self.width - 2))
      for orr, occ in rng.choice(_CARVE_PATTERNS):
        cell = (pos[0] + orr, pos[1] + occ)
        if cell in interior:
          floor.add(cell)
    return floor

  def _reverse_walk(self, rng, floor, targets, player):
    boxes = list(targets)
    last, switches = -1, 0
    best = (0.0, list(boxes), player)
    for _ in range(self.reverse_steps):
      dr, dc = DIRECTIONS[rng.randrange(4)]
      wants_pull = rng.random() < self.pull_probability
      nxt = (player[0] + dr, player[1] + dc)
      if nxt not in floor or nxt in boxes:
        continue
      behind = (player[0] - dr, player[1] - dc)
      if wants_pull and behind in boxes:
        which = boxes.index(behind)
        boxes[which] = player
        switches += which != last
        last = which
      player = nxt
      score = _score(boxes, targets, switches)
      if score > best[0]:
        best = (score, list(boxes), player)
    return best

  def _try_level(self, rng: random.Random, open_room: bool):
    floor = self._interior() if open_room else self._carve(rng)
    cells = sorted(floor)
    if len(cells) < self.num_boxes + 1:
      return (-1.0, floor, [], [], (1, 1))
    picked = rng.sample(cells, self.num_boxes + 1)
    player, targets = picked[0], picked[1:]
    walks = [self._reverse_walk(rng, floor, targets, player)
             for _ in range(self.num_reverse_walks)]
    score, boxes, start = max(walks, key=lambda w: w[0])
    return (score, floor, targets, boxes, start)

  # ---- dynamics ------------------------------------------------------------
  def _move(self, direction: int) -> tuple[float, bool]:
    """One single move; returns (reward, whether the board changed)."""
    dr, dc = DIRECTIONS[direction]
    r, c = self.player
    nxt = (r + dr, c + dc)
    if nxt in self.walls:
      return self.step_penalty, False
    reward = self.step_penalty
    if nxt in self.boxes:
      beyond = (nxt[0] + dr, nxt[1] + dc)
      if beyond in self.walls or beyond in self.boxes:
        return reward, False
      self.boxes.remove(nxt)
      self.boxes.add(beyond)
      if beyond in self.targets:
        reward += self.box_on_target
      if nxt in self.targets:
        reward += self.box_off_target
    self.player = nxt
    return reward, True

  def step(self, action_index: int) -> tuple[float, bool, bool]:
    """Plays ``action_strings[action_index]``; returns (reward, done, won).

    After the call, ``self.invalid`` tells whether no move changed the board
    and ``self.truncated`` whether the turn or move limit ended the attempt.
    """
    if self.done:
      self.invalid = False
      return 0.0, True, self.won
    total, changed, dead = 0.0, False, False
    for direction in self.sequences[action_index]:
      if self.won or dead or self.moves >= self.max_moves:
        break
      reward, moved = self._move(direction)
      self.moves += 1
      changed |= moved
      if self.boxes <= self.targets:
        self.won = True
        reward += self.solved_reward
      elif any(b in self._corner_cells and b not in self.targets
               for b in self.boxes):
        dead = True
      total += reward
    self.turns += 1
    self.truncated = (not (self.won or dead) and
                      (self.turns >= self.max_turns or
                       self.moves >= self.max_moves))
    self.done = self.won or dead or self.truncated
    self.invalid = not changed
    return total, self.done, self.won

  # ---- views -----------------------------------------------------------------
  def render_text(self) -> str:
    """One line per row: ``Row i: `` then the cells, then a newline."""
    lines = []
    for r in range(self.height):
      row = []
      for c in range(self.width):
        cell, on_target = (r, c), (r, c) in self.targets
        if cell in self.walls:
          row.append("#")
        elif cell == self.player:
          row.append("S" if on_target else "P")
        elif cell in self.boxes:
          row.append("√" if on_target else "X")
        else:
          row.append("O" if on_target else "_")
      lines.append(f"Row {r + 1}: {''.join(row)}\n")
    return "".join(lines)

  def grids(self) -> tuple[list[list[bool]], list[list[bool]], list[list[bool]]]:
    """(walls, targets, boxes) as bool[H][W] nested lists."""
    def grid(cells):
      return [[(r, c) in cells for c in range(self.width)]
              for r in range(self.height)]
    return grid(self.walls), grid(self.targets), grid(self.boxes)


def solve(walls, targets, boxes, player: Sequence[int],
          max_depth: int = 100) -> Optional[int]:
  """Optimal number of single moves that solves a level, by BFS.

  Args:
    walls, targets, boxes: bool[H][W] grids (nested sequences or arrays).
    player: (row, col).
    max_depth: give up beyond this many moves.

  Returns:
    The length of a shortest solution (0 if already solved), or None when no
    solution within ``max_depth`` exists. Positions with a box off target in a
    wall corner are not expanded: the env ends the attempt there.
  """
  wall_set, target_set = _cells(walls), frozenset(_cells(targets))
  height = len(walls)
  width = len(walls[0])
  corners = _corners(wall_set, height, width) - target_set
  start = ((int(player[0]), int(player[1])), frozenset(_cells(boxes)))
  if start[1] <= target_set:
    return 0
  seen = {start}
  frontier = deque([(start, 0)])
  while frontier:
    (pos, box_set), depth = frontier.popleft()
    if depth >= max_depth:
      continue
    for dr, dc in DIRECTIONS:
      nxt = (pos[0] + dr, pos[1] + dc)
      if nxt in wall_set:
        continue
      new_boxes = box_set
      if nxt in box_set:
        beyond = (nxt[0] + dr, nxt[1] + dc)
        if beyond in wall_set or beyond in box_set or beyond in corners:
          continue
        new_boxes = (box_set - {nxt}) | {beyond}
        if new_boxes <= target_set:
          return depth + 1
      key = (nxt, new_boxes)
      if key not in seen:
        seen.add(key)
        frontier.append((key, depth + 1))
  return None

