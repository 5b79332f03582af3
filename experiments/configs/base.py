"""The shared configuration: every key an experiment may set, LaMer defaults.

One configuration file per method (``lamer.py``, ``rl.py``, ``zero_shot.py``,
``reflexion.py``) starts from ``get_config()``, points it at a game with
``for_env`` (the per-game values of ``ENV_OVERRIDES``) and changes the
method's values; the game is the text after ``:`` on the command line, which
``ml_collections.config_flags`` passes to the file's ``get_config(arg)``:

    --config=experiments/configs/lamer.py:minesweeper
    --config=experiments/configs/rl.py:sokoban,grpo

Files never add keys (the dict is locked, and ``experiments.common.validate``
rejects keys this file does not define). Only ``env.overrides`` (static fields
of the game, e.g. ``num_boxes``) and ``env.params`` (fields of its parameter
pytree, e.g. ``step_penalty``) take free-form keys, checked against the game.

Defaults are those of LaMer's released Sokoban/MineSweeper scripts (see
``/work/shared/REFERENCES.md``): Qwen3-4B scale budgets (16 tasks x 8 trials x
3 attempts per step, 300 steps), lr 1e-6, gamma_step 0.95, PPO clip 0.2 with
dual clip 3.0, token-mean loss, entropy bonus 0.001, no KL, GiGPO with
``mean_norm`` advantages, rollout temperature 1.0, and evaluation on 128
held-out tasks at temperature 0.7, top-p 0.8, top-k 20.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

METHODS = ("lamer", "rl", "orbit", "sac", "zero_shot", "reflexion")

# Per-game values every method shares, as dotted keys of ``get_config()``.
# Mini-batches hold about 64 turn-samples (LaMer's PPO mini-batch) of the 384
# attempt rows of a step: 8 rows of <= 7 Sokoban turns, 3 rows of <= 20
# MineSweeper turns. WebShop follows LaMer's WebShop script (8 tasks per
# step, 150 steps, 3 attempts) but for its turns: the script's 12 turns of
# whole pages do not fit SmolLM2's 8192 positions (an observation takes 650
# token slots, 12 turns 8232), 8 do with reflections (8113 slots), so the game
# plays 8 (``env.overrides.max_turns``, which its instructions state; 12
# for a longer-context model). 192 attempt rows of <= 8 turns: 6 rows a
# mini-batch (reward_mode "success", LaMer's; "score" rewards the WebShop
# score). Keys under ``env.overrides.`` set the game's own fields. Values
# that only one method sets per game (LaMer's gamma_traj) live in that
# method's file.
ENV_OVERRIDES: dict[str, dict[str, Any]] = {
    "sokoban": {"algo.num_minibatches": 48},
    "minesweeper": {"algo.num_minibatches": 128},
    "webshop": {"env.overrides.max_turns": 8, "env.overrides.reward_mode": "success",
                "rollout.num_tasks": 8, "algo.num_minibatches": 32,
                "train.steps": 150},
}
ENVS = tuple(ENV_OVERRIDES)


def get_config() -> ml_collections.ConfigDict:
  """LaMer on Sokoban with the paper's budgets (a GPU/TPU run)."""
  config = ml_collections.ConfigDict()
  config.name = "lamer_sokoban"     # run label (plots, logs)
  config.method = "lamer"           # one of METHODS

  config.env = ml_collections.ConfigDict()
  # A registered game, or a comma-separated mix of them ("rps,hangman"):
  # a mix trains on rollout.num_tasks tasks of every game in one compiled
  # step (lamer_jax.algos.lamer.make_mix_train_step).
  config.env.name = "sokoban"
  config.env.overrides = ml_collections.ConfigDict()   # static game fields
  config.env.params = ml_collections.ConfigDict()      # parameter pytree fields
  # 0: the game as it is (an attempt is one episode: LaMer, RL, prompting).
  # K >= 1: ORBIT's continuous trial, K episodes of the same task in one
  # context (envs_jax.continuous; method "orbit").
  config.env.episodes = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "smollm2-135m"
  config.model.dtype = "float32"    # compute dtype; parameters stay float32
  # Rematerialise each block in the backward pass: the loss's teacher-forced
  # forward keeps [rows, heads, C, C] attention per layer otherwise.
  config.model.remat = True

  # Device mesh (lamer_jax.sharding, docs/SCALING.md): the rows (tasks x
  # trials) split over data x fsdp, the weights and Adam moments over fsdp
  # (and attention heads / MLP over tensor). -1: all remaining devices, so
  # the default is pure data parallelism over every device of every host.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1

  # Training rollouts: B tasks x G trials x N attempts x T turns.
  config.rollout = ml_collections.ConfigDict()
  config.rollout.num_tasks = 16
  config.rollout.group_size = 8
  config.rollout.num_attempts = 3
  # None: env.max_turns (in a mix of games, a cap on every game's limit).
  config.rollout.num_turns = config_dict.placeholder(int)
  config.rollout.memory = "reflection_only"
  # LaMer cuts a reflection at 2000 characters, about 512 tokens.
  config.rollout.reflection_tokens = 512
  # "constrained": actions decoded under the candidate table's prefix mask
  # (always valid); "free": the model writes the action span and a span that
  # is no allowed candidate costs invalid_penalty and leaves the game as is.
  config.rollout.action_mode = "constrained"
  config.rollout.invalid_penalty = -0.5   # LaMer's invalid-action penalty
  # Free "<think>" tokens before every action (0: none; LaMer's released
  # scripts let Qwen3 think).
  config.rollout.think_tokens = 0
  config.rollout.temperature = 1.0
  config.rollout.top_k = 0          # 0: no top-k filter
  config.rollout.top_p = 1.0

  # Every field of lamer_jax.algos.lamer.AlgoConfig.
  config.algo = ml_collections.ConfigDict()
  config.algo.estimator = "gigpo"
  config.algo.normalize_std = False   # GiGPO "mean_norm"
  config.algo.step_weight = 1.0
  config.algo.gamma_step = 0.95
  config.algo.gamma_traj = 0.6
  config.algo.clip_eps = 0.2
  config.algo.clip_eps_high = config_dict.placeholder(float)  # None: symmetric
  config.algo.dual_clip = 3.0         # None: no dual clip
  config.algo.aggregation = "token-mean"
  config.algo.entropy_coef = 0.001
  config.algo.kl_coef = 0.0
  config.algo.train_reflection = True
  config.algo.lr = 1e-6
  config.algo.warmup_steps = 0
  config.algo.weight_decay = 0.01
  config.algo.grad_clip = 1.0
  config.algo.b1 = 0.9
  config.algo.b2 = 0.999
  config.algo.adam_eps = 1e-8
  config.algo.ppo_epochs = 1
  # LaMer's PPO mini-batches hold 64 turn-samples; ours hold whole attempt
  # rows, so 384 rows (16 x 8 x 3) of up to 7 Sokoban turns split into 48
  # mini-batches of 8 rows (<= 56 turns) each.
  config.algo.num_minibatches = 48
  # PPO's value head (estimator "gae" only; lamer_jax.algos.lamer.AlgoConfig).
  config.algo.gae_lambda = 0.95
  config.algo.value_coef = 0.5
  config.algo.value_clip = config_dict.placeholder(float)   # None: unclipped
  config.algo.value_hidden = (256, 256)
  config.algo.value_lr = 1e-4
  # The value loss's gradient also trains the LLM (shared backbone, PPO-GLAM).
  config.algo.value_backbone_grad = True
  # The update's forward over each row's real slots only, packed into the
  # smallest of n lengths that holds the minibatch's longest row (one
  # compiled forward per length); 0: over every slot of the context.
  config.algo.update_pack_buckets = 0

  # SAC with hindsight relabeling (method "sac"; every field of
  # lamer_jax.algos.sac.SACConfig, MAGELLAN's values). A train step acts
  # sac.env_steps steps in sac.num_envs envs, then makes sac.updates updates.
  config.sac = ml_collections.ConfigDict()
  config.sac.num_envs = 32
  config.sac.env_steps = 2
  config.sac.updates = 1
  config.sac.batch_size = 256
  config.sac.capacity = 512           # steps stored per env
  config.sac.learning_starts = 512    # stored transitions before updating
  config.sac.gamma = 0.99
  config.sac.n_step = 3
  config.sac.tau = 0.005
  config.sac.lr = 1e-4
  config.sac.alpha_lr = 1e-3
  config.sac.log_alpha_init = -3.0
  config.sac.target_entropy_fraction = 0.5
  config.sac.critic_warmup = 10
  config.sac.critic_coef = 1.0
  config.sac.critic_backbone_grad = True
  config.sac.q_hidden = (256, 256)
  config.sac.her_strategy = "future"  # "none" | "final" | "future"
  config.sac.her_ratio = 0.8
  config.sac.grad_clip = 1.0
  config.sac.weight_decay = 0.0
  config.sac.short_prompt = False
  config.sac.candidate_score = "sum"  # "sum" | "mean" of its token log-probs
  config.sac.eval_greedy = True       # evaluate the policy's argmax candidate
  # The evaluated game (e.g. "playground-test": held-out kinds); "": env.name.
  config.sac.eval_env = ""

  config.train = ml_collections.ConfigDict()
  config.train.steps = 300
  config.train.seed = 0
  config.train.log_every = 1          # console log period (JSONL: every step)
  config.train.eval_every = 25        # 0: evaluate only at the end
  config.train.checkpoint_every = 25  # 0: checkpoint only at the end
  config.train.keep_checkpoints = 3
  config.train.checkpoint_every_s = 1800  # also every 30 min of wall clock; 0: off
  # Steps in a row whose updates are skipped for non-finite values before the
  # run stops (TrainingDiverged).
  config.train.max_nonfinite_steps = 3

  # Held-out evaluation: one trial per task, eval_seeds(num_tasks).
  config.eval = ml_collections.ConfigDict()
  config.eval.num_tasks = config_dict.placeholder(int)  # None: 128 (16 on CPU)
  # Tasks played at once (memory grows with it); None: all of them. Must
  # divide num_tasks; the sampling keys depend on it.
  config.eval.batch_size = config_dict.placeholder(int)
  config.eval.num_attempts = 3
  config.eval.temperature = 0.7
  config.eval.top_p = 0.8
  config.eval.top_k = 20
  # The games evaluated, comma-separated ("maze,mastermind": ORBIT's held-out
  # games); "": the training games (env.name). Several games are reported
  # per game ("<game>/pass@1", ...).
  config.eval.games = ""

  config.lock()
  return config


def choose(what: str, value: str, choices: Sequence[str]) -> str:
  """``value`` if it is one of ``choices``, else a ``ValueError`` naming them."""
  if value not in choices:
    raise ValueError(f"unknown {what} {value!r}; choose one of {list(choices)}")
  return value


def for_env(config: ml_collections.ConfigDict, env: str) -> ml_collections.ConfigDict:
  """Points ``config`` at ``env`` (one of ``ENVS``) with its ``ENV_OVERRIDES``.

  Other registered variants (``sokoban-8x8``, ...) are one more override
  away: ``--config.env.name=sokoban-8x8`` keeps the family's values.

  Raises:
    ValueError: ``env`` is not one of ``ENVS``.
  """
  choose("env", env, ENVS)
  config.env.name = env
  values = ENV_OVERRIDES[env]
  game = {k.split(".", 2)[2]: v for k, v in values.items()
          if k.startswith("env.overrides.")}
  with config.env.overrides.unlocked():   # the game's fields are free-form
    config.env.overrides.update(game)
  config.update_from_flattened_dict(
      {k: v for k, v in values.items() if not k.startswith("env.overrides.")})
  return config


def as_prompting(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """A prompting baseline: the frozen model, evaluated only."""
  choose("prompting method", method, ("zero_shot", "reflexion"))
  config.method = method
  config.train.steps = 0
  config.rollout.memory = "none" if method == "zero_shot" else "reflection_only"
  return config
