"""Prompting baseline on sokoban, evaluation only (train.steps = 0).

Reflexion-style: after a failed attempt the frozen model writes a reflection
that the next attempt's prompt carries (reflection_only memory).
"""

from __future__ import annotations

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.name = "reflexion_sokoban"
  base.set_env(config, "sokoban")
  base.as_prompting(config, "reflexion")
  return config
