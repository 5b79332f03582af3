"""Metric writers: JSON lines and TensorBoard event files.

    writers = open_writers(workdir, resume_step=None)   # or the restored step
    writers.write(step, {"pass@1": 0.25, "eval/pass@3": 0.5})
    writers.close()

``metrics.jsonl`` holds one JSON object per step: ``step``, ``time`` (Unix
seconds when the line was written) and every metric. A resumed run first drops
the lines past the step it restored, so the file always describes one
consistent history; TensorBoard's own ``purge_step`` does the same for its
event files. tensorboardX is a dependency; where it is missing anyway (an
install with ``--no-deps``), one warning says that the event files are off and
how to turn them on.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Iterable

from absl import logging

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All records of a metrics file, in file order ([] if it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, resume_step: int | None) -> None:
  """Keeps only records with ``step <= resume_step`` (none if None); atomic."""
  if not os.path.exists(path):
    return
  keep = [] if resume_step is None else [
      r for r in read_jsonl(path) if r.get("step", 0) <= resume_step]
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in keep:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)


class JsonlWriter:
  """Appends one JSON line per ``write``, flushed at once.

  Args:
    path: the file.
    resume_step: the step a resumed run restored: later records are dropped;
      None starts the file afresh.
  """

  def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
    self.path = os.fspath(path)
    _truncate_after(self.path, resume_step)
    self._file = open(self.path, "a", encoding="utf-8")

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    record = {"step": int(step), "time": time.time(), **metrics}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

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

  def close(self) -> None:
    self._writer.close()


def tensorboard_available() -> bool:
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


class Writers:
  """Fans ``write`` and ``close`` out to several writers."""

  def __init__(self, writers: Iterable[Any]):
    self.writers = list(writers)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    for w in self.writers:
      w.write(step, metrics)

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
