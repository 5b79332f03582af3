"""Single-episode RL baseline (GiGPO, GRPO or PPO) on Sokoban, MineSweeper or
WebShop.

    --config=experiments/configs/rl.py:sokoban             # GiGPO
    --config=experiments/configs/rl.py:webshop             # GiGPO on WebShop
    --config=experiments/configs/rl.py:minesweeper,grpo    # GRPO
    --config=experiments/configs/rl.py:sokoban,gae         # PPO: value head + GAE

Trains on ``G * N`` independent episodes per task (LaMer's 8 trials x 3
attempts = 24, as in its GiGPO/GRPO scripts), one attempt each and no memory;
evaluated with N = 3 independent attempts per task (``eval.num_attempts``), so
its pass@k is comparable with LaMer's. ``config.name`` is
``<estimator>_<env>``, e.g. ``grpo_minesweeper``. PPO (``gae``, the LaMer
paper's PPO row) trains a value head on the same model's hidden states
(``lamer_jax.algos.lamer``) and whitens its advantages over the batch.
"""

from __future__ import annotations

from experiments.configs import base

# Those of lamer_jax.returns.ESTIMATORS (a test checks that they agree),
# listed here so that config files import no JAX.
ESTIMATORS = ("gigpo", "grpo", "gae")


def get_config(arg: str = "sokoban"):
  """``arg``: ``<env>`` or ``<env>,<estimator>``; env one of ``base.ENVS``,
  estimator one of ``ESTIMATORS`` (default ``gigpo``)."""
  parts = arg.split(",")
  if len(parts) > 2:
    raise ValueError(f"rl.py takes <env> or <env>,<estimator>, got {arg!r}; env "
                     f"one of {list(base.ENVS)}, estimator one of {list(ESTIMATORS)}")
  env, estimator = parts[0], parts[1] if len(parts) == 2 else "gigpo"
  base.choose("estimator", estimator, ESTIMATORS)
  config = base.for_env(base.get_config(), env)
  config.name = f"{estimator}_{env}"
  attempts = config.rollout.num_attempts
  config.method = "rl"
  config.rollout.group_size = config.rollout.group_size * attempts
  config.rollout.num_attempts = 1
  config.rollout.memory = "none"
  config.algo.estimator = estimator
  # GRPO as usually defined divides by the group's std; GiGPO keeps LaMer's
  # mean_norm; PPO whitens its GAE advantages over the batch (as verl).
  config.algo.normalize_std = estimator in ("grpo", "gae")
  return config
