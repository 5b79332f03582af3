"""Metric writers: JSON lines and TensorBoard event files.

    writers = open_writers(workdir, resume_step=None)   # or the restored step
    writers.write(step, {"pass@1": 0.25, "eval/pass@3": 0.5})
    writers.sync()     # before each checkpoint save: its metric lines on disk
    writers.close()

``metrics.jsonl`` holds one JSON object per line and step: ``step``, ``time``
(Unix seconds when the line was written) and every metric. The file is strict
JSON: a float NaN, +inf or -inf (at any depth) is written as the string
``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, and ``read_jsonl`` turns exactly
those three string values back into floats (so a metric whose value is one of
those strings reads back as a float; bare ``NaN`` from older files still reads).

Each ``write`` reaches the OS at once, so the file can be watched live, but only
``sync`` (``os.fsync``) puts it on disk; the training loop calls
``writers.sync()`` right before saving each checkpoint, so a checkpoint's metric
lines survive a crash with it. A write that fails (a full disk, say) is cut back
off the file before its ``OSError`` propagates, so no half line is ever followed
by a good one.

A crash or a full disk can still leave the last line torn (cut short). Readers
skip a torn last line with a warning (``read_jsonl(..., torn_ok=False)`` raises
instead); a line that does not parse anywhere else raises ``MetricsFileError``
naming ``file:line``. A resumed run first moves a torn last line aside (appended
to ``metrics.jsonl.torn``, with a warning), then drops the lines past the step
it restored (an atomic rewrite), so the file always describes one consistent
history; TensorBoard's own ``purge_step`` does the same for its event files. A
fresh start (no restored step) begins the file anew. tensorboardX is a
dependency; where it is missing anyway (an install with ``--no-deps``), one
warning says that the event files are off and how to turn them on.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Iterable

from absl import logging

from lamer_jax import storage

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TORN_SUFFIX = ".torn"

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class MetricsFileError(ValueError):
  """A metrics file has a line that does not parse (message: ``file:line``)."""


def _encode(value: Any) -> Any:
  """``value`` with non-finite floats as "NaN" / "Infinity" / "-Infinity"."""
  if isinstance(value, float) and not math.isfinite(value):
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0
                                            else "-Infinity")
  if isinstance(value, dict):
    return {k: _encode(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_encode(v) for v in value]
  return value


def _decode(value: Any) -> Any:
  """Inverse of ``_encode``: exactly those three strings become floats."""
  if isinstance(value, str):
    return _NONFINITE.get(value, value)
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_decode(v) for v in value]
  return value


def _dumps(record: dict[str, Any]) -> str:
  return json.dumps(_encode(record), allow_nan=False)


def _parse(raw: bytes) -> dict[str, Any]:
  """One line as a record; ValueError (with the reason) if it is not one."""
  try:
    record = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise ValueError(f"not UTF-8: {e}") from e
  if not isinstance(record, dict):
    raise ValueError(f"a JSON {type(record).__name__}, not an object")
  return _decode(record)


def _scan(path: str) -> tuple[list[tuple[bytes, dict[str, Any]]],
                              tuple[int, bytes, str] | None]:
  """The good lines of ``path`` (raw, record) and its torn last line, if any.

  The torn line is (line number, raw bytes, why it does not parse). Blank
  lines are skipped.

  Raises:
    MetricsFileError: a line other than the last does not parse.
  """
  good, bad = [], None
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      if bad is not None:   # the bad line was not the last one
        lineno, _, why = bad
        raise MetricsFileError(
            f"{path}:{lineno}: not valid JSON ({why}); the lines after it "
            "parse, so it is no torn write from a crash: fix or delete line "
            f"{lineno}, or move {path} aside to start a new log")
      try:
        good.append((raw, _parse(raw)))
      except ValueError as e:
        bad = (lineno, raw, str(e))
  return good, bad


def read_jsonl(path: str | os.PathLike, *,
               torn_ok: bool = True) -> list[dict[str, Any]]:
  """All records of a metrics file, in file order ([] if it does not exist).

  Args:
    path: the file.
    torn_ok: skip a last line that does not parse (what a crash or a full disk
      leaves) with a warning; False raises for it too.

  Returns:
    The records, non-finite floats decoded.

  Raises:
    MetricsFileError: a line does not parse (the last one only if not
      ``torn_ok``); the message names the file and line.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    return []
  good, torn = _scan(path)
  if torn is not None:
    lineno, _, why = torn
    if not torn_ok:
      raise MetricsFileError(
          f"{path}:{lineno}: not valid JSON ({why}); it is the last line, "
          "likely torn by a crash or a full disk: delete that line or move "
          f"{path} aside (resuming the run moves it to {path}{TORN_SUFFIX})")
    logging.warning("%s:%d: skipped the last line, not valid JSON (%s): "
                    "likely torn by a crash or a full disk", path, lineno, why)
  return [record for _, record in good]


def _fsync_dir(path: str) -> None:
  """Puts the directory entry of ``path`` on disk, where the OS allows it."""
  try:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _truncate_after(path: str, resume_step: int | None) -> None:
  """Keeps only records with ``step <= resume_step`` (none if None); atomic.

  A torn last line is first appended to ``path + TORN_SUFFIX``, with a warning.

  Raises:
    MetricsFileError: a line before the last does not parse.
  """
  if not os.path.exists(path):
    return
  keep = []
  if resume_step is not None:
    good, torn = _scan(path)
    if torn is not None:
      lineno, raw, why = torn
      aside = path + TORN_SUFFIX
      with open(aside, "ab") as f:
        f.write(raw.rstrip(b"\r\n") + b"\n")
        f.flush()
        os.fsync(f.fileno())
      logging.warning("%s:%d: the last line is not valid JSON (%s), likely "
                      "torn by a crash or a full disk; moved it to %s",
                      path, lineno, why, aside)
    keep = [raw.rstrip(b"\r\n") + b"\n" for raw, record in good
            if record.get("step", 0) <= resume_step]
  storage.write_atomic(path, b"".join(keep))
  _fsync_dir(path)


class JsonlWriter:
  """Appends one JSON line per ``write``, handed to the OS at once (unbuffered).

  A write that fails is cut back off the file before its error propagates (or,
  if even that fails, before the next write), so the file never holds a half
  line followed by more lines.

  Args:
    path: the file.
    resume_step: the step a resumed run restored: later records are dropped
      and a torn last line is moved aside; None starts the file afresh.

  Raises:
    MetricsFileError: resuming a file with a bad line before its last.
  """

  def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
    self.path = os.fspath(path)
    _truncate_after(self.path, resume_step)
    self._file = open(self.path, "ab", buffering=0)
    self._size = os.fstat(self._file.fileno()).st_size   # end of the last line
    self._cut = False   # bytes past _size left by a failed write

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Appends ``{"step", "time", **metrics}``; OSErrors propagate unchanged."""
    data = (_dumps({"step": int(step), "time": time.time(), **metrics})
            + "\n").encode("utf-8")
    if self._cut:   # an earlier failed write could not be cut back then
      os.ftruncate(self._file.fileno(), self._size)
      self._cut = False
    self._cut = True
    try:
      view = memoryview(data)
      while view:   # one call per line, unless the OS takes only part of it
        view = view[self._file.write(view):]
    except BaseException:
      self._cut_back()
      raise
    self._cut = False
    self._size += len(data)

  def _cut_back(self) -> None:
    """Truncates the file to its last whole line (if the OS lets us)."""
    try:
      os.ftruncate(self._file.fileno(), self._size)
      self._cut = False
    except OSError:
      pass

  def sync(self) -> None:
    """``os.fsync``s the file (unbuffered: nothing to flush): lines on disk."""
    os.fsync(self._file.fileno())

  def close(self) -> None:
    self._file.close()


def tensorboard_tag(name: str) -> str:
  """A metric name as a legal TensorBoard tag (``pass@3`` -> ``pass_at_3``)."""
  return re.sub(r"[^\w.\-/]", "_", name.replace("@", "_at_"))


class TensorBoardWriter:
  """Scalars for TensorBoard through ``tensorboardX`` (tags: ``tensorboard_tag``)."""

  def __init__(self, logdir: str | os.PathLike, resume_step: int | None = None):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    purge = None if resume_step is None else resume_step + 1
    self._writer = SummaryWriter(os.fspath(logdir), purge_step=purge)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    for name, value in metrics.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._writer.add_scalar(tensorboard_tag(name), value, global_step=step)
    self._writer.flush()

  def sync(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def tensorboard_available() -> bool:
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


class Writers:
  """Fans ``write``, ``sync`` and ``close`` out to several writers."""

  def __init__(self, writers: Iterable[Any]):
    self.writers = list(writers)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    for w in self.writers:
      w.write(step, metrics)

  def sync(self) -> None:
    """Puts what was written on disk: call it right before each checkpoint."""
    for w in self.writers:
      if hasattr(w, "sync"):
        w.sync()

  def close(self) -> None:
    for w in self.writers:
      w.close()


def open_writers(workdir: str | os.PathLike, resume_step: int | None = None,
                 tensorboard: bool = True) -> Writers:
  """``workdir/metrics.jsonl`` plus ``workdir/tensorboard`` if available."""
  writers: list[Any] = [JsonlWriter(os.path.join(workdir, JSONL_NAME), resume_step)]
  if tensorboard and tensorboard_available():
    writers.append(TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                     resume_step))
  elif tensorboard:
    logging.warning("TensorBoard event files are off: tensorboardX is not "
                    "installed (pip install 'tensorboardX>=2.6,<3' turns them "
                    "on); metrics go to %s only", JSONL_NAME)
  return Writers(writers)
