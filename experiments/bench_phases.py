"""Where a LaMer iteration's time goes: its phases, timed one by one.

The train step is one XLA program, so a wall clock around it cannot say which
part is slow. Here every phase of the rollout is its own jitted function
running the step's own code (``LanguagePolicy.start_attempt``,
``feed_turn_prompt``, ``agent.acting.act``, ``env_turn``,
``feed_reflect_prompt``, ``write_reflection``; the KV cache donated, so it is
updated in place as in the fused loop), called in the order of one attempt
on the config's B x G rows: the attempt prefix, then every turn's prompt,
action and env step, then the reflection. Turn t's cost depends on the cache
window its prefill reads, so each turn is timed where it happens. The
update phase is ``lamer.make_step_phases(...).update`` (the step's own
PPO minibatch update: forward, backward and AdamW) on ``update_rows``
attempt rows of the config's context, with random tokens (the work of a
dense forward does not depend on the values).

Per iteration: the attempt's phases x N attempts, reflections x (N - 1), the
update x (attempt rows / ``update_rows``) x epochs. Two upper bounds, as the
compiled step skips a turn no row plays and stops a reflection when every row
has ended it: every turn is played and every reflection runs its full
``reflection_tokens`` (timed over ``reflection_probe`` tokens: decoding reads
the whole cache, so every token costs the same). The env phase renders
nothing: the turn prompt encodes the observation.

FLOPs count the dense work the program does (holes included): 2 per weight
and token (the LM head: only the rows' last slot after a prefill, the table's
columns while decoding an action, the loss slots in the update), 4 per key,
head and head dimension for attention (a prefill chunk attends to its cache
window and itself, a decoded token to the whole cache, the update to all C
slots); the update's backward counts twice its forward.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import common, roofline
from lamer_jax.agent import acting, memory as memory_lib, trial
from lamer_jax.agent.layout import ContextLayout
from lamer_jax.algos import lamer
from lamer_jax.models import llama, sampling


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  seconds: float            # one call (summed over an attempt's turns)
  flops: float              # of one call (summed likewise)
  per_iteration: float      # calls per iteration

  @property
  def total_s(self) -> float:
    return self.seconds * self.per_iteration


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
  """Median wall seconds of ``repeats`` calls, and the last result."""
  times, out = [], None
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times), out


def _attention(cfg: llama.ModelConfig, queries: float, keys: float) -> float:
  return 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * queries * keys


def _body(cfg: llama.ModelConfig) -> int:
  return roofline.matmul_params(cfg, vocab=0)


def prefill_flops(cfg: llama.ModelConfig, rows: int, width: int, start: int,
                  context_len: int) -> float:
  """A ``width``-slot chunk fed after ``start`` filled slots: the blocks on
  every slot, attention over the chosen cache window and the chunk, the LM
  head on each row's last slot."""
  windows = llama.key_windows(cfg, context_len)
  window = windows[int(sum(w < start for w in windows[:-1]))]
  return rows * (2.0 * _body(cfg) * width + _attention(cfg, width, window + width)
                 + 2.0 * cfg.vocab_size * cfg.hidden_size)


def decode_flops(cfg: llama.ModelConfig, rows: int, steps: int, context_len: int,
                 head_columns: int, final_head: bool) -> float:
  """``steps`` decoded tokens per row, each attending to the whole cache and
  projecting onto ``head_columns``; ``final_head``: plus one full-vocabulary
  projection per row after the loop (the table head's ``last_logits``)."""
  per_token = (2.0 * (_body(cfg) + head_columns * cfg.hidden_size)
               + _attention(cfg, 1, context_len))
  tail = 2.0 * cfg.vocab_size * cfg.hidden_size if final_head else 0.0
  return rows * (steps * per_token + tail)


def update_flops(cfg: llama.ModelConfig, layout: ContextLayout, rows: int,
                 train_reflection: bool) -> float:
  """Forward + backward (2x the forward) of ``rows`` rows of C slots."""
  c = layout.context_len
  _, constrained = layout.loss_slot_kinds(train_reflection)
  columns = len(sampling.action_vocab(layout.codec.action_tokens,
                                      layout.codec.action_lengths))
  head = (int(constrained.sum()) * columns
          + int((~constrained).sum()) * cfg.vocab_size) * cfg.hidden_size
  forward = 2.0 * _body(cfg) * c + _attention(cfg, c, c) + 2.0 * head
  return 3.0 * rows * forward


def profile(config: ml_collections.ConfigDict, update_rows: int = 3,
            reflection_probe: int = 32, repeats: int = 1,
            progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
  """Times the phases of one iteration of ``config`` (an on-policy method on
  one game). Returns {"phases": [Phase], "layout": str, "rows": R, ...}."""
  exp = common.build(config, jit=False)
  if not exp.trains or len(exp.train_games) != 1:
    raise ValueError("the phase profile needs a training method on one game")
  game = exp.train_games[0]
  lay, env, env_params = game.layout, game.env, game.params
  mcfg, params = exp.model.cfg, exp.model.params
  samp = exp.train_rollout.sampling
  shape = lay.shape
  rows, n_turns = shape.num_rows, shape.num_turns
  c = lay.context_len

  key = jax.random.key(0)
  seeds = trial.task_seeds(key, shape.num_tasks)
  task_keys = jnp.repeat(jax.vmap(trial.task_key)(seeds), shape.group_size, axis=0)
  state, _ = jax.vmap(env.reset, in_axes=(0, None))(task_keys, env_params)
  init_obs = jax.vmap(lambda s: lay.codec.encode(env.render_symbols(s, env_params)))(state)
  on = jnp.ones((rows,), jnp.bool_)

  def policy(p):
    return trial.LanguagePolicy(params=p, mcfg=mcfg, layout=lay, env=env,
                                env_params=env_params, samp=samp, init_obs=init_obs)

  # Every phase takes the parameters as an argument (never a constant of the
  # program) and donates the context it advances.
  start = jax.jit(lambda p, mem: policy(p).start_attempt(mem, jnp.int32(0), on, None)[0])
  prompt = jax.jit(lambda p, ctx, t: policy(p).feed_turn_prompt(ctx, state, on, t)[0],
                   donate_argnums=1)

  def act_fn(p, ctx, t):
    allowed = jax.vmap(env.action_mask, in_axes=(0, None))(state, env_params)
    ctx, _, action, parsed = acting.act(
        p, mcfg, ctx, lay, jax.random.fold_in(key, t),
        jax.random.fold_in(key, n_turns + 1 + t), on, allowed, samp)
    return ctx, (action, parsed, allowed)
  act = jax.jit(act_fn, donate_argnums=1)
  env_step = jax.jit(lambda k, a: trial.env_turn(
      env, env_params, k, state, on, a[0], a[1], a[2],
      exp.train_rollout.invalid_penalty)[1])
  reflect_prompt = jax.jit(lambda p, ctx: policy(p).feed_reflect_prompt(ctx, on)[0],
                           donate_argnums=1)
  reflect = jax.jit(lambda p, ctx: policy(p).write_reflection(
      ctx, on, key, reflection_probe, stop=False).tokens)

  def attempt(timed: bool) -> dict[str, float]:
    """One attempt's phases in order; seconds per phase (summed over turns)."""
    sec = {"prefix": 0.0, "turn prompts": 0.0, "actions": 0.0, "env steps": 0.0,
           "reflection prompt": 0.0, "reflection": 0.0}
    reps = repeats if timed else 1
    mem = memory_lib.Memory.empty(lay, rows)
    dt, ctx = _timed(lambda: start(params, mem), 1)
    sec["prefix"] += dt
    for t in range(n_turns if timed else 1):
      dt, ctx = _timed(lambda: prompt(params, ctx, jnp.int32(t)), 1)
      sec["turn prompts"] += dt
      dt, (ctx, a) = _timed(lambda: act(params, ctx, jnp.int32(t)), 1)
      sec["actions"] += dt
      dt, _ = _timed(lambda: env_step(jax.random.fold_in(key, t), a), reps)
      sec["env steps"] += dt
    if lay.uses_reflection:
      dt, ctx = _timed(lambda: reflect_prompt(params, ctx), 1)
      sec["reflection prompt"] += dt
      dt, _ = _timed(lambda: reflect(params, ctx), reps)
      sec["reflection"] += dt * lay.reflection_tokens / reflection_probe
    return sec

  progress("compiling the rollout phases")
  attempt(timed=False)
  progress(f"timing one attempt ({n_turns} turns)")
  runs = [attempt(timed=True) for _ in range(repeats)]
  sec = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

  # ---- UPDATE: the step's own minibatch update on update_rows rows.
  algo = exp.algo
  if update_rows % shape.num_attempts:
    raise ValueError(f"update_rows={update_rows} must be a multiple of the "
                     f"{shape.num_attempts} attempts per trial")
  small = dataclasses.replace(game, layout=lay.with_tasks(
      1, group_size=update_rows // shape.num_attempts))
  one = dataclasses.replace(algo, num_minibatches=1, ppo_epochs=1)
  phases = lamer.make_step_phases((small,), mcfg, exp.train_rollout, one)
  data = synthetic_update_data(phases, small.layout, params, one, key,
                               mcfg.vocab_size)
  opt_state = lamer.make_optimizer(one).init(params)
  update = jax.jit(lambda p, o, d: phases.update(p, o, None, [d], p, key)[0][:2])
  progress(f"compiling the update ({update_rows} rows)")
  jax.block_until_ready(update(params, opt_state, data))
  progress("timing the update")
  upd_s, _ = _timed(lambda: update(params, opt_state, data), repeats)

  n = shape.num_attempts
  turn_starts = [lay.prefix_len + t * lay.turn_len for t in range(n_turns)]
  columns = len(sampling.action_vocab(lay.codec.action_tokens, lay.codec.action_lengths))
  reflect_at = lay.prefix_len + n_turns * lay.turn_len
  out = [
      Phase("attempt prefix prefill", sec["prefix"],
            prefill_flops(mcfg, rows, lay.prefix_len, 0, c), n),
      Phase("turn prompt prefills", sec["turn prompts"],
            sum(prefill_flops(mcfg, rows, lay.turn_prompt_len, s, c)
                for s in turn_starts), n),
      Phase("action decoding", sec["actions"],
            n_turns * decode_flops(mcfg, rows, lay.action_len, c, columns, True), n),
      Phase("env steps", sec["env steps"], 0.0, n),
  ]
  if lay.uses_reflection:
    out += [
        Phase("reflection prompt prefill", sec["reflection prompt"],
              prefill_flops(mcfg, rows, lay.reflect_prompt_len, reflect_at, c), n - 1),
        Phase(f"reflection decoding ({lay.reflection_tokens} tokens)", sec["reflection"],
              decode_flops(mcfg, rows, lay.reflection_tokens, c, mcfg.vocab_size, False),
              n - 1),
    ]
  attempt_rows = shape.num_attempt_rows
  out.append(Phase(f"update forward + backward + AdamW ({update_rows} rows)", upd_s,
                   update_flops(mcfg, lay, update_rows, algo.train_reflection),
                   attempt_rows / update_rows * algo.ppo_epochs))
  return {"phases": out, "layout": lay.describe(), "rows": rows,
          "attempt_rows": attempt_rows, "model": config.model.name,
          "env": game.name, "context_len": c, "reflection_probe": reflection_probe,
          "update_rows": update_rows}


def synthetic_update_data(phases: lamer.StepPhases, layout: ContextLayout, params,
                          algo: lamer.AlgoConfig, key, vocab: int
                          ) -> dict[str, jax.Array]:
  """The update's data at the collect phase's shapes: random tokens at
  consecutive positions, every slot real but the constrained action slots
  (so every log-prob is finite), every loss slot in the loss."""
  shapes = jax.eval_shape(lambda p: phases.collect(p, None, 0, key, key)[0], params)
  rows, c = shapes["tokens"].shape
  rng = np.random.default_rng(0)
  slots, constrained = layout.loss_slot_kinds(algo.train_reflection)
  mask = np.ones((rows, c), bool)
  mask[:, slots[constrained]] = False
  data = {
      "tokens": rng.integers(0, vocab, (rows, c)),
      "positions": np.broadcast_to(np.arange(c), (rows, c)),
      "token_mask": mask,
      "loss_mask": np.ones(shapes["loss_mask"].shape, bool),
      "logp_old": np.full(shapes["logp_old"].shape, -3.0),
      "advantages": rng.standard_normal(shapes["advantages"].shape),
      "action_allowed": np.ones(shapes["action_allowed"].shape, bool),
  }
  missing = set(shapes) - set(data)
  if missing:
    raise ValueError(f"the phase profile does not fill update data {sorted(missing)}")
  return {k: jnp.asarray(v, shapes[k].dtype) for k, v in data.items()}


def markdown(result: dict[str, Any], limits: roofline.Limits) -> str:
  phases = result["phases"]
  total = sum(p.total_s for p in phases)
  lines = [
      f"{result['model']} on {result['env']}: {result['rows']} rows (B x G), "
      f"{result['attempt_rows']} attempt rows; {result['layout']}.",
      "",
      "| phase | s per call | calls per iteration | s per iteration | share | "
      "GFLOP per call | of matmul peak |",
      "|---|---:|---:|---:|---:|---:|---:|"]
  for p in phases:
    peak = (f"{p.flops / p.seconds / limits.flops:.1%}"
            if p.flops and p.seconds > 0 else "-")
    lines.append(f"| {p.name} | {p.seconds:.2f} | {p.per_iteration:g} | "
                 f"{p.total_s:.1f} | {p.total_s / total:.1%} | "
                 f"{p.flops / 1e9:,.1f} | {peak} |")
  flops = sum(p.flops * p.per_iteration for p in phases)
  lines += ["", f"Iteration (sum of the phases): **{total / 60:.1f} min**, "
            f"{flops / 1e12:.1f} TFLOP, {flops / total / limits.flops:.1%} of the "
            f"matmul peak. {roofline.describe(limits)}."]
  return "\n".join(lines)
