"""Guess-the-number with a tiny random model: tests and the learning demo.

With one guess per attempt a single attempt wins 1/3 of the time; a policy
that reads its earlier attempts (``history_only`` memory) and never repeats a
wrong guess reaches pass@3 = 1. A from-scratch 2-layer model learns that in
minutes on a CPU, so hyperparameters suit a random model (lr 1e-3, GRPO with
std normalisation, no entropy bonus or weight decay), not a pretrained one.
"""

from __future__ import annotations

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.name = "tiny"
  config.env.name = "guess"
  config.model.name = "tiny-llama"
  config.model.remat = False
  config.rollout.num_tasks = 4
  config.rollout.group_size = 8
  config.rollout.num_attempts = 3
  config.rollout.memory = "history_only"
  config.rollout.reflection_tokens = 8
  config.algo.estimator = "grpo"
  config.algo.normalize_std = True
  config.algo.gamma_traj = 0.6
  config.algo.lr = 1e-3
  config.algo.entropy_coef = 0.0
  config.algo.weight_decay = 0.0
  config.algo.num_minibatches = 1
  config.train.steps = 200
  config.train.eval_every = 20
  config.train.checkpoint_every = 20
  config.eval.num_tasks = 32
  config.eval.num_attempts = 3
  return config
