"""Environment registry: ``make(name, **overrides)``."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Callable

from envs_jax.core import Environment

# name -> (module:class, default overrides). Modules are imported lazily so that
# ``import envs_jax`` stays cheap.
_REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {}


def register(name: str, target: str, /, **defaults: Any) -> None:
  """Registers ``name`` as ``"module:Class"`` built with ``defaults``."""
  if name in _REGISTRY:
    raise ValueError(f"environment {name!r} is already registered")
  _REGISTRY[name] = (target, dict(defaults))


def registered() -> tuple[str, ...]:
  """All registered environment names, sorted."""
  return tuple(sorted(_REGISTRY))


def _resolve(target: str) -> Callable[..., Environment]:
  module, cls = target.split(":")
  return getattr(importlib.import_module(module), cls)


def make(name: str, **overrides: Any) -> Environment:
  """Builds a registered environment, with its static fields overridden.

  Raises:
    ValueError: unknown ``name`` or override key; the message lists the valid
      choices (and the closest match).
  """
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown environment {name!r}.{hint} "
                     f"Registered environments: {', '.join(registered())}.")
  target, defaults = _REGISTRY[name]
  cls = _resolve(target)
  fields = {f.name for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(
        f"Unknown override(s) {unknown} for environment {name!r}. "
        f"Valid keys: {', '.join(sorted(fields))}.")
  env = cls(**{**defaults, **overrides})
  return env


register("sokoban", "envs_jax.games.sokoban:Sokoban")
register("sokoban-hard", "envs_jax.games.sokoban:Sokoban", num_boxes=3)
register("sokoban-8x8", "envs_jax.games.sokoban:Sokoban", height=8, width=8,
         num_boxes=3)
register("minesweeper", "envs_jax.games.minesweeper:MineSweeper")
register("minesweeper-hard", "envs_jax.games.minesweeper:MineSweeper", num_mines=5)
register("minesweeper-8x8", "envs_jax.games.minesweeper:MineSweeper", height=8, width=8,
         num_mines=8)
register("minesweeper-4x4", "envs_jax.games.minesweeper:MineSweeper", height=4, width=4,
         num_mines=2)
register("guess", "envs_jax.games.guess:GuessNumber")
register("rps", "envs_jax.games.rps:RockPaperScissors")
register("hangman", "envs_jax.games.hangman:Hangman")
register("wordle", "envs_jax.games.wordle:Wordle")
register("blackjack", "envs_jax.games.blackjack:Blackjack")
register("mastermind", "envs_jax.games.mastermind:Mastermind")
register("maze", "envs_jax.games.maze:Maze")
register("minesweeper-orbit", "envs_jax.games.minesweeper:MineSweeper",
         name="minesweeper-orbit", height=5,
         width=5, num_mines=5, max_turns=8, first_click="agent", safe_zone="3x3",
         reward_scheme="success")
# SAC-GLAM's multi-goal world (LittleZoo): training kinds, MAGELLAN's test
# scenes (a held-out target among training kinds), and held-out kinds only.
register("playground", "envs_jax.games.playground:Playground")
register("playground-test", "envs_jax.games.playground:Playground",
         name="playground-test", split="test")
register("playground-heldout", "envs_jax.games.playground:Playground",
         name="playground-heldout", split="heldout")
# WebShop over a static catalog: 2000 generated products, a 200-product one
# for tests, and the packaged 15-product JSON sample (the loader's schema).
register("webshop", "envs_jax.games.webshop:WebShop")
register("webshop-small", "envs_jax.games.webshop:WebShop", name="webshop-small",
         num_products=200)
register("webshop-sample", "envs_jax.games.webshop:WebShop", name="webshop-sample",
         catalog="sample")
