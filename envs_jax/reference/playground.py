"""A plain-Python Playground-Text with the rules of ``envs_jax.games.playground``.

The scene and the goal are inputs (``reset(kinds, goal)``): the JAX game draws
them from its reset key, which plain Python cannot reproduce. Actions are the
candidate strings themselves (``step("Go to water")``), so a differential test
goes through the JAX game's action table. Ints, strings and lists only.

Also: ``task_class``, MAGELLAN's sorting of a (scene, goal) tuple into
impossible / grasp / grow plant / grow herbivore / grow carnivore, and
``solve``, a breadth-first search for the shortest solution.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

FURNITURE = ["door", "chair", "desk", "sofa", "bookshelf", "bed", "lamp", "table", "cupboard"]
PLANTS = ["carrot", "potato", "berry", "onion", "tomato", "cucumber", "spinach", "broccoli",
          "lettuce"]
HERBIVORES = ["cow", "elephant", "bison", "deer", "sheep", "giraffe", "goat", "horse", "rabbit"]
CARNIVORES = ["lion", "jackal", "bobcat", "panthera", "coyote", "wolf", "leopard", "hyena",
              "tiger"]
SUPPLIES = ["water"]
ALL_KINDS = FURNITURE + PLANTS + HERBIVORES + CARNIVORES + SUPPLIES
TRAIN_KINDS = FURNITURE[:6] + PLANTS[:6] + HERBIVORES[:6] + CARNIVORES[:6] + SUPPLIES
HELD_OUT_KINDS = FURNITURE[6:] + PLANTS[6:] + HERBIVORES[6:] + CARNIVORES[6:]

# The kinds each group word of a goal covers ("Grasp any animal").
GROUPS = {"furniture": FURNITURE, "plant": PLANTS, "herbivore": HERBIVORES,
          "carnivore": CARNIVORES, "animal": HERBIVORES + CARNIVORES,
          "living thing": PLANTS + HERBIVORES + CARNIVORES, "supply": SUPPLIES}
GROW_GROUPS = ["plant", "herbivore", "carnivore", "animal", "living thing"]


def category(kind: str) -> str:
  for name, kinds in (("furniture", FURNITURE), ("plant", PLANTS), ("herbivore", HERBIVORES),
                      ("carnivore", CARNIVORES), ("supply", SUPPLIES)):
    if kind in kinds:
      return name
  raise ValueError(f"unknown kind {kind!r}")


def name(kind: str, grown: bool) -> str:
  """The display name: 'carrot seed' / 'carrot', 'baby cow' / 'cow'."""
  cat = category(kind)
  if grown or cat in ("furniture", "supply"):
    return kind
  return f"{kind} seed" if cat == "plant" else f"baby {kind}"


def goal_strings() -> list[str]:
  return ([f"Grasp {k}" for k in ALL_KINDS] + [f"Grow {k}" for k in ALL_KINDS]
          + [f"Grasp any {g}" for g in GROUPS] + [f"Grow any {g}" for g in GROUPS
                                                   if g in GROW_GROUPS])


def split_kinds(split: str) -> list[str]:
  """Every kind that can appear in the split's scenes or goals."""
  if split == "train":
    return TRAIN_KINDS
  if split == "test":
    return ALL_KINDS
  if split == "heldout":
    return HELD_OUT_KINDS + SUPPLIES
  raise ValueError(split)


def action_strings(split: str) -> list[str]:
  names = []
  for kind in ALL_KINDS:               # name order: kind order, ungrown first
    if kind in split_kinds(split):
      for grown in (False, True):
        if name(kind, grown) not in names:
          names.append(name(kind, grown))
  return (["Grasp"] + [f"Go to {n}" for n in names] + [f"Release {n}" for n in names]
          + ["Release all"])


def goal_kinds(goal: str) -> tuple[str, list[str]]:
  """('Grasp' or 'Grow', the kinds that achieve the goal)."""
  verb, _, what = goal.partition(" ")
  if what.startswith("any "):
    return verb, GROUPS[what[4:]]
  return verb, [what]


def horizon(goal: str, horizons: Sequence[int] = (3, 6, 10, 15), max_turns: int = 15) -> int:
  verb, kinds = goal_kinds(goal)
  if verb == "Grasp":
    h = horizons[0]
  else:
    cats = {category(k) for k in kinds}
    if "plant" in cats:
      h = horizons[1]
    elif "herbivore" in cats:
      h = horizons[2]
    elif "carnivore" in cats:
      h = horizons[3]
    else:                            # furniture, water: LittleZoo's impossible grows
      h = horizons[2]
  return min(h, max_turns)


def task_class(kinds: Sequence[str], goal: str) -> str:
  """MAGELLAN's class of a kind goal on a scene."""
  verb, (target,) = goal_kinds(goal)
  cats = {category(k) for k in kinds}
  if target not in kinds:
    return "impossible"
  if verb == "Grasp":
    return "grasp"
  cat = category(target)
  if cat == "plant" and "supply" in cats:
    return "grow plant"
  if cat == "herbivore" and {"supply", "plant"} <= cats:
    return "grow herbivore"
  if cat == "carnivore" and {"supply", "plant", "herbivore"} <= cats:
    return "grow carnivore"
  return "impossible"


FOOD = {"plant": ("supply", False), "herbivore": ("plant", True),
        "carnivore": ("herbivore", True)}   # what a category grows from, grown or not


class PyPlayground:
  """One episode at a time.

  Objects are dicts (kind, grown, gone, held, spot); spots 0..3 are the
  objects' starting spots, 4 the agent's.
  """

  def __init__(self, split: str = "train", release_mode: str = "drop",
               horizons: Sequence[int] = (3, 6, 10, 15), max_turns: int = 15,
               reward_win: float = 1.0):
    self.release_mode = release_mode
    self.horizons = list(horizons)
    self.max_turns = max_turns
    self.reward_win = reward_win
    self.actions = action_strings(split)
    self.goals = goal_strings()

  def reset(self, kinds: Sequence[str], goal: str) -> str:
    self.objects = [dict(kind=k, grown=False, gone=False, held=False, spot=i)
                    for i, k in enumerate(kinds)]
    self.agent = 4
    self.grew: list[int] = []
    self.goal = goal
    self.steps = 0
    self.won = False
    return self.render_text()

  # ---- views --------------------------------------------------------------
  def _name(self, o: dict) -> str:
    return name(o["kind"], o["grown"])

  def _on_ground(self) -> list[dict]:
    return [o for o in self.objects if not o["gone"] and not o["held"]]

  def _held(self) -> list[dict]:
    return [o for o in self.objects if o["held"] and not o["gone"]]

  def _under(self) -> list[dict]:
    return [o for o in self._on_ground() if o["spot"] == self.agent]

  def render_text(self) -> str:
    seen = ", ".join(self._name(o) for o in self._on_ground()) or "nothing"
    under = ", ".join(self._name(o) for o in self._under()) or "nothing"
    held = self._held()
    inv = ", ".join(self._name(o) for o in held) or "empty"
    return (f"Goal: {self.goal}\nYou see: {seen}\nYou are standing on: {under}\n"
            f"Inventory ({len(held)}/2): {inv}\n")

  @property
  def horizon(self) -> int:
    return horizon(self.goal, self.horizons, self.max_turns)

  @property
  def done(self) -> bool:
    return self.won or self.steps >= self.horizon

  def legal_actions(self) -> list[str]:
    """The candidates that do something, in table order."""
    out = []
    if self._under() and len(self._held()) < 2:
      out.append("Grasp")
    elsewhere = {self._name(o) for o in self._on_ground() if o["spot"] != self.agent}
    held = {self._name(o) for o in self._held()}
    out += [a for a in self.actions if a.startswith("Go to ") and a[6:] in elsewhere]
    out += [a for a in self.actions if a.startswith("Release ") and a[8:] in held]
    if self.release_mode == "drop" and len(self._held()) == 2:
      out.append("Release all")
    return out

  def legal(self) -> list[bool]:
    ok = set(self.legal_actions())
    return [a in ok for a in self.actions]

  def satisfies(self, goal: str) -> bool:
    """Grasp: an object of the goal's kinds is held; Grow: one grew on the
    last step (even if it was eaten in the same step)."""
    verb, kinds = goal_kinds(goal)
    if verb == "Grasp":
      return any(o["kind"] in kinds for o in self._held())
    return any(self.objects[i]["kind"] in kinds for i in self.grew)

  def achieved(self) -> list[bool]:
    """Per goal of ``goal_strings()``: does the current state satisfy it?"""
    return [self.satisfies(g) for g in self.goals]

  # ---- dynamics -----------------------------------------------------------
  def _grow(self) -> None:
    """Meetings on the ground, swept in slot order until nothing changes."""
    changed = True
    while changed:
      changed = False
      for g in self.objects:
        if g["gone"] or g["held"] or g["grown"] or category(g["kind"]) not in FOOD:
          continue
        food_cat, must_be_grown = FOOD[category(g["kind"])]
        for f in self.objects:
          if (f is not g and not f["gone"] and not f["held"] and f["spot"] == g["spot"]
              and category(f["kind"]) == food_cat and (f["grown"] or not must_be_grown)):
            g["grown"] = True
            f["gone"] = True
            self.grew.append(self.objects.index(g))
            changed = True
            break

  def _apply(self, action: str) -> None:
    if action == "Grasp":
      for o in self._under():
        if len(self._held()) < 2:
          o["held"] = True
    elif action.startswith("Go to "):
      target = next(o for o in self._on_ground()
                    if self._name(o) == action[6:] and o["spot"] != self.agent)
      self.agent = target["spot"]
    elif action == "Release all":
      for o in self._held():
        o["held"], o["spot"] = False, self.agent
    else:
      o = next(o for o in self._held() if self._name(o) == action[8:])
      o["held"], o["spot"] = False, self.agent
    self._grow()

  def step(self, action: str) -> tuple[float, bool, bool, bool, bool]:
    """Plays a candidate string: (reward, done, won, truncated, invalid).

    A finished episode is left unchanged: reward 0, invalid False.
    """
    if self.done:
      return 0.0, True, self.won, not self.won, False
    self.grew = []
    applied = action in self.legal_actions()
    if applied:
      saved = ([dict(o) for o in self.objects], self.agent)
      self._apply(action)
      if (self.release_mode == "littlezoo" and action.startswith("Release")
          and not self.grew):
        self.objects, self.agent = saved     # LittleZoo keeps holding it
        applied = False
    self.steps += 1
    self.won = self.satisfies(self.goal)
    return (self.reward_win if self.won else 0.0, self.done, self.won,
            self.done and not self.won, not applied)

  # ---- search -------------------------------------------------------------
  def _snapshot(self):
    return (tuple((o["grown"], o["gone"], o["held"], o["spot"]) for o in self.objects),
            self.agent)

  def _restore(self, snap) -> None:
    objects, self.agent = snap
    for o, (grown, gone, held, spot) in zip(self.objects, objects):
      o.update(grown=grown, gone=gone, held=held, spot=spot)


def solve(kinds: Sequence[str], goal: str, max_steps: int,
          release_mode: str = "drop") -> int | None:
  """The fewest steps that achieve ``goal`` from the scene (breadth-first over
  the legal actions), or None when ``max_steps`` are not enough."""
  env = PyPlayground(split="test", release_mode=release_mode, max_turns=10 ** 6,
                     horizons=(10 ** 6,) * 4)
  env.reset(kinds, goal)
  start = env._snapshot()
  seen = {start}
  frontier = deque([(start, 0)])
  while frontier:
    snap, depth = frontier.popleft()
    if depth == max_steps:
      continue
    env._restore(snap)
    for action in env.legal_actions():
      env._restore(snap)
      env.grew, env.won, env.steps = [], False, 0
      env.step(action)
      if env.won:
        return depth + 1
      nxt = env._snapshot()
      if nxt not in seen:
        seen.add(nxt)
        frontier.append((nxt, depth + 1))
  return None
