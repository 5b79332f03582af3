"""Evaluates a trained checkpoint or a named model on held-out tasks.

    # a training run (its config is read from the checkpoint):
    python -m experiments.evaluate --workdir=runs/x --num_tasks=128 --output=eval.json
    # a named model, prompting baselines:
    python -m experiments.evaluate --config=experiments/configs/zero_shot.py:sokoban \\
        --config.eval.num_tasks=128 --output=zero_shot.json

Plays ``eval.num_tasks`` held-out tasks (seeds from 2^16 on, disjoint from
training) with ``eval.num_attempts`` attempts each, prints the pass@k table
and writes a JSON report. The sampling key depends only on the seed and the
checkpoint's step, so evaluating a run's checkpoint reproduces the ``eval/``
metrics its training logged at that step.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import types
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from experiments import common
from experiments.configs import base
from lamer_jax import checkpoint, evaluation

def run(config: ml_collections.ConfigDict | None, workdir: str | None = None,
        step: int | None = None, *, num_tasks: int | None = None,
        output: str | None = None, experiment: common.Experiment | None = None,
        progress: bool = False) -> dict[str, Any]:
  """Evaluates, writes the JSON report to ``output`` (if given), returns it.

  Args:
    config: the configuration; None reads it from ``workdir``'s checkpoint.
    workdir: a training run: its parameters (at ``step``, default latest) are
      evaluated; None evaluates ``config.model`` as loaded.
    step: checkpoint step.
    num_tasks: overrides ``config.eval.num_tasks``.
    output: path of the JSON report.
    experiment: a prebuilt ``common.build(config)`` to reuse.
    progress: show a progress bar of played tasks.

  Raises:
    ValueError: neither a config nor a workdir, or an invalid config.
    FileNotFoundError: ``workdir`` does not exist or holds no checkpoint.
    checkpoint.CheckpointError: the checkpoint is unreadable or does not fit.
  """
  if config is None and workdir is None:
    raise ValueError("give --workdir (a training run) or --config (a named model)")
  ckpt = None
  if workdir is not None:
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"--workdir {workdir} does not exist (or is not a "
                              "directory): give a training run's directory")
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, common.CHECKPOINT_DIR))
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; to evaluate a "
                              "model without training, pass --config only")
    step = ckpt.latest_step() if step is None else step
    if config is None:
      config = common.config_from_dict(ckpt.restore_meta(step)["config"])
      # The training run's mesh need not fit this machine: evaluate data
      # parallel over whatever devices there are (checkpoints restore onto
      # any mesh).
      config.mesh.update(base.get_config().mesh)
  if num_tasks is not None:
    config.eval.num_tasks = num_tasks
  exp = experiment or common.build(config)
  if ckpt is not None:
    params = ckpt.restore(common.abstract_state(exp), step).params
    ckpt.close()
  else:
    params, step = exp.model.params, 0
  results = common.evaluate(exp, params, step, progress=progress)
  report = {
      "name": config.name, "method": config.method, "env": exp.env.name,
      "model": exp.model.name, "workdir": workdir, "step": step,
      "num_tasks": int(exp.eval_seeds.shape[0]),
      "num_attempts": exp.eval_layout.num_attempts,
      "memory": exp.eval_layout.memory, "metrics": results,
      "config": config.to_dict(),
  }
  if output and jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


def define_flags() -> types.SimpleNamespace:
  """The command-line flags (defined only when run as a program)."""
  return types.SimpleNamespace(
      config=config_flags.DEFINE_config_file(
          "config", None, "Configuration file; default: the one stored in "
          "--workdir's checkpoint.", lock_config=True),
      workdir=flags.DEFINE_string("workdir", None, "Training run whose "
                                  "checkpoint to evaluate."),
      step=flags.DEFINE_integer("step", None, "Checkpoint step (default: latest)."),
      num_tasks=flags.DEFINE_integer("num_tasks", None, "Held-out tasks (default: "
                                     "the config's eval.num_tasks)."),
      output=flags.DEFINE_string("output", None, "Where to write the JSON report."),
      progress=flags.DEFINE_bool("progress", True, "Show a progress bar of "
                                 "played tasks (it moves per eval.batch_size)."))


def main(argv, args: types.SimpleNamespace):
  del argv  # checked by common.run_main
  if args.config.value is None and args.workdir.value is None:
    raise app.UsageError("give --workdir (a training run) or --config (a model)")
  report = run(args.config.value, args.workdir.value, args.step.value,
               num_tasks=args.num_tasks.value, output=args.output.value,
               progress=args.progress.value)
  print(f"{report['name']} ({report['method']}, step {report['step']}): "
        f"{report['num_tasks']} held-out tasks x {report['num_attempts']} attempts, "
        f"memory {report['memory']}")
  print(evaluation.format_report(report["metrics"]))
  if args.output.value:
    print(f"wrote {args.output.value}")


if __name__ == "__main__":
  _ARGS = define_flags()
  common.run_main(functools.partial(main, args=_ARGS), sys.argv)
