"""A plain-Python maze with the rules of ``envs_jax.games.maze``.

The maze is an input (``reset(walls, start, goal)``), not drawn here: the JAX
game draws it from its task key, which plain Python cannot reproduce, so the
differential test hands the reference the maze the JAX game drew. Also here:
``farthest_cells``, a breadth-first search for the generation's property
(the goal is a farthest cell from the start). Ints and lists only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

DIRECTION_NAMES = ("up", "down", "left", "right")
_DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def farthest_cells(walls: Sequence[Sequence[bool]], start: tuple[int, int]
                   ) -> tuple[int, list[tuple[int, int]], int]:
  """Breadth-first search from ``start`` over the non-wall cells.

  Returns:
    (the largest distance, the cells at that distance in row-major order,
    the number of reachable cells).
  """
  rows, cols = len(walls), len(walls[0])
  dist = {tuple(start): 0}
  queue = deque([tuple(start)])
  while queue:
    r, c = queue.popleft()
    for dr, dc in _DELTAS:
      nr, nc = r + dr, c + dc
      if (0 <= nr < rows and 0 <= nc < cols and not walls[nr][nc]
          and (nr, nc) not in dist):
        dist[(nr, nc)] = dist[(r, c)] + 1
        queue.append((nr, nc))
  far = max(dist.values())
  return far, sorted(cell for cell, d in dist.items() if d == far), len(dist)


class PyMaze:
  """One attempt at a time: walk to the goal within ``max_turns`` moves.

  Moves are 0 up, 1 down, 2 left, 3 right (the action index).
  """

  def __init__(self, max_turns: int = 9, reward_win: float = 1.0):
    self.max_turns = max_turns
    self.reward_win = reward_win
    self.walls: list[list[bool]] = []
    self.goal = (0, 0)
    self.position = (0, 0)
    self.last: tuple[int, str] | None = None
    self.steps = 0
    self.done = self.won = self.truncated = False

  def reset(self, walls: Sequence[Sequence[bool]], start: tuple[int, int],
            goal: tuple[int, int]) -> str:
    """Starts an attempt in the maze ``walls`` (True: wall); returns its text."""
    self.walls = [[bool(x) for x in row] for row in walls]
    self.goal = (int(goal[0]), int(goal[1]))
    self.position = (int(start[0]), int(start[1]))
    self.last = None
    self.steps = 0
    self.done = self.won = self.truncated = False
    return self.render_text()

  def _is_wall(self, r: int, c: int) -> bool:
    inside = 0 <= r < len(self.walls) and 0 <= c < len(self.walls[0])
    return not inside or self.walls[r][c]

  def step(self, action: int) -> tuple[float, bool, bool, bool]:
    """Moves once; returns (reward, done, won, invalid).

    A finished attempt is left unchanged: (0.0, True, won, False).
    """
    if self.done:
      return 0.0, True, self.won, False
    move = min(max(int(action), 0), 3)
    self.steps += 1
    dr, dc = _DELTAS[move]
    r, c = self.position[0] + dr, self.position[1] + dc
    reward, invalid = 0.0, False
    if self._is_wall(r, c):
      self.last = (move, "hit a wall")
      invalid = True
    else:
      self.position = (r, c)
      if self.position == self.goal:
        self.last = (move, "reached the goal")
        self.done = self.won = True
        reward = self.reward_win
      else:
        self.last = (move, "moved")
    if not self.won and self.steps >= self.max_turns:
      self.done = self.truncated = True
    return reward, self.done, self.won, invalid

  def render_text(self) -> str:
    def kind(r: int, c: int) -> str:
      if self._is_wall(r, c):
        return "wall"
      return "goal" if (r, c) == self.goal else "path"

    r, c = self.position
    around = [f"{name}: {kind(r + dr, c + dc)}"
              for name, (dr, dc) in zip(DIRECTION_NAMES, _DELTAS)]
    around[0] = around[0].capitalize()
    last = ("none" if self.last is None
            else f"{DIRECTION_NAMES[self.last[0]]}, {self.last[1]}")
    return (f"Last move: {last}\n"
            f"Position: ({r}, {c})\n"
            + ", ".join(around) + "\n")
