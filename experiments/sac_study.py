"""SAC with hindsight relabeling against SAC and PPO, at equal env steps.

    python -m experiments.sac_study --seeds=3 --env_steps=6400 --output_dir=docs/figures

SAC-GLAM's finding at the scale of a 2-core CPU: on Playground's Grasp goals
(``experiments/configs/sac.py``'s ``tiny`` variants: the byte-level
``micro-llama`` from scratch, horizon 3), the success rate of the episodes the
agent plays while it learns, against the env steps it has taken, for

- ``sac_her``: SAC over the candidate actions with HER ``future`` (ratio 0.8),
- ``sac``: the same without relabeling,
- ``ppo``: the on-policy machinery with a value head and GAE (one attempt),

each run for the same ``--env_steps`` (SAC takes ``num_envs x env_steps`` per
train step; PPO ``tasks x group x turns played``), ``--seeds`` seeds each. After
training, each run is evaluated greedily on ``--eval_tasks`` fresh Grasp tasks
of the training kinds. Prints a markdown table (mean +- std over seeds) and
writes ``sac_study.png`` (curves, mean and spread) and ``sac_study.json``
(every run's curve).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import types

from absl import flags
import numpy as np

from experiments import common
from experiments.configs import base
from experiments.configs import sac as sac_configs

METHODS = ("sac_her", "sac", "ppo")
LABELS = {"sac_her": "SAC + HER", "sac": "SAC", "ppo": "PPO (GAE)"}
# Per-step metrics kept with each run (those its method reports).
TRACED = ("entropy/mean", "entropy/target", "alpha", "q/mean", "target/mean",
          "loss/critic", "loss/policy", "her/relabeled", "value/explained_variance")


def study_config(method: str, seed: int, env_steps: int, eval_tasks: int):
  """The ``tiny`` config of ``method`` for ``seed``, sized to ``env_steps``."""
  config = sac_configs.get_config(f"{method},tiny")
  config.train.seed = seed
  config.eval.num_tasks = eval_tasks
  config.eval.batch_size = min(eval_tasks, 64)
  if method == "ppo":
    config.eval.games = "playground"           # the training kinds
    per_step = (config.rollout.num_tasks * config.rollout.group_size
                * config.rollout.num_turns)    # at most: episodes end at success
  else:
    config.sac.eval_env = "playground"
    per_step = config.sac.num_envs * config.sac.env_steps
  config.train.steps = max(1, env_steps // per_step)
  config.train.eval_every = config.train.steps
  return config


def _step_counts(method: str, config, m: dict) -> tuple[float, float, float]:
  """(env steps, episodes, won episodes) of one train step's metrics."""
  if method == "ppo":
    rows = config.rollout.num_tasks * config.rollout.group_size
    return rows * m["turns/mean"], float(rows), rows * m["pass@1"]
  steps = config.sac.num_envs * config.sac.env_steps
  return float(steps), m["episodes"], m["episodes"] * m["success/episode"]


def run(method: str, seed: int, env_steps: int, eval_tasks: int) -> dict:
  """Trains one run; its curve (per train step: cumulative env steps,
  episodes, won episodes), final greedy success and wall time."""
  t0 = time.time()
  config = study_config(method, seed, env_steps, eval_tasks)
  exp = common.build(config)
  state = common.init_state(exp)
  curve, trace = [], {k: [] for k in TRACED}
  total = 0.0
  for _ in range(config.train.steps):
    state, m = exp.train_step(state)
    m = common.to_host(m)
    steps, episodes, won = _step_counts(method, config, m)
    total += steps
    curve.append((total, episodes, won))
    for k in TRACED:
      if k in m:
        trace[k].append(m[k])
  final = common.evaluate(exp, state.params, config.train.steps)
  return {"method": method, "seed": seed, "curve": curve,
          "trace": {k: v for k, v in trace.items() if v},
          "eval_success": final["pass@1"], "train_steps": config.train.steps,
          "wall_s": time.time() - t0}


def load_results(path: str, env_steps: int) -> list[dict]:
  """The runs stored at ``path`` (none if it does not exist); a ValueError if
  they were made for another env-step budget."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    stored = json.load(f)
  if stored.get("env_steps") != env_steps:
    raise ValueError(f"{path} holds runs of {stored.get('env_steps')} env steps, not "
                     f"{env_steps}: pass --env_steps={stored.get('env_steps')} or "
                     "another --output_dir")
  return list(stored["results"])


def binned(curve, edges) -> np.ndarray:
  """Success rate of the episodes that ended within each env-step bin."""
  x = np.asarray(curve, np.float64).reshape(-1, 3)
  which = np.searchsorted(edges, x[:, 0], side="left")
  out = np.full(len(edges), np.nan)
  for b in range(len(edges)):
    sel = which == b
    if x[sel, 1].sum() > 0:
      out[b] = x[sel, 2].sum() / x[sel, 1].sum()
  return out


def bin_edges(env_steps: int, bins: int) -> np.ndarray:
  return np.linspace(env_steps / bins, env_steps, bins)


def table(results: list[dict], env_steps: int, bins: int) -> str:
  """Markdown: per method, success in the first and last bin of env steps and
  the greedy evaluation, mean +- std over seeds."""
  edges = bin_edges(env_steps, bins)
  lines = [f"| method | seeds | success, first {edges[0]:.0f} env steps | success, "
           f"last {edges[-1] - edges[-2]:.0f} env steps | greedy eval after "
           f"{env_steps} env steps | wall s / run |",
           "|---|---:|---:|---:|---:|---:|"]
  for method in METHODS:
    runs = [r for r in results if r["method"] == method]
    if not runs:
      continue
    curves = 100 * np.asarray([binned(r["curve"], edges) for r in runs])
    ev = 100 * np.asarray([r["eval_success"] for r in runs])
    cell = lambda v: f"{np.nanmean(v):.1f} +- {np.nanstd(v):.1f}"
    lines.append(f"| {LABELS[method]} | {len(runs)} | {cell(curves[:, 0])} | "
                 f"{cell(curves[:, -1])} | {cell(ev)} | "
                 f"{np.mean([r['wall_s'] for r in runs]):.0f} |")
  return "\n".join(lines)


def plot(results: list[dict], env_steps: int, bins: int, path: str) -> str:
  from experiments import plot as plot_lib  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  edges = bin_edges(env_steps, bins)
  mid = edges - (edges[0] / 2)
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for method in METHODS:
    runs = [r for r in results if r["method"] == method]
    if not runs:
      continue
    x = 100 * np.asarray([binned(r["curve"], edges) for r in runs])
    mean, std = np.nanmean(x, 0), np.nanstd(x, 0)
    line, = ax.plot(mid, mean, marker="o", label=f"{LABELS[method]} ({len(runs)} seeds)")
    ax.fill_between(mid, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  ax.set_xlabel("env steps")
  ax.set_ylabel("% of training episodes won")
  ax.set_title("Playground, Grasp goals (micro-llama from scratch)")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  return plot_lib.save(fig, path)


def define_flags() -> types.SimpleNamespace:
  return types.SimpleNamespace(
      seeds=flags.DEFINE_integer("seeds", 3, "Seeds per method."),
      env_steps=flags.DEFINE_integer("env_steps", 6400, "Env steps per run."),
      methods=flags.DEFINE_list("methods", list(METHODS), "Methods to run."),
      bins=flags.DEFINE_integer("bins", 8, "Env-step bins of the curves."),
      eval_tasks=flags.DEFINE_integer("eval_tasks", 128, "Greedy eval tasks."),
      output_dir=flags.DEFINE_string("output_dir", ".", "Where the PNG and JSON go."),
      resume=flags.DEFINE_bool("resume", False, "Keep the runs already in "
                               "<output_dir>/sac_study.json (same --env_steps) and "
                               "run only the missing (method, seed) pairs."))


def main(argv, args: types.SimpleNamespace):
  del argv
  for name in ("seeds", "env_steps", "bins", "eval_tasks"):
    if getattr(args, name).value < 1:
      raise common.ConfigError(f"--{name} must be >= 1, got {getattr(args, name).value}")
  methods = [base.choose("--methods entry", m, METHODS) for m in args.methods.value]
  t0 = time.time()
  out = args.output_dir.value
  results = load_results(os.path.join(out, "sac_study.json"), args.env_steps.value) \
      if args.resume.value else []
  done = {(r["method"], r["seed"]) for r in results}
  for seed in range(args.seeds.value):
    for method in methods:
      if (method, seed) in done:
        continue
      r = run(method, seed, args.env_steps.value, args.eval_tasks.value)
      results.append(r)
      print(f"{method} seed {seed}: train steps {r['train_steps']}, greedy eval "
            f"{r['eval_success']:.3f}, {r['wall_s']:.0f} s ({time.time() - t0:.0f} s)",
            flush=True)
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, "sac_study.json"), "w") as f:
        json.dump({"env_steps": args.env_steps.value, "results": results}, f)
  print(table(results, args.env_steps.value, args.bins.value))
  png = plot(results, args.env_steps.value, args.bins.value,
             os.path.join(out, "sac_study.png"))
  print(f"wrote {png} ({time.time() - t0:.0f} s in all, load average "
        f"{os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
  _ARGS = define_flags()
  common.run_main(functools.partial(main, args=_ARGS), sys.argv)
