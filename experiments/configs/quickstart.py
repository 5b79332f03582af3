"""A few-minute LaMer run on a laptop CPU: the real SmolLM2-135M on Sokoban.

Tiny budgets (1 task x 2 trials x 2 attempts of 1 turn, 16-token
reflections, 2 steps, 2 held-out tasks): it shows the whole pipeline
(rollout with reflections, cross-episode returns, GiGPO, PPO update,
checkpoints, evaluation, pass@k table), not learning.

    python -m experiments.train --config=experiments/configs/quickstart.py \\
        --workdir=runs/quickstart
"""

from __future__ import annotations

from experiments.configs import lamer


def get_config():
  config = lamer.get_config("sokoban")   # gamma_traj 0.9
  config.name = "quickstart"
  config.rollout.num_tasks = 1
  config.rollout.group_size = 2
  config.rollout.num_attempts = 2
  config.rollout.num_turns = 1
  config.rollout.reflection_tokens = 16
  config.algo.num_minibatches = 2   # 2 attempt rows per update: small memory
  config.train.steps = 2
  config.train.eval_every = 0
  config.train.checkpoint_every = 0
  config.eval.num_tasks = 2
  config.eval.num_attempts = 2
  return config
