"""In-context learning across episodes, measured small: continuous trials vs K = 1.

    python -m experiments.incontext --seeds=3 --output_dir=docs/figures

ORBIT's claim at the scale of a 2-core CPU: a from-scratch model trained on
continuous trials (K episodes of the same task in one context, reward 1 per
solved episode, trajectory-level GRPO) learns to get better from episode to
episode, while the same model trained on single episodes (K = 1) for the same
number of episodes does not. The game is guess-the-number with one guess per
episode (``guess``, ``max_turns=1``): no episode can beat chance on its own,
so every gain of a later episode over the first is in-context learning (do
not repeat a failed guess, repeat a successful one). The ideal policy in 3
episodes over 3 numbers solves episode k with probability 1/3, 2/3, 1; a
policy that ignores the transcript stays at 1/3.

Each condition trains ``--steps`` steps of ``--tasks`` tasks x G trials (K = 3:
8 trials of 3 episodes; K = 1: 24 trials of 1 episode: the same episodes per
step), with ``micro-llama`` (one block, byte codec) and the instructions text
stripped (``agent.layout.short_prompt``), then both are evaluated in K = 3
continuous trials on ``--eval_tasks`` held-out tasks of the training game and
of a held-out variant with 5 numbers (ideal 0.2, 0.4, 0.6). Prints a markdown
table (mean +- std over seeds) and writes ``incontext.png``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import types

from absl import flags
import jax
import numpy as np

import envs_jax
from envs_jax.continuous import Continuous
from experiments import common
from lamer_jax.agent.layout import TrialShape, build_layout, short_prompt
from lamer_jax.agent.trial import RolloutConfig, eval_seeds
from lamer_jax.algos import lamer as train_lib
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

MODEL = "micro-llama"
EPISODES = 3
ALGO = train_lib.AlgoConfig(estimator="grpo", normalize_std=True, gamma_step=1.0,
                            gamma_traj=0.0, clip_eps_high=0.28, lr=3e-3,
                            entropy_coef=0.0, weight_decay=0.0,
                            train_reflection=False)
# (label, number of options): the training game and the held-out variant.
EVAL_GAMES = (("guess-3 (trained)", 3), ("guess-5 (held out)", 5))


def _layout(env, tasks: int, group: int) -> "object":
  shape = TrialShape(num_tasks=tasks, group_size=group, num_attempts=1,
                     num_turns=env.max_turns)
  tok = ByteTokenizer()
  return short_prompt(build_layout(tok, env, shape, memory="none"), tok)


def _game(options: int, episodes: int) -> Continuous:
  return Continuous(envs_jax.make("guess", num_options=options, max_turns=1),
                    episodes=episodes)


@functools.lru_cache(maxsize=None)
def _train_step(train_episodes: int, tasks: int):
  """The jitted step of one condition (compiled once, shared by its seeds)."""
  env = _game(3, train_episodes)
  group = 8 * EPISODES // train_episodes        # the same episodes per step
  return train_lib.make_train_step(env, llama.TINY_CONFIGS[MODEL],
                                   _layout(env, tasks, group), RolloutConfig(), ALGO)


@functools.lru_cache(maxsize=None)
def _evaluate(options: int, eval_tasks: int):
  env = _game(options, EPISODES)
  return train_lib.make_eval_fn(env, llama.TINY_CONFIGS[MODEL],
                                _layout(env, eval_tasks, 1), RolloutConfig())


def train_and_evaluate(train_episodes: int, seed: int, steps: int, tasks: int,
                       eval_tasks: int) -> dict[str, list[float]]:
  """Trains one condition; returns {eval game label: episode-k success}."""
  step = _train_step(train_episodes, tasks)
  params = llama.init_params(llama.TINY_CONFIGS[MODEL], jax.random.key(1000 + seed))
  state = train_lib.init_train_state(params, ALGO, jax.random.key(seed))
  for _ in range(steps):
    state, _ = step(state)
  out = {}
  for label, options in EVAL_GAMES:
    m = _evaluate(options, eval_tasks)(state.params, jax.random.key(7),
                                       eval_seeds(eval_tasks))
    out[label] = [float(m[f"episode_success/episode_{k + 1}"])
                  for k in range(EPISODES)]
  return out


def table(results: dict[int, list[dict[str, list[float]]]]) -> str:
  """Markdown: per eval game and training K, episode-k success mean +- std."""
  lines = ["| evaluated on | trained with | episode 1 | episode 2 | episode 3 "
           "| episode 3 - episode 1 |", "|---|---|---:|---:|---:|---:|"]
  for label, _ in EVAL_GAMES:
    for k_train, runs in results.items():
      x = 100.0 * np.asarray([r[label] for r in runs])      # [seeds, K]
      cells = [f"{m:.1f} +- {s:.1f}" for m, s in zip(x.mean(0), x.std(0))]
      gain = x[:, -1] - x[:, 0]
      lines.append(f"| {label} | K = {k_train} | {' | '.join(cells)} | "
                   f"{gain.mean():+.1f} +- {gain.std():.1f} |")
  return "\n".join(lines)


def plot(results: dict[int, list[dict[str, list[float]]]], path: str) -> str:
  from experiments import plot as plot_lib  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(EVAL_GAMES), figsize=(4.5 * len(EVAL_GAMES), 3.6),
                           squeeze=False)
  ks = np.arange(1, EPISODES + 1)
  for ax, (label, options) in zip(axes[0], EVAL_GAMES):
    for k_train, runs in results.items():
      x = 100.0 * np.asarray([r[label] for r in runs])
      ax.errorbar(ks, x.mean(0), yerr=x.std(0), marker="o", capsize=3,
                  label=f"trained with K = {k_train}")
    ideal = [100.0 * min(1.0, k / options) for k in ks]
    ax.plot(ks, ideal, "k:", label="ideal (no repeats)")
    ax.set_title(label)
    ax.set_xticks(ks)
    ax.set_xlabel("episode")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel("% of held-out tasks solved")
  axes[0, -1].legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  return plot_lib.save(fig, path)


def define_flags() -> types.SimpleNamespace:
  return types.SimpleNamespace(
      seeds=flags.DEFINE_integer("seeds", 3, "Seeds per condition."),
      steps=flags.DEFINE_integer("steps", 200, "Train steps per run."),
      tasks=flags.DEFINE_integer("tasks", 16, "Tasks per train step."),
      eval_tasks=flags.DEFINE_integer("eval_tasks", 512, "Held-out tasks."),
      output_dir=flags.DEFINE_string("output_dir", ".", "Where incontext.png goes."))


def main(argv, args: types.SimpleNamespace):
  del argv
  for name in ("seeds", "steps", "tasks", "eval_tasks"):
    if getattr(args, name).value < 1:
      raise common.ConfigError(f"--{name} must be >= 1, got "
                               f"{getattr(args, name).value}")
  t0 = time.time()
  results: dict[int, list[dict[str, list[float]]]] = {EPISODES: [], 1: []}
  for seed in range(args.seeds.value):
    for k_train in results:
      results[k_train].append(train_and_evaluate(
          k_train, seed, args.steps.value, args.tasks.value, args.eval_tasks.value))
      print(f"seed {seed}, K = {k_train}: {results[k_train][-1]} "
            f"({time.time() - t0:.0f} s)", flush=True)
  print(table(results))
  print(f"wrote {plot(results, os.path.join(args.output_dir.value, 'incontext.png'))}"
        f" ({time.time() - t0:.0f} s in all, load average "
        f"{os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
  _ARGS = define_flags()
  common.run_main(functools.partial(main, args=_ARGS), sys.argv)
