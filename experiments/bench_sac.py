"""Throughput of the compiled SAC step, and the cost of its replay buffer.

The SAC step (``lamer_jax.algos.sac.make_train_step``) acts ``env_steps``
times in ``num_envs`` envs, adds the transitions to the replay buffer and
runs ``updates`` minibatch updates. Timed here, per model, on Playground
(Grasp goals, the study's task set):

* **acting**: the step compiled with ``updates = 0`` (acting, adding and
  resetting only): env steps/s = ``num_envs x env_steps`` / its time;
* **updates**: the step with ``updates = U`` minus the acting step, the two
  called alternately (one difference per round, median and range):
  updates/s = ``U`` / that difference (each update samples, relabels with
  HER ``future``, scores the candidates at s and s' and applies the critic,
  actor, temperature and Polyak steps).

The replay rows time the buffer alone, jitted, at the step's shapes: one
``add`` of ``num_envs x env_steps`` transitions, and one minibatch draw
(``sample_indices`` + 3-step ``gather`` + HER ``future`` relabeling).
Each cell is the median of ``repeats`` calls (rounds) after a warm-up call
(the compilation); the buffer is full (sampling reads the whole ring).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

import envs_jax
from experiments.configs import sac as sac_configs
from lamer_jax import her, replay
from lamer_jax.agent import candidates as cand_lib
from lamer_jax.algos import sac
from lamer_jax.models import loading


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
  jax.block_until_ready(fn())                 # compile + warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _world():
  env = envs_jax.make("playground")
  return env, env.default_params.replace(
      goal_probs=jnp.asarray(sac_configs.GRASP_ONLY, jnp.float32))


def step_rates(model_name: str, cfg: sac.SACConfig, repeats: int) -> dict[str, float]:
  """Env steps/s of acting and updates/s of the SAC step for one model."""
  env, params = _world()
  model = loading.load(model_name, key=jax.random.key(0))
  prompt = cand_lib.CandidatePrompt.build(model.tokenizer, env, short=cfg.short_prompt)
  out = {"prompt_tokens": prompt.prompt_len, "candidate_tokens": prompt.candidate_len,
         "candidates": prompt.num_candidates}
  calls = {}
  for name, c in (("act", dataclasses.replace(cfg, updates=0)), ("step", cfg)):
    step = sac.make_train_step(env, params, model.cfg, prompt, c)
    state = sac.init_state(env, params, jax.tree.map(jnp.copy, model.params), model.cfg,
                           c, jax.random.key(1))
    # Fill the replay (learning_starts) so that every timed call updates.
    t = time.perf_counter()
    while int(state.extra["replay"].count) * c.num_envs < c.learning_starts:
      state, _ = step(state)
    state, metrics = step(state)                  # the warm-up call
    jax.block_until_ready(metrics)
    out[f"{name}_first_s"] = time.perf_counter() - t
    calls[name] = _stepper(step, state)
  # Interleaved (act, step, step, act, ...): one update time per round, both
  # calls of a round under the same load.
  times = {"act": [], "step": []}
  for r in range(repeats):
    for name in (("act", "step") if r % 2 == 0 else ("step", "act")):
      t = time.perf_counter()
      jax.block_until_ready(calls[name]())
      times[name].append(time.perf_counter() - t)
  diffs = [(s - a) / cfg.updates for s, a in zip(times["step"], times["act"])]
  act_s = statistics.median(times["act"])
  out["act_s"] = act_s
  out["env_steps_per_s"] = cfg.num_envs * cfg.env_steps / act_s
  out["update_s"] = statistics.median(diffs)
  out["update_range"] = (min(diffs), max(diffs))
  out["step_s"] = statistics.median(times["step"])
  return out


def _stepper(step, state) -> Callable[[], Any]:
  """A call that advances its own copy of ``state`` by one step."""
  holder = [state]

  def call():
    holder[0], metrics = step(holder[0])
    return metrics
  return call


def replay_costs(cfg: sac.SACConfig, repeats: int) -> dict[str, float]:
  """Seconds of one jitted add and one minibatch draw (sample, gather, HER)."""
  env, params = _world()
  example = replay.Transition.example(env.max_symbols, env.num_actions, env.num_goals)
  buf = replay.init(example, cfg.num_envs, cfg.capacity)
  batch = jax.tree.map(lambda x: jnp.zeros((cfg.num_envs, cfg.env_steps) + x.shape,
                                           x.dtype), example)
  add = jax.jit(replay.add)
  for _ in range(-(-cfg.capacity // cfg.env_steps)):      # a full ring
    buf = add(buf, batch)

  @jax.jit
  def draw(buf, key):
    k_idx, k_her = jax.random.split(key)
    env_idx, t_idx = replay.sample_indices(buf, k_idx, cfg.batch_size)
    window, valid = replay.gather(buf, env_idx, t_idx, jnp.arange(cfg.n_step))
    window, info = her.hindsight(k_her, buf, env_idx, t_idx, window, "future",
                                 cfg.her_ratio)
    return window, valid, info
  key = jax.random.key(0)
  bytes_stored = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(buf))
  return {"add_s": _median_s(lambda: add(buf, batch), repeats),
          "draw_s": _median_s(lambda: draw(buf, key), repeats),
          "replay_mib": bytes_stored / 2**20}


def run(models: tuple[str, ...], cfg: sac.SACConfig, repeats: int) -> str:
  """The markdown body: a row per model, then the replay row."""
  lines = [
      f"Playground (Grasp goals), {cfg.num_envs} envs x {cfg.env_steps} steps per "
      f"train step, {cfg.updates} update(s) of {cfg.batch_size} {cfg.n_step}-step "
      f"windows (HER future {cfg.her_ratio}), replay {cfg.num_envs} x "
      f"{cfg.capacity}, short prompt {cfg.short_prompt}; median of {repeats} calls.",
      "",
      "| model | prompt + candidate tokens (x candidates) | acting: env steps/s | "
      "update: s (range) | updates/s | whole step: s | first calls: s (compile) |",
      "|---|---|---:|---:|---:|---:|---:|"]
  for name in models:
    r = step_rates(name, cfg, repeats)
    lo, hi = r["update_range"]
    rate = f"{1 / r['update_s']:.2f}" if r["update_s"] > 0 else "n/a (noise)"
    lines.append(
        f"| {name} | {r['prompt_tokens']} + {r['candidate_tokens']} (x "
        f"{r['candidates']}) | {r['env_steps_per_s']:.1f} | {r['update_s']:.3f} "
        f"({lo:.3f}-{hi:.3f}) | {rate} | {r['step_s']:.3f} | "
        f"{r['act_first_s']:.0f} + {r['step_first_s']:.0f} |")
  rc = replay_costs(cfg, repeats)
  lines += ["", "| replay ({:.1f} MiB) | add {} transitions | sample + gather + HER, "
            "{} windows |".format(rc["replay_mib"], cfg.num_envs * cfg.env_steps,
                                   cfg.batch_size),
            "|---|---:|---:|",
            f"| jitted, ms | {1e3 * rc['add_s']:.3f} | {1e3 * rc['draw_s']:.3f} |"]
  return "\n".join(lines)
