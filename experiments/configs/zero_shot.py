"""Prompting baseline on Sokoban, MineSweeper or WebShop, evaluation only
(train.steps = 0).

    --config=experiments/configs/zero_shot.py:sokoban      # or :minesweeper, :webshop

zero-shot: N = 3 independent attempts, no memory.
"""

from __future__ import annotations

from experiments.configs import base


def get_config(arg: str = "sokoban"):
  """``arg``: the game, one of ``base.ENVS``."""
  config = base.for_env(base.get_config(), arg)
  config.name = f"zero_shot_{arg}"
  return base.as_prompting(config, "zero_shot")
