"""Trains a policy: LaMer or a single-episode RL baseline.

    python -m experiments.train --config=experiments/configs/lamer.py:sokoban \\
        --workdir=runs/x --config.train.steps=100

Resumes from the newest verified checkpoint in ``--workdir`` (a corrupt one
is moved aside into ``checkpoints.corrupt/`` with a warning). The train state
carries its PRNG key and evaluation keys are derived from the step, so a
resumed run reproduces an uninterrupted one exactly (parameters and metrics).
Checkpoints are written every ``train.checkpoint_every`` steps and every
``train.checkpoint_every_s`` seconds of wall clock. SIGTERM or SIGINT (or, on
several hosts, JAX's preemption sync point) saves a checkpoint after the step
in flight, then exits with status 128 + signal number; a second signal stops
at once. docs/RELIABILITY.md says what each fault costs.

A non-finite loss, gradient or parameter update is skipped inside the
compiled step (``nonfinite/skipped_updates``); after
``train.max_nonfinite_steps`` such steps in a row the run stops with
``TrainingDiverged`` naming the last good checkpoint, and no checkpoint is
written while updates are being skipped.

Writes into ``--workdir``: ``lock`` (while running: a second run refuses),
``config.json`` (the config of the latest accepted start or resume),
``config_history.jsonl`` (the whole config at the start, then every key a
resume changed: step, old, new), ``checkpoints/``, ``metrics.jsonl`` (one
line per step: ``step``, ``time``, train metrics, ``time/step_s``,
``perf/tokens_per_s`` and, on evaluation steps, ``eval/`` metrics on the
held-out tasks) and ``tensorboard/`` (event files of the same metrics). Ends
with the pass@k table of the last evaluation. Methods that do not train
(``zero_shot``, ``reflexion``; ``train.steps=0``) evaluate once.
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
from jax.experimental import multihost_utils
from tqdm import tqdm

from experiments import common
from lamer_jax import checkpoint, evaluation, metrics, storage, workdir_lock

CONFIG_NAME = "config.json"
HISTORY_NAME = "config_history.jsonl"
# Saved config values a resumed run may change without changing its history.
# (The mesh may change too: checkpoints restore onto any mesh.)
_RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.eval_every",
                      "train.checkpoint_every", "train.keep_checkpoints",
                      "train.checkpoint_every_s", "train.max_nonfinite_steps",
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


def config_changes(saved: dict[str, Any], current: dict[str, Any]
                   ) -> list[tuple[str, Any, Any]]:
  """``(key, old, new)`` for every flattened key whose value differs.

  Both sides are compared in their JSON form: the saved config was read
  from JSON, where a tuple (``algo.value_hidden``) comes back as a list."""
  old, new = _flatten(saved), _flatten(json.loads(json.dumps(current)))
  return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


def _warn_config_changes(changes: list[tuple[str, Any, Any]]) -> None:
  changed = [c for c in changes if c[0] not in _RESUMABLE_CHANGES]
  if changed:
    logging.warning("resuming with a config that differs from the checkpoint's "
                    "in %s: the run is no longer one consistent experiment",
                    ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in changed))


def record_config(workdir: str, config: dict[str, Any], step: int,
                  changes: list[tuple[str, Any, Any]] | None) -> None:
  """Writes ``config.json`` (the run's config now) and appends to
  ``config_history.jsonl``: the whole config when a run starts
  (``changes`` None), one line per changed key when a resume is accepted."""
  with open(os.path.join(workdir, HISTORY_NAME), "a", encoding="utf-8") as f:
    now = time.time()
    if changes is None:
      f.write(json.dumps({"step": step, "time": now, "event": "start",
                          "config": config}) + "\n")
    for key, old, new in changes or ():
      f.write(json.dumps({"step": step, "time": now, "event": "resume",
                          "key": key, "old": old, "new": new}) + "\n")
  storage.write_atomic(os.path.join(workdir, CONFIG_NAME),
                       json.dumps(config, indent=2).encode())


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


def _preemption_reached(step: int) -> bool:
  """JAX's multi-host preemption sync point: True on every host at the same
  step once any host was told to stop. False on one host, or when the
  preemption service is not running."""
  if jax.process_count() == 1:
    return False
  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except Exception:  # pylint: disable=broad-except
    return False


class _Guard:
  """Host side of the non-finite guard: counts steps whose updates were
  skipped, warns, and stops the run after ``patience`` in a row."""

  def __init__(self, patience: int, ckpt: checkpoint.Checkpointer):
    self.patience, self.ckpt = patience, ckpt
    self.streak = 0
    self._zero_grad_warned = False

  def check(self, step: int, row: dict[str, float]) -> None:
    skipped, total = row["nonfinite/skipped_updates"], row["nonfinite/updates"]
    if not skipped:
      self.streak = 0
    else:
      self.streak += 1
      logging.warning("step %d: %d of %d updates skipped (non-finite loss, "
                      "gradient or parameters); parameters and optimiser state "
                      "kept; %d such step(s) in a row", step, skipped, total,
                      self.streak)
      if self.streak >= self.patience:
        good = [s for s in self.ckpt.all_steps() if s <= step - self.streak]
        where = (self.ckpt.step_path(good[-1]) if good
                 else "none (the run never saved one)")
        raise common.TrainingDiverged(
            f"training diverged: steps {step - self.streak + 1}-{step} skipped "
            f"their updates for non-finite values, {self.streak} steps in a row "
            f"(limit train.max_nonfinite_steps={self.patience}). Last good checkpoint: "
            f"{where}. Lower algo.lr or algo.grad_clip, then resume (the run "
            "goes on from its latest checkpoint) or start in a fresh --workdir.")
    if (row.get("loss/grad_norm", 1.0) == 0.0
        and row.get("advantage/abs_mean", 0.0) > 0 and not self._zero_grad_warned):
      self._zero_grad_warned = True
      logging.warning("step %d: the gradient is exactly zero although the "
                      "advantages are not: the policy has saturated (is algo.lr "
                      "too high?) and updates change nothing", step)


def train(config: ml_collections.ConfigDict, workdir: str, *,
          experiment: common.Experiment | None = None,
          progress: bool = True) -> tuple[dict[str, float], int | None]:
  """Runs (or resumes) training in ``workdir``.

  Args:
    config: the run's configuration (validated before anything compiles).
    workdir: the run directory (locked for the run's duration).
    experiment: a prebuilt ``common.build(config)`` (tests reuse compiled
      functions); built from ``config`` when None.
    progress: show a tqdm progress bar.

  Returns:
    (metrics of the last evaluation, the signal that stopped the run or None).

  Raises:
    common.ConfigError: an invalid config.
    storage.StorageError: the workdir cannot be written (disk full,
      read-only, a file in the way).
    workdir_lock.WorkdirLocked: another run holds ``workdir``.
    checkpoint.CheckpointError: the checkpoint does not fit the config, or
      none verifies.
    common.TrainingDiverged: ``train.max_nonfinite_steps`` steps in a row skipped
      their updates.
  """
  common.validate(config)
  workdir = os.path.abspath(workdir)
  lock = None
  if jax.process_index() == 0:
    storage.check_workdir(workdir)
    lock = workdir_lock.WorkdirLock(workdir).acquire()
  try:
    return _train_locked(config, workdir, experiment, progress)
  finally:
    if lock is not None:
      lock.release()


def _train_locked(config, workdir, experiment, progress):
  exp = experiment or common.build(config)
  logging.info("%s", common.describe(exp))
  steps = config.train.steps
  if not exp.trains or steps == 0:
    if jax.process_index() == 0:
      record_config(workdir, config.to_dict(), 0, None)
    return _evaluate_only(exp, workdir, progress), None

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, common.CHECKPOINT_DIR),
                                 keep=config.train.keep_checkpoints)
  try:
    restored = ckpt.restore_verified(common.abstract_state(exp))
    if restored is None:
      state, resume_step, step = common.init_state(exp), None, 0
      changes = None
    else:
      state, step = restored
      resume_step = step
      saved = ckpt.restore_meta(step)["config"]
      changes = config_changes(saved, config.to_dict())
      _warn_config_changes(changes)
      logging.info("resumed from %s", ckpt.step_path(step))
    if jax.process_index() == 0:   # the resume is accepted: record it
      if restored is not None:
        storage.check_workdir(workdir, need_bytes=ckpt.disk_bytes(step))
      with storage.refused_writes(f"writing {CONFIG_NAME} in {workdir}"):
        record_config(workdir, config.to_dict(), step, changes)
    return _loop(config, workdir, exp, experiment, ckpt, state, step,
                 resume_step, progress)
  finally:
    ckpt.close()


def _loop(config, workdir, exp, experiment, ckpt, state, step, resume_step,
          progress):
  """The training loop, from ``step`` (restored or 0) to ``train.steps``."""
  steps = config.train.steps
  if experiment is None:
    exp.model.params = None   # the train state holds the only copy we need
  with storage.refused_writes(f"writing metrics in {workdir}"):
    writers = _open_writers(workdir, resume_step)
  attempts = exp.train_layout.num_attempts if exp.train_layout else 1
  guard = _Guard(config.train.max_nonfinite_steps, ckpt)
  last_eval: dict[str, float] | None = None
  saved_step, saved_at = resume_step, time.monotonic()

  def save(step):
    nonlocal saved_step, saved_at
    if guard.streak:
      logging.warning("step %d: no checkpoint while updates are being skipped "
                      "(the last one before the first skip is kept)", step)
      return
    with storage.refused_writes(f"writing checkpoint {ckpt.step_path(step)}"):
      writers.sync()   # the metric lines of a checkpoint reach disk with it
      ckpt.save(step, state, config.to_dict())
    saved_step, saved_at = step, time.monotonic()

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
        generated = row.get("generated_tokens", sum(
            v for k, v in row.items() if k.endswith("/generated_tokens")))
        row["perf/tokens_per_s"] = generated / elapsed
        every = config.train.eval_every
        if step == steps or (every and step % every == 0):
          t1 = time.perf_counter()
          last_eval = common.evaluate(exp, state.params, step)
          row.update(_prefixed("eval/", last_eval))
          row["time/eval_s"] = time.perf_counter() - t1
        with storage.refused_writes(f"writing metrics in {workdir}"):
          writers.write(step, row)
        # A mix reports per game: the bar shows the mean over its games.
        bar.set_postfix({"step": step, f"pass@{attempts}": evaluation.mean_over_games(
                             row, f"pass@{attempts}"),
                         "return": evaluation.mean_over_games(row, "return/mean"),
                         "tok/s": row["perf/tokens_per_s"]}, refresh=False)
        bar.update(1)
        if step % config.train.log_every == 0:
          logging.info("step %d: %s", step, " ".join(
              f"{k}={v:.4g}" for k, v in row.items()
              if "pass@" in k or k.startswith("loss/pg") or "return/" in k
              or "episode_improvement" in k))
        guard.check(step, row)
        if _preemption_reached(step) and stop.signum is None:
          logging.warning("step %d: preemption notice (multi-host sync point); "
                          "saving and stopping", step)
          stop.signum = signal.SIGTERM
        every, every_s = config.train.checkpoint_every, config.train.checkpoint_every_s
        if (step == steps or (every and step % every == 0)
            or (every_s and time.monotonic() - saved_at >= every_s)
            or stop.signum is not None):
          save(step)
      if stop.signum is not None and saved_step != step:
        save(step)
    finally:
      bar.close()
      writers.close()
  if stop.signum is not None:
    logging.warning("stopped by %s at step %d; checkpoint in %s",
                    signal.Signals(stop.signum).name, step,
                    ckpt.step_path(saved_step) if saved_step is not None else "none")
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
  print(evaluation.format_report(results))


if __name__ == "__main__":
  _ARGS = define_flags()
  common.run_main(functools.partial(main, args=_ARGS), sys.argv)
