"""Sokoban, LaMer's default task, as a pure-JAX text game.

The player pushes boxes onto targets in a walled room. One *turn* is a short
sequence of single moves (by default 1 to 3 of up/down/left/right), written by
the agent as text such as ``"up, left"``; the env applies the moves in order.

Levels are generated inside ``reset`` on device, in fixed shapes:

1. *Room carving*: a random walk inside the outer wall ring stamps small floor
   patterns, so the floor is one connected region grown from a random start.
2. *Placement*: targets and the player go on distinct random floor cells; the
   boxes start on their targets (the solved position).
3. *Reverse play*: several independent random walks in which the player may
   *pull* the box behind it. Each walk remembers its best prefix under a
   difficulty score (number of pulled-box switches times total box distance
   from the own targets, as in gym-sokoban); the best walk wins. Forward play
   undoes every pull with a push, so every level is solvable by construction.
   Rooms are retried (bounded loop) until a level scores at least
   ``SokobanParams.min_score``; the best level met is kept. If no try moved
   every box off its target, the last try uses the fully open room.

Rules (per single move, rewards summed over the moves of a turn, values from
``SokobanParams``): ``step_penalty`` per move, ``box_on_target`` when a box is
pushed onto a target, ``box_off_target`` when pushed off one, ``solved_reward``
when every box is on a target (attempt won). The attempt also ends, lost, on a
simple deadlock: a box off target in a corner formed by two orthogonal walls.
It is truncated after ``max_turns`` turns or ``max_moves`` moves.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays

# Direction order shared with the action strings and the Python reference.
DIRECTION_NAMES = ("up", "down", "left", "right")
DIRECTIONS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], np.int32)

# Cell symbols, in the order of the first entries of ``Sokoban.symbols``.
WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET, NEWLINE = range(8)
CELL_SYMBOLS = ("#", "_", "O", "X", "√", "P", "S", "\n")

# Floor stamps used by the carving walk: (dr, dc) offsets, padded with (0, 0).
_CARVE_PATTERNS = np.array([
    [[0, 0], [0, 0], [0, 0], [0, 0]],     # the cell
    [[0, 0], [0, 1], [0, 0], [0, 0]],     # horizontal pair
    [[0, 0], [1, 0], [0, 0], [0, 0]],     # vertical pair
    [[0, 0], [0, 1], [1, 0], [1, 1]],     # 2x2 block
    [[0, 0], [0, -1], [0, 1], [0, 0]],    # horizontal bar of three
    [[0, 0], [-1, 0], [1, 0], [0, 0]],    # vertical bar of three
], np.int32)

# Full rooms score at least num_boxes >= 1; rooms with a box left on a target
# score below 1 (see ``Sokoban._score``). Retries continue below this threshold.
_FULL_SCORE = 1.0


def move_sequences(moves_per_turn: int) -> list[tuple[int, ...]]:
  """All direction sequences of length 1..moves_per_turn, shortest first.

  Within a length the order is lexicographic in ``DIRECTION_NAMES`` order, so
  index 0 is ``(up,)`` and index 4 is ``(up, up)``.
  """
  seqs = []
  for length in range(1, moves_per_turn + 1):
    seqs.extend(itertools.product(range(4), repeat=length))
  return seqs


@struct.dataclass
class SokobanParams:
  """Task-distribution knobs (float32 scalars) a meta-RL sampler may vary.

  Attributes:
    step_penalty: reward of every attempted single move.
    box_on_target: reward when a box is pushed onto a target.
    box_off_target: reward when a box is pushed off a target.
    solved_reward: reward when every box is on a target.
    p_change_direction: probability that the carving walk turns at a step.
    pull_probability: probability that a reverse move pulls the box behind
      the player (when there is one).
    min_score: rooms are retried (up to ``Sokoban.generation_tries``) until
      a level reaches this difficulty score (see ``Sokoban._score``).
  """

  step_penalty: jax.Array
  box_on_target: jax.Array
  box_off_target: jax.Array
  solved_reward: jax.Array
  p_change_direction: jax.Array
  pull_probability: jax.Array
  min_score: jax.Array


@struct.dataclass
class SokobanState:
  """One Sokoban attempt.

  Attributes:
    walls: bool[H, W], True on walls (the outer ring is always wall).
    targets: bool[H, W].
    boxes: bool[H, W].
    player: int32[2], (row, col) of the player, 0-indexed from the top left.
    turns: int32 turns taken in this attempt.
    moves: int32 single moves attempted in this attempt.
    done: bool, the attempt is over (won, deadlocked or truncated).
    won: bool, every box is on a target.
    truncated: bool, ended by the turn or move limit.
  """

  walls: jax.Array
  targets: jax.Array
  boxes: jax.Array
  player: jax.Array
  turns: jax.Array
  moves: jax.Array
  done: jax.Array
  won: jax.Array
  truncated: jax.Array


def corner_mask(walls: jax.Array) -> jax.Array:
  """bool[H, W]: floor cells with a wall on a vertical and a horizontal side.

  A box off target on such a cell can never move again (simple deadlock).
  """
  w = jnp.pad(walls, 1, constant_values=True)
  vertical = w[:-2, 1:-1] | w[2:, 1:-1]
  horizontal = w[1:-1, :-2] | w[1:-1, 2:]
  return vertical & horizontal & ~walls


@dataclasses.dataclass(frozen=True)
class Sokoban(Environment):
  """Sokoban with procedurally generated, solvable levels.

  Attributes:
    name: registry name.
    height, width: board size including the outer wall ring.
    num_boxes: boxes (= targets) per level.
    moves_per_turn: longest move sequence one action may hold.
    max_turns: turns per attempt before truncation.
    max_moves: single moves per attempt before truncation.
    carve_steps: length of the room-carving walk; None means
      ``int(1.5 * (height + width))``.
    reverse_steps: length of each reverse-play walk (LaMer's search depth).
    num_reverse_walks: independent reverse walks per room; the best is kept.
    generation_tries: rooms tried per level until it is hard enough (see
      ``SokobanParams.min_score``); if no try so far moved every box off its
      target, the last try uses the fully open room.
  """

  name: str = "sokoban"
  height: int = 6
  width: int = 6
  num_boxes: int = 2
  moves_per_turn: int = 3
  max_turns: int = 7
  max_moves: int = 30
  carve_steps: Optional[int] = None
  reverse_steps: int = 100
  num_reverse_walks: int = 8
  generation_tries: int = 16

  def __post_init__(self):
    if self.height < 3 or self.width < 3:
      raise ValueError("height and width must be at least 3 (wall ring + floor)")
    if self.num_boxes < 1:
      raise ValueError("num_boxes must be at least 1")
    if (self.height - 2) * (self.width - 2) < self.num_boxes + 1:
      raise ValueError("the room interior must fit the boxes and the player")
    if self.moves_per_turn < 1 or self.max_turns < 1 or self.max_moves < 1:
      raise ValueError("moves_per_turn, max_turns and max_moves must be >= 1")
    if min(self.reverse_steps, self.num_reverse_walks, self.generation_tries) < 1:
      raise ValueError("generation knobs must be >= 1")

  # ---- static description ------------------------------------------------
  @property
  def symbols(self) -> tuple[str, ...]:
    rows = tuple(f"Row {i}: " for i in range(1, self.height + 1))
    return CELL_SYMBOLS + rows

  @functools.cached_property
  def _sequences(self) -> list[tuple[int, ...]]:
    return move_sequences(self.moves_per_turn)

  @functools.cached_property
  def action_strings(self) -> tuple[str, ...]:
    return tuple(", ".join(DIRECTION_NAMES[d] for d in s) for s in self._sequences)

  @functools.cached_property
  def _action_table(self) -> np.ndarray:
    """int32[A, K]: directions of each action, padded with -1."""
    table = np.full((len(self._sequences), self.moves_per_turn), -1, np.int32)
    for i, seq in enumerate(self._sequences):
      table[i, :len(seq)] = seq
    return table

  @property
  def max_symbols(self) -> int:
    return self.height * (self.width + 2)

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    cells = tuple(range(PLAYER_ON_TARGET + 1))
    first_label = len(CELL_SYMBOLS)
    return tuple(slot for r in range(self.height)
                 for slot in ((first_label + r,), *([cells] * self.width),
                              (NEWLINE,)))

  @property
  def default_params(self) -> SokobanParams:
    f = lambda x: jnp.asarray(x, jnp.float32)
    return SokobanParams(step_penalty=f(-0.1), box_on_target=f(1.0),
                         box_off_target=f(-1.0), solved_reward=f(10.0),
                         p_change_direction=f(0.35), pull_probability=f(0.8),
                         min_score=f(16.0))

  @property
  def instructions(self) -> str:
    """Rules for the system prompt (reward values from ``default_params``)."""
    p = jax.device_get(self.default_params)
    k = self.moves_per_turn
    example = ", ".join(["up", "left", "left", "down"][:k])
    return (
        f"You are playing Sokoban on a {self.height}x{self.width} grid. "
        f"Rows are numbered from Row 1 (top) to Row {self.height} (bottom).\n"
        "Symbols: # wall, _ floor, O target, X box, √ box on a target, "
        "P you (the player), S you standing on a target.\n"
        "Goal: push every box onto a target.\n"
        "Moves: up, down, left, right (up goes towards Row 1). Walking into a "
        "box pushes it one cell, if the cell behind it is floor or a target. "
        "You cannot pull boxes; a move into a wall, or a push into a wall or "
        "another box, does nothing.\n"
        f"Each turn, answer with 1 to {k} moves as a comma-separated list, "
        f"e.g. \"{example}\"; they are played in order.\n"
        f"Rewards: {float(p.step_penalty):g} per move, "
        f"{float(p.box_on_target):+g} when a box reaches a target, "
        f"{float(p.box_off_target):+g} when a box leaves a target, "
        f"{float(p.solved_reward):+g} when all boxes are on targets.\n"
        "The attempt ends when all boxes are on targets, when a box that is "
        "not on a target is pushed into a corner (it can never move again), or "
        f"after {self.max_turns} turns or {self.max_moves} moves.")

  # ---- level generation ------------------------------------------------------
  # Cells are flat indices r * W + c here: one integer per position keeps the
  # compiled graph small (reset compiles inside vmap, which is slow on CPU).
  def _interior(self) -> jax.Array:
    """bool[H * W], True inside the outer wall ring."""
    r = jnp.arange(self.height)[:, None]
    c = jnp.arange(self.width)[None, :]
    inside = (r >= 1) & (r <= self.height - 2) & (c >= 1) & (c <= self.width - 2)
    return inside.ravel()

  def _offsets(self) -> jax.Array:
    """int32[4]: flat-index offsets of up, down, left, right."""
    return jnp.asarray(DIRECTIONS[:, 0] * self.width + DIRECTIONS[:, 1])

  def _carve(self, key: jax.Array, p_change: jax.Array) -> jax.Array:
    """bool[H * W] connected floor grown by a random walk inside the ring."""
    h, w = self.height, self.width
    steps = (self.carve_steps if self.carve_steps is not None
             else int(1.5 * (h + w)))
    interior = self._interior()
    cells = jnp.arange(h * w)
    stamps = jnp.asarray(_CARVE_PATTERNS[..., 0] * w + _CARVE_PATTERNS[..., 1])
    k_pos, k_dir, k_turn, k_new, k_pat = jax.random.split(key, 5)
    start_rc = jax.random.randint(k_pos, (2,), 1, jnp.array([h - 1, w - 1]))
    pos = start_rc[0] * w + start_rc[1]
    direction = jax.random.randint(k_dir, (), 0, 4)
    # All random draws in bulk: fewer RNG calls to compile than one per step.
    turns = jax.random.uniform(k_turn, (steps,)) < p_change
    new_dirs = jax.random.randint(k_new, (steps,), 0, 4)
    patterns = jax.random.randint(k_pat, (steps,), 0, len(_CARVE_PATTERNS))

    def walk(carry, draws):
      floor, pos, direction = carry
      turn, new_dir, pattern = draws
      direction = jnp.where(turn, new_dir, direction)
      # A step into the ring stays put (one coordinate clipped to the interior).
      nxt = pos + self._offsets()[direction]
      pos = jnp.where(interior[nxt], nxt, pos)
      # Stamp offsets are +-1 row/column from an interior cell: no wrap-around.
      stamp = jnp.any(cells[None, :] == (pos + stamps[pattern])[:, None], 0)
      return (floor | (stamp & interior), pos, direction), None

    (floor, _, _), _ = jax.lax.scan(walk, (cells == pos, pos, direction),
                                    (turns, new_dirs, patterns))
    return floor

  def _place(self, key: jax.Array, floor: jax.Array):
    """Distinct random floor cells: player int32, targets int32[N], ok bool."""
    n = self.num_boxes + 1
    noise = jax.random.uniform(key, floor.shape)
    _, picked = jax.lax.top_k(jnp.where(floor, noise, -1.0), n)
    picked = picked.astype(jnp.int32)
    return picked[0], picked[1:], jnp.sum(floor) >= n

  def _score(self, boxes, targets, switches):
    """Difficulty of a reverse-play position (higher is harder).

    Args:
      boxes: int32[N] box cells; box i started on ``targets[i]``.
      targets: int32[N] target cells.
      switches: int32, how often the pulled box changed (first pull counts).

    Returns:
      float32: ``switches * sum of Manhattan distances box -> own target``
      when no box is on any target; otherwise 0.01 per box off target (0 for
      a solved position), so that partially solved rooms are picked only when
      nothing better exists. Full rooms score at least ``_FULL_SCORE``.
    """
    off = ~jnp.any(boxes[:, None] == targets[None, :], axis=1)
    n_off = jnp.sum(off)
    w = self.width
    distance = (jnp.sum(jnp.abs(boxes // w - targets // w)) +
                jnp.sum(jnp.abs(boxes % w - targets % w)))
    full = (switches * distance).astype(jnp.float32)
    return jnp.where(n_off == boxes.shape[0], full,
                     0.01 * n_off.astype(jnp.float32))

  def _reverse_walk(self, key, floor, targets, player, pull_probability):
    """One random reverse-play walk; returns its best prefix.

    Returns:
      (score float32, boxes int32[N], player int32) of the hardest position
      met along the walk (the start position scores 0).
    """
    offsets = self._offsets()

    def move(carry, draws):
      boxes, player, last, switches, best = carry
      d, wants_pull = offsets[draws[0]], draws[1]
      nxt = player + d
      free = floor[nxt] & ~jnp.any(boxes == nxt)
      behind = boxes == player - d                                    # [N]
      pull = free & jnp.any(behind) & wants_pull
      boxes = jnp.where(behind & pull, player, boxes)
      which = jnp.argmax(behind).astype(jnp.int32)
      switches = switches + (pull & (which != last)).astype(jnp.int32)
      last = jnp.where(pull, which, last)
      player = jnp.where(free, nxt, player)
      score = self._score(boxes, targets, switches)
      better = score > best[0]
      best = (jnp.where(better, score, best[0]),
              jnp.where(better, boxes, best[1]),
              jnp.where(better, player, best[2]))
      return (boxes, player, last, switches, best), None

    start_best = (jnp.zeros((), jnp.float32), targets, player)
    carry = (targets, player, jnp.int32(-1), jnp.int32(0), start_best)
    k_dir, k_pull = jax.random.split(key)
    draws = (jax.random.randint(k_dir, (self.reverse_steps,), 0, 4),
             jax.random.uniform(k_pull, (self.reverse_steps,)) < pull_probability)
    carry, _ = jax.lax.scan(move, carry, draws)
    return carry[-1]

  def _try_level(self, key, params, open_room):
    """One generation try: (score, floor, targets, boxes, player), flat."""
    k_room, k_place, k_walks = jax.random.split(key, 3)
    floor = self._carve(k_room, params.p_change_direction)
    floor = jnp.where(open_room, self._interior(), floor)
    player, targets, ok = self._place(k_place, floor)
    walk = functools.partial(self._reverse_walk, floor=floor, targets=targets,
                             player=player,
                             pull_probability=params.pull_probability)
    scores, boxes, players = jax.vmap(walk)(
        jax.random.split(k_walks, self.num_reverse_walks))
    best = jnp.argmax(scores)
    score = jnp.where(ok, scores[best], -1.0)
    return score, floor, targets, boxes[best], players[best]

  def _generate(self, key, params):
    """Bounded retry loop over rooms until a level is hard enough.

    Stops at the first level scoring at least ``params.min_score`` (and at
    least the full-room threshold, so that every box is off its target), or
    after ``generation_tries`` rooms; the best level met is returned.
    """
    last = self.generation_tries - 1
    goal = jnp.maximum(params.min_score, _FULL_SCORE)

    def cond(carry):
      tries, _, level = carry
      return (tries <= last) & (level[0] < goal)

    def body(carry):
      tries, key, level = carry
      key, sub = jax.random.split(key)
      # The open room guarantees enough floor; use it only as a last resort.
      open_room = (tries == last) & (level[0] < _FULL_SCORE)
      new = self._try_level(sub, params, open_room)
      better = new[0] > level[0]
      level = jax.tree.map(lambda a, b: jnp.where(better, a, b), new, level)
      return tries + 1, key, level

    # An initial best that any real try beats (scores are >= -1).
    cells = jnp.zeros((self.num_boxes,), jnp.int32)
    empty = (jnp.float32(-2.0), self._interior(), cells, cells, jnp.int32(0))
    _, _, level = jax.lax.while_loop(cond, body, (jnp.int32(0), key, empty))
    return level

  # ---- dynamics ------------------------------------------------------------
  def reset(self, key: jax.Array, params: SokobanParams):
    """Generates a level; see the module docstring for the algorithm."""
    _, floor, targets, boxes, player = self._generate(key, params)
    h, w = self.height, self.width
    grid = lambda idx: jnp.zeros((h * w,), jnp.bool_).at[idx].set(True).reshape(h, w)
    false = jnp.zeros((), jnp.bool_)
    state = SokobanState(
        walls=~floor.reshape(h, w), targets=grid(targets), boxes=grid(boxes),
        player=jnp.stack([player // w, player % w]).astype(jnp.int32),
        turns=jnp.zeros((), jnp.int32), moves=jnp.zeros((), jnp.int32),
        done=false, won=false, truncated=false)
    return state, TimeStep.first()

  def step(self, key: jax.Array, state: SokobanState, action: jax.Array,
           params: SokobanParams):
    """Plays the move sequence ``action_strings[action]``, one move at a time.

    Deterministic: ``key`` is ignored.

    Moves stop as soon as the attempt ends (solved, deadlocked, or out of
    moves). ``TimeStep.invalid`` means no move of the turn changed the board.
    Stepping a finished attempt returns it unchanged, reward 0, and
    ``invalid=False`` (nothing was attempted).

    Speed: the win and deadlock tests keep two counts up to date (boxes off
    target, boxes in a dead corner; a push changes each by at most one)
    instead of scanning the board after every move.
    """
    del key
    h, w = self.height, self.width
    offsets = self._offsets()
    walls, targets = state.walls.ravel(), state.targets.ravel()
    dead_cells = corner_mask(state.walls).ravel() & ~targets
    live = ~state.done
    last_cell = h * w - 1
    as_int = lambda x: x.astype(jnp.int32)

    def move(carry, d):
      boxes, player, moves, won, dead, off_target, in_corner, reward, changed = carry
      active = live & (d >= 0) & ~won & ~dead & (moves < self.max_moves)
      delta = offsets[jnp.maximum(d, 0)]
      # Clipping only matters when nxt is a ring wall: then nothing moves.
      nxt = jnp.clip(player + delta, 0, last_cell)
      beyond = jnp.clip(nxt + delta, 0, last_cell)
      box_next = boxes[nxt]
      push = box_next & ~(walls[beyond] | boxes[beyond])
      go = active & ~walls[nxt] & (~box_next | push)
      pushed = go & box_next
      boxes = boxes.at[nxt].set(box_next & ~pushed)
      boxes = boxes.at[beyond].set(boxes[beyond] | pushed)
      player = jnp.where(go, nxt, player)
      onto = pushed & targets[beyond]
      off = pushed & targets[nxt]
      off_target = off_target + as_int(off) - as_int(onto)
      in_corner = (in_corner + as_int(pushed & dead_cells[beyond])
                   - as_int(pushed & dead_cells[nxt]))
      solved = active & (off_target == 0)
      stuck = active & ~solved & (in_corner > 0)
      r = (jnp.where(active, params.step_penalty, 0.0)
           + jnp.where(onto, params.box_on_target, 0.0)
           + jnp.where(off, params.box_off_target, 0.0)
           + jnp.where(solved, params.solved_reward, 0.0))
      return (boxes, player, moves + as_int(active), won | solved, dead | stuck,
              off_target, in_corner, reward + r, changed | go), None

    seq = jnp.asarray(self._action_table)[action]
    false = jnp.zeros((), jnp.bool_)
    boxes = state.boxes.ravel()
    # Both counts from one reduction (float32 sums faster on CPU; exact
    # below 2**24).
    big = h * w + 1
    dtype = jnp.float32 if big * big < 2**24 else jnp.int32
    counts = jnp.sum(jnp.where(boxes, as_int(~targets) + big * as_int(dead_cells), 0),
                     dtype=dtype).astype(jnp.int32)
    init = (boxes, state.player[0] * w + state.player[1], state.moves, state.won,
            false, counts % big, counts // big, jnp.zeros((), jnp.float32), false)
    (boxes, player, moves, won, dead, _, _, reward, changed), _ = jax.lax.scan(
        move, init, seq)
    turns = state.turns + as_int(live)
    ended = won | dead
    truncated = live & ~ended & ((turns >= self.max_turns) |
                                 (moves >= self.max_moves))
    truncated = truncated | state.truncated
    done = state.done | ended | truncated
    new = state.replace(
        boxes=boxes.reshape(h, w),
        # Row and column without a stack (which XLA lays out transposed
        # under vmap, a slow copy on CPU).
        player=(player // jnp.array([w, 1], jnp.int32)) % jnp.array([h, w], jnp.int32),
        turns=turns, moves=moves, done=done, won=won, truncated=truncated)
    ts = TimeStep(reward=reward.astype(jnp.float32), done=done, won=won,
                  truncated=truncated, invalid=live & ~changed, steps=turns)
    return new, ts

  # ---- views -----------------------------------------------------------------
  def render_symbols(self, state: SokobanState, params: SokobanParams) -> jax.Array:
    """int32[H * (W + 2)]: per row, its label, W cells, a newline (no padding)."""
    h, w = self.height, self.width
    on_player = ((jnp.arange(h)[:, None] == state.player[0]) &
                 (jnp.arange(w)[None, :] == state.player[1]))
    t = state.targets.astype(jnp.int32)
    cell = jnp.where(state.walls, WALL, FLOOR + t)
    cell = jnp.where(state.boxes, BOX + t, cell)
    cell = jnp.where(on_player, PLAYER + t, cell)
    labels = len(CELL_SYMBOLS) + jnp.arange(h, dtype=jnp.int32)[:, None]
    newline = jnp.full((h, 1), NEWLINE, jnp.int32)
    rows = jnp.concatenate([labels, cell.astype(jnp.int32), newline], axis=1)
    return rows.ravel()

  def render_text(self, state: SokobanState, params: SokobanParams) -> str:
    """The observation text, built on the host from the state arrays."""
    walls = np.asarray(state.walls)
    targets = np.asarray(state.targets)
    boxes = np.asarray(state.boxes)
    pr, pc = (int(x) for x in np.asarray(state.player))
    lines = []
    for r in range(self.height):
      cells = []
      for c in range(self.width):
        if walls[r, c]:
          cells.append("#")
        elif (r, c) == (pr, pc):
          cells.append("S" if targets[r, c] else "P")
        elif boxes[r, c]:
          cells.append("√" if targets[r, c] else "X")
        else:
          cells.append("O" if targets[r, c] else "_")
      lines.append(f"Row {r + 1}: " + "".join(cells) + "\n")
    return "".join(lines)

  def action_mask(self, state: SokobanState, params: SokobanParams) -> jax.Array:
    """bool[A], all True: every move sequence is legal text.

    Blocked moves are no-ops (reported through ``TimeStep.invalid``), not
    illegal actions.
    """
    return jnp.ones((self.num_actions,), jnp.bool_)

  def state_key(self, state: SokobanState) -> jax.Array:
    """uint32 hash of the player cell and the box layout."""
    return hash_arrays(state.player, state.boxes)
