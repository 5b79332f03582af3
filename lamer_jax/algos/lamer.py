"""LaMer (and its on-policy baselines): one iteration as one jitted function.

    train_step = make_train_step(env, mcfg, layout, rollout_cfg, algo_cfg)
    state, metrics = train_step(state)

reads top to bottom: COLLECT (the trial loop of ``agent.trial``: B tasks x G
trials x N attempts, reflections included), RETURNS and ADVANTAGES
(cross-episode returns, GRPO/GiGPO), UPDATE (PPO epochs over minibatches of
attempt rows with optax; an update whose loss, gradient or new parameters are
not finite is skipped and counted in ``nonfinite/skipped_updates``), all
inside one XLA program. The same machinery runs
the baselines: single-episode RL is ``num_attempts=1, memory="none"`` with
``G * N`` trials per task; the prompting baselines only evaluate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from envs_jax.core import Environment
from lamer_jax import evaluation, losses, returns, sharding
from lamer_jax.agent.layout import ContextLayout
from lamer_jax.agent.scoring import row_logprobs
from lamer_jax.agent.trial import (RolloutConfig, Trajectory, rollout,
                                   task_seeds)
from lamer_jax.models import llama


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
  # A method's further state (a pytree, checkpointed with the rest): PPO's
  # value head and its optimiser state; SAC's Q heads, target copies,
  # temperature, replay buffer and live envs. None for LaMer, GRPO, GiGPO.
  extra: Any = None


def make_optimizer(cfg: AlgoConfig) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and an optional linear warm-up."""
  lr: Any = cfg.lr
  if cfg.warmup_steps:
    lr = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps,
                  weight_decay=cfg.weight_decay))


def all_finite(tree: Any) -> jax.Array:
  """bool[]: every floating-point element of ``tree`` is finite."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def init_train_state(params, algo: AlgoConfig, key: jax.Array) -> TrainState:
  opt = make_optimizer(algo)
  # A copy: the jitted step donates its state, and one buffer cannot be
  # donated twice (as params and as ref_params).
  ref = jax.tree.map(jnp.copy, params) if algo.kl_coef > 0 else None
  return TrainState(params=params, opt_state=opt.init(params), ref_params=ref,
                    step=jnp.zeros((), jnp.int32), key=key)


def trajectory_metrics(traj: Trajectory) -> dict[str, jax.Array]:
  """pass@k, per-attempt success, returns and behaviour statistics; with
  continuous trials, also success and steps per episode and the regret."""
  tokens_per_turn = None
  metrics = evaluation.trial_metrics(traj.won, traj.attempt_valid, traj.rewards,
                                     traj.turn_valid, traj.invalid, tokens_per_turn)
  refl_tokens = jnp.where(traj.token_turn_ids == traj.rewards.shape[-1],
                          traj.loss_mask, False).sum((-1,))
  metrics["reflection_tokens/mean"] = jnp.where(
      traj.reflected, refl_tokens, 0).sum() / jnp.maximum(traj.reflected.sum(), 1)
  metrics["generated_tokens"] = traj.loss_mask.sum().astype(jnp.float32)
  if traj.episodes is not None:    # continuous trials (ORBIT)
    metrics.update(evaluation.episode_metrics(
        traj.episodes["solved"], traj.episodes["steps"], traj.attempt_valid))
  return metrics


@dataclasses.dataclass(frozen=True, eq=False)
class Game:
  """One game of a (multi-task) train step: its own trials and row layout.

  Attributes:
    env: the game.
    layout: its trials' shape (B x G x N x T) and row layout (its own
      instructions, observation width and context length).
    env_params: its parameters (None: ``env.default_params``).
    name: prefix of its metrics in a mix (``"<name>/pass@1"``, ...).
  """

  env: Environment
  layout: ContextLayout
  env_params: Any = None
  name: str = ""

  @property
  def params(self) -> Any:
    return self.env.default_params if self.env_params is None else self.env_params

  @property
  def rows(self) -> int:
    return self.layout.shape.num_attempt_rows


def make_train_step(env: Environment, mcfg: llama.ModelConfig,
                    layout: ContextLayout, rollout_cfg: RolloutConfig,
                    algo: AlgoConfig, env_params: Any = None,
                    jit: bool = True, mesh: jax.sharding.Mesh | None = None,
                    ) -> Callable[[TrainState], tuple[TrainState, dict]]:
  """Builds ``train_step(state) -> (state, metrics)``: one whole LaMer iteration
  on ``layout.shape`` trials of ``env``.

  ``mesh`` (optional, ``lamer_jax.sharding.make_mesh``) splits the rollout rows
  and the training minibatches over the mesh's ("data", "fsdp") axes and, when
  jitted, lays the state out by ``sharding.state_shardings`` on the way in and
  out (place it first with ``sharding.shard_train_state``); metrics come back
  replicated. None leaves the step exactly as on one device.

  Raises:
    ValueError: the attempt rows do not split into the minibatches, or (with a
      mesh) the rows or minibatch rows do not split over data x fsdp.
  """
  return make_mix_train_step((Game(env, layout, env_params),), mcfg, rollout_cfg,
                             algo, jit=jit, mesh=mesh)


def _weighted(values: list[dict[str, jax.Array]], weights: list[jax.Array]
              ) -> dict[str, jax.Array]:
  """The weighted mean of dicts of scalars with the same keys."""
  total = jnp.maximum(sum(weights), 1.0)
  return {k: sum(w * v[k] for v, w in zip(values, weights)) / total
          for k in values[0]}


def make_mix_train_step(games: tuple[Game, ...], mcfg: llama.ModelConfig,
                        rollout_cfg: RolloutConfig, algo: AlgoConfig,
                        jit: bool = True, mesh: jax.sharding.Mesh | None = None,
                        ) -> Callable[[TrainState], tuple[TrainState, dict]]:
  """``make_train_step`` over a mix of games, compiled as ONE program.

  Every game plays its own sub-batch of trials with its own layout (so no
  game pays for another's observation width, context length or candidate
  table), gets its own group advantages, and is split into the same number
  of minibatches; minibatch m of the update holds minibatch m of every game,
  and its loss is the one the loss aggregation would give over the union of
  their tokens (each game's aggregate weighted by its token count, or row
  count for the per-row modes: ``losses.aggregate_count``). Trajectory
  metrics are reported per game under ``"<name>/..."``; loss metrics are the
  mix's. A mix of one game is exactly ``make_train_step``.

  Raises:
    ValueError: no games, duplicate or missing names in a mix, or a game's
      attempt rows do not split into the minibatches (or over the mesh).
  """
  games = tuple(games)
  if not games:
    raise ValueError("make_mix_train_step needs at least one game")
  single = len(games) == 1
  names = [g.name for g in games]
  if not single and (len(set(names)) != len(names) or not all(names)):
    raise ValueError(f"the games of a mix need distinct non-empty names, got {names}")
  opt = make_optimizer(algo)
  mb_rows = []
  for g in games:
    if g.rows % algo.num_minibatches:
      raise ValueError(f"{g.rows} attempt rows (tasks x group x attempts) "
                       f"{'' if single else f'of {g.name} '}do not split into "
                       f"{algo.num_minibatches} minibatches")
    mb_rows.append(g.rows // algo.num_minibatches)
    if mesh is not None:
      sharding.check_rows(g.layout.shape.num_rows, mesh)
      sharding.check_rows(mb_rows[-1], mesh, "minibatch rows")
  slots = [g.layout.loss_slot_kinds(algo.train_reflection)[0] for g in games]
  temperature = rollout_cfg.temperature
  # Game i's PRNG streams: the step's own keys for a single game (the
  # single-game step is unchanged), folded with i in a mix.
  stream = (lambda k, i: k) if single else jax.random.fold_in

  def game_loss(params, ref_params, game, mb):
    logp, ent = row_logprobs(params, mcfg, game.layout, mb, temperature,
                             algo.train_reflection)
    logp_ref = None
    if algo.kl_coef > 0:
      logp_ref, _ = row_logprobs(ref_params, mcfg, game.layout, mb, temperature,
                                 algo.train_reflection)
      logp_ref = jax.lax.stop_gradient(logp_ref)
    return losses.ppo_policy_loss(
        logp, mb["logp_old"], mb["advantages"], mb["loss_mask"],
        clip_eps=algo.clip_eps, clip_eps_high=algo.clip_eps_high,
        dual_clip=algo.dual_clip, aggregation=algo.aggregation, entropy=ent,
        entropy_coef=algo.entropy_coef, logp_ref=logp_ref, kl_coef=algo.kl_coef)

  def loss_fn(params, ref_params, mbs):
    if single:
      return game_loss(params, ref_params, games[0], mbs[0])
    parts = [game_loss(params, ref_params, g, mb) for g, mb in zip(games, mbs)]
    weights = [losses.aggregate_count(mb["loss_mask"], algo.aggregation)
               for mb in mbs]
    loss = _weighted([{"loss": loss} for loss, _ in parts], weights)["loss"]
    return loss, _weighted([m for _, m in parts], weights)

  def minibatch_update(carry, idxs, datas, ref_params):
    params, opt_state = carry
    mbs = [jax.tree.map(lambda x: x[idx], data) for idx, data in zip(idxs, datas)]
    # [sharding] each device runs forward/backward on its share of the
    # minibatch; the compiler all-reduces the gradients. No-op without mesh.
    mbs = sharding.constrain_rows(mbs, mesh)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, ref_params, mbs)
    updates, new_opt_state = opt.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    grad_norm = optax.tree.norm(grads)
    # Non-finite guard: a NaN/inf loss or gradient, or an update that
    # overflows the parameters, is skipped (params and optimiser state stay
    # as they were) and counted.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(new_params)
    params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (new_params, new_opt_state), (params, opt_state))
    metrics["grad_norm"] = grad_norm
    metrics["skipped"] = (~finite).astype(jnp.float32)
    return (params, opt_state), metrics

  def collect(params, i, game, k_task, k_roll):
    """COLLECT, RETURNS and ADVANTAGES of game i: (update data, metrics)."""
    # ---- COLLECT: B x G trials of N attempts on fresh training tasks.
    seeds = task_seeds(stream(k_task, i), game.layout.shape.num_tasks)
    traj = rollout(params, stream(k_roll, i), game.params, env=game.env,
                   mcfg=mcfg, layout=game.layout, cfg=rollout_cfg,
                   task_seeds=seeds, mesh=mesh)
    # ---- RETURNS and ADVANTAGES: cross-episode returns, GRPO / GiGPO.
    adv = returns.lamer_advantages(
        traj.rewards, traj.turn_valid, traj.attempt_valid, traj.state_keys,
        group_size=game.layout.shape.group_size, gamma_step=algo.gamma_step,
        gamma_traj=algo.gamma_traj, estimator=algo.estimator,
        normalize_std=algo.normalize_std, step_weight=algo.step_weight)
    tok_adv = returns.broadcast_to_tokens(adv.turn, adv.reflection,
                                          traj.token_turn_ids)
    flat = lambda x: x.reshape((game.rows,) + x.shape[2:])
    data = {
        "tokens": flat(traj.tokens), "positions": flat(traj.positions),
        "token_mask": flat(traj.token_mask),
        "action_allowed": flat(traj.action_allowed),
        "loss_mask": flat(traj.loss_mask)[:, slots[i]],
        "logp_old": flat(traj.logp_old)[:, slots[i]],
        "advantages": flat(tok_adv)[:, slots[i]],
    }
    data = sharding.constrain_rows(data, mesh)  # [sharding] no-op without mesh
    return data, trajectory_metrics(traj)

  def train_step(state: TrainState):
    key, k_task, k_roll, k_perm = jax.random.split(state.key, 4)
    datas, metrics = [], {}
    for i, game in enumerate(games):
      data, game_metrics = collect(state.params, i, game, k_task, k_roll)
      datas.append(data)
      prefix = "" if single else f"{game.name}/"
      metrics.update({prefix + k: v for k, v in game_metrics.items()})

    # ---- UPDATE: PPO epochs over shuffled minibatches of attempt rows (in a
    # mix, minibatch m holds minibatch m of every game).
    def epoch(carry, ekey):
      perms = tuple(
          jax.random.permutation(stream(ekey, i), g.rows).reshape(
              algo.num_minibatches, mb)
          for i, (g, mb) in enumerate(zip(games, mb_rows)))
      return jax.lax.scan(
          lambda c, idxs: minibatch_update(c, idxs, datas, state.ref_params),
          carry, perms)

    (params, opt_state), loss_metrics = jax.lax.scan(
        epoch, (state.params, state.opt_state),
        jax.random.split(k_perm, algo.ppo_epochs))
    skipped = loss_metrics.pop("skipped")
    metrics["nonfinite/skipped_updates"] = skipped.sum()
    metrics["nonfinite/updates"] = jnp.asarray(skipped.size, jnp.float32)
    # First minibatch of the first epoch is on-policy: its ratio should be 1.
    metrics.update({f"loss/{k}": v[0, 0] for k, v in loss_metrics.items()})
    metrics["advantage/abs_mean"] = (
        sum(jnp.abs(d["advantages"]).sum() for d in datas)
        / jnp.maximum(sum(d["loss_mask"].sum() for d in datas), 1))
    new_state = state.replace(params=params, opt_state=opt_state,
                              step=state.step + 1, key=key)
    return new_state, metrics

  if not jit:
    return train_step
  if mesh is None:
    return jax.jit(train_step, donate_argnums=0)
  abstract = jax.eval_shape(
      lambda k: init_train_state(llama.init_params(mcfg, k), algo, k),
      jax.random.key(0))
  shardings = sharding.state_shardings(abstract, mesh, mcfg)
  return jax.jit(train_step, in_shardings=(shardings,),
                 out_shardings=(shardings, sharding.replicated(mesh)),
                 donate_argnums=0)


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
    traj = rollout(params, key, env_params, env=env, mcfg=mcfg,
                   layout=layout.with_tasks(seeds.shape[0], group_size=1),
                   cfg=rollout_cfg, task_seeds=seeds, mesh=mesh)
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
