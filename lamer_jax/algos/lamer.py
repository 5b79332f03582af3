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

PPO with a value head (``estimator="gae"``, single-episode RL only): a small
MLP (``models.heads``) on the decoder's hidden state at each turn's state slot
(``ContextLayout.state_slots``) predicts ``V(s_t)``. Its parameters and its
own Adam state live in ``TrainState.extra`` (``{"value", "value_opt"}``).
Before the update, one forward over the rollout's rows without gradient (in
minibatch-sized chunks) gives ``V_old`` for GAE and the targets; every
minibatch's loss then adds ``value_coef`` times the value loss, with the
values read from the same teacher-forced forward as the log-probs. With
``value_backbone_grad`` the value loss's gradient also trains the LLM (a
shared backbone, as PPO-GLAM); without, only the head learns from it. An
attempt's end is terminal for GAE whether it was won, lost or cut by the turn
budget: the state a cut attempt reached is in no row (so there is no value to
bootstrap from), and the row shows every earlier turn, so the turns left are
part of the state the value head sees.
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
from lamer_jax.agent.scoring import row_logprobs, state_hidden
from lamer_jax.agent.trial import (RolloutConfig, Trajectory, rollout,
                                   task_seeds)
from lamer_jax.models import heads, llama


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
  """Returns, advantages, loss and optimiser settings (LaMer defaults)."""

  estimator: str = "gigpo"          # "grpo" | "gigpo" | "gae" (PPO + value head)
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
  # PPO's value head (estimator "gae" only): GAE's lambda, the value loss's
  # weight and clip range (None: unclipped), the head's hidden widths, its own
  # Adam's learning rate (a fresh head needs far more than the LLM's), and
  # whether the value loss's gradient also reaches the LLM (a shared backbone).
  gae_lambda: float = 0.95
  value_coef: float = 0.5
  value_clip: float | None = None
  value_hidden: tuple[int, ...] = (256, 256)
  value_lr: float = 1e-4
  value_backbone_grad: bool = True
  # > 0: the update packs each attempt row's real slots to its front and runs
  # the decoder over the smallest of this many lengths (multiples of 128 up
  # to C) that holds the minibatch's longest row; 0: over all C slots.
  update_pack_buckets: int = 0

  def __post_init__(self):
    if self.estimator not in returns.ESTIMATORS:
      raise ValueError(f"estimator must be one of {returns.ESTIMATORS}, got "
                       f"{self.estimator!r}")
    if self.update_pack_buckets < 0:
      raise ValueError("update_pack_buckets must be >= 0 (0: no packing, n: pack "
                       f"into one of n lengths), got {self.update_pack_buckets}")
    # A config file's list (or JSON's) becomes the hashable tuple.
    object.__setattr__(self, "value_hidden",
                       tuple(int(h) for h in self.value_hidden))


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


def make_value_optimizer(cfg: AlgoConfig) -> optax.GradientTransformation:
  """The value head's own Adam (``value_lr``, no weight decay), its gradient
  clipped to ``grad_clip`` on its own."""
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adam(cfg.value_lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps))


# fold_in constant of the value head's initialisation key (the state's own
# key stream, and so every other method's numbers, is left as it was).
VALUE_STREAM = 0x7A1E


def all_finite(tree: Any) -> jax.Array:
  """bool[]: every floating-point element of ``tree`` is finite."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def init_train_state(params, algo: AlgoConfig, key: jax.Array) -> TrainState:
  """The state at step 0; with estimator ``"gae"`` also the value head (its
  input width is the decoder's hidden size, read from ``params["embed"]``)
  and its optimiser state, in ``extra``."""
  opt = make_optimizer(algo)
  # A copy: the jitted step donates its state, and one buffer cannot be
  # donated twice (as params and as ref_params).
  ref = jax.tree.map(jnp.copy, params) if algo.kl_coef > 0 else None
  extra = None
  if algo.estimator == "gae":
    head = heads.init_mlp(jax.random.fold_in(key, VALUE_STREAM),
                          params["embed"].shape[-1], algo.value_hidden)
    extra = {"value": head, "value_opt": make_value_optimizer(algo).init(head)}
  return TrainState(params=params, opt_state=opt.init(params), ref_params=ref,
                    step=jnp.zeros((), jnp.int32), key=key, extra=extra)


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


@dataclasses.dataclass(frozen=True)
class StepPhases:
  """The phases of one (unjitted) iteration, for profiling and tests.

  Attributes:
    collect: ``(params, value, i, k_task, k_roll) -> (data, metrics)``: game
      i's rollout, returns and advantages (``value``: the value head, or None).
    update: ``(params, opt_state, vstate, datas, ref_params, k_perm) ->
      ((params, opt_state, vstate), loss metrics [epochs, minibatches])``:
      the PPO epochs over every game's update data (``vstate``: the value
      head and its optimiser state, or None).
    train_step: ``collect`` for every game, then ``update``.
  """

  collect: Callable[..., Any]
  update: Callable[..., Any]
  train_step: Callable[[TrainState], tuple[TrainState, dict]]


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

  With estimator ``"gae"`` the step also trains the value head in
  ``state.extra`` (module docstring) and reports ``loss/value``,
  ``value/mean`` and ``value/explained_variance`` (per game in a mix).

  Raises:
    ValueError: no games, duplicate or missing names in a mix, a game's
      attempt rows do not split into the minibatches (or over the mesh), or
      estimator ``"gae"`` with more than one attempt or with memory.
  """
  train_step = make_step_phases(games, mcfg, rollout_cfg, algo, mesh).train_step
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


def make_step_phases(games: tuple[Game, ...], mcfg: llama.ModelConfig,
                     rollout_cfg: RolloutConfig, algo: AlgoConfig,
                     mesh: jax.sharding.Mesh | None = None) -> StepPhases:
  """The unjitted phases of ``make_mix_train_step``'s iteration (its
  arguments and errors): the train step is exactly ``collect`` per game then
  ``update``, so a profile of the phases times the step's own code."""
  games = tuple(games)
  if not games:
    raise ValueError("make_mix_train_step needs at least one game")
  gae = algo.estimator == "gae"
  for g in games:
    if gae and (g.layout.num_attempts != 1 or g.layout.memory != "none"):
      raise ValueError(f"{returns.GAE_ONE_ATTEMPT}; got num_attempts="
                       f"{g.layout.num_attempts}, memory={g.layout.memory!r}")
  single = len(games) == 1
  names = [g.name for g in games]
  if not single and (len(set(names)) != len(names) or not all(names)):
    raise ValueError(f"the games of a mix need distinct non-empty names, got {names}")
  opt = make_optimizer(algo)
  vopt = make_value_optimizer(algo) if gae else None
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

  def game_loss(params, value, ref_params, game, mb):
    """One game's minibatch: (policy loss, its metrics, value loss, its
    metrics); the value parts are None without a value head."""
    scored = row_logprobs(params, mcfg, game.layout, mb, temperature,
                          algo.train_reflection, with_state_hidden=gae,
                          pack_buckets=algo.update_pack_buckets)
    logp, ent = scored[:2]
    logp_ref = None
    if algo.kl_coef > 0:
      logp_ref, _ = row_logprobs(ref_params, mcfg, game.layout, mb, temperature,
                                 algo.train_reflection,
                                 pack_buckets=algo.update_pack_buckets)
      logp_ref = jax.lax.stop_gradient(logp_ref)
    loss, metrics = losses.ppo_policy_loss(
        logp, mb["logp_old"], mb["advantages"], mb["loss_mask"],
        clip_eps=algo.clip_eps, clip_eps_high=algo.clip_eps_high,
        dual_clip=algo.dual_clip, aggregation=algo.aggregation, entropy=ent,
        entropy_coef=algo.entropy_coef, logp_ref=logp_ref, kl_coef=algo.kl_coef)
    if not gae:
      return loss, metrics, None, None
    hidden = scored[2]
    if not algo.value_backbone_grad:
      hidden = jax.lax.stop_gradient(hidden)
    vloss, vmetrics = losses.value_loss(
        heads.apply_mlp(value, hidden), mb["values_old"], mb["value_targets"],
        mb["turn_valid"], clip=algo.value_clip)
    return loss, metrics, vloss, vmetrics

  def loss_fn(trainable, ref_params, mbs):
    params, value = trainable
    parts = [game_loss(params, value, ref_params, g, mb)
             for g, mb in zip(games, mbs)]
    if single:
      loss, metrics, vloss, vmetrics = parts[0]
    else:
      weights = [losses.aggregate_count(mb["loss_mask"], algo.aggregation)
                 for mb in mbs]
      loss = _weighted([{"loss": p[0]} for p in parts], weights)["loss"]
      metrics = _weighted([p[1] for p in parts], weights)
      if gae:   # the value loss is a mean over turns: weight by valid turns
        vweights = [mb["turn_valid"].sum().astype(jnp.float32) for mb in mbs]
        vmetrics = _weighted([p[3] for p in parts], vweights)
        vloss = vmetrics["value"]
    if gae:
      loss = loss + algo.value_coef * vloss
      metrics = {**metrics, **vmetrics}
    return loss, metrics

  def minibatch_update(carry, idxs, datas, ref_params):
    # vstate: (value head, its optimiser state), None without one.
    params, opt_state, vstate = carry
    value = None if vstate is None else vstate[0]
    mbs = [jax.tree.map(lambda x: x[idx], data) for idx, data in zip(idxs, datas)]
    # [sharding] each device runs forward/backward on its share of the
    # minibatch; the compiler all-reduces the gradients. No-op without mesh.
    mbs = sharding.constrain_rows(mbs, mesh)
    (loss, metrics), (grads, vgrads) = jax.value_and_grad(loss_fn, has_aux=True)(
        (params, value), ref_params, mbs)
    updates, new_opt_state = opt.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    grad_norm = optax.tree.norm(grads)
    # Non-finite guard: a NaN/inf loss or gradient, or an update that
    # overflows the parameters, is skipped (params and optimiser state stay
    # as they were) and counted.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(new_params)
    new_vstate = None
    if vstate is not None:
      vupdates, new_vopt = vopt.update(vgrads, vstate[1], value)
      new_vstate = (optax.apply_updates(value, vupdates), new_vopt)
      value_grad_norm = optax.tree.norm(vgrads)
      finite = (finite & jnp.isfinite(value_grad_norm)
                & all_finite(new_vstate[0]))
      metrics["value_grad_norm"] = value_grad_norm
    params, opt_state, vstate = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (new_params, new_opt_state, new_vstate), (params, opt_state, vstate))
    metrics["grad_norm"] = grad_norm
    metrics["skipped"] = (~finite).astype(jnp.float32)
    return (params, opt_state, vstate), metrics

  def old_values(params, value, game, rows):
    """``V_old`` f32[game.rows, T]: the value head on every turn's state
    before the update, without gradient. The rows go through in
    ``num_minibatches`` chunks (``lax.map``), so the forward needs no more
    memory than a training minibatch's; chunk c holds rows c, c + chunks, ...,
    so under a mesh every device keeps its share of each chunk."""
    chunks = algo.num_minibatches
    split = lambda x: jnp.swapaxes(
        x.reshape((game.rows // chunks, chunks) + x.shape[1:]), 0, 1)

    def one(mb):
      mb = sharding.constrain_rows(mb, mesh)  # [sharding] no-op without mesh
      return heads.apply_mlp(value, state_hidden(params, mcfg, game.layout, mb))

    v = jax.lax.map(one, jax.tree.map(split, rows))          # [chunks, mb, T]
    v = jnp.swapaxes(v, 0, 1).reshape(game.rows, -1)
    return jax.lax.stop_gradient(v)

  def collect(params, value, i, game, k_task, k_roll):
    """COLLECT, RETURNS and ADVANTAGES of game i: (update data, metrics)."""
    # ---- COLLECT: B x G trials of N attempts on fresh training tasks.
    seeds = task_seeds(stream(k_task, i), game.layout.shape.num_tasks)
    traj = rollout(params, stream(k_roll, i), game.params, env=game.env,
                   mcfg=mcfg, layout=game.layout, cfg=rollout_cfg,
                   task_seeds=seeds, mesh=mesh)
    flat = lambda x: x.reshape((game.rows,) + x.shape[2:])
    data = {
        "tokens": flat(traj.tokens), "positions": flat(traj.positions),
        "token_mask": flat(traj.token_mask),
        "action_allowed": flat(traj.action_allowed),
    }
    # PPO's critic: V_old of every turn, before the update.
    values = None
    if gae:
      values = old_values(params, value, game, data).reshape(traj.rewards.shape)
    # ---- RETURNS and ADVANTAGES: cross-episode returns, GRPO / GiGPO; GAE.
    adv = returns.lamer_advantages(
        traj.rewards, traj.turn_valid, traj.attempt_valid, traj.state_keys,
        group_size=game.layout.shape.group_size, gamma_step=algo.gamma_step,
        gamma_traj=algo.gamma_traj, estimator=algo.estimator,
        normalize_std=algo.normalize_std, step_weight=algo.step_weight,
        values=values, gae_lambda=algo.gae_lambda)
    tok_adv = returns.broadcast_to_tokens(adv.turn, adv.reflection,
                                          traj.token_turn_ids)
    data.update({
        "loss_mask": flat(traj.loss_mask)[:, slots[i]],
        "logp_old": flat(traj.logp_old)[:, slots[i]],
        "advantages": flat(tok_adv)[:, slots[i]],
    })
    metrics = trajectory_metrics(traj)
    if gae:
      valid = traj.turn_valid & traj.attempt_valid[..., None]
      data.update({"values_old": flat(values), "value_targets": flat(adv.returns),
                   "turn_valid": flat(valid)})
      count = jnp.maximum(valid.sum(), 1)
      metrics["value/mean"] = jnp.where(valid, values, 0.0).sum() / count
      metrics["value/target_mean"] = jnp.where(valid, adv.returns, 0.0).sum() / count
      metrics["value/explained_variance"] = losses.explained_variance(
          values, adv.returns, valid)
    data = sharding.constrain_rows(data, mesh)  # [sharding] no-op without mesh
    return data, metrics

  def update(params, opt_state, vstate, datas, ref_params, k_perm):
    """UPDATE: PPO epochs over shuffled minibatches of attempt rows (in a
    mix, minibatch m holds minibatch m of every game)."""
    def epoch(carry, ekey):
      perms = tuple(
          jax.random.permutation(stream(ekey, i), g.rows).reshape(
              algo.num_minibatches, mb)
          for i, (g, mb) in enumerate(zip(games, mb_rows)))
      return jax.lax.scan(
          lambda c, idxs: minibatch_update(c, idxs, datas, ref_params),
          carry, perms)

    return jax.lax.scan(epoch, (params, opt_state, vstate),
                        jax.random.split(k_perm, algo.ppo_epochs))

  def train_step(state: TrainState):
    key, k_task, k_roll, k_perm = jax.random.split(state.key, 4)
    vstate = (state.extra["value"], state.extra["value_opt"]) if gae else None
    value = None if vstate is None else vstate[0]
    datas, metrics = [], {}
    for i, game in enumerate(games):
      data, game_metrics = collect(state.params, value, i, game, k_task, k_roll)
      datas.append(data)
      prefix = "" if single else f"{game.name}/"
      metrics.update({prefix + k: v for k, v in game_metrics.items()})

    (params, opt_state, vstate), loss_metrics = update(
        state.params, state.opt_state, vstate, datas, state.ref_params, k_perm)
    skipped = loss_metrics.pop("skipped")
    metrics["nonfinite/skipped_updates"] = skipped.sum()
    metrics["nonfinite/updates"] = jnp.asarray(skipped.size, jnp.float32)
    # First minibatch of the first epoch is on-policy: its ratio should be 1.
    metrics.update({f"loss/{k}": v[0, 0] for k, v in loss_metrics.items()})
    metrics["advantage/abs_mean"] = (
        sum(jnp.abs(d["advantages"]).sum() for d in datas)
        / jnp.maximum(sum(d["loss_mask"].sum() for d in datas), 1))
    extra = state.extra
    if gae:
      extra = {**extra, "value": vstate[0], "value_opt": vstate[1]}
    new_state = state.replace(params=params, opt_state=opt_state,
                              step=state.step + 1, key=key, extra=extra)
    return new_state, metrics

  return StepPhases(
      collect=lambda params, value, i, k_task, k_roll: collect(
          params, value, i, games[i], k_task, k_roll),
      update=update, train_step=train_step)


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
