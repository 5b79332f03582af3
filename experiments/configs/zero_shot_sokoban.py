"""Prompting baseline on sokoban, evaluation only (train.steps = 0).

zero-shot: N = 3 independent attempts, no memory.
"""

from __future__ import annotations

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.name = "zero_shot_sokoban"
  base.set_env(config, "sokoban")
  base.as_prompting(config, "zero_shot")
  return config
