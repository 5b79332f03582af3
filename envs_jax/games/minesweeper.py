"""MineSweeper as in LaMer (a random first click), or as in ORBIT (the agent's).

The board is ``height x width`` with ``num_mines`` hidden mines. ``reset`` draws
a uniformly random first click, places the mines uniformly among the other
cells (so the first click is always safe) and applies that click, cascade
included, so every attempt starts from a partly opened board. Each turn the
agent opens one cell, written ``"(row, col)"`` (1-indexed, row-major order of
the action index). Opening a cell with no adjacent mine opens the whole
8-connected region of such cells plus its numbered border (the cascade).

Rewards (LaMer's values, all in ``MineSweeperParams``): clicking an opened cell
is ineffective (-1.0, the attempt goes on); opening exactly one cell +0.5; a
cascade that opens more than one cell +2.0; opening the last safe cell +10.0
(replaces the reveal reward of that click; done, won); opening a mine -0.1
(done, lost). Mines are never rendered, not even after a loss: the observation
only ever shows what an honest player could see, and the attempt is over then.

The observation text is one line per row, e.g. ``"Row 1: ? . 1 ? ? ?\\n"``.

ORBIT's variant (its training game "MineSweeper, reveal-only", after GEM's
``game:Minesweeper-v0`` with ORBIT's reveal-only win; see REFERENCES.md,
"ORBIT's game suite") comes from three static options, each off by default
so that every configuration above stays exactly what it was:

- ``first_click="agent"``: ``reset`` opens nothing and places no mine. It
  draws the task, ``H * W`` uniform mine scores from its key, kept in the
  state (``mine_scores``); the agent's first in-range click places the mines
  on the ``num_mines`` lowest-scored cells outside the click's safe zone, in
  the step of that click, which then opens as usual. The layout is thus a
  function of the task key and the first click: an attempt replayed from the
  initial state with the same first click meets the same board, as ORBIT
  replays one seed episode after episode (GEM places the mines on the first
  "reveal" from its seeded RNG). A first click may open the whole board
  (a won attempt, as in GEM); nothing is redrawn.
- ``safe_zone="3x3"``: the mines avoid the first click's 3x3 block (GEM),
  not only the cell, so the first click always opens a cascade. It applies
  to LaMer's random first click too.
- ``reward_scheme="success"``: reward 1.0 for the winning click and 0.0 for
  every other (ORBIT's reward: 1 per solved episode); the values become the
  defaults of ``MineSweeperParams``, which can still override them.

``envs_jax.make("minesweeper-orbit")`` is 5x5 with 5 mines, 8 turns, all
three options. GEM writes cells 0-indexed as ``\\boxed{reveal r c}`` and also
has flags; here the actions stay LaMer's 1-indexed ``(row, col)`` clicks and
there is no flag, which the reveal-only win never needs (a flag only spends a
turn). A click on an opened cell is ineffective (``invalid``, the turn spent),
as in GEM.

Speed: the flood fill (a ``lax.while_loop``) runs once per board, in
``reset``, where it labels the 8-connected regions of zero cells and gives
every cell a bit mask of the cascades it belongs to (``cascade_masks``);
``step`` then reads the clicked cell and opens its cascade with one AND per
cell, without a loop or a dilation, so a batched step costs the same whatever
the cascades' sizes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays

# Cell symbols come first so that a cell's symbol id is arithmetic on its state:
# unopened -> 0, opened with k adjacent mines -> 1 + k.
_UNOPENED = "?"
_CELL_SYMBOLS = (_UNOPENED, ".", "1", "2", "3", "4", "5", "6", "7", "8")
_SPACE_ID = len(_CELL_SYMBOLS)
_NEWLINE_ID = _SPACE_ID + 1
_FIRST_ROW_LABEL_ID = _NEWLINE_ID + 1

# Redraws of a board that the first click would already solve. Such boards are
# a few percent of 6x6 / 3-mine draws, so 64 tries fail with probability far
# below 1e-40; the bound only keeps the loop finite under any params.
_MAX_BOARD_DRAWS = 64

# LaMer's reward values; MineSweeperParams defaults to them.
DEFAULT_REWARDS = {"invalid": -1.0, "reveal": 0.5, "cascade": 2.0, "win": 10.0,
                   "mine": -0.1}
# ``MineSweeper.reward_scheme`` -> the default reward values.
REWARD_SCHEMES = {
    "lamer": DEFAULT_REWARDS,
    # ORBIT: 1 for an episode that ends in success, 0 otherwise.
    "success": {"invalid": 0.0, "reveal": 0.0, "cascade": 0.0, "win": 1.0,
                "mine": 0.0},
}
FIRST_CLICKS = ("random", "agent")
SAFE_ZONES = ("cell", "3x3")


@struct.dataclass
class MineSweeperParams:
  """Task-distribution knobs a sampler may vary without changing any shape.

  Attributes:
    reward_invalid: float32, clicking an already opened cell (LaMer: -1.0).
    reward_reveal: float32, a click that opens exactly one cell (+0.5).
    reward_cascade: float32, a click that opens more than one cell (+2.0).
    reward_win: float32, the click that opens the last safe cell (+10.0);
      it replaces the reveal / cascade reward of that click.
    reward_mine: float32, clicking a mine (-0.1).
    num_mines: int32 mines per board; clipped on device to
      [1, height * width - 2] (``safe_zone="3x3"``: [1, height * width - 1 -
      the largest safe zone]) so that a board always needs a decision.
  """

  reward_invalid: jax.Array
  reward_reveal: jax.Array
  reward_cascade: jax.Array
  reward_win: jax.Array
  reward_mine: jax.Array
  num_mines: jax.Array


@struct.dataclass
class MineSweeperState:
  """One attempt's state.

  Attributes:
    mines: bool[H, W], where the mines are.
    counts: int32[H, W], mines among each cell's 8 neighbours (the cell itself
      excluded; also defined on mine cells, where it is never shown).
    cascades: uint32[H, W, K], per cell a bit mask of the cascades that open
      it (see ``cascade_masks``). A function of ``mines`` only, computed once
      per board.
    revealed: bool[H, W], opened cells (never a mine).
    steps: int32 turns taken in this attempt.
    done: bool, the attempt is over.
    won: bool, every safe cell was opened.
    truncated: bool, the attempt hit ``max_turns``.
    mine_scores: float32[H, W] with ``first_click="agent"``: the task's
      uniform scores that place the mines on the first click (see
      ``MineSweeper.place_mines``); None (no pytree leaf) otherwise.
  """

  mines: jax.Array
  counts: jax.Array
  cascades: jax.Array
  revealed: jax.Array
  steps: jax.Array
  done: jax.Array
  won: jax.Array
  truncated: jax.Array
  mine_scores: jax.Array | None = None


def _shifted_sum(x: jax.Array) -> jax.Array:
  """int32[H, W] sum of ``x`` over each cell's 3x3 block (zero outside)."""
  h, w = x.shape
  p = jnp.pad(x.astype(jnp.int32), 1)
  return sum(p[dr:dr + h, dc:dc + w] for dr in range(3) for dc in range(3))


def _dilate(x: jax.Array) -> jax.Array:
  """bool[H, W]: cells with some ``x`` cell in their 3x3 block."""
  return _shifted_sum(x) > 0


def adjacent_counts(mines: jax.Array) -> jax.Array:
  """int32[H, W] number of mines among the 8 neighbours of each cell."""
  return _shifted_sum(mines) - mines.astype(jnp.int32)


def zero_regions(counts: jax.Array, mines: jax.Array) -> jax.Array:
  """int32[H, W] labels of the 8-connected regions of zero-count safe cells.

  A region's label is the smallest row-major index among its cells; cells
  outside every region get -1. Flood fill by min-propagation: each zero cell
  repeatedly takes the smallest label in its 3x3 block until nothing changes
  (one pass per step of the longest path a label travels, plus a last one).
  """
  h, w = counts.shape
  zero = (counts == 0) & ~mines
  outside = jnp.int32(h * w)  # larger than every label, so min ignores it
  init = jnp.where(zero, jnp.arange(h * w, dtype=jnp.int32).reshape(h, w),
                   outside)

  def spread(carry):
    labels, _ = carry
    p = jnp.pad(labels, 1, constant_values=outside)
    block_min = functools.reduce(
        jnp.minimum,
        [p[dr:dr + h, dc:dc + w] for dr in range(3) for dc in range(3)])
    new = jnp.where(zero, block_min, outside)
    return new, jnp.any(new != labels)

  labels, _ = jax.lax.while_loop(lambda c: c[1], spread,
                                 (init, jnp.ones((), jnp.bool_)))
  return jnp.where(zero, labels, -1)


def cascade(regions: jax.Array, click: jax.Array) -> jax.Array:
  """bool[H, W]: the cells that opening the safe cell ``click`` opens.

  That is the cell itself and, when it has no adjacent mine, its whole region
  of zero cells (see ``zero_regions``) plus the numbered cells bordering that
  region. The result depends on the board only, not on what is already open.

  Args:
    regions: int32[H, W] labels from ``zero_regions``.
    click: bool[H, W] one-hot (or all False, which opens nothing).
  """
  label = jnp.max(jnp.where(click, regions, -1))  # -1 unless a zero cell
  # No mine borders a zero cell, so the dilation never reaches a mine.
  region = (regions == label) & (label >= 0)
  return click | _dilate(region)


def num_mask_words(height: int, width: int) -> int:
  """uint32 words per cell of ``cascade_masks``: one bit per 2x2 block."""
  return -(-(-(-height // 2) * -(-width // 2)) // 32)


def cascade_masks(regions: jax.Array) -> jax.Array:
  """uint32[H, W, K]: for each cell, which cascades open it.

  A cascade is a region of zero cells (``zero_regions``) plus its border; it
  gets bit ``b`` of word ``k`` (``32 * k + b`` is the index of the 2x2 block
  holding the region's label cell: two cells of one 2x2 block are adjacent,
  so distinct regions get distinct bits). Cell c has the bit of every
  cascade it belongs to: a zero cell exactly its own region's bit, a
  numbered cell the bits of the regions around it. Opening zero cell z opens
  the cells that share a bit with z (what ``cascade`` computes by dilation).
  """
  h, w = regions.shape
  words = num_mask_words(h, w)
  label = jnp.maximum(regions, 0)
  block = (label // w // 2) * -(-w // 2) + (label % w) // 2
  word = jnp.arange(words)[None, None, :]
  own = jnp.where((regions >= 0)[..., None] & (block[..., None] // 32 == word),
                  jnp.uint32(1) << (block[..., None] % 32).astype(jnp.uint32),
                  jnp.uint32(0))                                  # [H, W, K]
  p = jnp.pad(own, ((1, 1), (1, 1), (0, 0)))
  return functools.reduce(
      jnp.bitwise_or, [p[dr:dr + h, dc:dc + w] for dr in range(3) for dc in range(3)])


@dataclasses.dataclass(frozen=True)
class MineSweeper(Environment):
  """LaMer's MineSweeper (left clicks only), pure JAX, and ORBIT's variant.

  The text fields (``instructions``) quote the static configuration and the
  default rewards; a task sampler that varies ``MineSweeperParams`` should
  write its own rules text if it wants the prompt to follow.

  Attributes (besides the board size, ``num_mines`` and ``max_turns``):
    first_click: "random" (LaMer: ``reset`` applies a random safe first
      click) or "agent" (ORBIT: nothing is open and no mine placed until the
      agent's first click, see the module docstring).
    safe_zone: where the first click's mines may not go: "cell" (the clicked
      cell) or "3x3" (the cell and its 8 neighbours).
    reward_scheme: the default reward values: "lamer" (``DEFAULT_REWARDS``)
      or "success" (1.0 for the winning click, 0.0 otherwise; ORBIT).
  """

  name: str = "minesweeper"
  height: int = 6
  width: int = 6
  num_mines: int = 3
  # An attempt is truncated after max_turns clicks. LaMer's scripts give the
  # agent 7 turns per attempt (their env step cap is 15), enforced by the
  # rollout's turn budget; 20 sits above both so the env never cuts such an
  # attempt short, while still bounding attempts for agents without a budget
  # (a 6x6 / 3-mine board rarely needs more than 20 deliberate clicks since
  # the first click and cascades open most of it).
  max_turns: int = 20
  first_click: str = "random"
  safe_zone: str = "cell"
  reward_scheme: str = "lamer"

  def __post_init__(self):
    if self.height < 1 or self.width < 1:
      raise ValueError(f"board must be at least 1x1, got "
                       f"{self.height}x{self.width}")
    for field, choices in (("first_click", FIRST_CLICKS), ("safe_zone", SAFE_ZONES),
                           ("reward_scheme", tuple(REWARD_SCHEMES))):
      if getattr(self, field) not in choices:
        raise ValueError(f"{field} must be one of {choices}, got "
                         f"{getattr(self, field)!r}")
    if not 1 <= self.num_mines <= self.max_num_mines:
      if self.safe_zone == "cell":
        raise ValueError(
            f"num_mines must be in [1, height*width-2] = "
            f"[1, {self.height * self.width - 2}], got {self.num_mines}")
      raise ValueError(
          f"num_mines must be in [1, {self.max_num_mines}] (height*width - 1 - "
          f"the largest 3x3 safe zone), got {self.num_mines}")
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")

  @property
  def max_num_mines(self) -> int:
    """The most mines a board can hold: at least one safe cell must remain
    outside the first click's largest safe zone."""
    zone = 1 if self.safe_zone == "cell" else min(self.height, 3) * min(self.width, 3)
    return self.height * self.width - zone - 1

  # ---- static description ----------------------------------------------------
  @property
  def symbols(self) -> tuple[str, ...]:
    labels = tuple(f"Row {r}: " for r in range(1, self.height + 1))
    return _CELL_SYMBOLS + (" ", "\n") + labels

  @property
  def action_strings(self) -> tuple[str, ...]:
    return tuple(f"({r}, {c})" for r in range(1, self.height + 1)
                 for c in range(1, self.width + 1))

  @property
  def max_symbols(self) -> int:
    # Per row: label, W cells, W-1 separators, newline.
    return self.height * (2 * self.width + 1)

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    cells = tuple(range(len(_CELL_SYMBOLS)))
    row = lambda r: ((_FIRST_ROW_LABEL_ID + r,),
                     *([cells, (_SPACE_ID,)] * self.width)[:-1], (_NEWLINE_ID,))
    return tuple(slot for r in range(self.height) for slot in row(r))

  @property
  def default_params(self) -> MineSweeperParams:
    rewards = REWARD_SCHEMES[self.reward_scheme]
    f = lambda name: jnp.asarray(rewards[name], jnp.float32)
    return MineSweeperParams(
        reward_invalid=f("invalid"), reward_reveal=f("reveal"),
        reward_cascade=f("cascade"), reward_win=f("win"), reward_mine=f("mine"),
        num_mines=jnp.asarray(self.num_mines, jnp.int32))

  @property
  def instructions(self) -> str:
    r = REWARD_SCHEMES[self.reward_scheme]
    h, w = self.height, self.width
    opening = {
        ("random", "cell"): "One safe cell has already been opened for you.",
        ("random", "3x3"): ("One safe cell with no mine around it has "
                            "already been opened for you."),
        ("agent", "cell"): ("No cell is open yet. Your first click is always "
                            "safe: the mines are placed after it."),
        ("agent", "3x3"): ("No cell is open yet. Your first click is always "
                           "safe, and so are the 8 cells around it: the mines "
                           "are placed after it, elsewhere."),
    }[self.first_click, self.safe_zone]
    if self.reward_scheme == "lamer":
      rewards = (
          f"Rewards: {r['reveal']:+g} for opening one cell, "
          f"{r['cascade']:+g} when a click opens several, "
          f"{r['invalid']:+g} for clicking an opened cell (nothing happens), "
          f"{r['win']:+g} for opening the last safe cell (you win), "
          f"{r['mine']:+g} for opening a mine (you lose). ")
    else:
      rewards = (
          f"Reward: {r['win']:g} for opening the last safe cell (you win), 0 "
          "otherwise. Opening a mine loses; clicking an opened cell does "
          "nothing but spends the turn. ")
    return (
        f"You are playing Minesweeper on a {h}x{w} board that hides "
        f"{self.num_mines} mines. {opening}\n"
        f"Board: one line per row, \"Row 1\" at the top to \"Row {h}\" at the "
        f"bottom; columns go from 1 (left) to {w} (right). \"?\" is an "
        f"unopened cell, \".\" an opened cell with no mine among its 8 "
        f"neighbours, and a digit 1-8 an opened cell with that many "
        f"neighbouring mines.\n"
        f"Goal: open every cell without a mine, and never open a mine.\n"
        f"Action: the cell to open, written (row, col), 1-indexed, e.g. "
        f"(2, 3). Opening a cell with no neighbouring mine also opens the "
        f"connected area of such cells and the numbers around it.\n"
        f"{rewards}"
        f"The game ends on a win, on a mine, or after {self.max_turns} "
        f"actions.")

  # ---- boards ----------------------------------------------------------------
  def state_from_board(self, mines: jax.Array, revealed: jax.Array,
                       mine_scores: jax.Array | None = None) -> MineSweeperState:
    """A fresh attempt on a given board (jittable).

    With ``first_click="agent"``, a board without mines and without an open
    cell waits for the first click, which places the mines from
    ``mine_scores``; any other board is played as given.

    Args:
      mines: bool[H, W].
      revealed: bool[H, W] opened cells; must not contain a mine.
      mine_scores: float32[H, W], ``first_click="agent"`` only (default
        zeros); ignored otherwise.
    """
    mines = jnp.asarray(mines, jnp.bool_)
    revealed = jnp.asarray(revealed, jnp.bool_)
    counts = adjacent_counts(mines)
    false = jnp.zeros((), jnp.bool_)
    if self.first_click == "agent":
      mine_scores = (jnp.zeros(mines.shape, jnp.float32) if mine_scores is None
                     else jnp.asarray(mine_scores, jnp.float32))
    else:
      mine_scores = None
    return MineSweeperState(
        mines=mines, counts=counts,
        cascades=cascade_masks(zero_regions(counts, mines)), revealed=revealed,
        steps=jnp.zeros((), jnp.int32), done=false, won=false, truncated=false,
        mine_scores=mine_scores)

  def safe_zone_of(self, cell: jax.Array) -> jax.Array:
    """bool[H * W]: the cells where no mine may go when ``cell`` (a flat
    index) is the first click."""
    index = jnp.arange(self.height * self.width)
    if self.safe_zone == "cell":
      return index == cell
    rows, cols = index // self.width, index % self.width
    return ((jnp.abs(rows - cell // self.width) <= 1)
            & (jnp.abs(cols - cell % self.width) <= 1))

  def place_mines(self, scores: jax.Array, cell: jax.Array,
                  num_mines: jax.Array) -> jax.Array:
    """bool[H, W]: mines on the ``num_mines`` lowest of ``scores`` (float32[H * W]
    in [0, 1)) outside the safe zone of first click ``cell``.

    With iid uniform scores that is a uniformly random ``num_mines``-subset
    of the cells outside the zone (ties, of probability ~0, go to the lower
    index).
    """
    scores = jnp.where(self.safe_zone_of(cell), 2.0, scores)
    rank = jnp.argsort(jnp.argsort(scores))
    return (rank < num_mines).reshape(self.height, self.width)

  def _num_mines(self, params: MineSweeperParams) -> jax.Array:
    return jnp.clip(params.num_mines, 1, self.max_num_mines)

  def _draw_board(self, key: jax.Array, num_mines: jax.Array):
    """A fresh state, its random first click applied; mines avoid its zone."""
    hw = self.height * self.width
    k_click, k_mines = jax.random.split(key)
    first = jax.random.randint(k_click, (), 0, hw)
    # A uniformly random k-subset of the other cells: the k smallest of iid
    # uniform scores, with the safe zone's scores pushed above them all.
    mines = self.place_mines(jax.random.uniform(k_mines, (hw,)), first, num_mines)
    state = self.state_from_board(mines, jnp.zeros_like(mines))
    return state.replace(revealed=self._opened(state, first))

  # ---- dynamics --------------------------------------------------------------
  def reset(self, key: jax.Array, params: MineSweeperParams):
    """Draws a board and applies the random first click.

    Boards that the first click alone would solve are redrawn (an attempt
    must need at least one decision). Rejection keeps the draw uniform over
    the boards that remain.

    With ``first_click="agent"`` it only draws the mine scores from ``key``:
    the board is empty and closed until the first click.

    Returns:
      (MineSweeperState with [H, W] arrays, TimeStep.first()).
    """
    if self.first_click == "agent":
      shape = (self.height, self.width)
      closed = jnp.zeros(shape, jnp.bool_)
      state = self.state_from_board(closed, closed,
                                    jax.random.uniform(key, shape))
      return state, TimeStep.first()
    num_mines = self._num_mines(params)

    def cond(carry):
      tries, state = carry
      solved = jnp.all(state.revealed | state.mines)
      return solved & (tries < _MAX_BOARD_DRAWS)

    def body(carry):
      tries, _ = carry
      return tries + 1, self._draw_board(jax.random.fold_in(key, tries),
                                         num_mines)

    first = self._draw_board(jax.random.fold_in(key, 0), num_mines)
    _, state = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), first))
    return state, TimeStep.first()

  def _opened(self, state: MineSweeperState, cell: jax.Array) -> jax.Array:
    """bool[H, W]: the cells that opening safe cell ``cell`` (flat index in
    range) opens: the cell, plus its cascade when it has no adjacent mine."""
    h, w = self.height, self.width
    masks = state.cascades.reshape(h * w, -1)
    zero = (state.counts.reshape(-1)[cell] == 0) & ~state.mines.reshape(-1)[cell]
    bits = jnp.where(zero, masks[cell], jnp.uint32(0))            # [K]
    hit = jnp.any((masks & bits) != 0, axis=1)
    return (hit | (jnp.arange(h * w) == cell)).reshape(h, w)

  def _first_click_board(self, state: MineSweeperState, in_range: jax.Array,
                         cell: jax.Array,
                         params: MineSweeperParams) -> MineSweeperState:
    """``state`` with its mines placed if ``cell`` is its first click.

    A board waits for its first click while it has no mine and no open cell
    (a placed board always has a mine). Under ``vmap`` the board arrays are
    computed for every attempt, so the others get an all-mine board, whose
    flood fill (no zero cell) stops after one pass.
    """
    placing = (in_range & ~state.done & ~jnp.any(state.revealed)
               & ~jnp.any(state.mines))
    placed = self.place_mines(state.mine_scores.reshape(-1), cell,
                              self._num_mines(params))
    board = self.state_from_board(~placing | placed, jnp.zeros_like(placed))
    keep = lambda new, old: jnp.where(placing, new, old)
    return state.replace(mines=keep(placed, state.mines),
                         counts=keep(board.counts, state.counts),
                         cascades=keep(board.cascades, state.cascades))

  def step(self, key: jax.Array, state: MineSweeperState, action: jax.Array,
           params: MineSweeperParams):
    """Opens the cell ``action`` (int32 in [0, H*W), row-major).

    Deterministic: ``key`` is ignored (the mines were placed in ``reset``,
    or, with ``first_click="agent"``, are placed by the first in-range click
    from the scores ``reset`` drew).

    An out-of-range index counts as an ineffective click. Stepping a finished
    attempt returns it unchanged, with zero reward and its final flags.

    Returns:
      (next state, TimeStep) with float32 reward and bool flags.
    """
    del key
    h, w = self.height, self.width
    action = jnp.asarray(action, jnp.int32)
    in_range = (action >= 0) & (action < h * w)
    cell = jnp.clip(action, 0, h * w - 1)
    if self.first_click == "agent":
      state = self._first_click_board(state, in_range, cell, params)
    hidden = ~state.revealed
    effective = in_range & hidden.reshape(-1)[cell]
    lost = effective & state.mines.reshape(-1)[cell]
    opens = effective & ~lost
    new = self._opened(state, cell) & hidden & opens
    # Newly opened cells and safe cells hidden before the click, from one
    # reduction (float32 sums faster on CPU; exact below 2**24).
    big = h * w + 1
    dtype = jnp.float32 if big * big < 2**24 else jnp.int32
    counts = jnp.sum(jnp.where(new, 1, 0) + jnp.where(hidden & ~state.mines, big, 0),
                     dtype=dtype).astype(jnp.int32)
    num_opened, safe_hidden = counts % big, counts // big
    revealed = state.revealed | new
    won = opens & (num_opened == safe_hidden)
    steps = state.steps + 1
    truncated = ~(won | lost) & (steps >= self.max_turns)
    done = won | lost | truncated

    reward = jnp.select(
        [~effective, lost, won, num_opened > 1],
        [params.reward_invalid, params.reward_mine, params.reward_win,
         params.reward_cascade],
        params.reward_reveal).astype(jnp.float32)

    live_state = state.replace(revealed=revealed, steps=steps, done=done,
                               won=won, truncated=truncated)
    live_ts = TimeStep(reward=reward, done=done, won=won, truncated=truncated,
                       invalid=~effective, steps=steps)
    over_ts = TimeStep(reward=jnp.zeros((), jnp.float32), done=state.done,
                       won=state.won, truncated=state.truncated,
                       invalid=jnp.zeros((), jnp.bool_), steps=state.steps)
    pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(state.done, x, y),
                                     a, b)
    return pick(state, live_state), pick(over_ts, live_ts)

  # ---- views -----------------------------------------------------------------
  def render_symbols(self, state: MineSweeperState,
                     params: MineSweeperParams) -> jax.Array:
    """int32[H * (2W + 1)] symbol ids: ``"Row r: c c ... c\\n"`` per row.

    Every rendering has exactly ``max_symbols`` symbols, so there is no -1
    padding in practice.
    """
    h, w = self.height, self.width
    cells = jnp.where(state.revealed, 1 + state.counts, 0).astype(jnp.int32)
    spaces = jnp.full((h, w), _SPACE_ID, jnp.int32)
    # Interleave cells and separators, then drop the separator after the last
    # cell: [c, ' ', c, ' ', ..., c].
    body = jnp.stack([cells, spaces], axis=-1).reshape(h, 2 * w)[:, :-1]
    labels = (_FIRST_ROW_LABEL_ID + jnp.arange(h, dtype=jnp.int32))[:, None]
    newlines = jnp.full((h, 1), _NEWLINE_ID, jnp.int32)
    return jnp.concatenate([labels, body, newlines], axis=1).reshape(-1)

  def render_text(self, state: MineSweeperState,
                  params: MineSweeperParams) -> str:
    """Host-side rendering, built from the arrays without the symbol table."""
    revealed = np.asarray(jax.device_get(state.revealed))
    counts = np.asarray(jax.device_get(state.counts))
    lines = []
    for r in range(self.height):
      cells = []
      for c in range(self.width):
        if not revealed[r, c]:
          cells.append("?")
        elif counts[r, c] == 0:
          cells.append(".")
        else:
          cells.append(str(int(counts[r, c])))
      lines.append(f"Row {r + 1}: " + " ".join(cells) + "\n")
    return "".join(lines)

  def action_mask(self, state: MineSweeperState,
                  params: MineSweeperParams) -> jax.Array:
    """bool[H * W]: unopened cells (the only clicks with an effect)."""
    return ~state.revealed.reshape(-1)

  def state_key(self, state: MineSweeperState) -> jax.Array:
    """uint32 hash of the opened-cell mask.

    Within one task (fixed mines) the mask determines the observation, which
    is what GiGPO groups by. With ``first_click="agent"`` the mines depend
    on the first click too, so the key hashes the shown cells (``?``, or an
    opened cell's count) instead.
    """
    if self.first_click == "agent":
      return hash_arrays(jnp.where(state.revealed, 1 + state.counts, 0))
    return hash_arrays(state.revealed)
