"""SAC with hindsight relabeling for LLM agents (SAC-GLAM), as one compiled step.

One call of the train step (``make_train_step``):

1. acts ``env_steps`` steps in ``num_envs`` vmapped envs with the LLM policy
   over candidates (``agent.candidates``), resetting an env (a fresh task) as
   soon as its episode ends;
2. adds the transitions to the replay ring in the train state (``replay``);
3. runs ``updates`` gradient updates (``lax.scan``): sample a minibatch of
   n-step windows, relabel it (``her``: ``final`` / ``future``, or none),
   compute the critic target with the exact expectation over the candidates
   of the window's last next state, then update critic + actor in one
   optimiser step, the temperature in its own, and the target copies by
   Polyak averaging. Updates wait until ``learning_starts`` transitions are
   stored; the first ``critic_warmup`` updates train the critic only.

The actor and the twin critic share the decoder: one forward over (state,
allowed candidates) gives each candidate's summed token log-prob (the policy)
and the hidden state at its end (the Q heads' input). The loss is
``policy_loss + critic_coef * critic_loss``; ``critic_backbone_grad=False``
lets the critic's gradient train only the heads. The target network is a
Polyak copy of both the decoder and the heads, so the target's features are
not the moving online ones.

Everything the step carries lives in ``TrainState`` (``extra``: Q heads,
target copies, log alpha and its optimiser, replay buffer, live env states,
running episode returns): a checkpoint holds all of it, so a resumed run
continues bit-identically.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamer_jax import her, replay, sac_losses, sharding
from lamer_jax.agent import candidates as cand_lib
from lamer_jax.algos.lamer import TrainState, all_finite
from lamer_jax.models import heads as heads_lib
from lamer_jax.models import llama

HER_STRATEGIES = ("none",) + her.STRATEGIES


@dataclasses.dataclass(frozen=True)
class SACConfig:
  """SAC-GLAM's settings (defaults: MAGELLAN's, except where said).

  Attributes:
    num_envs: envs acting in parallel (MAGELLAN 32).
    env_steps: steps each env takes per train step (MAGELLAN 2: 64
      transitions per update).
    updates: gradient updates per train step (the update-to-data ratio is
      ``updates * batch_size / (num_envs * env_steps)``).
    batch_size: windows per update (MAGELLAN 256).
    capacity: steps stored per env (the buffer holds ``num_envs * capacity``).
    learning_starts: stored transitions before the first update.
    gamma, n_step: discount and n-step return length (0.99, 3).
    tau: Polyak rate of the target copies (0.005).
    lr: AdamW learning rate of decoder and heads (1e-4).
    alpha_lr, log_alpha_init: the temperature's own Adam and start (1e-3, -3).
    target_entropy_fraction: target entropy = fraction * log(#allowed), in
      (0, 1] (MAGELLAN's log(1/n) can only lower alpha; see sac_losses).
    critic_warmup: first updates that train only the critic (10).
    critic_coef: weight of the critic loss in the joint loss.
    critic_backbone_grad: the critic loss also trains the decoder.
    q_hidden: hidden widths of each Q head (MAGELLAN 1024-1024).
    her_strategy: ``none``, ``final`` or ``future``.
    her_ratio: probability that a sampled window is relabeled.
    grad_clip, weight_decay: of the joint optimiser.
    short_prompt: no instructions in the prompt (from-scratch models).
    candidate_score: ``sum`` of the candidate's token log-probs (MAGELLAN)
      or their ``mean`` (from-scratch models: an untrained byte model gives
      every token about ``-log V``, so summed scores rank candidates by
      length and its policy starts near-deterministic on the shortest).
  """

  num_envs: int = 32
  env_steps: int = 2
  updates: int = 1
  batch_size: int = 256
  capacity: int = 512
  learning_starts: int = 512
  gamma: float = 0.99
  n_step: int = 3
  tau: float = 0.005
  lr: float = 1e-4
  alpha_lr: float = 1e-3
  log_alpha_init: float = -3.0
  target_entropy_fraction: float = 0.5
  critic_warmup: int = 10
  critic_coef: float = 1.0
  critic_backbone_grad: bool = True
  q_hidden: tuple[int, ...] = (256, 256)
  her_strategy: str = "future"
  her_ratio: float = 0.8
  grad_clip: float = 1.0
  weight_decay: float = 0.0
  short_prompt: bool = False
  candidate_score: str = "sum"

  def __post_init__(self):
    object.__setattr__(self, "q_hidden", tuple(int(h) for h in self.q_hidden))
    for name in ("num_envs", "env_steps", "batch_size", "capacity", "n_step"):
      if getattr(self, name) < 1:
        raise ValueError(f"sac.{name} must be >= 1, got {getattr(self, name)}")
    for name in ("updates", "learning_starts", "critic_warmup"):
      if getattr(self, name) < 0:
        raise ValueError(f"sac.{name} must be >= 0, got {getattr(self, name)}")
    if self.candidate_score not in cand_lib.SCORES:
      raise ValueError(f"sac.candidate_score must be one of {cand_lib.SCORES}, got "
                       f"{self.candidate_score!r}")
    if self.her_strategy not in HER_STRATEGIES:
      raise ValueError(f"sac.her_strategy must be one of {HER_STRATEGIES}, got "
                       f"{self.her_strategy!r}")
    if not 0.0 <= self.her_ratio <= 1.0:
      raise ValueError(f"sac.her_ratio (the relabel ratio) must lie in [0, 1], got "
                       f"{self.her_ratio}")
    if not 0.0 < self.target_entropy_fraction <= 1.0:
      raise ValueError("sac.target_entropy_fraction must lie in (0, 1], got "
                       f"{self.target_entropy_fraction}")
    if not 0.0 <= self.tau <= 1.0:
      raise ValueError(f"sac.tau must lie in [0, 1], got {self.tau}")
    if not 0.0 <= self.gamma <= 1.0:
      raise ValueError(f"sac.gamma must lie in [0, 1], got {self.gamma}")
    stored = self.num_envs * self.capacity
    if self.batch_size > stored:
      raise ValueError(
          f"sac.batch_size {self.batch_size} exceeds the replay buffer's "
          f"{stored} transitions (num_envs {self.num_envs} x capacity "
          f"{self.capacity}); raise sac.capacity or lower sac.batch_size")
    if self.learning_starts > stored:
      raise ValueError(
          f"sac.learning_starts {self.learning_starts} exceeds the replay buffer's "
          f"{stored} transitions; lower it or raise sac.capacity")


def make_optimizer(cfg: SACConfig) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(cfg.lr, weight_decay=cfg.weight_decay))


def _check_env(env) -> None:
  if not hasattr(env, "achieved_goals") or not hasattr(env, "num_goals"):
    raise ValueError(f"SAC with hindsight relabeling needs a goal-conditioned env "
                     f"(achieved_goals, num_goals), such as playground; "
                     f"{env.name!r} is not one")


def init_state(env, env_params, params, mcfg: llama.ModelConfig, cfg: SACConfig,
               key: jax.Array) -> TrainState:
  """The SAC train state at step 0: ``params`` (the decoder, also the actor)
  plus fresh Q heads, target copies, temperature, empty replay and
  ``num_envs`` freshly reset envs (their tasks drawn from ``key``)."""
  _check_env(env)
  k_heads, k_env, k_state = jax.random.split(key, 3)
  twin = heads_lib.init_twin(k_heads, mcfg.hidden_size, cfg.q_hidden)
  online = {"params": params, "heads": twin}
  envs, _ = jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(k_env, cfg.num_envs), env_params)
  example = replay.Transition.example(env.max_symbols, env.num_actions, env.num_goals)
  log_alpha = jnp.asarray(cfg.log_alpha_init, jnp.float32)
  extra = {
      "heads": twin,
      "target": jax.tree.map(jnp.copy, online),
      "log_alpha": log_alpha,
      "alpha_opt": optax.adam(cfg.alpha_lr).init(log_alpha),
      "replay": replay.init(example, cfg.num_envs, cfg.capacity),
      "env": envs,
      "ep_return": jnp.zeros((cfg.num_envs,), jnp.float32),
      "updates": jnp.zeros((), jnp.int32),
  }
  return TrainState(params=params, opt_state=make_optimizer(cfg).init(online),
                    ref_params=None, step=jnp.zeros((), jnp.int32), key=k_state,
                    extra=extra)


def _taken(actions: jax.Array, valid: jax.Array, action: jax.Array) -> jax.Array:
  """int32[B]: the position of ``action`` among each row's candidates."""
  hit = valid & (actions == action[:, None])
  return jnp.argmax(hit, axis=-1).astype(jnp.int32)


def make_train_step(env, env_params, mcfg: llama.ModelConfig,
                    prompt: cand_lib.CandidatePrompt, cfg: SACConfig, *,
                    jit: bool = True, mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[[TrainState], tuple[TrainState, dict]]:
  """The compiled SAC iteration ``state -> (state, metrics)`` (see the module
  docstring). Its state is donated."""
  _check_env(env)
  if mesh is not None:
    sharding.check_rows(cfg.num_envs, mesh, "sac.num_envs (env rows)")
    sharding.check_rows(cfg.batch_size, mesh, "sac.batch_size (minibatch rows)")
  opt = make_optimizer(cfg)
  alpha_opt = optax.adam(cfg.alpha_lr)
  n = cfg.n_step

  def outputs(params, heads, symbols, mask):
    return cand_lib.candidate_outputs(params, mcfg, prompt, symbols, mask, heads,
                                      critic_backbone_grad=cfg.critic_backbone_grad)

  def act(params, carry, key):
    envs, ep_return = carry
    k_pick, k_step, k_reset = jax.random.split(key, 3)
    symbols = jax.vmap(env.render_symbols, in_axes=(0, None))(envs, env_params)
    mask = jax.vmap(env.action_mask, in_axes=(0, None))(envs, env_params)
    out = outputs(params, None, symbols, mask)
    choice = jax.random.categorical(k_pick, jnp.where(out.valid, out.logp, -jnp.inf))
    action = jnp.take_along_axis(out.actions, choice[:, None], axis=-1)[:, 0]
    b = cfg.num_envs
    nxt, ts = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
        jax.random.split(k_step, b), envs, action, env_params)
    tr = jax.vmap(replay.transition_from_step, in_axes=(None, None, 0, 0, 0, 0))(
        env, env_params, envs, action, nxt, ts)
    fresh, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, b),
                                                      env_params)
    done = ts.done
    envs = jax.tree.map(
        lambda f, x: jnp.where(done.reshape((b,) + (1,) * (x.ndim - 1)), f, x),
        fresh, nxt)
    ret = ep_return + ts.reward
    stats = {"done": done, "won": ts.won & done, "return": jnp.where(done, ret, 0.0),
             "dropped": out.dropped}
    return (envs, jnp.where(done, 0.0, ret)), (tr, stats)

  def losses(online, target, log_alpha, batch, valid, actor_on):
    """The joint loss of one minibatch of windows ``batch`` (leaves [M, n]; the
    steps of the sampled step's episode are ``valid``)."""
    first = jax.tree.map(lambda x: x[:, 0], batch)
    cur = outputs(online["params"], online["heads"], first.obs, first.mask)
    alpha = jnp.exp(log_alpha)
    # The bootstrap state: the stored next state of each window's last step.
    _, end = sac_losses.window_end(batch.terminal, batch.truncated, valid)
    last = jax.tree.map(lambda x: jnp.take_along_axis(
        x, end.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0], batch)
    nxt = outputs(jax.lax.stop_gradient(online["params"]), None, last.next_obs,
                  last.next_mask)
    tgt = outputs(target["params"], target["heads"], last.next_obs, last.next_mask)
    v_next = sac_losses.soft_value(jnp.minimum(*tgt.q), nxt.logp, nxt.valid, alpha)
    y = sac_losses.nstep_targets(batch.reward, batch.terminal, batch.truncated,
                                 valid, v_next, cfg.gamma)
    pos = _taken(cur.actions, cur.valid, first.action)
    q1, q2 = cur.q
    pick = lambda q: jnp.take_along_axis(q, pos[:, None], axis=-1)[:, 0]
    critic = sac_losses.critic_loss((pick(q1), pick(q2)), y)
    policy = sac_losses.policy_loss(cur.logp, jnp.minimum(q1, q2), cur.valid, alpha)
    loss = cfg.critic_coef * critic + jnp.where(actor_on, policy, 0.0)
    ent = sac_losses.entropy(cur.logp, cur.valid)
    h_target = sac_losses.target_entropy(cur.valid, cfg.target_entropy_fraction)
    aux = {"critic": critic, "policy": policy, "entropy": ent, "target_entropy": h_target,
           "q": pick(jnp.minimum(q1, q2)).mean(), "target": y.mean(),
           "dropped": cur.dropped + nxt.dropped}
    return loss, aux

  def update(carry, key):
    params, opt_state, extra = carry
    buf = extra["replay"]
    k_idx, k_her = jax.random.split(key)
    env_idx, t_idx = replay.sample_indices(buf, k_idx, cfg.batch_size)
    window, valid = replay.gather(buf, env_idx, t_idx, jnp.arange(n))
    # [sharding] the minibatch's windows split over the row axes (the
    # compiler all-reduces the gradients); no-op without mesh.
    window, valid = sharding.constrain_rows((window, valid), mesh)
    relabeled = jnp.zeros((cfg.batch_size,), jnp.bool_)
    if cfg.her_strategy != "none":
      window, info = her.hindsight(k_her, buf, env_idx, t_idx, window,
                                   cfg.her_strategy, cfg.her_ratio)
      relabeled = info["relabeled"]
    actor_on = extra["updates"] >= cfg.critic_warmup
    online = {"params": params, "heads": extra["heads"]}
    (loss, aux), grads = jax.value_and_grad(losses, has_aux=True)(
        online, extra["target"], extra["log_alpha"], window, valid, actor_on)
    updates, new_opt = opt.update(grads, opt_state, online)
    new_online = optax.apply_updates(online, updates)
    a_loss, a_grad = jax.value_and_grad(sac_losses.temperature_loss)(
        extra["log_alpha"], aux["entropy"], aux["target_entropy"])
    a_upd, new_aopt = alpha_opt.update(a_grad, extra["alpha_opt"], extra["log_alpha"])
    new_log_alpha = optax.apply_updates(extra["log_alpha"], a_upd)
    finite = all_finite((new_online, new_log_alpha, loss))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_online = keep(new_online, online)
    new_target = keep(sac_losses.polyak(extra["target"], new_online, cfg.tau),
                      extra["target"])
    new_extra = dict(extra, heads=new_online["heads"], target=new_target,
                     log_alpha=keep(new_log_alpha, extra["log_alpha"]),
                     alpha_opt=keep(new_aopt, extra["alpha_opt"]),
                     updates=extra["updates"] + 1)
    metrics = {"loss/critic": aux["critic"], "loss/policy": aux["policy"],
               "loss/alpha": a_loss, "loss/total": loss,
               "loss/grad_norm": optax.global_norm(grads),
               "alpha": jnp.exp(extra["log_alpha"]), "entropy/mean": aux["entropy"].mean(),
               "entropy/target": aux["target_entropy"].mean(), "q/mean": aux["q"],
               "target/mean": aux["target"], "her/relabeled": relabeled.mean(),
               "actor_on": actor_on.astype(jnp.float32),
               "candidates/dropped": aux["dropped"].astype(jnp.float32),
               "skipped": (~finite).astype(jnp.float32)}
    return (new_online["params"], keep(new_opt, opt_state), new_extra), metrics

  def skip(carry, key):
    del key
    shapes = jax.eval_shape(update, carry, jax.random.key(0))[1]
    return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def train_step(state: TrainState):
    key, k_act, k_upd = jax.random.split(state.key, 3)
    extra = state.extra
    (envs, ep_return), (trs, stats) = jax.lax.scan(
        lambda c, k: act(state.params, c, k), (extra["env"], extra["ep_return"]),
        jax.random.split(k_act, cfg.env_steps))
    batch = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), trs)     # [B, k, ...]
    batch = sharding.constrain_rows(batch, mesh)   # [sharding] no-op without mesh
    buf = replay.add(extra["replay"], batch)
    extra = dict(extra, replay=buf, env=envs, ep_return=ep_return)
    carry = (state.params, state.opt_state, extra)
    ready = buf.count * cfg.num_envs >= max(cfg.learning_starts, 1)

    def one(c, k):
      return jax.lax.cond(ready, update, skip, c, k)

    (params, opt_state, extra), um = jax.lax.scan(
        one, carry, jax.random.split(k_upd, max(cfg.updates, 1)))
    if cfg.updates == 0:
      params, opt_state, extra = carry
    episodes = stats["done"].sum()
    metrics = {k: v.mean() for k, v in um.items() if k != "skipped"}
    metrics.update({
        "nonfinite/skipped_updates": um["skipped"].sum(),
        "nonfinite/updates": jnp.where(ready, float(max(cfg.updates, 1)), 0.0),
        "episodes": episodes.astype(jnp.float32),
        "success/episode": stats["won"].sum() / jnp.maximum(episodes, 1),
        "return/mean": stats["return"].sum() / jnp.maximum(episodes, 1),
        "replay/size": (buf.count * cfg.num_envs).astype(jnp.float32),
        "env_steps": ((state.step + 1) * cfg.num_envs * cfg.env_steps).astype(jnp.float32),
        "updates": extra["updates"].astype(jnp.float32),
        "candidates/dropped_acting": stats["dropped"].sum().astype(jnp.float32),
    })
    new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1,
                              key=key, extra=extra)
    return new_state, metrics

  if not jit:
    return train_step
  if mesh is None:
    return jax.jit(train_step, donate_argnums=0)
  abstract = jax.eval_shape(
      lambda k: init_state(env, env_params, llama.init_params(mcfg, k), mcfg, cfg, k),
      jax.random.key(0))
  shardings = state_shardings(abstract, mesh, mcfg)
  return jax.jit(train_step, in_shardings=(shardings,),
                 out_shardings=(shardings, sharding.replicated(mesh)),
                 donate_argnums=0)


# TrainState.extra entries whose leaves lead with the env rows (num_envs).
_ROW_EXTRA = ("env", "ep_return", "replay")


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh, mcfg: Any = None
                    ) -> TrainState:
  """NamedShardings of a SAC train state (concrete or abstract) on ``mesh``.

  The decoder, its optimiser moments and the target copy follow
  ``sharding.state_shardings`` (fsdp / tensor axes); the live envs, their
  running returns and the replay buffer are split by env row over the row
  axes (each device acts in, stores and keeps its own envs' experience; a
  minibatch gathers across devices); the rest is replicated.
  """
  out = sharding.state_shardings(state, mesh, mcfg)
  rows, rep = sharding.row_sharding(mesh), sharding.replicated(mesh)
  num_envs = state.extra["ep_return"].shape[0]
  by_row = lambda x: rows if x.ndim >= 1 and x.shape[0] == num_envs else rep
  extra = dict(out.extra)
  for name in _ROW_EXTRA:
    extra[name] = jax.tree.map(by_row, state.extra[name])
  return out.replace(extra=extra)


def check_goals(env, goals) -> list[int]:
  """Goal ids or goal strings (``env.goal_strings``) as ids; a ValueError
  naming the valid choices (and the closest string) for an unknown one."""
  import difflib
  out = []
  for g in goals:
    if isinstance(g, str):
      if g not in env.goal_strings:
        near = difflib.get_close_matches(g, env.goal_strings, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown goal {g!r} for {env.name}{hint} (goals are "
                         f"env.goal_strings, e.g. {env.goal_strings[0]!r})")
      out.append(env.goal_strings.index(g))
    else:
      if not 0 <= int(g) < env.num_goals:
        raise ValueError(f"unknown goal id {g} for {env.name}: ids run from 0 to "
                         f"{env.num_goals - 1} (env.goal_strings)")
      out.append(int(g))
  return out


def goal_types(env) -> tuple[tuple[str, ...], np.ndarray]:
  """(type names, int32[num_goals] type of each goal) for per-type success:
  Playground's ``grasp``, ``grow plant|herbivore|carnivore``, ``other``."""
  from envs_jax.games import playground as pg   # the goal table's facts
  names = ("grasp", "grow plant", "grow herbivore", "grow carnivore", "other")
  types = np.full((env.num_goals,), 4, np.int32)
  for g, text in enumerate(env.goal_strings):
    if g < pg.NUM_KINDS and text.startswith("Grasp"):
      types[g] = 0
    elif pg.NUM_KINDS <= g < 2 * pg.NUM_KINDS:
      cat = int(pg.KIND_CATEGORY[g - pg.NUM_KINDS])
      types[g] = {pg.PLANT: 1, pg.HERBIVORE: 2, pg.CARNIVORE: 3}.get(cat, 4)
  return names, types


def make_eval_fn(env, env_params, mcfg: llama.ModelConfig,
                 prompt: cand_lib.CandidatePrompt, *, batch_size: int,
                 greedy: bool = True, jit: bool = True) -> Callable[..., dict]:
  """``(params, key, seeds) -> metrics``: one episode per seed (its task
  drawn from the seed), played by the candidate policy (greedy or sampled),
  in batches of ``batch_size``. Reports ``pass@1`` (success), success per goal
  type (``success/<type>``, over the episodes of that type) and
  ``steps/mean``."""
  names, types = goal_types(env)
  types = jnp.asarray(types)

  def play(params, key, seeds):
    b = seeds.shape[0]
    envs, _ = jax.vmap(env.reset, in_axes=(0, None))(
        jax.vmap(jax.random.key)(seeds), env_params)
    goal = envs.goal

    def turn(envs, k):
      k_pick, k_step = jax.random.split(k)
      symbols = jax.vmap(env.render_symbols, in_axes=(0, None))(envs, env_params)
      mask = jax.vmap(env.action_mask, in_axes=(0, None))(envs, env_params)
      out = cand_lib.candidate_outputs(params, mcfg, prompt, symbols, mask)
      logits = jnp.where(out.valid, out.logp, -jnp.inf)
      choice = (jnp.argmax(logits, -1) if greedy
                else jax.random.categorical(k_pick, logits))
      action = jnp.take_along_axis(out.actions, choice[:, None], axis=-1)[:, 0]
      nxt, ts = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
          jax.random.split(k_step, b), envs, action, env_params)
      return nxt, None

    envs, _ = jax.lax.scan(turn, envs, jax.random.split(key, env.max_turns))
    return envs.won, envs.steps, types[goal]

  def evaluate(params, key, seeds):
    num = seeds.shape[0]
    size = min(batch_size, num)
    if num % size:
      raise ValueError(f"{num} evaluation tasks do not split into batches of {size}")
    chunks = seeds.reshape(num // size, size)
    keys = jax.random.split(key, chunks.shape[0])
    won, steps, kind = jax.lax.map(lambda a: play(params, a[0], a[1]), (keys, chunks))
    won, steps, kind = won.ravel(), steps.ravel(), kind.ravel()
    metrics = {"pass@1": won.mean(), "success/attempt_1": won.mean(),
               "steps/mean": steps.astype(jnp.float32).mean()}
    for i, name in enumerate(names):
      of = kind == i
      metrics[f"success/{name.replace(' ', '_')}"] = jnp.where(
          of.any(), (won & of).sum() / jnp.maximum(of.sum(), 1), jnp.nan)
      metrics[f"tasks/{name.replace(' ', '_')}"] = of.sum().astype(jnp.float32)
    return metrics

  return jax.jit(evaluate) if jit else evaluate
