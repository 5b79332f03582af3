"""Trains a policy: LaMer or a single-episode RL baseline.

    python -m experiments.train --config=experiments/configs/lamer.py:sokoban \\
        --workdir=runs/x --config.train.steps=100

Resumes from the latest checkpoint in ``--workdir``. The train state carries
its PRNG key and evaluation keys are derived from the step, so a resumed run
reproduces an uninterrupted one exactly (parameters and metrics). SIGTERM or
SIGINT saves a checkpoint after the step in flight, then exits with status
128 + signal number; a second signal stops at once.

Writes into ``--workdir``: ``config.json``, ``checkpoints/``,
``metrics.jsonl`` (one line per step: ``step``, ``time``, train metrics,
``time/step_s``, ``perf/tokens_per_s`` and, on evaluation steps, ``eval/``
metrics on the held-out tasks) and ``tensorboard/`` (event files of the same
metrics). Ends with the pass@k table of the last evaluation. Methods that do
not train (``zero_shot``, ``reflexion``; ``train.steps=0``) evaluate once.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
import types
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
import jax
from tqdm import tqdm

from experiments import common
from lamer_jax import checkpoint, evaluation, metrics

CONFIG_NAME = "config.json"
# Saved config values a resumed run may change without changing its history.
# (The mesh may change too: checkpoints restore onto any mesh.)
_RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.eval_every",
                      "train.checkpoint_every", "train.keep_checkpoints",
                      "mesh.data", "mesh.fsdp", "mesh.tensor")


class StopRequest:
  """Turns SIGTERM/SIGINT into a flag the training loop polls between steps."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:   # second signal: stop now
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning("received %s: saving a checkpoint after the current step",
                    signal.Signals(signum).name)

  def __enter__(self) -> "StopRequest":
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _warn_config_changes(saved: dict[str, Any], current: dict[str, Any]) -> None:
  old, new = _flatten(saved), _flatten(current)
  changed = sorted(k for k in set(old) | set(new)
                   if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES)
  if changed:
    logging.warning("resuming with a config that differs from the checkpoint's "
                    "in %s: the run is no longer one consistent experiment",
                    ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})"
                              for k in changed))


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
  return {f"{prefix}{k}": v for k, v in values.items()}


def _open_writers(workdir: str, resume_step: int | None = None) -> metrics.Writers:
  """Metric writers; in a multi-host run only process 0 writes (the others'
  metrics are the same: every host computes the global ones)."""
  if jax.process_index() != 0:
    return metrics.Writers([])
  return metrics.open_writers(workdir, resume_step)


def _evaluate_only(exp: common.Experiment, workdir: str,
                   progress: bool) -> dict[str, float]:
  t0 = time.perf_counter()
  results = common.evaluate(exp, exp.model.params, step=0, progress=progress)
  writers = _open_writers(workdir)
  writers.write(0, {**_prefixed("eval/", results),
                    "time/eval_s": time.perf_counter() - t0})
  writers.close()
  return results


def train(config: ml_collections.ConfigDict, workdir: str, *,
          experiment: common.Experiment | None = None,
          progress: bool = True) -> tuple[dict[str, float], int | None]:
  """Runs (or resumes) training in ``workdir``.

  Args:
    config: the run's configuration (validated before anything compiles).
    workdir: the run directory.
    experiment: a prebuilt ``common.build(config)`` (tests reuse compiled
      functions); built from ``config`` when None.
    progress: show a tqdm progress bar.

  Returns:
    (metrics of the last evaluation, the signal that stopped the run or None).
  """
  common.validate(config)
  exp = experiment or common.build(config)
  os.makedirs(workdir, exist_ok=True)
  logging.info("%s", common.describe(exp))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, CONFIG_NAME), "w", encoding="utf-8") as f:
      json.dump(config.to_dict(), f, indent=2)
  steps = config.train.steps
  if not exp.trains or steps == 0:
    return _evaluate_only(exp, workdir, progress), None

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, common.CHECKPOINT_DIR),
                                 keep=config.train.keep_checkpoints)
  step = ckpt.latest_step()
  if step is None:
    state, resume_step = common.init_state(exp), None
    step = 0
  else:
    _warn_config_changes(ckpt.restore_meta(step)["config"], config.to_dict())
    state = ckpt.restore(common.abstract_state(exp), step)
    resume_step = step
    logging.info("resumed from %s", ckpt.step_path(step))
  if experiment is None:
    exp.model.params = None   # the train state holds the only copy we need
  writers = _open_writers(workdir, resume_step)
  attempts = exp.train_layout.num_attempts
  last_eval: dict[str, float] | None = None
  saved_step = resume_step
  bar = tqdm(total=steps, initial=step, unit="step",
             disable=not progress or jax.process_index() != 0,
             dynamic_ncols=True)
  with StopRequest() as stop:
    try:
      while step < steps and stop.signum is None:
        t0 = time.perf_counter()
        state, train_metrics = exp.train_step(state)
        row = common.to_host(train_metrics)      # waits for the step
        elapsed = time.perf_counter() - t0
        step += 1
        row["time/step_s"] = elapsed
        row["perf/tokens_per_s"] = row["generated_tokens"] / elapsed
        every = config.train.eval_every
        if step == steps or (every and step % every == 0):
          t1 = time.perf_counter()
          last_eval = common.evaluate(exp, state.params, step)
          row.update(_prefixed("eval/", last_eval))
          row["time/eval_s"] = time.perf_counter() - t1
        writers.write(step, row)
        bar.set_postfix({"step": step, f"pass@{attempts}": row[f"pass@{attempts}"],
                         "return": row["return/mean"],
                         "tok/s": row["perf/tokens_per_s"]}, refresh=False)
        bar.update(1)
        if step % config.train.log_every == 0:
          logging.info("step %d: %s", step, " ".join(
              f"{k}={v:.4g}" for k, v in row.items()
              if k.startswith(("pass@", "eval/pass@", "return", "loss/pg"))))
        every = config.train.checkpoint_every
        if (step == steps or (every and step % every == 0)
            or stop.signum is not None):
          ckpt.save(step, state, config.to_dict())
          saved_step = step
      if stop.signum is not None and saved_step != step:
        ckpt.save(step, state, config.to_dict())
    finally:
      bar.close()
      writers.close()
      ckpt.close()
  if stop.signum is not None:
    logging.warning("stopped by %s at step %d; checkpoint in %s",
                    signal.Signals(stop.signum).name, step,
                    os.path.join(workdir, common.CHECKPOINT_DIR, str(step)))
    return last_eval or {}, stop.signum
  if last_eval is None:   # resumed a finished run: evaluate its final state
    last_eval = common.evaluate(exp, state.params, step)
  return last_eval, None


def define_flags() -> types.SimpleNamespace:
  """The command-line flags (defined only when run as a program, so that the
  entry points stay importable side by side)."""
  return types.SimpleNamespace(
      config=config_flags.DEFINE_config_file(
          "config", None, "Configuration file, path.py[:arg] (e.g. "
          "experiments/configs/lamer.py:minesweeper).",
          lock_config=True),
      workdir=flags.DEFINE_string("workdir", None, "Run directory (resumed if "
                                  "it holds checkpoints)."),
      progress=flags.DEFINE_bool("progress", True, "Show a progress bar."))


def main(argv, args: types.SimpleNamespace):
  del argv  # checked by common.run_main
  if not args.workdir.value or args.config.value is None:
    raise app.UsageError("--config and --workdir are required")
  config = args.config.value
  results, signum = train(config, args.workdir.value, progress=args.progress.value)
  if signum is not None:
    sys.exit(128 + signum)
  print(f"\n{config.name}: held-out pass@k ({common.eval_num_tasks(config)} tasks)")
  print(evaluation.format_table(results))


if __name__ == "__main__":
  _ARGS = define_flags()
  common.run_main(functools.partial(main, args=_ARGS), sys.argv)
