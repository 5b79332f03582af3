"""LaMer on Sokoban (6x6, 2 boxes) or MineSweeper (6x6, 3 mines), as in the
released training scripts.

    --config=experiments/configs/lamer.py:sokoban      # or :minesweeper

gamma_traj is 0.9 on Sokoban: LaMer's released Sokoban script uses 0.9 (0.6
for MineSweeper, WebShop, ALFWorld), while the paper's ablation text reports
0.6 as best for Sokoban (REFERENCES.md, "Hyperparameters").
"""

from __future__ import annotations

from experiments.configs import base

# The cross-episode discount of LaMer's released script for each game.
GAMMA_TRAJ = {"sokoban": 0.9, "minesweeper": 0.6}


def get_config(arg: str = "sokoban"):
  """``arg``: the game, one of ``base.ENVS``."""
  config = base.for_env(base.get_config(), arg)
  config.name = f"lamer_{arg}"
  config.algo.gamma_traj = GAMMA_TRAJ[arg]
  return config
