"""LaMer on Sokoban (6x6, 2 boxes), as in the released training script.

gamma_traj is 0.9 here: LaMer's released Sokoban script uses 0.9 (0.6 for
MineSweeper, WebShop, ALFWorld), while the paper's ablation text reports 0.6
as best for Sokoban (REFERENCES.md, "Hyperparameters").
"""

from __future__ import annotations

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.name = "lamer_sokoban"
  base.set_env(config, "sokoban")
  config.algo.gamma_traj = 0.9
  return config
