"""ORBIT: in-context online learning across episodes, on one game or the suite.

    --config=experiments/configs/orbit.py:suite        # train on the five, evaluate all
    --config=experiments/configs/orbit.py:rps          # one game, ORBIT's settings
    --config=experiments/configs/orbit.py:rps,tiny     # tiny random model, CPU
    --config=experiments/configs/orbit.py:rps --config.env.episodes=1   # K = 1

``suite`` trains on ORBIT's five training games at once (``env.name`` is
their mix: one sub-batch of ``rollout.num_tasks`` tasks per game in one
compiled step) and evaluates on all seven, the held-out maze and mastermind
included, with metrics per game.

Every row is one continuous trial (``envs_jax.continuous``): K = 3 episodes of
the same task in one context, "[Episode k] New episode begins." between them,
reward 1 per solved episode, no stop at success. Training is ORBIT's
trajectory-level GRPO: 8 rollouts per task, each scored by its number of
solved episodes (gamma_step = 1, one attempt, so every action token of a
trial gets the trial's group-normalised score), temperature 0.6, lr 1e-6,
clip 0.2 / 0.28 (asymmetric), no KL, no entropy bonus. Evaluation plays one
continuous trial per held-out task and reports success and steps of each
episode and the in-context regret. ``env.episodes=1`` is the single-episode
baseline on the same machinery.

The ``tiny`` variant keeps ORBIT's method and changes what a from-scratch
2-layer byte-level model needs (lr 1e-3, no weight decay, rollout
temperature 1.0), like ``tiny.py``.
"""

from __future__ import annotations

from experiments.configs import base

# ORBIT's game suite (REFERENCES.md): trained on the first five, evaluated on
# the held-out two.
TRAIN_GAMES = ("rps", "minesweeper-orbit", "hangman", "wordle", "blackjack")
HELD_OUT_GAMES = ("maze", "mastermind")
GAMES = TRAIN_GAMES + HELD_OUT_GAMES
VARIANTS = ("smollm2", "tiny")
EPISODES = 3


def get_config(arg: str = "rps"):
  """``arg``: ``<game>`` or ``<game>,tiny``; game ``suite`` or one of ``GAMES``."""
  parts = arg.split(",")
  if len(parts) > 2:
    raise ValueError(f"orbit.py takes <game> or <game>,<variant>, got {arg!r}; "
                     f"game one of {['suite', *GAMES]}, variant one of "
                     f"{list(VARIANTS)}")
  game = base.choose("game", parts[0], ("suite",) + GAMES)
  variant = base.choose("variant", parts[1] if len(parts) == 2 else "smollm2",
                        VARIANTS)
  config = base.get_config()
  config.name = f"orbit_{game}" + ("_tiny" if variant == "tiny" else "")
  config.method = "orbit"
  config.env.name = ",".join(TRAIN_GAMES) if game == "suite" else game
  if game == "suite":
    config.eval.games = ",".join(GAMES)
  config.env.episodes = EPISODES
  config.rollout.num_tasks = 16
  config.rollout.group_size = 8
  config.rollout.num_attempts = 1
  config.rollout.memory = "none"
  config.rollout.temperature = 0.6
  config.algo.estimator = "grpo"
  config.algo.normalize_std = True
  config.algo.gamma_step = 1.0
  config.algo.gamma_traj = 0.0      # one attempt: no later attempts to credit
  config.algo.clip_eps = 0.2
  config.algo.clip_eps_high = 0.28
  config.algo.kl_coef = 0.0
  config.algo.entropy_coef = 0.0
  config.algo.train_reflection = False
  config.algo.lr = 1e-6
  config.algo.num_minibatches = 16   # 128 rows: 8 trials a minibatch
  config.eval.num_attempts = 1
  if variant == "tiny":
    config.model.name = "tiny-llama"
    config.model.remat = False
    config.rollout.num_tasks = 4
    config.rollout.temperature = 1.0
    config.algo.lr = 1e-3
    config.algo.weight_decay = 0.0
    config.algo.num_minibatches = 1
    config.train.steps = 100
    config.train.eval_every = 20
    config.train.checkpoint_every = 20
    config.eval.num_tasks = 32
  return config
