"""Prompting baseline on minesweeper, evaluation only (train.steps = 0).

Reflexion-style: after a failed attempt the frozen model writes a reflection
that the next attempt's prompt carries (reflection_only memory).
"""

from __future__ import annotations

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.name = "reflexion_minesweeper"
  base.set_env(config, "minesweeper")
  base.as_prompting(config, "reflexion")
  return config
