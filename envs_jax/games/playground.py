"""Playground-Text (LittleZoo): the multi-goal text world of SAC-GLAM and MAGELLAN.

See REFERENCES.md, "SAC with hindsight relabeling for LLM agents" and
"Playground-Text as implemented in LittleZoo". A scene holds 4 objects drawn
from 37 *kinds*: furniture (door, chair, desk, sofa, bookshelf, bed, lamp,
table, cupboard), plants (carrot, potato, berry, onion, tomato, cucumber,
spinach, broccoli, lettuce), herbivores (cow, elephant, bison, deer, sheep,
giraffe, goat, horse, rabbit), carnivores (lion, jackal, bobcat, panthera,
coyote, wolf, leopard, hyena, tiger) and water. The first 6 kinds of each
category (and water) are the training kinds, the last 3 are held out.

Rules (LittleZoo's, on a discrete map of its continuous one):

* The agent starts on an empty spot. ``Go to <obj>`` walks onto an object
  lying on the ground; what the agent holds travels with it.
* ``Grasp`` picks up the objects the agent stands on, in the order they are
  listed, while it holds fewer than 2.
* ``Release <obj>`` puts a held object down where the agent stands;
  ``Release all`` puts both down (``release_mode="littlezoo"``: see below).
* Objects lying on the same spot *meet*. A plant seed that meets water
  grows (the water is used up); a baby herbivore that meets a grown plant
  grows (the plant is eaten); a baby carnivore that meets a grown herbivore
  grows (the herbivore is eaten). Held objects never meet anything. Used-up
  objects leave the scene; a grown object stays grown. Growth resolves to a
  fixed point within the step, growers in slot order, each eating the first
  (slot order) food on its spot: dropping water on a seed that lies with a
  baby cow grows the seed and then the cow, in one step.
* Goals: ``Grasp X`` (an object of kind X is held) and ``Grow X`` (an object
  of kind X grew on this step), X any of the 37 kinds, also furniture and
  water, whose ``Grow`` goals are impossible. Reward ``reward_win`` (1) on
  the step that achieves the goal, which ends the episode (``won``). Each
  goal has its horizon, the LittleZoo (1.5 x optimal) one: ``Grasp`` 3,
  ``Grow`` a plant 6, a herbivore 10, a carnivore 15, furniture or water 10
  (LittleZoo's horizon of impossible grows); an unsolved episode ends there,
  ``truncated``. ``max_turns`` (15) is the largest horizon (horizons above
  it are cut to it).

The observation starts with the goal, then LittleZoo's three lines (objects
in slot order; held ones leave ``You see``), e.g. after ``Go to water``,
``Grasp``, ``Go to carrot seed``::

    Goal: Grow carrot
    You see: carrot seed, chair, baby cow
    You are standing on: carrot seed
    Inventory (1/2): water

Candidate actions (a static table per split, over every display name that
the split's kinds can take): ``Grasp``, ``Go to <name>``, ``Release <name>``
for every name, and ``Release all``. Candidates name objects as the
observation shows them (``carrot seed`` before growing, ``carrot`` after;
``baby cow``, ``cow``), as LittleZoo's ``possible_actions`` do. As raw
strings the table is not prefix-free (``Go to carrot`` / ``Go to carrot
seed``); the ``</action>`` terminator the framework appends to every
candidate makes it so for any tokenizer (the tests check it on the byte
tokenizer). ``Release all`` is what LittleZoo's parser takes (its README
says ``Release both``). The action mask allows the actions that do
something: ``Grasp`` when standing on something with a free hand, ``Go to
X`` when an object named X lies on the ground elsewhere than the agent's
spot (two objects of one name: the first such in slot order), ``Release X``
when X is held (two: the first held; in ``littlezoo`` mode also when the
release will do nothing, as LittleZoo lists every held object), ``Release
all`` when two objects are held (``drop`` mode only). An action outside the
mask changes nothing but uses its turn (``invalid``).

Goals and relabeling. ``goal_strings`` is a static table of 86 goals: ``Grasp
<kind>`` for the 37 kinds (goal ``k``), ``Grow <kind>`` (goal ``37 + k``),
then the category goals ``Grasp any furniture|plant|herbivore|carnivore|
animal|living thing|supply`` and ``Grow any plant|herbivore|carnivore|
animal|living thing`` (LittleZoo's descriptions; a baby animal is an animal,
water the one supply). ``reset`` only draws kind goals (as MAGELLAN does);
``achieved_goals(state)`` is the bool[86] of the goals the state satisfies,
for hindsight relabeling. The goal is the FIRST symbol of every rendering and
its symbol id IS the goal index: ``render_symbols(...)[0] == state.goal``, so
relabeling a stored observation is ``symbols.at[0].set(new_goal)``; the state
of another goal is ``env.with_goal(state, goal)`` (its horizon follows).

Scenes and goals (``reset``), following MAGELLAN's goal sets: a *task* is a
tuple (4 objects in order, with repeats, a goal ``Grasp o`` or ``Grow o``),
sorted into five classes: impossible, grasp, grow a plant, a herbivore, a
carnivore. A tuple is impossible when o is absent, or for ``Grow`` when o is
furniture or water, there is no water, o is an animal without a plant, or a
carnivore without a herbivore (MAGELLAN's test). Every other tuple is
solvable, in LittleZoo's optimal 2 / 4 / 7 / 10 steps (``drop`` mode can
grow a herbivore in 6 and a carnivore in 9: ``Release all`` of water and a
seed onto a baby herbivore grows both at once; the horizons stay
LittleZoo's). ``reset`` draws the class from ``params.goal_probs`` and then
a tuple uniformly within it, exactly (a static table of composition
patterns, see ``_TaskTable``). Splits:

* ``train``: objects and goal kinds from the 25 training kinds. Default
  class probabilities: MAGELLAN's goal set of 25k goals, (20000, 4000, 800,
  160, 32) / 24992, i.e. 80% impossible goals, sampled uniformly.
* ``test`` (MAGELLAN's held-out test): the goal names a held-out kind (any
  category but water), which is one of the 4 objects; the other three are
  training kinds. MAGELLAN always lists that object first; here it lies in
  a uniform slot, so the order gives nothing away. Default probabilities:
  MAGELLAN's test set, every tuple equally likely (``natural_goal_probs``).
* ``heldout``: objects and goal kinds from the 12 held-out kinds and water
  only (no training kind in the scene); default probabilities natural.

Where LittleZoo differs or is unclear:

* Releasing. LittleZoo never lets go of an object unless the release makes
  something grow (its objects only drop their ``grasped`` flag on growing),
  and its ``Release all`` (release both) never does anything. With
  ``release_mode="drop"`` (default) a release puts the object down, as
  LittleZoo's README and REFERENCES.md describe it; ``release_mode=
  "littlezoo"`` keeps LittleZoo's behaviour: a release that makes nothing
  grow changes nothing (``invalid``) and ``Release all`` is never allowed.
  Both modes agree on every release that makes something grow, so on every
  LittleZoo solution. Only ``drop`` can stack several objects on one spot
  (``You are standing on: chair, door``).
* Growing is an event: LittleZoo resets the sizes after every step, so
  ``Grow X`` holds only on the step X grows (also when X is eaten in the same
  step); ``Grasp X`` holds as long as X is held.
* The agent starts on an empty spot (LittleZoo starts it at the centre, on
  an object about 5% of the time); objects start on distinct spots.
* LittleZoo offers ``Grasp`` and ``Go to`` the object stood on also when they
  do nothing; here the mask rules them out. ``You see: nothing`` when no
  object lies on the ground (LittleZoo writes nothing after the colon).
* The category goals are written ``any living thing`` (LittleZoo:
  ``living_thing``); LittleZoo drops the animal / living-thing / herbivore /
  carnivore ones from its goal list, and MAGELLAN samples kind goals only.
* A success on the last step of the horizon is won, not truncated (LittleZoo
  flags it truncated too).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays

# ---- the world --------------------------------------------------------------

CATEGORIES = ("furniture", "plant", "herbivore", "carnivore", "supply")
FURNITURE, PLANT, HERBIVORE, CARNIVORE, SUPPLY = range(5)
_KINDS_BY_CATEGORY = (
    ("door", "chair", "desk", "sofa", "bookshelf", "bed", "lamp", "table", "cupboard"),
    ("carrot", "potato", "berry", "onion", "tomato", "cucumber", "spinach", "broccoli",
     "lettuce"),
    ("cow", "elephant", "bison", "deer", "sheep", "giraffe", "goat", "horse", "rabbit"),
    ("lion", "jackal", "bobcat", "panthera", "coyote", "wolf", "leopard", "hyena", "tiger"),
    ("water",),
)
KINDS = tuple(k for kinds in _KINDS_BY_CATEGORY for k in kinds)          # 37
NUM_KINDS = len(KINDS)
KIND_CATEGORY = np.asarray([c for c, kinds in enumerate(_KINDS_BY_CATEGORY)
                            for _ in kinds], np.int32)
TRAIN_PER_CATEGORY = 6          # the first 6 kinds of a category train, the rest are held out
IS_TRAIN_KIND = np.asarray(
    [i < TRAIN_PER_CATEGORY or c == SUPPLY
     for c, kinds in enumerate(_KINDS_BY_CATEGORY) for i in range(len(kinds))])
NUM_OBJECTS = 4
CAPACITY = 2                    # objects the agent can hold
START = NUM_OBJECTS             # the agent's starting spot; object i starts on spot i


def display_name(kind: int, grown: bool) -> str:
  """How the observation names an object: ``carrot seed`` / ``carrot``,
  ``baby cow`` / ``cow``; furniture and water never change."""
  name, category = KINDS[kind], KIND_CATEGORY[kind]
  if grown or category in (FURNITURE, SUPPLY):
    return name
  return name + " seed" if category == PLANT else "baby " + name


def _names() -> tuple[tuple[str, ...], np.ndarray]:
  """Every display name (kind order, ungrown first) and int32[37, 2]: the
  name id of (kind, grown)."""
  names: list[str] = []
  name_of = np.zeros((NUM_KINDS, 2), np.int32)
  for k in range(NUM_KINDS):
    for grown in (0, 1):
      name = display_name(k, bool(grown))
      if name not in names:
        names.append(name)
      name_of[k, grown] = names.index(name)
  return tuple(names), name_of


NAMES, NAME_OF = _names()       # 64 names

# Category goals: (text, kind categories it covers); Grow only for living ones.
_GROUPS = (("furniture", (FURNITURE,)), ("plant", (PLANT,)), ("herbivore", (HERBIVORE,)),
           ("carnivore", (CARNIVORE,)), ("animal", (HERBIVORE, CARNIVORE)),
           ("living thing", (PLANT, HERBIVORE, CARNIVORE)), ("supply", (SUPPLY,)))
_GROW_GROUPS = ("plant", "herbivore", "carnivore", "animal", "living thing")


def _goal_table() -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
  """(goal strings, bool[G, 37] kinds whose holding achieves each goal, bool[G,
  37] kinds whose growing does, int32[G] horizon class 0..3)."""
  strings, grasp, grow, horizon = [], [], [], []
  none = np.zeros(NUM_KINDS, bool)
  grow_class = {PLANT: 1, HERBIVORE: 2, CARNIVORE: 3}
  for k in range(NUM_KINDS):
    strings.append(f"Grasp {KINDS[k]}")
    grasp.append(np.arange(NUM_KINDS) == k)
    grow.append(none)
    horizon.append(0)
  for k in range(NUM_KINDS):
    strings.append(f"Grow {KINDS[k]}")
    grasp.append(none)
    grow.append(np.arange(NUM_KINDS) == k)
    horizon.append(grow_class.get(int(KIND_CATEGORY[k]), 2))  # impossible grows: 10
  for text, cats in _GROUPS:
    strings.append(f"Grasp any {text}")
    grasp.append(np.isin(KIND_CATEGORY, cats))
    grow.append(none)
    horizon.append(0)
  for text, cats in _GROUPS:
    if text in _GROW_GROUPS:
      strings.append(f"Grow any {text}")
      grasp.append(none)
      grow.append(np.isin(KIND_CATEGORY, cats))
      horizon.append(min(grow_class[c] for c in cats))  # the easiest way to achieve it
  return (tuple(strings), np.asarray(grasp), np.asarray(grow),
          np.asarray(horizon, np.int32))


GOAL_STRINGS, GOAL_GRASP, GOAL_GROW, GOAL_HORIZON_CLASS = _goal_table()   # 86 goals
NUM_GOALS = len(GOAL_STRINGS)

# Task classes (the five ``goal_probs`` entries).
TASK_CLASSES = ("impossible", "grasp", "grow plant", "grow herbivore", "grow carnivore")
MAGELLAN_TRAIN_COUNTS = (20000, 4000, 800, 160, 32)
SPLITS = ("train", "test", "heldout")
RELEASE_MODES = ("drop", "littlezoo")

_PIECES = ("You see: ", ", ", "\n", "nothing", "You are standing on: ",
           "Inventory (0/2): ", "Inventory (1/2): ", "Inventory (2/2): ", "empty")


# ---- the task sampler ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TaskTable:
  """The exact task distribution of one split, as static arrays.

  A task is (t, o, e_0..e_3): verb t (0 Grasp, 1 Grow), goal kind o from the
  split's goal kinds, objects e_s from its scene kinds. Relative to o the
  scene kinds fall into 6 *slot classes*: 0 = o itself, 1 + c = the kinds of
  category c other than o. Whether a task is possible and its class depend
  only on (t, o's category, the slot classes of the 4 objects), a *row*; a
  row stands for ``weight`` tasks (the goal kinds of o's category times, per
  slot, its class's size). Uniform tasks within a class are uniform rows by
  weight, then uniform kinds within the row's classes.

  In the ``test`` split (o never a scene kind) exactly one slot holds o.

  Attributes:
    verb, category: int32[R] of the rows (sorted by task class).
    pattern: int32[R, 4] slot classes.
    cum: int32[R], inclusive cumulative weights.
    offset, total: int32[5], per task class the weight before its rows and
      its rows' weight.
    goal_kinds, scene_kinds: int32[5, 9] per category the kinds (padded -1),
      with counts ``num_goal_kinds``, ``num_scene_kinds`` int32[5].
    exclude: bool, the slot class of o's category excludes o (o is a scene
      kind: every split but ``test``).
    rank: int32[37], a kind's index within its category's scene kinds.
  """

  verb: np.ndarray
  category: np.ndarray
  pattern: np.ndarray
  cum: np.ndarray
  offset: np.ndarray
  total: np.ndarray
  goal_kinds: np.ndarray
  scene_kinds: np.ndarray
  num_goal_kinds: np.ndarray
  num_scene_kinds: np.ndarray
  exclude: bool
  rank: np.ndarray

  @staticmethod
  @functools.lru_cache(maxsize=None)
  def build(split: str) -> "_TaskTable":
    train = IS_TRAIN_KIND
    held = ~IS_TRAIN_KIND
    water = KIND_CATEGORY == SUPPLY
    goal_mask, scene_mask = {"train": (train, train), "test": (held, train),
                             "heldout": (held | water, held | water)}[split]
    exclude = split != "test"

    def lists(mask):
      out = np.full((5, 9), -1, np.int32)
      count = np.zeros(5, np.int32)
      for k in np.flatnonzero(mask):
        c = KIND_CATEGORY[k]
        out[c, count[c]] = k
        count[c] += 1
      return out, count

    goal_kinds, num_goal = lists(goal_mask)
    scene_kinds, num_scene = lists(scene_mask)
    rank = np.full(NUM_KINDS, -1, np.int32)
    for c in range(5):
      for i in range(num_scene[c]):
        rank[scene_kinds[c, i]] = i
    rows = []
    for verb, cat in itertools.product(range(2), range(5)):
      if num_goal[cat] == 0:
        continue
      sizes = [1] + [int(num_scene[c]) - int(exclude and c == cat) for c in range(5)]
      for pattern in itertools.product(range(6), repeat=NUM_OBJECTS):
        targets = pattern.count(0)
        if not exclude and targets != 1:
          continue
        weight = int(num_goal[cat]) * math.prod(sizes[s] for s in pattern)
        if weight == 0:
          continue
        present = {cat if s == 0 else s - 1 for s in pattern}
        if targets == 0:
          label = 0
        elif verb == 0:
          label = 1
        else:
          need = {PLANT: {SUPPLY}, HERBIVORE: {SUPPLY, PLANT},
                  CARNIVORE: {SUPPLY, PLANT, HERBIVORE}}.get(cat)
          label = 1 + cat if need is not None and need <= present else 0
        rows.append((label, verb, cat, pattern, weight))
    rows.sort(key=lambda r: r[0])   # stable: by class, then (verb, category, pattern)
    labels = np.asarray([r[0] for r in rows])
    weights = np.asarray([r[4] for r in rows], np.int64)
    total = np.asarray([weights[labels == c].sum() for c in range(5)], np.int64)
    if weights.sum() >= 2 ** 31:
      raise ValueError("task table weights overflow int32")
    return _TaskTable(
        verb=np.asarray([r[1] for r in rows], np.int32),
        category=np.asarray([r[2] for r in rows], np.int32),
        pattern=np.asarray([r[3] for r in rows], np.int32),
        cum=np.cumsum(weights).astype(np.int32),
        offset=(np.cumsum(total) - total).astype(np.int32), total=total.astype(np.int32),
        goal_kinds=goal_kinds, scene_kinds=scene_kinds, num_goal_kinds=num_goal,
        num_scene_kinds=num_scene, exclude=exclude, rank=rank)


# ---- the game -----------------------------------------------------------------


@struct.dataclass
class PlaygroundParams:
  """Task-distribution knobs.

  Attributes:
    reward_win: float32, reward of the step that achieves the goal.
    goal_probs: float32[5], probabilities of the task classes ``TASK_CLASSES``
      (impossible, grasp, grow plant, herbivore, carnivore); normalised over
      the classes the split can draw.
  """

  reward_win: jax.Array
  goal_probs: jax.Array


@struct.dataclass
class PlaygroundState:
  """One episode.

  Attributes:
    kind: int32[4], the objects' kinds (slot order is the listing order).
    grown: bool[4], the object has grown.
    gone: bool[4], the object was used up (eaten, or water drunk).
    held: bool[4], the agent holds the object.
    spot: int32[4], the spot an object lies on (0..3; its own starting spot
      until moved; meaningless while held or gone).
    agent: int32, the agent's spot (``START`` = 4 before the first move).
    grew: bool[4], the object grew on the last step.
    goal: int32, index into ``goal_strings``.
    steps: int32, steps taken.
    won: bool, the goal was achieved.
  """

  kind: jax.Array
  grown: jax.Array
  gone: jax.Array
  held: jax.Array
  spot: jax.Array
  agent: jax.Array
  grew: jax.Array
  goal: jax.Array
  steps: jax.Array
  won: jax.Array


@dataclasses.dataclass(frozen=True)
class Playground(Environment):
  """LittleZoo's Playground-Text: reach one goal of a multi-goal text world.

  Attributes:
    name: registry name.
    max_turns: the largest horizon (15): no episode lasts longer.
    split: ``train``, ``test`` or ``heldout`` (see the module docstring).
    release_mode: ``drop`` (a release puts the object down) or ``littlezoo``
      (a release that makes nothing grow does nothing, as in LittleZoo).
    horizons: steps allowed by goal type: Grasp, Grow a plant, a herbivore,
      a carnivore (furniture and water grows get the herbivore's).
  """

  name: str = "playground"
  max_turns: int = 15
  split: str = "train"
  release_mode: str = "drop"
  horizons: tuple[int, int, int, int] = (3, 6, 10, 15)

  def __post_init__(self):
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
    if self.split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
    if self.release_mode not in RELEASE_MODES:
      raise ValueError(f"release_mode must be one of {RELEASE_MODES}, got "
                       f"{self.release_mode!r}")
    horizons = tuple(self.horizons)     # a list from a config stays hashable
    if len(horizons) != 4 or not all(isinstance(h, int) and h >= 1 for h in horizons):
      raise ValueError(f"horizons must be four integers >= 1, got {horizons}")
    object.__setattr__(self, "horizons", horizons)

  # ---- static description ------------------------------------------------
  @property
  def _table(self) -> _TaskTable:
    return _TaskTable.build(self.split)

  @property
  def kinds(self) -> tuple[int, ...]:
    """The kinds that can appear in this split's scenes and goals."""
    t = self._table
    both = np.concatenate([t.goal_kinds, t.scene_kinds]).ravel()
    return tuple(sorted({int(k) for k in both if k >= 0}))

  @property
  def names(self) -> tuple[int, ...]:
    """Global name ids (into ``NAMES``) of the candidates, ascending."""
    return tuple(sorted({int(NAME_OF[k, g]) for k in self.kinds for g in (0, 1)}))

  @property
  def goal_strings(self) -> tuple[str, ...]:
    return GOAL_STRINGS

  @property
  def num_goals(self) -> int:
    return NUM_GOALS

  @property
  def goal_horizons(self) -> np.ndarray:
    """int32[num_goals]: each goal's episode horizon."""
    return np.minimum(np.asarray(self.horizons, np.int32)[GOAL_HORIZON_CLASS],
                      self.max_turns).astype(np.int32)

  # Symbols: the goal lines first (a goal's symbol id is its index), then the
  # display names (global name id + NUM_GOALS), then the pieces.
  @property
  def symbols(self) -> tuple[str, ...]:
    return tuple(f"Goal: {g}\n" for g in GOAL_STRINGS) + NAMES + _PIECES

  def _piece(self, piece: str) -> int:
    return NUM_GOALS + len(NAMES) + _PIECES.index(piece)

  @property
  def action_strings(self) -> tuple[str, ...]:
    names = [NAMES[n] for n in self.names]
    return (("Grasp",) + tuple(f"Go to {n}" for n in names)
            + tuple(f"Release {n}" for n in names) + ("Release all",))

  @property
  def max_allowed_actions(self) -> int:
    """The most candidates the mask allows at once: ``Grasp``, ``Go to`` each
    of the 4 objects, ``Release`` each of 2 held ones, ``Release all`` (a
    bound: held objects are not gone to). The SAC policy scores only this
    many candidates per state."""
    return 1 + NUM_OBJECTS + CAPACITY + 1

  @property
  def _release_all(self) -> int:
    return 1 + 2 * len(self.names)

  @property
  def max_symbols(self) -> int:
    return len(self.symbol_slots)

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """24 positions: the goal; ``You see: `` and 4 entries with their
    separators, then ``\\n``; the same for ``You are standing on: ``; the
    inventory count, 2 entries and ``\\n``. A missing entry and its
    separator are -1; an empty list shows ``nothing`` (``empty``)."""
    p = self._piece
    names = tuple(NUM_GOALS + n for n in self.names)
    sep, end = (p(", "),), (p("\n"),)

    def listing(lead, none, length):
      return (((lead,), names + (none,)) + (sep, names) * (length - 1) + (end,))

    return (((tuple(range(NUM_GOALS)),)
             + listing(p("You see: "), p("nothing"), NUM_OBJECTS)
             + listing(p("You are standing on: "), p("nothing"), NUM_OBJECTS)
             + ((p("Inventory (0/2): "), p("Inventory (1/2): "), p("Inventory (2/2): ")),
                names + (p("empty"),), sep, names, end)))

  @property
  def instructions(self) -> str:
    h = self.horizons
    if self.release_mode == "drop":
      release = ("'Release X' puts a held X down where you stand, 'Release all' "
                 "puts both down.\n")
    else:
      release = ("'Release X' puts a held X down where you stand, but only when "
                 "that makes something grow: otherwise you keep holding it.\n")
    return (
        "You are in a small world of objects: furniture, plants, animals and "
        "water. Each game gives you a goal: 'Grasp X' (hold an X) or 'Grow X' "
        "(make an X grow).\n"
        "You see the objects lying around, what you are standing on and what "
        "you hold. 'Go to X' walks onto X; 'Grasp' picks up what you stand on "
        "(you can hold 2 objects); " + release +
        "Objects put together on one spot interact: a plant seed grows with "
        "water (the water is used up); a baby herbivore grows by eating a "
        "grown plant; a baby carnivore grows by eating a grown herbivore. "
        "Eaten objects disappear. Furniture and water never grow, and some "
        "goals cannot be reached in their scene.\n"
        f"Steps allowed: {h[0]} for a Grasp goal, {h[1]} to grow a plant, "
        f"{h[2]} a herbivore, {h[3]} a carnivore. Reward: 1 when the goal is "
        "reached, which ends the game, 0 otherwise.\n"
        "Each turn, answer with one action, e.g. 'Go to water', 'Grasp' or "
        "'Release water'.")

  @property
  def natural_goal_probs(self) -> np.ndarray:
    """float32[5]: the class probabilities of uniformly drawn tasks (every
    (scene, goal) tuple of the split equally likely)."""
    total = self._table.total.astype(np.float64)
    return (total / total.sum()).astype(np.float32)

  @property
  def default_params(self) -> PlaygroundParams:
    if self.split == "train":
      probs = np.asarray(MAGELLAN_TRAIN_COUNTS, np.float64)
      probs = (probs / probs.sum()).astype(np.float32)
    else:
      probs = self.natural_goal_probs
    return PlaygroundParams(reward_win=jnp.asarray(1.0, jnp.float32),
                            goal_probs=jnp.asarray(probs))

  # ---- dynamics ------------------------------------------------------------
  def state_from_scene(self, kinds: jax.Array, goal: jax.Array) -> PlaygroundState:
    """A fresh episode on the scene int32[4] (kinds) with goal ``goal``
    (jittable)."""
    false = jnp.zeros((NUM_OBJECTS,), jnp.bool_)
    return PlaygroundState(
        kind=jnp.asarray(kinds, jnp.int32), grown=false, gone=false, held=false,
        spot=jnp.arange(NUM_OBJECTS, dtype=jnp.int32),
        agent=jnp.asarray(START, jnp.int32), grew=false,
        goal=jnp.asarray(goal, jnp.int32), steps=jnp.zeros((), jnp.int32),
        won=jnp.zeros((), jnp.bool_))

  def draw_task(self, key: jax.Array, params: PlaygroundParams):
    """(int32[4] kinds, int32 goal): a task class from ``params.goal_probs``,
    then a uniform task of that class (see ``_TaskTable``)."""
    t = self._table
    k_class, k_row, k_kinds = jax.random.split(key, 3)
    # The class: classes the split cannot draw are left out.
    probs = jnp.where(jnp.asarray(t.total > 0), jnp.maximum(params.goal_probs, 0.0), 0.0)
    probs = jnp.where(probs.sum() > 0, probs, jnp.asarray(t.total > 0, jnp.float32))
    cdf = jnp.cumsum(probs / probs.sum())
    u = jax.random.uniform(k_class)
    cls = jnp.minimum(jnp.sum(u >= cdf[:-1]), 4)
    # Round-off can leave the top of the cdf below 1: such a u goes to the
    # last class of positive probability.
    cls = jnp.where(probs[cls] > 0, cls, 4 - jnp.argmax((probs > 0)[::-1]))
    # The row, by weight within the class.
    draw = jnp.asarray(t.offset)[cls] + jax.random.randint(
        k_row, (), 0, jnp.maximum(jnp.asarray(t.total)[cls], 1))
    row = jnp.minimum(jnp.searchsorted(jnp.asarray(t.cum), draw, side="right"),
                      len(t.cum) - 1)
    verb = jnp.asarray(t.verb)[row]
    cat = jnp.asarray(t.category)[row]
    pattern = jnp.asarray(t.pattern)[row]
    # The kinds within the row's classes: 2520 = lcm(1..9) is a multiple of
    # every class size, so each draw mod a size is exactly uniform.
    r = jax.random.randint(k_kinds, (1 + NUM_OBJECTS,), 0, 2520)
    target = jnp.asarray(t.goal_kinds)[cat, r[0] % jnp.asarray(t.num_goal_kinds)[cat]]
    other = jnp.maximum(pattern - 1, 0)
    excluded = (t.exclude & (other == cat)).astype(jnp.int32)
    size = jnp.asarray(t.num_scene_kinds)[other] - excluded
    j = r[1:] % jnp.maximum(size, 1)
    j = j + (excluded.astype(jnp.bool_) & (j >= jnp.asarray(t.rank)[target])).astype(jnp.int32)
    kinds = jnp.where(pattern == 0, target, jnp.asarray(t.scene_kinds)[other, j])
    return kinds.astype(jnp.int32), (verb * NUM_KINDS + target).astype(jnp.int32)

  def reset(self, key: jax.Array, params: PlaygroundParams):
    """Draws a scene and a goal (the task); the agent stands on nothing."""
    kinds, goal = self.draw_task(key, params)
    return self.state_from_scene(kinds, goal), TimeStep.first()

  def with_goal(self, state: PlaygroundState, goal: jax.Array) -> PlaygroundState:
    """The same scene pursuing ``goal`` (for relabeling; jittable)."""
    return state.replace(goal=jnp.asarray(goal, jnp.int32))

  def horizon(self, state: PlaygroundState) -> jax.Array:
    """int32, the episode's horizon (by its goal)."""
    return jnp.asarray(self.goal_horizons)[state.goal]

  def _names_of(self, state: PlaygroundState) -> jax.Array:
    """int32[4]: the objects' global name ids."""
    return jnp.asarray(NAME_OF)[state.kind, state.grown.astype(jnp.int32)]

  def _decode(self, state: PlaygroundState, action: jax.Array):
    """Per object, the target of each kind of action: (grasp bool[4], goto
    int32 object or -1, release bool[4], legal bool)."""
    names = self._names_of(state)
    local = jnp.asarray(self.names, jnp.int32)
    n = len(self.names)
    visible = ~state.gone & ~state.held
    on = visible & (state.spot == state.agent)
    count = jnp.sum(state.held)
    a = jnp.asarray(action, jnp.int32)
    in_range = (a >= 0) & (a < self.num_actions)
    is_goto = (a >= 1) & (a <= n)
    is_release = (a > n) & (a <= 2 * n)
    wanted = local[jnp.clip(jnp.where(is_goto, a - 1, a - 1 - n), 0, n - 1)]
    targets = visible & ~on & (names == wanted)
    goto = jnp.where(jnp.any(targets), jnp.argmax(targets), -1)
    release_one = state.held & (jnp.cumsum(state.held & (names == wanted)) == 1) & (
        names == wanted)
    taken = on & (count + jnp.cumsum(on) - on.astype(jnp.int32) < CAPACITY)
    is_all = a == self._release_all
    grasp = jnp.where(a == 0, taken, False)
    release = jnp.where(is_release, release_one, jnp.where(is_all, state.held, False))
    goto = jnp.where(is_goto, goto, -1)
    legal = in_range & (((a == 0) & jnp.any(taken)) | (is_goto & (goto >= 0))
                        | (is_release & jnp.any(release_one))
                        | (is_all & (count == CAPACITY) & (self.release_mode == "drop")))
    return grasp, goto, release, legal

  def _grow(self, state: PlaygroundState) -> PlaygroundState:
    """Resolves every meeting of objects on the ground to a fixed point: 3
    sweeps of the growers in slot order (each growth uses an object up, so
    at most 3 can happen)."""
    cat = jnp.asarray(KIND_CATEGORY)[state.kind]
    food_cat = jnp.asarray([-1, SUPPLY, PLANT, HERBIVORE, -1], jnp.int32)[cat]
    food_grown = cat != PLANT              # herbivores and carnivores eat grown food
    grown, gone, grew = state.grown, state.gone, state.grew
    ground_base = ~state.held
    idx = jnp.arange(NUM_OBJECTS)
    for _ in range(NUM_OBJECTS - 1):
      for g in range(NUM_OBJECTS):
        ground = ground_base & ~gone
        food = (ground & (idx != g) & (state.spot == state.spot[g])
                & (cat == food_cat[g]) & (grown | ~food_grown[g]))
        grows = ground[g] & ~grown[g] & (food_cat[g] >= 0) & jnp.any(food)
        eaten = grows & (idx == jnp.argmax(food))
        grown = grown.at[g].set(grown[g] | grows)
        grew = grew.at[g].set(grew[g] | grows)
        gone = gone | eaten
    return state.replace(grown=grown, gone=gone, grew=grew)

  def step(self, key: jax.Array, state: PlaygroundState, action: jax.Array,
           params: PlaygroundParams):
    """Applies one action (index into ``action_strings``).

    Deterministic: ``key`` is ignored. An action outside the mask (or out of
    range) changes nothing, uses its turn and is ``invalid``; so is a
    release that makes nothing grow in ``littlezoo`` mode. Stepping a
    finished episode returns it unchanged, reward 0.
    """
    del key
    live = ~self.done(state)
    grasp, goto, release, legal = self._decode(state, action)
    act = live & legal
    moved = state.replace(
        held=(state.held | grasp) & ~release,
        spot=jnp.where(release, state.agent, state.spot),
        agent=jnp.where(goto >= 0, state.spot[jnp.maximum(goto, 0)], state.agent),
        grew=jnp.zeros_like(state.grew))
    after = self._grow(moved)
    grew_any = jnp.any(after.grew)
    no_effect = jnp.any(release) & ~grew_any & (self.release_mode == "littlezoo")
    apply = act & ~no_effect
    unchanged = state.replace(grew=jnp.where(live, False, state.grew))
    new = jax.tree.map(lambda a, b: jnp.where(apply, a, b), after, unchanged)
    won = live & self.achieved_goals(new)[state.goal]
    new = new.replace(steps=state.steps + live.astype(jnp.int32), won=state.won | won)
    done = self.done(new)
    ts = TimeStep(reward=jnp.where(won, params.reward_win, 0.0).astype(jnp.float32),
                  done=done, won=new.won, truncated=done & ~new.won,
                  invalid=live & ~apply, steps=new.steps)
    return new, ts

  def done(self, state: PlaygroundState) -> jax.Array:
    """bool: the goal was achieved or the horizon reached."""
    return state.won | (state.steps >= self.horizon(state))

  def achieved_goals(self, state: PlaygroundState) -> jax.Array:
    """bool[num_goals]: the goals this state satisfies (``Grasp``: held now;
    ``Grow``: grew on the step that led here)."""
    grasp = jnp.asarray(GOAL_GRASP)[:, state.kind]     # [G, 4]
    grow = jnp.asarray(GOAL_GROW)[:, state.kind]
    held = state.held & ~state.gone
    return jnp.any(grasp & held[None], axis=1) | jnp.any(grow & state.grew[None], axis=1)

  # ---- views -----------------------------------------------------------------
  def render_symbols(self, state: PlaygroundState, params: PlaygroundParams) -> jax.Array:
    """int32[24]: the goal (its index), then the three lines."""
    del params
    p = self._piece
    names = NUM_GOALS + self._names_of(state)
    visible = ~state.gone & ~state.held
    on = visible & (state.spot == state.agent)
    held = state.held & ~state.gone
    c = lambda i: jnp.asarray([i], jnp.int32)

    def listing(mask, length, none):
      rank = jnp.cumsum(mask) - 1
      count = jnp.sum(mask)
      out = []
      for i in range(length):
        entry = jnp.sum(jnp.where(mask & (rank == i), names, 0))
        if i == 0:
          out.append(jnp.where(count > 0, entry, none))
        else:
          out += [jnp.where(count > i, p(", "), -1), jnp.where(count > i, entry, -1)]
      return jnp.stack(out).astype(jnp.int32)

    count = jnp.sum(held)
    return jnp.concatenate([
        state.goal[None].astype(jnp.int32),
        c(p("You see: ")), listing(visible, NUM_OBJECTS, p("nothing")), c(p("\n")),
        c(p("You are standing on: ")), listing(on, NUM_OBJECTS, p("nothing")), c(p("\n")),
        (p("Inventory (0/2): ") + count)[None].astype(jnp.int32),
        listing(held, CAPACITY, p("empty")), c(p("\n"))]).astype(jnp.int32)

  def render_text(self, state: PlaygroundState, params: PlaygroundParams) -> str:
    """Host-side rendering from the state arrays."""
    del params
    s = jax.device_get(state)
    objects = [display_name(int(k), bool(g)) for k, g in zip(s.kind, s.grown)]
    seen = [objects[i] for i in range(NUM_OBJECTS) if not s.gone[i] and not s.held[i]]
    under = [objects[i] for i in range(NUM_OBJECTS)
             if not s.gone[i] and not s.held[i] and int(s.spot[i]) == int(s.agent)]
    held = [objects[i] for i in range(NUM_OBJECTS) if s.held[i] and not s.gone[i]]
    return (f"Goal: {GOAL_STRINGS[int(s.goal)]}\n"
            f"You see: {', '.join(seen) or 'nothing'}\n"
            f"You are standing on: {', '.join(under) or 'nothing'}\n"
            f"Inventory ({len(held)}/{CAPACITY}): {', '.join(held) or 'empty'}\n")

  def action_mask(self, state: PlaygroundState, params: PlaygroundParams) -> jax.Array:
    """bool[num_actions]: the actions that do something (see the module
    docstring)."""
    del params
    return jax.vmap(lambda a: self._decode(state, a)[3])(
        jnp.arange(self.num_actions, dtype=jnp.int32))

  def state_key(self, state: PlaygroundState) -> jax.Array:
    """uint32 hash of the observation (the goal and the three lines)."""
    return hash_arrays(self.render_symbols(state, None))
