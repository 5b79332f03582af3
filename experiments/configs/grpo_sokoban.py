"""Single-episode GRPO baseline on sokoban: 24 independent episodes per task
(the 8 x 3 of LaMer's trials), no memory; evaluated with N = 3 independent
attempts per task, so its pass@k is comparable with LaMer's."""

from __future__ import annotations

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.name = "grpo_sokoban"
  base.set_env(config, "sokoban")
  base.as_rl(config, "grpo")
  return config
