"""LaMer on MineSweeper (6x6, 3 mines), as in the released training script
(gamma_traj 0.6; REFERENCES.md, "Hyperparameters")."""

from __future__ import annotations

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.name = "lamer_minesweeper"
  base.set_env(config, "minesweeper")
  config.algo.gamma_traj = 0.6
  return config
