"""A plain-Python MineSweeper with the rules of ``envs_jax.games.minesweeper``.

Lists and ints only (no numpy or JAX in ``step``): it is the oracle of the
differential test and the host-side baseline of the steps/s benchmark, so it is
written the way a straightforward Python environment would be.

ORBIT's variant (``first_click="agent"``, ``safe_zone="3x3"``): the mine
placement is an input, as chance is elsewhere. ``reset_unplaced`` takes the
task's mine scores (the JAX game's ``mine_scores``) and the first in-range
click puts the mines on the lowest-scored cells outside its safe zone.
"""

from __future__ import annotations

import random
from collections import deque

# Same redraw bound and reward values as the JAX environment.
_MAX_BOARD_DRAWS = 64
_NEIGHBOURS = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                    if (dr, dc) != (0, 0))


class PyMineSweeper:
  """One MineSweeper attempt at a time; see ``envs_jax.games.minesweeper``.

  Cells are indexed row-major: action ``i`` opens row ``i // width``, column
  ``i % width`` (0-based here; the action text is 1-based).
  """

  def __init__(self, height: int = 6, width: int = 6, num_mines: int = 3,
               max_turns: int = 20, reward_invalid: float = -1.0,
               reward_reveal: float = 0.5, reward_cascade: float = 2.0,
               reward_win: float = 10.0, reward_mine: float = -0.1,
               first_click: str = "random", safe_zone: str = "cell"):
    zone = 1 if safe_zone == "cell" else min(height, 3) * min(width, 3)
    if not 1 <= num_mines <= height * width - zone - 1:
      raise ValueError(f"num_mines must be in [1, {height * width - zone - 1}]")
    if first_click not in ("random", "agent") or safe_zone not in ("cell", "3x3"):
      raise ValueError(f"unknown first_click / safe_zone {first_click!r}, "
                       f"{safe_zone!r}")
    self.first_click, self.safe_zone = first_click, safe_zone
    self.mine_scores: list[float] = []
    self.placed = True   # False while an agent-first-click board waits
    self.height, self.width = height, width
    self.num_mines = num_mines
    self.max_turns = max_turns
    self.reward_invalid = reward_invalid
    self.reward_reveal = reward_reveal
    self.reward_cascade = reward_cascade
    self.reward_win = reward_win
    self.reward_mine = reward_mine
    self.mines: list[list[bool]] = []
    self.counts: list[list[int]] = []
    self.revealed: list[list[bool]] = []
    self.steps = 0
    self.done = False
    self.won = False
    self.num_safe_hidden = 0

  # ---- setting up a board ----------------------------------------------------
  def reset(self, seed: int) -> str:
    """Draws a board with its own RNG and opens a random first cell.

    Returns:
      The observation text.
    """
    rng = random.Random(seed)
    hw = self.height * self.width
    for _ in range(_MAX_BOARD_DRAWS):
      first = rng.randrange(hw)
      others = [i for i in range(hw) if not self._in_safe_zone(i, first)]
      chosen = set(rng.sample(others, self.num_mines))
      mines = [[r * self.width + c in chosen for c in range(self.width)]
               for r in range(self.height)]
      self._load(mines, [[False] * self.width for _ in range(self.height)])
      self._open(first // self.width, first % self.width)
      if self.num_safe_hidden > 0:  # the first click alone must not win
        break
    return self.render_text()

  def from_state(self, mines, revealed) -> str:
    """Starts a fresh attempt on a given board; returns its text.

    Args:
      mines: H x W nested sequence (or array) of bools.
      revealed: H x W nested sequence (or array) of bools, no mine inside.
    """
    as_lists = lambda a: [[bool(x) for x in row] for row in
                          (a.tolist() if hasattr(a, "tolist") else a)]
    mines, revealed = as_lists(mines), as_lists(revealed)
    if len(mines) != self.height or any(len(r) != self.width for r in mines):
      raise ValueError("mines does not match the board size")
    self._load(mines, revealed)
    self.placed = True
    return self.render_text()

  def reset_unplaced(self, mine_scores) -> str:
    """Starts an attempt whose mines the first click places (ORBIT's rule).

    Args:
      mine_scores: H * W floats (row-major; a nested H x W sequence or an
        array also works): the first in-range click at cell ``f`` puts the
        mines on the ``num_mines`` cells of lowest score outside ``f``'s
        safe zone (equal scores: the lower index first).

    Returns:
      The observation text (every cell unopened).
    """
    flat = mine_scores.tolist() if hasattr(mine_scores, "tolist") else mine_scores
    if flat and isinstance(flat[0], (list, tuple)):
      flat = [x for row in flat for x in row]
    if len(flat) != self.height * self.width:
      raise ValueError("mine_scores must have height * width entries")
    self.mine_scores = [float(x) for x in flat]
    closed = [[False] * self.width for _ in range(self.height)]
    self._load([list(row) for row in closed], closed)
    self.placed = False
    return self.render_text()

  def _in_safe_zone(self, cell: int, first: int) -> bool:
    """Whether no mine may go on ``cell`` when ``first`` is the first click."""
    if self.safe_zone == "cell":
      return cell == first
    (r, c), (fr, fc) = divmod(cell, self.width), divmod(first, self.width)
    return abs(r - fr) <= 1 and abs(c - fc) <= 1

  def _place(self, first: int) -> None:
    """Puts the mines for first click ``first`` (``reset_unplaced``'s rule)."""
    allowed = [i for i in range(self.height * self.width)
               if not self._in_safe_zone(i, first)]
    chosen = set(sorted(allowed, key=lambda i: self.mine_scores[i])[:self.num_mines])
    mines = [[r * self.width + c in chosen for c in range(self.width)]
             for r in range(self.height)]
    steps = self.steps
    self._load(mines, self.revealed)
    self.steps = steps
    self.placed = True

  def _load(self, mines: list[list[bool]], revealed: list[list[bool]]) -> None:
    h, w = self.height, self.width
    self.mines = mines
    self.revealed = [list(row) for row in revealed]
    self.counts = [[0] * w for _ in range(h)]
    for r in range(h):
      for c in range(w):
        for dr, dc in _NEIGHBOURS:
          rr, cc = r + dr, c + dc
          if 0 <= rr < h and 0 <= cc < w and mines[rr][cc]:
            self.counts[r][c] += 1
    self.num_safe_hidden = sum(
        1 for r in range(h) for c in range(w)
        if not mines[r][c] and not self.revealed[r][c])
    self.steps = 0
    self.done = False
    self.won = False

  # ---- dynamics --------------------------------------------------------------
  def _open(self, r: int, c: int) -> int:
    """Opens safe cell (r, c) with cascade; returns how many cells opened.

    Breadth-first over zero cells, whether already open or not, matching the
    JAX flood fill (which depends on the board only).
    """
    h, w = self.height, self.width
    opened = 0
    seen = {(r, c)}
    queue = deque([(r, c)])
    while queue:
      cr, cc = queue.popleft()
      if not self.revealed[cr][cc]:
        self.revealed[cr][cc] = True
        opened += 1
      if self.counts[cr][cc] != 0:
        continue
      for dr, dc in _NEIGHBOURS:
        nr, nc = cr + dr, cc + dc
        if 0 <= nr < h and 0 <= nc < w and (nr, nc) not in seen:
          seen.add((nr, nc))
          queue.append((nr, nc))
    self.num_safe_hidden -= opened
    return opened

  def step(self, action_index: int) -> tuple[float, bool, bool]:
    """Opens cell ``action_index``; returns (reward, done, won).

    A finished attempt is left unchanged: (0.0, True, won).
    """
    if self.done:
      return 0.0, True, self.won
    self.steps += 1
    hw = self.height * self.width
    r, c = divmod(action_index, self.width)
    if not self.placed and 0 <= action_index < hw:
      self._place(action_index)
    if not 0 <= action_index < hw or self.revealed[r][c]:
      reward = self.reward_invalid
    elif self.mines[r][c]:
      self.done = True
      return self.reward_mine, True, False
    else:
      opened = self._open(r, c)
      if self.num_safe_hidden == 0:
        self.done = self.won = True
        return self.reward_win, True, True
      reward = self.reward_cascade if opened > 1 else self.reward_reveal
    if self.steps >= self.max_turns:
      self.done = True
    return reward, self.done, False

  # ---- views -----------------------------------------------------------------
  def render_text(self) -> str:
    """``"Row r: c c ... c\\n"`` per row; "?" unopened, "." zero, else count."""
    lines = []
    for r in range(self.height):
      cells = []
      for c in range(self.width):
        if not self.revealed[r][c]:
          cells.append("?")
        elif self.counts[r][c] == 0:
          cells.append(".")
        else:
          cells.append(str(self.counts[r][c]))
      lines.append(f"Row {r + 1}: " + " ".join(cells) + "\n")
    return "".join(lines)
