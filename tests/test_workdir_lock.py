"""The workdir lock: one run per directory, stale locks of dead runs reclaimed."""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import pickle
import signal
import socket
import subprocess
import sys
import time

import pytest

from lamer_jax import workdir_lock
from lamer_jax.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLocked

REPO = pathlib.Path(__file__).resolve().parent.parent

# A process that takes the lock on argv[1] and keeps it until killed.
_HOLDER = """
import sys, time
from lamer_jax.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
time.sleep(120)
"""


def _content(workdir: pathlib.Path) -> dict:
  return json.loads((workdir / LOCK_NAME).read_text())


def _start(code: str, *args: str) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
  return subprocess.Popen([sys.executable, "-c", code, *args], env=env)


def _stop(proc: subprocess.Popen) -> None:
  if proc.poll() is None:
    proc.kill()
  proc.wait()


@pytest.fixture
def holder(tmp_path):
  """A child process holding the lock on ``tmp_path``."""
  proc = _start(_HOLDER, str(tmp_path))
  try:
    deadline = time.monotonic() + 60
    while True:
      assert proc.poll() is None, f"the holder exited with {proc.returncode}"
      try:
        if _content(tmp_path)["pid"] == proc.pid:
          break
      except (OSError, ValueError, KeyError):
        pass
      assert time.monotonic() < deadline, "the holder never took the lock"
      time.sleep(0.05)
    yield proc
  finally:
    _stop(proc)


@pytest.fixture
def sleeper():
  """A live process on this host that holds no lock."""
  proc = _start("import time; time.sleep(120)")
  yield proc
  _stop(proc)


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.name == "absl" and r.levelno == logging.WARNING]


def test_acquire_writes_pid_host_and_argv(tmp_path):
  lock = WorkdirLock(tmp_path).acquire()
  try:
    assert lock.held
    content = _content(tmp_path)
    assert content["pid"] == os.getpid()
    assert content["host"] == socket.gethostname()
    assert content["argv"] == sys.argv
    assert content["started"][:2] == "20"
  finally:
    lock.release()


def test_second_lock_in_one_process_is_refused(tmp_path):
  # The file names our own pid, which the pid check lets through: the refusal
  # can only come from flock, whose locks on two open files of one process
  # conflict.
  with WorkdirLock(tmp_path):
    with pytest.raises(WorkdirLocked) as e:
      WorkdirLock(tmp_path).acquire()
    assert f"pid {os.getpid()}" in str(e.value)
    assert str(tmp_path / LOCK_NAME) in str(e.value)
    assert e.value.holder["pid"] == os.getpid()
    assert _content(tmp_path)["pid"] == os.getpid()   # left as it was


def test_acquiring_twice_through_one_object_is_an_error(tmp_path):
  with WorkdirLock(tmp_path) as lock:
    with pytest.raises(RuntimeError, match="already held"):
      lock.acquire()


def test_lock_of_a_live_child_is_refused(tmp_path, holder):
  with pytest.raises(WorkdirLocked) as e:
    WorkdirLock(tmp_path).acquire()
  message = str(e.value)
  assert f"pid {holder.pid} on host {socket.gethostname()}" in message
  assert _content(tmp_path)["started"] in message
  assert "--workdir" in message and "delete" in message
  assert _content(tmp_path)["pid"] == holder.pid   # untouched


def test_lock_of_a_killed_child_is_taken_over(tmp_path, holder, caplog):
  started = _content(tmp_path)["started"]
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with caplog.at_level(logging.WARNING):
    lock = WorkdirLock(tmp_path).acquire()
  try:
    assert _content(tmp_path)["pid"] == os.getpid()
    said = _warnings(caplog)
    assert len(said) == 1, said
    assert (f"taking over the stale lock of pid {holder.pid} on host "
            f"{socket.gethostname()} (started {started}): that process is "
            "gone") in said[0]
  finally:
    lock.release()


def test_garbled_lock_file_is_taken_over(tmp_path, caplog):
  (tmp_path / LOCK_NAME).write_bytes(b'{"pid": 12\xff')
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(tmp_path):
      assert _content(tmp_path)["pid"] == os.getpid()
  said = _warnings(caplog)
  assert len(said) == 1 and "unreadable" in said[0], said


def test_stale_lock_of_another_host_is_taken_over(tmp_path, caplog):
  (tmp_path / LOCK_NAME).write_text(json.dumps(
      {"pid": 1, "host": "elsewhere.invalid", "started": "then", "argv": []}))
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(tmp_path):
      assert _content(tmp_path)["host"] == socket.gethostname()
  said = _warnings(caplog)
  assert len(said) == 1, said
  assert "pid 1 on host elsewhere.invalid (started then)" in said[0]


def test_live_pid_on_this_host_is_refused_without_flock(tmp_path, sleeper):
  # A filesystem where flock is a no-op: the file names a live process of
  # this host that holds no flock.
  (tmp_path / LOCK_NAME).write_text(json.dumps(
      {"pid": sleeper.pid, "host": socket.gethostname(), "started": "now",
       "argv": []}))
  with pytest.raises(WorkdirLocked, match=f"pid {sleeper.pid} "):
    WorkdirLock(tmp_path).acquire()
  assert _content(tmp_path)["pid"] == sleeper.pid
  _stop(sleeper)   # once it has exited, its lock is stale
  with WorkdirLock(tmp_path):
    assert _content(tmp_path)["pid"] == os.getpid()


def test_unsupported_flock_falls_back_to_the_pid(tmp_path, sleeper,
                                                 monkeypatch, caplog):
  def no_flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(workdir_lock.fcntl, "flock", no_flock)
  with caplog.at_level(logging.WARNING):
    with WorkdirLock(tmp_path):
      assert _content(tmp_path)["pid"] == os.getpid()
  assert any("does not support flock" in m for m in _warnings(caplog))
  (tmp_path / LOCK_NAME).write_text(json.dumps(
      {"pid": sleeper.pid, "host": socket.gethostname()}))
  with pytest.raises(WorkdirLocked):
    WorkdirLock(tmp_path).acquire()


def test_release_removes_the_file_and_allows_reacquiring(tmp_path):
  lock = WorkdirLock(tmp_path).acquire()
  lock.release()
  assert not (tmp_path / LOCK_NAME).exists()
  assert not lock.held
  lock.release()   # idempotent
  with WorkdirLock(tmp_path):
    assert _content(tmp_path)["pid"] == os.getpid()
  lock.acquire()   # the same object, again
  lock.release()
  assert not (tmp_path / LOCK_NAME).exists()


def test_release_leaves_a_newer_lock_file_alone(tmp_path):
  first = WorkdirLock(tmp_path).acquire()
  (tmp_path / LOCK_NAME).unlink()   # "delete the lock file", while held
  second = WorkdirLock(tmp_path).acquire()
  first.release()
  assert (tmp_path / LOCK_NAME).exists()
  with pytest.raises(WorkdirLocked):
    WorkdirLock(tmp_path).acquire()
  second.release()
  assert not (tmp_path / LOCK_NAME).exists()


def test_context_manager_releases_on_exception(tmp_path):
  with pytest.raises(ValueError, match="boom"):
    with WorkdirLock(tmp_path) as lock:
      assert (tmp_path / LOCK_NAME).exists()
      raise ValueError("boom")
  assert not lock.held
  assert not (tmp_path / LOCK_NAME).exists()
  with WorkdirLock(tmp_path):
    pass


def test_file_removed_between_open_and_flock_is_retried(tmp_path,
                                                        monkeypatch):
  real_flock, calls = workdir_lock.fcntl.flock, []

  def racing_flock(fd, op):
    calls.append(fd)
    if len(calls) == 1:   # the holder releases just after our open
      (tmp_path / LOCK_NAME).unlink()
    return real_flock(fd, op)

  monkeypatch.setattr(workdir_lock.fcntl, "flock", racing_flock)
  with WorkdirLock(tmp_path):
    assert len(calls) == 2
    assert _content(tmp_path)["pid"] == os.getpid()
  monkeypatch.undo()
  assert not (tmp_path / LOCK_NAME).exists()


def test_missing_workdir_is_named(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match="nope"):
    WorkdirLock(missing).acquire()
  assert not missing.exists()


def test_workdir_locked_pickles():
  error = WorkdirLocked("/w/lock", {"pid": 5, "host": "h", "started": "s"})
  again = pickle.loads(pickle.dumps(error))
  assert str(again) == str(error) and again.holder == error.holder
