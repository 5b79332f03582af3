"""Fault injection: SIGKILL a training run again and again; it must not show.

    python -m experiments.faults --kills=20 --steps=12 --output=faults.json

Trains the tiny guess-the-number config (``experiments/configs/tiny.py``,
made smaller still: 2 tasks x 2 trials, 4 held-out tasks, an evaluation every
3 steps, a checkpoint every step, 2 kept) three ways, each a fresh
``python -m experiments.train`` process per launch:

1. ``<workdir>/reference``: one uninterrupted run, the ground truth. It is
   the first process, so it pays compilation; every later process finds the
   compiled train step in the shared persistent cache ``<workdir>/jax_cache``
   (``JAX_COMPILATION_CACHE_DIR``, unless the caller set one, with both size
   and time thresholds at 0;
   the evaluation, which reports progress through a host callback, is not
   cached and compiles in every process).
2. ``<workdir>/control`` (``--control``, on by default): a second
   uninterrupted run on the warm cache. Its duration is T, the length of one
   launch that a kill is aimed into, and comparing it with the reference
   tells nondeterminism apart from a resume bug. Without it T is the
   reference's duration less its train step's compilation (its first step's
   time beyond the median step's, from its ``metrics.jsonl``).
3. ``<workdir>/faulted``: the same command, killed with SIGKILL and launched
   again (it resumes from its newest verified checkpoint) until ``--kills``
   kills were delivered, then left to finish. Kills alternate between two
   kinds (``kill_schedule``):

   * ``random``: at a uniformly random moment in [0, W) after the launch,
     where W (``kill_window``) is a launch's start-up plus
     max(2, 2 x steps / kills) steps: kills land in start-up, restore,
     compilation, steps, metric writes, evaluations and checkpoint writes,
     and each meets a run with steps left to train;
   * ``checkpoint``: as soon as a new ``<step>.orbax-checkpoint-tmp*``
     directory appears in ``checkpoints/`` (polled every 5 ms), i.e. in the
     middle of a checkpoint write; if none appears within W, the kill fires
     then (``trigger: timeout``).

   A kill aimed after the process has already exited is not delivered: the
   same kill is tried on another launch, now at a fresh random fraction of
   the latest launch that ran to its end (a finished run still starts,
   restores and evaluates, but writes no checkpoint). A launch that exits
   with an error, or runs 20 T, ends the experiment as failed.

At the end the final checkpoints of the faulted run and the reference are
restored (``Checkpointer.restore`` into ``common.abstract_state`` of the
config they were saved with) and every array (parameters, optimiser state,
step, PRNG key) is compared bit for bit; the ``metrics.jsonl`` records must be
equal once the wall-clock keys (``time``, ``time/*``, ``perf/*``) are dropped,
with steps exactly 1..steps. Also reported: torn metric lines moved aside
(``metrics.jsonl.torn``; fine), checkpoints moved to ``checkpoints.corrupt``
(expected 0), a lock file or temporary checkpoint directory left over (a
failure). Prints a summary, writes the JSON report to ``--output`` (default
``<workdir>/report.json``) and exits with status 1 unless the runs are
identical and the workdir is clean.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Callable, Sequence

from absl import flags
import jax
import numpy as np

from experiments import common
from lamer_jax import checkpoint, metrics, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/tiny.py"
# Always passed to the train command, on top of train.steps: a small run.
OVERRIDES = (("rollout.num_tasks", 2), ("rollout.group_size", 2),
             ("eval.num_tasks", 4), ("train.eval_every", 3),
             ("train.checkpoint_every", 1), ("train.keep_checkpoints", 2))
RANDOM, CHECKPOINT = "random", "checkpoint"
KINDS = (RANDOM, CHECKPOINT)
TMP_MARK = ".orbax-checkpoint-tmp"
POLL_S = 0.005
HANG_PERIODS = 20          # a launch running this many T is hung
MIN_HANG_S = 600.0
_RESUMED = re.compile(rb"resumed from \S*?(\d+)\s*$", re.MULTILINE)
# Metric keys that hold wall-clock measurements, which differ run to run.
WALL_CLOCK_KEYS = ("time",)
WALL_CLOCK_PREFIXES = ("time/", "perf/")


# ---- the kill schedule --------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kill:
  """One planned kill.

  Attributes:
    kind: ``random`` (at ``fraction`` x T after the launch) or ``checkpoint``
      (at the first new temporary checkpoint directory).
    fraction: in [0, 1); when a random kill lands, as a fraction of T (a
      checkpoint kill draws one only when it is tried again).
  """

  kind: str
  fraction: float


def kill_schedule(kills: int, seed: int) -> list[Kill]:
  """``kills`` kills, alternating ``random`` (first) and ``checkpoint``, with
  fractions drawn from ``numpy.random.default_rng(seed)``: the same seed gives
  the same schedule."""
  if kills < 0:
    raise ValueError(f"kills must be >= 0, got {kills}")
  fractions = np.random.default_rng(seed).random(kills)
  return [Kill(KINDS[i % len(KINDS)], float(f)) for i, f in enumerate(fractions)]


# ---- launching ----------------------------------------------------------------
def train_command(workdir: str, steps: int) -> list[str]:
  """The training command of every launch (run from the repository root)."""
  return ([sys.executable, "-m", "experiments.train", f"--config={CONFIG}",
           f"--workdir={workdir}", f"--config.train.steps={steps}"]
          + [f"--config.{key}={value}" for key, value in OVERRIDES]
          + ["--progress=false"])


def child_env(cache_dir: str) -> dict[str, str]:
  """The environment of every launch: a persistent compilation cache that
  keeps every compiled program, however small or quick to compile
  (``cache_dir``, or the caller's ``JAX_COMPILATION_CACHE_DIR`` if set: the
  test suite shares one)."""
  path = os.environ.get("PYTHONPATH", "")
  return {**os.environ,
          "PYTHONPATH": REPO + (os.pathsep + path if path else ""),
          "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                      cache_dir),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _entries(directory: str) -> list[str]:
  try:
    return sorted(os.listdir(directory))
  except FileNotFoundError:
    return []


def checkpoint_steps(directory: str) -> list[int]:
  """The complete checkpoints (``<step>`` directories) in ``directory``."""
  return sorted(int(name) for name in _entries(directory) if name.isdigit())


def tmp_entries(directory: str) -> list[str]:
  """Temporary (unfinished) checkpoint directories in ``directory``."""
  return [name for name in _entries(directory) if TMP_MARK in name]


@dataclasses.dataclass
class Launch:
  """What one launch did.

  Attributes:
    name: ``reference``, ``control`` or ``faulted``.
    index: the launch's number within its run, from 0.
    kind: the kill aimed at it (``random``, ``checkpoint``) or None.
    delay_s: a random kill's planned moment (or a checkpoint kill's timeout),
      seconds after the launch.
    trigger: what fired the kill: ``time``, ``tmp`` (a new temporary
      checkpoint directory), ``timeout`` or ``hang``; None if it never fired.
    tmp: the temporary directory that triggered the kill.
    killed: the SIGKILL was delivered (the process died of it).
    exit_code: the process's exit status (negative: the signal that killed it).
    kill_at_s, wall_s: seconds from the launch to the kill and to the exit.
    checkpoints: the complete checkpoints in the run's directory afterwards.
    tmp_left: the temporary checkpoint directories left afterwards.
    resumed_from: the checkpoint step it restored, from its log (None: a
      fresh start, or killed before it restored one).
    log: the launch's combined stdout and stderr.
  """

  name: str
  index: int
  kind: str | None
  delay_s: float | None
  trigger: str | None = None
  tmp: str | None = None
  killed: bool = False
  exit_code: int | None = None
  kill_at_s: float | None = None
  wall_s: float = 0.0
  checkpoints: list[int] = dataclasses.field(default_factory=list)
  tmp_left: list[str] = dataclasses.field(default_factory=list)
  resumed_from: int | None = None
  log: str = ""


def launch(command: Sequence[str], env: dict[str, str], run_dir: str,
           launch_: Launch, *, hang_s: float) -> Launch:
  """Runs ``command`` once, aiming ``launch_.kind``'s kill at it; fills in
  and returns ``launch_``.

  Args:
    command: the process to start (in the repository root).
    env: its environment.
    run_dir: its run directory (checkpoints in ``run_dir/checkpoints``).
    launch_: the plan: ``kind`` None lets the process finish; ``random``
      kills it ``delay_s`` seconds after the start; ``checkpoint`` kills it
      when a temporary checkpoint directory appears (one there at the start
      counts once it has gone and come back), or after ``delay_s`` seconds.
    hang_s: the process is killed after this long whatever the plan
      (``trigger: hang``).
  """
  ckpt_dir = os.path.join(run_dir, common.CHECKPOINT_DIR)
  before = set(tmp_entries(ckpt_dir))
  os.makedirs(os.path.dirname(launch_.log), exist_ok=True)
  with open(launch_.log, "wb") as log:
    start = time.monotonic()
    proc = subprocess.Popen(list(command), cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
      while proc.poll() is None:
        now = time.monotonic() - start
        trigger = None
        if launch_.kind == CHECKPOINT:
          # orbax names them <step>.orbax-checkpoint-tmp: one left by an
          # earlier kill is removed when the run opens its checkpoints and
          # may come back under the same name, which then counts as new.
          now_tmp = tmp_entries(ckpt_dir)
          before &= set(now_tmp)
          new = [name for name in now_tmp if name not in before]
          if new:
            trigger, launch_.tmp = "tmp", new[0]
        if trigger is None and launch_.kind is not None and now >= launch_.delay_s:
          trigger = "time" if launch_.kind == RANDOM else "timeout"
        if trigger is None and now >= hang_s:
          trigger = "hang"
        if trigger is not None:
          # A process that exited since the poll is a zombie until waited
          # for: the signal cannot reach another process.
          proc.send_signal(signal.SIGKILL)
          launch_.trigger, launch_.kill_at_s = trigger, now
          break
        time.sleep(POLL_S)
      proc.wait()
    finally:
      if proc.poll() is None:   # interrupted: leave no orphan behind
        proc.kill()
        proc.wait()
    launch_.wall_s = time.monotonic() - start
  launch_.exit_code = proc.returncode
  launch_.killed = proc.returncode == -signal.SIGKILL
  launch_.checkpoints = checkpoint_steps(ckpt_dir)
  launch_.tmp_left = tmp_entries(ckpt_dir)
  with open(launch_.log, "rb") as log:
    found = _RESUMED.findall(log.read())
  launch_.resumed_from = int(found[-1]) if found else None
  return launch_


def describe_launch(rec: Launch) -> str:
  """One line about a launch, for the log."""
  if rec.kind is None:
    plan = "no kill"
  elif rec.kind == RANDOM:
    plan = f"random kill at {rec.delay_s:.2f} s"
  else:
    plan = f"checkpoint kill (timeout {rec.delay_s:.1f} s)"
  if rec.killed:
    what = f"killed at {rec.kill_at_s:.2f} s by {rec.trigger}"
    if rec.tmp:
      what += f" ({rec.tmp})"
  else:
    what = f"exited {rec.exit_code} after {rec.wall_s:.1f} s"
  if rec.resumed_from is not None:
    start = f"from step {rec.resumed_from}"
  else:
    start = "no resume logged" if rec.killed else "fresh"
  return (f"{rec.name} launch {rec.index} ({start}): {plan}: {what}; checkpoints "
          f"{rec.checkpoints}{' tmp ' + str(rec.tmp_left) if rec.tmp_left else ''}")


def warm_period(wall_s: float, records: Sequence[dict[str, Any]]) -> float:
  """A launch's duration on a warm compilation cache, estimated from one
  that compiled: ``wall_s`` less its first step's time beyond the median of
  the others (``time/step_s`` of its metrics ``records``), at least a
  quarter of ``wall_s``."""
  times = [r["time/step_s"] for r in records if "time/step_s" in r]
  compile_s = times[0] - float(np.median(times[1:])) if len(times) > 1 else 0.0
  return max(wall_s - max(compile_s, 0.0), wall_s / 4)


def kill_window(period_s: float, records: Sequence[dict[str, Any]],
                steps_span: int) -> float:
  """The span random kills are drawn from: a launch's start-up (``period_s``
  less the time its steps and evaluations took, from its metrics
  ``records``) plus ``steps_span`` median steps. Drawn over the whole of
  ``period_s`` instead, a kill lets a launch train half the run on average,
  and the run finishes after a few kills; this way every kill meets a run
  with steps left, in start-up, restore, compilation, steps, evaluations or
  checkpoint writes."""
  times = [r["time/step_s"] for r in records if "time/step_s" in r]
  if not times:
    return period_s
  worked = sum(times) + sum(r.get("time/eval_s", 0.0) for r in records)
  startup = max(period_s - worked, 0.0)
  return min(period_s, startup + steps_span * float(np.median(times)))


# ---- comparisons -------------------------------------------------------------
def deterministic(record: dict[str, Any]) -> dict[str, Any]:
  """A metrics record without its wall-clock keys."""
  return {k: v for k, v in record.items()
          if k not in WALL_CLOCK_KEYS and not k.startswith(WALL_CLOCK_PREFIXES)}


def _canonical(record: dict[str, Any]) -> str:
  # Exact: repr round-trips floats, and NaN compares equal to NaN.
  return json.dumps(record, sort_keys=True)


def compare_metrics(reference: str, other: str, steps: int) -> dict[str, Any]:
  """Compares two ``metrics.jsonl`` files, wall-clock keys dropped.

  Returns:
    ``identical`` (same records in the same order), ``steps_ok`` (``other``'s
    steps are exactly 1..steps), ``records`` (how many ``other`` holds) and
    ``differences`` (the first few, as text).
  """
  out = {"identical": False, "steps_ok": False, "records": 0, "differences": []}
  try:
    ref = [deterministic(r) for r in metrics.read_jsonl(reference, torn_ok=False)]
    got = [deterministic(r) for r in metrics.read_jsonl(other, torn_ok=False)]
  except (OSError, metrics.MetricsFileError) as e:
    out["differences"].append(f"{type(e).__name__}: {e}")
    return out
  out["records"] = len(got)
  out["steps_ok"] = [r.get("step") for r in got] == list(range(1, steps + 1))
  diffs = out["differences"]
  if len(ref) != len(got):
    diffs.append(f"{len(got)} records, the reference has {len(ref)}")
  for a, b in zip(ref, got):
    if _canonical(a) != _canonical(b):
      keys = sorted(k for k in set(a) | set(b)
                    if _canonical({"v": a.get(k)}) != _canonical({"v": b.get(k)}))
      diffs.append(f"step {a.get('step')}: " + ", ".join(
          f"{k} {a.get(k)!r} != {b.get(k)!r}" for k in keys[:5]))
  out["identical"] = not diffs
  del diffs[10:]
  return out


def _leaves(state: Any) -> dict[str, np.ndarray]:
  tree = checkpoint.state_to_tree(state)
  return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compare_states(reference: str, other: str, step: int) -> dict[str, Any]:
  """Restores checkpoint ``step`` of two run directories and compares every
  array bit for bit.

  Both are restored (and verified against their checksums) into
  ``common.abstract_state`` of the experiment built from the config saved
  with the reference's checkpoint; the saved configs must agree too.

  Returns:
    ``identical``, ``steps`` (each run's latest checkpoint), ``leaves`` (arrays
    compared) and ``differences`` (the arrays that differ, or the error).
  """
  out = {"identical": False, "steps": [], "leaves": 0, "differences": []}
  dirs = [os.path.join(d, common.CHECKPOINT_DIR) for d in (reference, other)]
  # keep only bounds what a save would drop; these are only read.
  ckpts = [checkpoint.Checkpointer(d, keep=max(step, 1)) for d in dirs]
  try:
    out["steps"] = [c.latest_step() for c in ckpts]
    if out["steps"] != [step, step]:
      out["differences"].append(f"latest checkpoints {out['steps']}, expected "
                                f"{step} in both")
      return out
    configs = [c.restore_meta(step)["config"] for c in ckpts]
    if configs[0] != configs[1]:
      out["differences"].append("the configs saved with the checkpoints differ")
    exp = common.build(common.config_from_dict(configs[0]))
    abstract = common.abstract_state(exp)
    ref, got = (_leaves(c.restore(abstract, step)) for c in ckpts)
  except (checkpoint.CheckpointError, FileNotFoundError) as e:
    out["differences"].append(f"{type(e).__name__}: {e}")
    return out
  finally:
    for c in ckpts:
      c.close()
  out["leaves"] = len(ref)
  for name in sorted(set(ref) | set(got)):
    a, b = ref.get(name), got.get(name)
    if (a is None or b is None or a.dtype != b.dtype or a.shape != b.shape
        or a.tobytes() != b.tobytes()):
      out["differences"].append(name)
  out["identical"] = not out["differences"]
  return out


def _lines(path: str) -> int:
  try:
    with open(path, "rb") as f:
      return sum(1 for line in f if line.strip())
  except FileNotFoundError:
    return 0


def inspect_workdir(run_dir: str) -> dict[str, Any]:
  """What faults left in a run directory (call before anything reopens its
  checkpoints: opening them removes temporary directories).

  Returns:
    ``torn_lines`` (in ``metrics.jsonl.torn``), ``corrupt`` (entries in
    ``checkpoints.corrupt``), ``lock_left`` (the lock file exists),
    ``tmp_left`` (temporary checkpoint directories), ``stray_files``
    (``*.tmp`` files of interrupted atomic writes) and ``history_ok``
    (every line of ``config_history.jsonl`` parses).
  """
  ckpt_dir = os.path.join(run_dir, common.CHECKPOINT_DIR)
  history_ok = True
  try:
    with open(os.path.join(run_dir, "config_history.jsonl"), "rb") as f:
      for line in f:
        json.loads(line)
  except (OSError, ValueError):
    history_ok = False
  return {
      "torn_lines": _lines(os.path.join(run_dir, metrics.JSONL_NAME
                                        + metrics.TORN_SUFFIX)),
      "corrupt": _entries(ckpt_dir + checkpoint.CORRUPT_SUFFIX),
      "lock_left": os.path.exists(os.path.join(run_dir, workdir_lock.LOCK_NAME)),
      "tmp_left": tmp_entries(ckpt_dir),
      "stray_files": sorted(os.path.relpath(p, run_dir) for p in
                            glob.glob(os.path.join(run_dir, "**", "*.tmp"),
                                      recursive=True)),
      "history_ok": history_ok,
  }


# ---- the experiment -----------------------------------------------------------
class _Runner:
  """Launches the runs of one experiment and keeps their records."""

  def __init__(self, workdir: str, steps: int, say: Callable[[str], None]):
    self.workdir, self.steps, self.say = workdir, steps, say
    self.env = child_env(os.path.join(workdir, "jax_cache"))
    self.launches: list[Launch] = []

  def run_dir(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def __call__(self, name: str, index: int, kind: str | None,
               delay_s: float | None, hang_s: float) -> Launch:
    rec = Launch(name=name, index=index, kind=kind, delay_s=delay_s,
                 log=os.path.join(self.workdir, "logs", f"{name}-{index:03d}.log"))
    launch(train_command(self.run_dir(name), self.steps), self.env,
           self.run_dir(name), rec, hang_s=hang_s)
    self.launches.append(rec)
    self.say(describe_launch(rec))
    return rec


def _failed(rec: Launch) -> str | None:
  """Why a launch that was not killed failed, or None if it exited 0."""
  if rec.trigger == "hang":
    return f"{rec.name} launch {rec.index} hung (killed after {rec.wall_s:.0f} s)"
  if not rec.killed and rec.exit_code != 0:
    return (f"{rec.name} launch {rec.index} exited with status {rec.exit_code}; "
            f"see {rec.log}")
  return None


def run_faults(kills: int = 20, steps: int = 12, seed: int = 0,
               workdir: str | None = None, *, control: bool = True,
               max_launches: int | None = None,
               say: Callable[[str], None] = functools.partial(print, flush=True)
               ) -> dict[str, Any]:
  """Runs the fault-injection experiment (see the module docstring).

  Args:
    kills: SIGKILLs to deliver to the faulted run.
    steps: ``train.steps`` of every run.
    seed: seed of the kill schedule (and of the retries' fractions).
    workdir: where the runs, logs and compilation cache go; a fresh temporary
      directory when None (it is kept).
    control: run a second uninterrupted reference on the warm cache (T is
      then its duration, not the first, compiling run's).
    max_launches: give up after this many faulted launches (default
      4 x kills + 10).
    say: receives one line per launch.

  Returns:
    The report: the plan (``kills``, ``steps``, ``seed``, ``workdir``,
    ``period_s`` = T), every launch, ``kills_delivered`` by kind,
    ``checkpoint_kills_in_write``, ``kills_mid_training`` (kills that met a
    run with steps left to train), ``state``, ``metrics`` and ``control``
    comparisons, ``workdir_checks``, ``error``, ``identical`` (final state
    and metrics equal the reference's), ``passed`` (identical, and a clean
    workdir after a normal finish) and ``wall_s``.
  """
  start = time.monotonic()
  workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="faults-"))
  os.makedirs(workdir, exist_ok=True)
  runner = _Runner(workdir, steps, say)
  schedule = kill_schedule(kills, seed)
  retry_rng = np.random.default_rng([seed, 1])
  max_launches = 4 * kills + 10 if max_launches is None else max_launches
  report: dict[str, Any] = {"kills": kills, "steps": steps, "seed": seed,
                            "workdir": workdir, "command": train_command(
                                runner.run_dir("faulted"), steps),
                            "error": None}

  ref = runner("reference", 0, None, None, hang_s=6 * 3600.0)
  error = _failed(ref)
  period = ref.wall_s
  if error is None:
    period = warm_period(ref.wall_s, metrics.read_jsonl(os.path.join(
        runner.run_dir("reference"), metrics.JSONL_NAME)))
  if control and error is None:
    ctl = runner("control", 0, None, None, hang_s=max(MIN_HANG_S, 10 * period))
    error = _failed(ctl)
    period = ctl.wall_s
  report["reference_s"], report["period_s"] = ref.wall_s, period
  if error is None:
    last = "control" if control else "reference"
    period = kill_window(period, metrics.read_jsonl(os.path.join(
        runner.run_dir(last), metrics.JSONL_NAME)), max(2, 2 * steps // kills))
  report["window_s"] = period

  faulted: list[Launch] = []
  i, retry = 0, False
  while error is None and i < len(schedule):
    if len(faulted) >= max_launches:
      error = f"{kills} kills not delivered in {max_launches} launches"
      break
    kill = schedule[i]
    fraction = float(retry_rng.random()) if retry else kill.fraction
    if kill.kind == RANDOM or retry:
      delay = fraction * period
    else:
      delay = period   # the first checkpoint write comes well before
    rec = runner("faulted", len(faulted), kill.kind, delay,
                 hang_s=max(MIN_HANG_S, HANG_PERIODS * period))
    faulted.append(rec)
    error = _failed(rec)
    if rec.killed:
      i, retry = i + 1, False
    else:   # it ran to its end: the next launch looks like this one
      period, retry = rec.wall_s, True
  if error is None:
    rec = runner("faulted", len(faulted), None, None,
                 hang_s=max(MIN_HANG_S, HANG_PERIODS * period))
    faulted.append(rec)
    error = _failed(rec)

  report["error"] = error
  report["launches"] = [dataclasses.asdict(r) for r in runner.launches]
  report["faulted_launches"] = len(faulted)
  delivered = [r for r in faulted if r.killed]
  report["kills_delivered"] = {k: sum(r.kind == k for r in delivered)
                               for k in KINDS}
  report["checkpoint_kills_in_write"] = sum(r.trigger == "tmp" for r in delivered)
  # Kills that met a run with steps still to train (the others met a
  # finished run, which restores and evaluates).
  done, mid = False, 0
  for r in faulted:
    if r.killed and not done:
      mid += 1
    done = done or steps in r.checkpoints
  report["kills_mid_training"] = mid
  faulted_dir, ref_dir = runner.run_dir("faulted"), runner.run_dir("reference")
  report["workdir_checks"] = checks = inspect_workdir(faulted_dir)
  report["metrics"] = compare_metrics(
      os.path.join(ref_dir, metrics.JSONL_NAME),
      os.path.join(faulted_dir, metrics.JSONL_NAME), steps)
  report["state"] = compare_states(ref_dir, faulted_dir, steps)
  if control and os.path.isdir(runner.run_dir("control")):
    ctl_dir = runner.run_dir("control")
    report["control"] = {
        "metrics": compare_metrics(os.path.join(ref_dir, metrics.JSONL_NAME),
                                   os.path.join(ctl_dir, metrics.JSONL_NAME),
                                   steps),
        "state": compare_states(ref_dir, ctl_dir, steps)}
  report["identical"] = bool(report["state"]["identical"]
                             and report["metrics"]["identical"]
                             and report["metrics"]["steps_ok"])
  report["passed"] = bool(report["identical"] and error is None
                          and not checks["lock_left"] and not checks["tmp_left"])
  report["wall_s"] = time.monotonic() - start
  return report


def _yes(value: bool) -> str:
  return "yes" if value else "NO"


def format_summary(report: dict[str, Any]) -> str:
  """The report as a short Markdown table."""
  faulted = [r for r in report["launches"] if r["name"] == "faulted"]
  delivered = report["kills_delivered"]
  checks, state, met = (report["workdir_checks"], report["state"],
                        report["metrics"])
  rows = [
      ("kills delivered", f"{sum(delivered.values())} of {report['kills']}: "
       f"random {delivered[RANDOM]}, checkpoint {delivered[CHECKPOINT]} "
       f"({report['checkpoint_kills_in_write']} inside a checkpoint write); "
       f"{report['kills_mid_training']} before the run had finished"),
      ("faulted launches", f"{len(faulted)} ({sum(not r['killed'] for r in faulted)}"
       " ran to their end)"),
      ("wall time", f"{report['wall_s']:.0f} s (reference "
       f"{report['reference_s']:.0f} s, T = {report['period_s']:.1f} s, W = "
       f"{report.get('window_s', report['period_s']):.1f} s, faulted "
       f"{sum(r['wall_s'] for r in faulted):.0f} s)"),
      ("final state identical", f"{_yes(state['identical'])} "
       f"({state['leaves']} arrays at step {report['steps']})"),
      ("metrics identical", f"{_yes(met['identical'])} ({met['records']} "
       f"records, steps 1..{report['steps']}: {_yes(met['steps_ok'])})"),
  ]
  if "control" in report:
    ctl = report["control"]
    rows.append(("control run identical", _yes(ctl["state"]["identical"]
                                               and ctl["metrics"]["identical"])))
  rows += [
      ("torn metric lines moved aside", str(checks["torn_lines"])),
      ("checkpoints moved to checkpoints.corrupt", str(len(checks["corrupt"]))),
      ("lock file left", "yes" if checks["lock_left"] else "no"),
      ("tmp checkpoint dirs left", str(len(checks["tmp_left"]))),
      ("identical", _yes(report["identical"])),
  ]
  lines = ["| check | result |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in rows]
  if report["error"]:
    lines.append(f"\nerror: {report['error']}")
  for what in ("state", "metrics"):
    if report[what]["differences"]:
      lines.append(f"{what} differences: {report[what]['differences']}")
  return "\n".join(lines)


def define_flags() -> types.SimpleNamespace:
  """The command-line flags (defined only when run as a program)."""
  return types.SimpleNamespace(
      kills=flags.DEFINE_integer("kills", 20, "SIGKILLs to deliver."),
      steps=flags.DEFINE_integer("steps", 12, "train.steps of every run."),
      seed=flags.DEFINE_integer("seed", 0, "Seed of the kill schedule."),
      workdir=flags.DEFINE_string("workdir", None, "Where the runs go (default: "
                                  "a fresh temporary directory)."),
      output=flags.DEFINE_string("output", None, "JSON report path (default: "
                                 "<workdir>/report.json)."),
      control=flags.DEFINE_bool("control", True, "Run a second uninterrupted "
                                "reference on the warm compilation cache: it "
                                "measures T and shows the run repeats exactly."))


def main(argv, args: types.SimpleNamespace):
  del argv  # checked by common.run_main
  report = run_faults(args.kills.value, args.steps.value, args.seed.value,
                      args.workdir.value, control=args.control.value)
  output = args.output.value or os.path.join(report["workdir"], "report.json")
  with open(output, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"\nfault injection: {report['kills']} kills, {report['steps']} steps, "
        f"seed {report['seed']}, workdir {report['workdir']}")
  print(format_summary(report))
  print(f"report: {output}")
  if not report["passed"]:
    sys.exit(1)


if __name__ == "__main__":
  _ARGS = define_flags()
  common.run_main(functools.partial(main, args=_ARGS), sys.argv)
