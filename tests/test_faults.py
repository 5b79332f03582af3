"""Fault injection: the kill schedule, the launcher's kills, the comparisons,
and (slow) a training run killed three times that ends bit-identical."""

from __future__ import annotations

import json
import os
import sys

import pytest

from experiments import faults
from lamer_jax import checkpoint, metrics

# A stand-in for a training process: argv[1] is its run directory. Like
# orbax it removes the temporary checkpoint directories it finds, then it
# makes one after argv[2] seconds and idles.
_WRITER = """
import os, shutil, sys, time
ckpts = os.path.join(sys.argv[1], "checkpoints")
print("I1202 train.py:289] resumed from /w/checkpoints/12", flush=True)
time.sleep(0.1)
for name in os.listdir(ckpts) if os.path.isdir(ckpts) else ():
  shutil.rmtree(os.path.join(ckpts, name))
time.sleep(float(sys.argv[2]))
os.makedirs(os.path.join(ckpts, "7.orbax-checkpoint-tmp"))
time.sleep(60)
"""


def _plan(tmp_path, kind, delay_s):
  return faults.Launch(name="t", index=0, kind=kind, delay_s=delay_s,
                       log=str(tmp_path / "logs" / "t.log"))


def _run(tmp_path, code, plan, *args, hang_s=60.0):
  command = [sys.executable, "-c", code, str(tmp_path), *args]
  return faults.launch(command, dict(os.environ), str(tmp_path), plan,
                       hang_s=hang_s)


def test_kill_schedule_is_deterministic_and_alternates():
  schedule = faults.kill_schedule(7, seed=3)
  assert schedule == faults.kill_schedule(7, seed=3)
  assert schedule != faults.kill_schedule(7, seed=4)
  assert [k.kind for k in schedule] == ["random", "checkpoint"] * 3 + ["random"]
  assert all(0 <= k.fraction < 1 for k in schedule)
  assert len({k.fraction for k in schedule}) == 7
  # A longer schedule starts with the shorter one.
  assert faults.kill_schedule(9, seed=3)[:7] == schedule
  assert faults.kill_schedule(0, seed=3) == []
  with pytest.raises(ValueError):
    faults.kill_schedule(-1, seed=0)


def test_train_command_keeps_the_run_small(monkeypatch):
  command = faults.train_command("/w", 12)
  assert command[1:3] == ["-m", "experiments.train"]
  for arg in ("--workdir=/w", "--config.train.steps=12",
              "--config.rollout.num_tasks=2", "--config.rollout.group_size=2",
              "--config.eval.num_tasks=4", "--config.train.eval_every=3",
              "--config.train.checkpoint_every=1",
              "--config.train.keep_checkpoints=2"):
    assert arg in command
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  env = faults.child_env("/w/jax_cache")
  assert env["JAX_COMPILATION_CACHE_DIR"] == "/w/jax_cache"
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/suite/cache")
  assert faults.child_env("/w/jax_cache")["JAX_COMPILATION_CACHE_DIR"] == "/suite/cache"
  assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
  assert env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] == "0"


def test_checkpoint_kill_fires_on_a_new_tmp_dir_only(tmp_path):
  # Left by an earlier kill, under the name the next write uses: no trigger
  # until it has been removed and written anew.
  (tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp").mkdir(parents=True)
  rec = _run(tmp_path, _WRITER, _plan(tmp_path, "checkpoint", 30.0), "0.5")
  assert rec.killed and rec.exit_code == -9
  assert rec.trigger == "tmp" and rec.tmp == "7.orbax-checkpoint-tmp"
  assert 0.6 <= rec.kill_at_s < 10
  assert rec.tmp_left == ["7.orbax-checkpoint-tmp"]
  assert rec.resumed_from == 12


def test_checkpoint_kill_falls_back_to_its_timeout(tmp_path):
  rec = _run(tmp_path, _WRITER, _plan(tmp_path, "checkpoint", 0.3), "30")
  assert rec.killed and rec.trigger == "timeout" and rec.tmp is None
  assert 0.3 <= rec.kill_at_s < 10


def test_random_kill_and_a_kill_that_comes_too_late(tmp_path):
  rec = _run(tmp_path, _WRITER, _plan(tmp_path, "random", 0.2), "30")
  assert rec.killed and rec.trigger == "time" and 0.2 <= rec.kill_at_s < 10
  late = _run(tmp_path, "import sys; sys.exit(3)", _plan(tmp_path, "random", 30.0))
  assert not late.killed and late.exit_code == 3 and late.trigger is None
  assert late.resumed_from is None
  assert faults._failed(late) is not None
  hung = _run(tmp_path, _WRITER, _plan(tmp_path, None, None), "30", hang_s=0.3)
  assert hung.killed and hung.trigger == "hang" and faults._failed(hung)


def test_warm_period_drops_the_first_steps_compilation():
  rows = [{"step": 1, "time/step_s": 31.0}, {"step": 2, "time/step_s": 1.0},
          {"step": 3, "time/step_s": 1.2}, {"step": 4, "time/step_s": 0.9}]
  assert faults.warm_period(80.0, rows) == pytest.approx(50.0)
  assert faults.warm_period(80.0, rows[:1]) == 80.0
  assert faults.warm_period(40.0, rows) == 10.0   # never below a quarter


def _write_metrics(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def test_compare_metrics_ignores_only_wall_clock_keys(tmp_path):
  ref, got = tmp_path / "ref.jsonl", tmp_path / "got.jsonl"
  rows = [{"step": s, "time": 100.0 + s, "loss": 0.5 * s, "time/step_s": 1.0,
           "perf/tokens_per_s": 9.0, "eval/pass@1": float("nan")}
          for s in (1, 2)]
  _write_metrics(ref, rows)
  _write_metrics(got, [dict(r, time=5.0, **{"time/step_s": 2.0,
                                              "perf/tokens_per_s": 1.0})
                       for r in rows])
  out = faults.compare_metrics(str(ref), str(got), steps=2)
  assert out["identical"] and out["steps_ok"] and out["records"] == 2
  _write_metrics(got, [rows[0], dict(rows[1], loss=1.0000000001)])
  out = faults.compare_metrics(str(ref), str(got), steps=2)
  assert not out["identical"] and "loss" in out["differences"][0]
  _write_metrics(got, rows[:1])
  out = faults.compare_metrics(str(ref), str(got), steps=2)
  assert not out["identical"] and not out["steps_ok"]


def test_inspect_workdir_reports_leftovers(tmp_path):
  (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-9").mkdir(parents=True)
  (tmp_path / "checkpoints.corrupt" / "2").mkdir(parents=True)
  (tmp_path / "lock").write_text("{}")
  (tmp_path / "metrics.jsonl.torn").write_text('{"step": 4, "lo\n')
  (tmp_path / "config.json.tmp").write_text("")
  checks = faults.inspect_workdir(str(tmp_path))
  assert checks["tmp_left"] == ["3.orbax-checkpoint-tmp-9"]
  assert checks["corrupt"] == ["2"] and checks["lock_left"]
  assert checks["torn_lines"] == 1 and checks["stray_files"] == ["config.json.tmp"]
  assert not checks["history_ok"]   # there is no config_history.jsonl


@pytest.mark.slow
def test_killed_run_resumes_bit_identically(tmp_path):
  report = faults.run_faults(kills=3, steps=4, seed=0, workdir=str(tmp_path),
                             control=False)
  summary = faults.format_summary(report)
  assert report["error"] is None, summary
  assert sum(report["kills_delivered"].values()) == 3, summary
  assert report["kills_delivered"] == {"random": 2, "checkpoint": 1}, summary
  assert report["identical"] and report["passed"], summary
  assert report["state"]["leaves"] > 0
  assert report["metrics"]["records"] == 4
  checks = report["workdir_checks"]
  assert not checks["lock_left"] and not checks["tmp_left"], summary
  # The faulted run's final checkpoint verifies on its own as well.
  with checkpoint.Checkpointer(tmp_path / "faulted" / "checkpoints") as ckpt:
    assert ckpt.latest_step() == 4
  assert [r["step"] for r in metrics.read_jsonl(
      tmp_path / "faulted" / "metrics.jsonl")] == [1, 2, 3, 4]
