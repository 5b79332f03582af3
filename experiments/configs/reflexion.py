"""Prompting baseline on Sokoban, MineSweeper or WebShop, evaluation only
(train.steps = 0).

    --config=experiments/configs/reflexion.py:sokoban      # or :minesweeper, :webshop

Reflexion-style: after a failed attempt the frozen model writes a reflection
that the next attempt's prompt carries (reflection_only memory).
"""

from __future__ import annotations

from experiments.configs import base


def get_config(arg: str = "sokoban"):
  """``arg``: the game, one of ``base.ENVS``."""
  config = base.for_env(base.get_config(), arg)
  config.name = f"reflexion_{arg}"
  return base.as_prompting(config, "reflexion")
