"""Storage errors in one line: disk full, read-only, not a directory.

    storage.check_workdir(workdir, need_bytes=checkpoint_bytes)
    with storage.refused_writes("writing x"):   # -> one StorageError line
      write()

A refused write surfaces from orbax and tensorstore as a chain of wrapped
exceptions (sometimes only as text inside a ``ValueError``) followed by
hundreds of lines of thread noise. ``os_error_in`` finds the filesystem's
cause in such a chain; ``StorageError`` states it first, in one line with the
path and the fix, and the entry points print that line alone.
``check_workdir`` catches what it can before the first write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import uuid
from typing import Callable, Iterator

# errno -> (what happened, what to do).
_ADVICE = {
    errno.ENOSPC: ("disk full", "free space there or use a --workdir on "
                   "another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or use a --workdir "
                   "on another disk"),
    errno.EROFS: ("read-only filesystem", "use a writable --workdir"),
    errno.EACCES: ("permission denied", "use a --workdir you can write to"),
    errno.EPERM: ("permission denied", "use a --workdir you can write to"),
    errno.ENOTDIR: ("not a directory (a file is in the way)",
                    "give a --workdir that is a directory"),
    errno.EEXIST: ("a file is in the way", "give a --workdir that is a directory"),
}
# How the same errors read when a library passes on only their text.
_TEXT = {
    "no space left on device": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
    "permission denied": errno.EACCES,
    "not a directory": errno.ENOTDIR,
}


class StorageError(OSError):
  """The filesystem refused a write; the message says which and what to do."""


def os_error_in(exc: BaseException) -> OSError | None:
  """The storage ``OSError`` that caused ``exc`` (walking ``__cause__``,
  ``__context__`` and exception groups), or one rebuilt from a message that
  quotes it; None when the chain holds none."""
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, StorageError):
      return e
    if isinstance(e, OSError) and e.errno in _ADVICE:
      return e
    text = str(e).lower()
    for phrase, code in _TEXT.items():
      if phrase in text:
        return OSError(code, os.strerror(code))
    todo.extend([e.__cause__, e.__context__])
    todo.extend(getattr(e, "exceptions", ()))
  return None


@contextlib.contextmanager
def refused_writes(doing: str, say_first: Callable[[str], None] | None = None
                   ) -> Iterator[None]:
  """Re-raises a write the filesystem refused anywhere inside the block as
  one ``StorageError`` (``describe(cause, doing)``); other errors pass.
  ``say_first`` receives the error's line before it is raised (e.g.
  ``HeldStderr.say_first``, to print it ahead of a library's noise)."""
  try:
    yield
  except StorageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    cause = os_error_in(e)
    if cause is None:
      raise
    error = StorageError(describe(cause, doing))
    if say_first is not None:
      say_first(f"{type(error).__name__}: {error}")
    raise error from e


def write_atomic(path: str, data: bytes) -> None:
  """Replaces ``path`` with ``data`` all at once (temporary file, fsync,
  rename): a crash leaves the old file or the new one, never half of one."""
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def describe(err: OSError, doing: str) -> str:
  """``"<doing>: <what> (<strerror>); <fix>."``"""
  what, fix = _ADVICE.get(err.errno, ("storage error", "check the --workdir"))
  detail = err.strerror or str(err)
  where = f" [{err.filename}]" if getattr(err, "filename", None) else ""
  return f"{doing}: {what} ({detail}){where}; {fix}."


def check_workdir(path: str, need_bytes: int = 0) -> None:
  """Creates ``path`` if needed and proves it writable before a run writes.

  Args:
    path: the run directory.
    need_bytes: free space the run needs there (the size of one checkpoint:
      a new one is written in full before the oldest is removed); 0 skips
      the check.

  Raises:
    StorageError: ``path`` is a file, cannot be created or written, or has
      less than ``need_bytes`` free.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise StorageError(describe(OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                        path), f"workdir {path}"))
  probe = os.path.join(path, f".write-test-{uuid.uuid4().hex}")
  try:
    os.makedirs(path, exist_ok=True)
    with open(probe, "wb") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise StorageError(describe(e, f"workdir {path}")) from e
  finally:
    if os.path.exists(probe):
      os.remove(probe)
  if need_bytes:
    check_free(path, need_bytes, f"workdir {path} (one checkpoint)")


def check_free(path: str, need_bytes: int, what: str) -> None:
  """Raises ``StorageError`` when ``path``'s filesystem has less than
  ``need_bytes`` free for ``what``."""
  free = shutil.disk_usage(path).free
  if free < need_bytes:
    raise StorageError(
        f"{what}: disk full ({_mib(free)} free at {path}, it needs about "
        f"{_mib(need_bytes)}); free space there or use a --workdir on another "
        "disk.")


class HeldStderr:
  """File descriptor 2 redirected into a temporary file (see ``stderr_held``)."""

  def __init__(self, held, saved_fd: int):
    self._held, self._saved = held, saved_fd

  def text(self) -> str:
    """What was held back so far."""
    sys.stderr.flush()
    self._held.seek(0)
    return self._held.read().decode("utf-8", "replace")

  def say_first(self, line: str) -> None:
    """Writes ``line`` to the real stderr now, ahead of what is held."""
    os.write(self._saved, (line.rstrip("\n") + "\n").encode())


@contextlib.contextmanager
def stderr_held() -> Iterator[HeldStderr]:
  """Holds back what is written to file descriptor 2 inside the block (C++
  and Python threads alike) and writes it out when the block ends, so that a
  caller can state a failure's cause (``say_first``) before the library's
  noise about it."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held_file:
    os.dup2(held_file.fileno(), 2)
    held = HeldStderr(held_file, saved)
    try:
      yield held
    finally:
      out = held.text()
      os.dup2(saved, 2)
      os.close(saved)
      if out:
        sys.stderr.write(out)
        sys.stderr.flush()


def _mib(n: int) -> str:
  return f"{n / 2**20:.1f} MiB"
