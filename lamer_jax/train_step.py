"""One LaMer iteration as one jitted function.

    train_step = make_train_step(env, mcfg, layout, rollout_cfg, algo_cfg)
    state, metrics = train_step(state)

does rollout (B tasks x G trials x N attempts, reflections included),
cross-episode returns, GRPO/GiGPO advantages, and PPO epochs over minibatches
of attempt rows with optax, all inside one XLA program. The same machinery
runs the baselines: single-episode RL is ``num_attempts=1, memory="none"``
with ``G * N`` trials per task; the prompting baselines only evaluate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from envs_jax.core import Environment
from lamer_jax import evaluation, losses, returns, sharding
from lamer_jax.models import llama, sampling
from lamer_jax.prompts import ContextLayout
from lamer_jax.rollout import RolloutConfig, Trajectory, rollout

TRAIN_SEEDS = 1 << 16        # training tasks use seeds [0, 2^16) (LaMer)
EVAL_SEED_OFFSET = 1 << 16   # held-out tasks use seeds from 2^16 on


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
  """Returns, advantages, loss and optimiser settings (LaMer defaults)."""

  estimator: str = "gigpo"          # "grpo" | "gigpo"
  normalize_std: bool = False       # GiGPO "mean_norm"
  step_weight: float = 1.0
  gamma_step: float = 0.95
  gamma_traj: float = 0.6
  clip_eps: float = 0.2
  clip_eps_high: float | None = None
  dual_clip: float | None = 3.0
  aggregation: str = "token-mean"
  entropy_coef: float = 0.001
  kl_coef: float = 0.0
  train_reflection: bool = True     # put a loss on reflection tokens
  lr: float = 1e-6
  warmup_steps: int = 0
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  adam_eps: float = 1e-8            # Adam's epsilon (optax's default)
  ppo_epochs: int = 1
  num_minibatches: int = 1

  def __post_init__(self):
    if self.estimator not in returns.ESTIMATORS:
      raise ValueError(f"estimator must be one of {returns.ESTIMATORS}, got "
                       f"{self.estimator!r}")


@struct.dataclass
class TrainState:
  params: Any
  opt_state: Any
  ref_params: Any          # frozen reference policy (None unless kl_coef > 0)
  step: jax.Array
  key: jax.Array


def make_optimizer(cfg: AlgoConfig) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and an optional linear warm-up."""
  lr: Any = cfg.lr
  if cfg.warmup_steps:
    lr = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps,
                  weight_decay=cfg.weight_decay))


def init_train_state(params, algo: AlgoConfig, key: jax.Array) -> TrainState:
  opt = make_optimizer(algo)
  # A copy: the jitted step donates its state, and one buffer cannot be
  # donated twice (as params and as ref_params).
  ref = jax.tree.map(jnp.copy, params) if algo.kl_coef > 0 else None
  return TrainState(params=params, opt_state=opt.init(params), ref_params=ref,
                    step=jnp.zeros((), jnp.int32), key=key)


def task_seeds(key: jax.Array, num_tasks: int) -> jax.Array:
  """Training task seeds, uniform in [0, 2^16)."""
  return jax.random.randint(key, (num_tasks,), 0, TRAIN_SEEDS, jnp.int32)


def eval_seeds(num_tasks: int, offset: int = 0) -> jax.Array:
  """Held-out task seeds: a fixed set from 2^16 on."""
  return EVAL_SEED_OFFSET + offset + jnp.arange(num_tasks, dtype=jnp.int32)


def loss_slot_kinds(layout: ContextLayout,
                    train_reflection: bool) -> tuple[np.ndarray, np.ndarray]:
  """Static slot indices of every generated token of an attempt's row, and
  which of them are constrained action tokens.

  Per turn: its thinking tokens (if any), then its action tokens; then the
  reflection tokens. Each generated span directly follows its (always real)
  prompt piece, so the logits predicting slot s are the model's outputs at
  slot s - 1. Constrained action tokens are scored under the candidate
  table's prefix mask; all others (thinking, free-form actions,
  reflections) over the whole vocabulary.
  """
  idx, kind = [], []
  constrained = layout.action_mode == "constrained"
  for t in range(layout.num_turns):
    if layout.thinks:
      idx.append(layout.turn_start(t) + layout.turn_prompt_len
                 + np.arange(layout.think_tokens))
      kind.append(np.zeros(layout.think_tokens, bool))
    idx.append(layout.action_start(t) + np.arange(layout.action_len))
    kind.append(np.full(layout.action_len, constrained))
  if layout.uses_reflection and train_reflection:
    idx.append(layout.reflect_start + layout.reflect_prompt_len
               + np.arange(layout.reflection_tokens))
    kind.append(np.zeros(layout.reflection_tokens, bool))
  return np.concatenate(idx).astype(np.int32), np.concatenate(kind)


def loss_slots(layout: ContextLayout, train_reflection: bool) -> np.ndarray:
  """Static slot indices of every generated token (``loss_slot_kinds``)."""
  return loss_slot_kinds(layout, train_reflection)[0]


def policy_logprobs(params, mcfg: llama.ModelConfig, layout: ContextLayout,
                    batch: dict[str, jax.Array], temperature: float,
                    train_reflection: bool) -> tuple[jax.Array, jax.Array]:
  """Teacher-forced log-probs and entropies of the generated tokens.

  Args:
    batch: rows [M, C] (tokens, positions, token_mask) plus ``actions_allowed``
      bool[M, T, A].

  Returns:
    (logp f32[M, K], entropy f32[M, K]) at the slots ``loss_slots(layout)``.
  """
  codec = layout.codec
  m = batch["tokens"].shape[0]
  t_n, la = layout.num_turns, layout.action_len
  slots_np, constrained = loss_slot_kinds(layout, train_reflection)
  slots = jnp.asarray(slots_np)
  _, hidden, _ = llama.forward(params, mcfg, batch["tokens"], batch["positions"],
                               token_mask=batch["token_mask"], compute_logits=False)
  logits = llama.lm_head(params, mcfg, hidden[:, slots - 1])        # [M, K, V]
  targets = batch["tokens"][:, slots]
  tmask = batch["token_mask"][:, slots]
  logp = jnp.zeros(targets.shape, jnp.float32)
  ent = jnp.zeros(targets.shape, jnp.float32)
  c_idx, f_idx = np.nonzero(constrained)[0], np.nonzero(~constrained)[0]
  if c_idx.size:   # T turns x La action tokens, turn-major
    a_logits = logits[:, c_idx].reshape(m * t_n, la, -1)
    a_tok = targets[:, c_idx].reshape(m * t_n, la)
    a_mask = tmask[:, c_idx].reshape(m * t_n, la)
    allowed = batch["action_allowed"].reshape(m * t_n, -1)
    a_logp, a_allowed = sampling.action_token_logprobs(
        a_logits, a_tok, a_mask, jnp.asarray(codec.action_tokens),
        jnp.asarray(codec.action_lengths), allowed, temperature,
        return_allowed=True)
    a_ent = losses.masked_entropy(a_logits, a_allowed, temperature)
    logp = logp.at[:, c_idx].set(a_logp.reshape(m, -1))
    ent = ent.at[:, c_idx].set(a_ent.reshape(m, -1))
  if f_idx.size:   # thinking, free-form actions, reflections: whole vocabulary
    f_logits = logits[:, f_idx]
    f_lp = jax.nn.log_softmax(f_logits.astype(jnp.float32) / temperature, axis=-1)
    f_tok = targets[:, f_idx]
    logp = logp.at[:, f_idx].set(
        jnp.take_along_axis(f_lp, f_tok[..., None], axis=-1)[..., 0])
    ent = ent.at[:, f_idx].set(losses.masked_entropy(f_logits, None, temperature))
  return logp, ent


def trajectory_metrics(traj: Trajectory) -> dict[str, jax.Array]:
  """pass@k, per-attempt success, returns and behaviour statistics."""
  tokens_per_turn = None
  metrics = evaluation.trial_metrics(traj.won, traj.attempt_valid, traj.rewards,
                                     traj.turn_valid, traj.invalid, tokens_per_turn)
  refl_tokens = jnp.where(traj.token_turn_ids == traj.rewards.shape[-1],
                          traj.loss_mask, False).sum((-1,))
  metrics["reflection_tokens/mean"] = jnp.where(
      traj.reflected, refl_tokens, 0).sum() / jnp.maximum(traj.reflected.sum(), 1)
  metrics["generated_tokens"] = traj.loss_mask.sum().astype(jnp.float32)
  return metrics


def make_train_step(env: Environment, mcfg: llama.ModelConfig,
                    layout: ContextLayout, rollout_cfg: RolloutConfig,
                    algo: AlgoConfig, env_params: Any = None,
                    jit: bool = True, mesh: jax.sharding.Mesh | None = None,
                    ) -> Callable[[TrainState], tuple[TrainState, dict]]:
  """Builds ``train_step(state) -> (state, metrics)``: one whole LaMer iteration.

  ``mesh`` (optional, see ``lamer_jax.sharding.make_sharded_train_step``)
  splits the rollout rows and the training minibatches over the mesh's data
  axes; None leaves the step exactly as on one device.
  """
  env_params = env.default_params if env_params is None else env_params
  opt = make_optimizer(algo)
  rows = rollout_cfg.num_rows * layout.num_attempts
  if rows % algo.num_minibatches:
    raise ValueError(f"{rows} attempt rows (tasks x group x attempts) do not split "
                     f"into {algo.num_minibatches} minibatches")
  mb_rows = rows // algo.num_minibatches
  slots = loss_slots(layout, algo.train_reflection)
  temperature = rollout_cfg.temperature

  def loss_fn(params, ref_params, mb):
    logp, ent = policy_logprobs(params, mcfg, layout, mb, temperature,
                                algo.train_reflection)
    logp_ref = None
    if algo.kl_coef > 0:
      logp_ref, _ = policy_logprobs(ref_params, mcfg, layout, mb, temperature,
                                    algo.train_reflection)
      logp_ref = jax.lax.stop_gradient(logp_ref)
    loss, metrics = losses.ppo_policy_loss(
        logp, mb["logp_old"], mb["advantages"], mb["loss_mask"],
        clip_eps=algo.clip_eps, clip_eps_high=algo.clip_eps_high,
        dual_clip=algo.dual_clip, aggregation=algo.aggregation, entropy=ent,
        entropy_coef=algo.entropy_coef, logp_ref=logp_ref, kl_coef=algo.kl_coef)
    return loss, metrics

  def train_step(state: TrainState):
    key, k_task, k_roll, k_perm = jax.random.split(state.key, 4)
    seeds = task_seeds(k_task, rollout_cfg.num_tasks)
    traj = rollout(state.params, k_roll, env_params, env=env, mcfg=mcfg,
                   layout=layout, cfg=rollout_cfg, task_seeds=seeds, mesh=mesh)
    adv = returns.lamer_advantages(
        traj.rewards, traj.turn_valid, traj.attempt_valid, traj.state_keys,
        group_size=rollout_cfg.group_size, gamma_step=algo.gamma_step,
        gamma_traj=algo.gamma_traj, estimator=algo.estimator,
        normalize_std=algo.normalize_std, step_weight=algo.step_weight)
    tok_adv = returns.broadcast_to_tokens(adv.turn, adv.reflection,
                                          traj.token_turn_ids)
    flat = lambda x: x.reshape((rows,) + x.shape[2:])
    data = {
        "tokens": flat(traj.tokens), "positions": flat(traj.positions),
        "token_mask": flat(traj.token_mask),
        "action_allowed": flat(traj.action_allowed),
        "loss_mask": flat(traj.loss_mask)[:, slots],
        "logp_old": flat(traj.logp_old)[:, slots],
        "advantages": flat(tok_adv)[:, slots],
    }
    data = sharding.constrain_rows(data, mesh)  # [sharding] no-op without mesh

    def epoch(carry, ekey):
      params, opt_state = carry
      perm = jax.random.permutation(ekey, rows).reshape(algo.num_minibatches,
                                                          mb_rows)

      def minibatch(carry, idx):
        params, opt_state = carry
        mb = jax.tree.map(lambda x: x[idx], data)
        # [sharding] each device runs forward/backward on its share of the
        # minibatch; the compiler all-reduces the gradients. No-op without mesh.
        mb = sharding.constrain_rows(mb, mesh)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state.ref_params, mb)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return (params, opt_state), metrics

      return jax.lax.scan(minibatch, (params, opt_state), perm)

    (params, opt_state), loss_metrics = jax.lax.scan(
        epoch, (state.params, state.opt_state),
        jax.random.split(k_perm, algo.ppo_epochs))
    metrics = trajectory_metrics(traj)
    # First minibatch of the first epoch is on-policy: its ratio should be 1.
    metrics.update({f"loss/{k}": v[0, 0] for k, v in loss_metrics.items()})
    metrics["advantage/abs_mean"] = (
        jnp.abs(data["advantages"]).sum() / jnp.maximum(data["loss_mask"].sum(), 1))
    new_state = TrainState(params=params, opt_state=opt_state,
                           ref_params=state.ref_params, step=state.step + 1, key=key)
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=0) if jit else train_step


def make_eval_fn(env: Environment, mcfg: llama.ModelConfig, layout: ContextLayout,
                 rollout_cfg: RolloutConfig, env_params: Any = None,
                 mesh: jax.sharding.Mesh | None = None,
                 batch_size: int | None = None,
                 on_batch: Callable[[int], Any] | None = None):
  """Builds ``evaluate(params, key, seeds int32[B]) -> metrics`` (jitted).

  With ``mesh``, the tasks are split over its ("data", "fsdp") axes and
  ``params`` must already be placed on it (``sharding.shard_params``).
  ``batch_size`` plays the B tasks that many at a time (a ``lax.map`` over
  B / batch_size rollouts, each with its own key folded from ``key``), which
  bounds memory by the batch instead of B; None plays all B at once.
  ``on_batch(num_tasks)`` runs on the host (``jax.debug.callback``) each time
  a batch of that many tasks has been played: a progress hook, which changes
  no result.
  """
  env_params = env.default_params if env_params is None else env_params

  def play(params, key, seeds):
    cfg = dataclasses.replace(rollout_cfg, num_tasks=seeds.shape[0])
    traj = rollout(params, key, env_params, env=env, mcfg=mcfg, layout=layout,
                   cfg=cfg, task_seeds=seeds, mesh=mesh)
    if on_batch is not None:
      # The operand depends on the batch's result, so the call comes after it.
      jax.debug.callback(lambda _: on_batch(seeds.shape[0]), jnp.any(traj.won))
    return traj

  @jax.jit
  def evaluate(params, key, seeds):
    n = seeds.shape[0]
    if batch_size is None or batch_size >= n:
      traj = play(params, key, seeds)
    else:
      if n % batch_size:
        raise ValueError(f"{n} evaluation tasks do not split into batches of "
                         f"{batch_size}")
      chunks = n // batch_size
      trajs = jax.lax.map(
          lambda a: play(params, jax.random.fold_in(key, a[0]), a[1]),
          (jnp.arange(chunks), seeds.reshape(chunks, batch_size)))
      traj = jax.tree.map(lambda x: x.reshape((n,) + x.shape[2:]), trajs)
    return trajectory_metrics(traj)

  return evaluate
