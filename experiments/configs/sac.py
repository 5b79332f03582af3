"""SAC-GLAM on Playground-Text: SAC with and without hindsight relabeling, and PPO.

    --config=experiments/configs/sac.py                # sac_her_playground
    --config=experiments/configs/sac.py:sac            # no relabeling
    --config=experiments/configs/sac.py:ppo            # PPO: value head + GAE
    --config=experiments/configs/sac.py:sac_her,tiny   # tiny from-scratch model

SAC (method ``sac``, ``lamer_jax.algos.sac``) trains on Playground's training
kinds with MAGELLAN's settings (32 envs x 2 steps per update, minibatch 256,
3-step returns, gamma 0.99, Polyak 0.005, lr 1e-4, log alpha -3 with its own
Adam 1e-3, 10 critic-only warm-up updates) and HER ``future`` with ratio 0.8;
it is evaluated greedily on ``playground-test`` (MAGELLAN's held-out kinds),
one episode per task, with success per goal type. ``ppo`` is the same env and
model under the on-policy machinery: method ``rl`` with estimator ``gae``,
one attempt, no memory, evaluated on the same held-out kinds.

``tiny``: the byte-level one-block model (``micro-llama``) from scratch, the
small goal set of the learning study (Grasp goals, horizon 3:
``env.params.goal_probs``), short prompts, lr 1e-3, a small replay and
minibatch, a temperature that adapts within tens of updates (alpha 0.14, its
Adam at 1e-2) and mean token log-probs as candidate scores (with summed ones
an untrained byte model ranks candidates by length: its policy starts at
~0.1 nats of entropy, nearly always on the shortest candidate), so a run
takes minutes on a CPU (``experiments/sac_study.py``).
"""

from __future__ import annotations

from experiments.configs import base

VARIANTS = ("sac_her", "sac", "ppo")
# Playground's five task classes: impossible, grasp, grow plant / herbivore /
# carnivore (envs_jax.games.playground.TASK_CLASSES).
GRASP_ONLY = (0.0, 1.0, 0.0, 0.0, 0.0)


def get_config(arg: str = "sac_her"):
  """``arg``: ``<variant>`` or ``<variant>,tiny``, variant one of ``VARIANTS``."""
  parts = arg.split(",")
  if len(parts) > 2 or (len(parts) == 2 and parts[1] != "tiny"):
    raise ValueError(f"sac.py takes <variant> or <variant>,tiny, got {arg!r}; "
                     f"variant one of {list(VARIANTS)}")
  variant, tiny = base.choose("variant", parts[0], VARIANTS), len(parts) == 2
  config = base.get_config()
  config.name = f"{variant}_playground" + ("_tiny" if tiny else "")
  config.env.name = "playground"
  if variant == "ppo":
    config.method = "rl"
    config.rollout.num_attempts = 1
    config.rollout.memory = "none"
    config.rollout.num_tasks = 8
    config.rollout.group_size = 8
    config.algo.estimator = "gae"
    config.algo.normalize_std = True
    config.algo.gamma_step = 0.99
    config.algo.lr = 1e-5
    config.algo.num_minibatches = 4
    config.eval.games = "playground-test"
    config.eval.num_attempts = 1
  else:
    config.method = "sac"
    config.sac.her_strategy = "future" if variant == "sac_her" else "none"
    config.sac.eval_env = "playground-test"
  config.train.steps = 2000 if variant != "ppo" else 300
  config.train.eval_every = 200 if variant != "ppo" else 25
  config.train.checkpoint_every = config.train.eval_every
  config.eval.num_tasks = 256
  config.eval.batch_size = 64
  if tiny:
    config.model.name = "micro-llama"
    config.model.remat = False
    with config.unlocked():
      config.env.params.goal_probs = GRASP_ONLY
    config.rollout.num_turns = 3           # the Grasp horizon
    config.sac.num_envs = 16
    config.sac.batch_size = 32
    config.sac.capacity = 256
    config.sac.learning_starts = 256
    config.sac.lr = 1e-3
    config.sac.alpha_lr = 1e-2
    config.sac.log_alpha_init = -2.0
    config.sac.q_hidden = (128, 128)
    config.sac.short_prompt = True
    config.sac.candidate_score = "mean"
    config.algo.lr = 1e-3
    config.algo.entropy_coef = 0.0
    config.algo.weight_decay = 0.0
    config.algo.num_minibatches = 1
    config.train.steps = 150
    config.train.eval_every = 50
    config.train.checkpoint_every = 50
    config.eval.num_tasks = 128
  return config
