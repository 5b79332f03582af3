"""A lock on a run directory, so that two training runs cannot share one.

    workdir.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir):        # raises WorkdirLocked if a run holds it
      train(...)

The lock is the file ``<workdir>/lock``, holding as JSON the holder's ``pid``,
``host`` (``socket.gethostname()``), ``started`` (ISO time) and ``argv``, and
an exclusive ``flock`` taken on it. The kernel drops a ``flock`` when its
process dies, even on SIGKILL, so:

* the ``flock`` is refused: a live process holds the lock, and ``acquire``
  raises ``WorkdirLocked`` naming it (from the JSON) and what to do;
* the ``flock`` is granted but the file names another process: that process
  is gone (a stale lock). Its lock is taken over with a warning; so is a file
  whose content cannot be read.

``flock`` conflicts between two open files of one process too, so a second
``WorkdirLock`` on the same directory in the same process is refused as well.

Over a network filesystem (NFS and the like) whether a ``flock`` is seen by
the other hosts depends on the filesystem and its mount options; where it is
not, a holder on another host cannot be detected. Where ``flock`` is a no-op
(or unsupported, which is warned about), the JSON still guards runs on one
host: a file naming this host and a live pid other than ours is treated as
held. The price of that check is that a dead holder whose pid has since been
reused by an unrelated process looks alive; ``WorkdirLocked`` then says to
delete the lock file.

``release`` (or leaving the ``with`` block, exception or not) removes the
file, if it is still ours, and drops the ``flock``. A process that forks
while holding the lock shares the ``flock`` with its child (one open file),
so the lock lasts until both have exited or released it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Any

from absl import logging

LOCK_NAME = "lock"

# Tries at locking the file when its holder removes it between our open and
# our flock (each lost race means another process released the lock).
_ATTEMPTS = 10
# Lock files are a few hundred bytes; read no more than this of a foreign one.
_READ_LIMIT = 1 << 16
# flock errors that mean the filesystem does not do flock.
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP})


class WorkdirLocked(RuntimeError):
  """Another live process holds the lock on the workdir."""

  def __init__(self, lock_path: str, holder: dict[str, Any] | None):
    self.lock_path = lock_path
    self.holder = holder
    if holder is None:
      who = "a process that has not written its details yet"
    else:
      who = (f"pid {holder.get('pid', '?')} on host "
             f"{holder.get('host', '?')} (started {holder.get('started', '?')})")
    super().__init__(
        f"the workdir is in use by another run: {lock_path} is held by {who}. "
        "Wait for that run to finish or stop it, or give this run another "
        "--workdir. If you are sure no run uses this workdir (for instance "
        f"the holder ran on another host, which died), delete {lock_path}.")

  def __reduce__(self):
    return type(self), (self.lock_path, self.holder)


class WorkdirLock:
  """An exclusive lock on ``workdir``, held by this process.

  Attributes:
    workdir: the locked directory, as given.
    path: the lock file, ``<workdir>/lock``.
  """

  def __init__(self, workdir: str | os.PathLike[str]):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    """Whether this object holds the lock."""
    return self._fd is not None

  def acquire(self) -> WorkdirLock:
    """Takes the lock, or raises.

    Returns:
      ``self``.

    Raises:
      FileNotFoundError: ``workdir`` does not exist (the caller creates it).
      WorkdirLocked: another live process (or another ``WorkdirLock`` of
        this process) holds the lock.
      RuntimeError: this object holds the lock already.
    """
    if self._fd is not None:
      raise RuntimeError(f"{self.path} is already held by this WorkdirLock")
    if not os.path.isdir(self.workdir):
      raise FileNotFoundError(
          errno.ENOENT, "the workdir to lock does not exist (create it first)",
          self.workdir)
    for _ in range(_ATTEMPTS):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        if not self._flock(fd):
          raise WorkdirLocked(self.path, _parse(_read(fd)))
        if not _same_file(fd, self.path):
          # The holder removed the file after our open: the file we locked
          # is no longer the lock. Try again with whatever is there now.
          os.close(fd)
          continue
        self._take_over(fd)
      except BaseException:
        os.close(fd)
        raise
      self._fd = fd
      return self
    raise RuntimeError(f"could not lock {self.path}: it was removed and "
                       f"recreated under us {_ATTEMPTS} times")

  def release(self) -> None:
    """Removes the lock file if it is still ours and drops the lock.

    Does nothing when the lock is not held.
    """
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      holder = _parse(_read(fd))
      if (_same_file(fd, self.path) and holder is not None
          and holder.get("pid") == os.getpid()):
        os.unlink(self.path)
    except FileNotFoundError:
      pass
    finally:
      os.close(fd)   # drops the flock

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()

  def __repr__(self) -> str:
    return f"WorkdirLock({self.workdir!r}, held={self.held})"

  def _flock(self, fd: int) -> bool:
    """Whether the exclusive flock on ``fd`` was granted (or is unsupported)."""
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
    except OSError as e:
      if e.errno not in _NO_FLOCK:
        raise
      logging.warning("%s: the filesystem does not support flock (%s); only "
                      "the pid in the lock file guards this workdir",
                      self.path, e)
    return True

  def _take_over(self, fd: int) -> None:
    """Writes our details into the flocked ``fd``, after checking whoever
    the file names."""
    text = _read(fd)
    if text.strip():
      holder = _parse(text)
      host = socket.gethostname()
      if holder is None:
        logging.warning("%s: taking over a lock file whose old content is "
                        "unreadable (%r): no process holds its lock",
                        self.path, text[:200])
      elif holder.get("host") == host and holder.get("pid") == os.getpid():
        logging.warning("%s: taking over a lock this process (pid %d) left "
                        "behind", self.path, os.getpid())
      elif holder.get("host") == host and _alive(holder.get("pid")):
        # Granted flock, live holder: a filesystem where flock is a no-op.
        raise WorkdirLocked(self.path, holder)
      else:
        logging.warning("%s: taking over the stale lock of pid %s on host %s "
                        "(started %s): that process is gone", self.path,
                        holder.get("pid", "?"), holder.get("host", "?"),
                        holder.get("started", "?"))
    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(
                timespec="seconds"),
            "argv": list(sys.argv)}
    data = (json.dumps(mine) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    while data:
      data = data[os.write(fd, data):]
    os.fsync(fd)


def _read(fd: int) -> str:
  """The start of the file open at ``fd``."""
  os.lseek(fd, 0, os.SEEK_SET)
  chunks, size = [], 0
  while size < _READ_LIMIT:
    chunk = os.read(fd, _READ_LIMIT - size)
    if not chunk:
      break
    chunks.append(chunk)
    size += len(chunk)
  return b"".join(chunks).decode("utf-8", errors="replace")


def _parse(text: str) -> dict[str, Any] | None:
  """The holder's details in lock file content ``text``; None if unreadable."""
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


def _same_file(fd: int, path: str) -> bool:
  """Whether ``path`` names the file open at ``fd``."""
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return False
  own = os.fstat(fd)
  return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _alive(pid: Any) -> bool:
  """Whether ``pid`` is a running (not zombie) process on this host."""
  if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
    return False   # os.kill(0, ...) and negative pids address process groups
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True    # exists, owned by another user
  except OSError:
    return False
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      state = f.read().rsplit(")", 1)[1].split()[0]
  except (OSError, IndexError):
    return True    # no procfs: os.kill's answer stands
  return state != "Z"
