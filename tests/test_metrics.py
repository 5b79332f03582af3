"""Metric writers: JSON lines and TensorBoard event files by default."""

from __future__ import annotations

import errno
import json
import logging
import math
import os

import pytest

from lamer_jax import metrics


def test_default_writers_write_jsonl_and_tensorboard(tmp_path):
  writers = metrics.open_writers(tmp_path)
  writers.write(1, {"pass@1": 0.25, "eval/pass@2": 0.5})
  writers.close()
  lines = (tmp_path / metrics.JSONL_NAME).read_text().splitlines()
  assert [json.loads(l)["pass@1"] for l in lines] == [0.25]
  events = list((tmp_path / metrics.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0


def test_missing_tensorboardx_is_said_once(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(metrics, "tensorboard_available", lambda: False)
  with caplog.at_level(logging.WARNING):
    writers = metrics.open_writers(tmp_path)
  writers.close()
  said = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
  assert len(said) == 1 and "pip install 'tensorboardX" in said[0]
  assert not (tmp_path / metrics.TENSORBOARD_DIR).exists()


def _strict_loads(line):
  def refuse(name):
    raise AssertionError(f"non-standard JSON constant {name} in {line!r}")
  return json.loads(line, parse_constant=refuse)


def _write_lines(path, *lines, end="\n"):
  path.write_text("\n".join(lines) + end, encoding="utf-8")


def test_non_finite_values_round_trip_as_strict_json(tmp_path):
  path = tmp_path / metrics.JSONL_NAME
  writer = metrics.JsonlWriter(path)
  writer.write(1, {"nan": math.nan, "inf": math.inf, "neg": -math.inf,
                   "nested": {"xs": [1.5, math.nan]}, "word": "Inf"})
  writer.close()
  lines = path.read_text().splitlines()
  assert len(lines) == 1
  raw = _strict_loads(lines[0])
  assert (raw["nan"], raw["inf"], raw["neg"]) == ("NaN", "Infinity", "-Infinity")
  [record] = metrics.read_jsonl(path)
  assert math.isnan(record["nan"]) and math.isnan(record["nested"]["xs"][1])
  assert record["inf"] == math.inf and record["neg"] == -math.inf
  assert record["nested"]["xs"][0] == 1.5 and record["word"] == "Inf"
  # Files from before this encoding, with bare NaN, still read.
  _write_lines(path, '{"step": 1, "loss": NaN}')
  assert math.isnan(metrics.read_jsonl(path)[0]["loss"])


def test_read_jsonl_skips_a_torn_last_line_with_a_warning(tmp_path, caplog):
  path = tmp_path / metrics.JSONL_NAME
  _write_lines(path, '{"step": 1}', '{"step": 2}', '{"step": 3, "lo', end="")
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in metrics.read_jsonl(path)] == [1, 2]
  said = [r.getMessage() for r in caplog.records]
  assert any(f"{path}:3" in m and "torn" in m for m in said), said
  with pytest.raises(metrics.MetricsFileError, match=r"metrics\.jsonl:3: "):
    metrics.read_jsonl(path, torn_ok=False)


def test_a_bad_line_before_the_last_raises_naming_file_and_line(tmp_path):
  path = tmp_path / metrics.JSONL_NAME
  _write_lines(path, '{"step": 1}', '{"step": 2, "lo', "", '{"step": 3}')
  before = path.read_bytes()
  for torn_ok in (True, False):
    with pytest.raises(metrics.MetricsFileError,
                       match=r"metrics\.jsonl:2: not valid JSON .*line 2"):
      metrics.read_jsonl(path, torn_ok=torn_ok)
  with pytest.raises(ValueError, match=r"metrics\.jsonl:2: "):
    metrics.JsonlWriter(path, resume_step=3)
  assert path.read_bytes() == before
  assert not (tmp_path / (metrics.JSONL_NAME + metrics.TORN_SUFFIX)).exists()


def test_resume_moves_a_torn_last_line_aside(tmp_path, caplog):
  path = tmp_path / metrics.JSONL_NAME
  writer = metrics.JsonlWriter(path)
  for step in (1, 2, 3):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  torn = b'{"step": 4, "time": 17.5, "lo'
  with open(path, "ab") as f:
    f.write(torn)
  with caplog.at_level(logging.WARNING):
    writer = metrics.JsonlWriter(path, resume_step=2)
  aside = tmp_path / (metrics.JSONL_NAME + metrics.TORN_SUFFIX)
  said = [r.getMessage() for r in caplog.records]
  assert any(f"{path}:4" in m and str(aside) in m for m in said), said
  assert aside.read_bytes() == torn + b"\n"
  writer.write(3, {"loss": 0.25})
  writer.close()
  records = metrics.read_jsonl(path, torn_ok=False)
  assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.5),
                                                      (3, 0.25)]
  text = path.read_text()
  assert text.endswith("\n") and all(_strict_loads(l) for l in text.splitlines())
  assert not (tmp_path / (metrics.JSONL_NAME + ".tmp")).exists()


def test_truncate_after_keeps_the_steps_up_to_the_resume_step(tmp_path):
  path = tmp_path / metrics.JSONL_NAME
  lines = [f'{{"step": {s}, "x": "NaN"}}' for s in (1, 2, 3, 4)]
  _write_lines(path, *lines)
  metrics._truncate_after(str(path), 2)
  assert path.read_text().splitlines() == lines[:2]   # lines kept byte for byte
  metrics._truncate_after(str(path), None)            # a fresh start
  assert path.read_text() == ""
  metrics._truncate_after(str(tmp_path / "absent.jsonl"), 2)
  assert sorted(p.name for p in tmp_path.iterdir()) == [metrics.JSONL_NAME]


def test_sync_fsyncs_the_jsonl_file(tmp_path, monkeypatch):

  class NoSync:
    written = []

    def write(self, step, values):
      self.written.append(step)

    def close(self):
      pass

  writers = metrics.open_writers(tmp_path)
  writers.writers.append(NoSync())
  writers.write(1, {"loss": 0.5})
  synced = []
  monkeypatch.setattr(os, "fsync", synced.append)
  writers.sync()
  monkeypatch.undo()
  jsonl = writers.writers[0]
  # TensorBoard's flush fsyncs its event file too.
  assert jsonl._file.fileno() in synced and NoSync.written == [1]
  writers.close()
  assert metrics.read_jsonl(tmp_path / metrics.JSONL_NAME)[0]["loss"] == 0.5


def test_a_failed_write_leaves_no_half_line(tmp_path, monkeypatch):
  path = tmp_path / metrics.JSONL_NAME
  writer = metrics.JsonlWriter(path)
  writer.write(1, {"loss": 1.0})

  class FullDisk:
    """Takes half of the first write, then fails as a full disk does."""

    def __init__(self, file):
      self.file, self.calls = file, 0

    def write(self, data):
      self.calls += 1
      if self.calls == 1:
        return self.file.write(data[:len(data) // 2])
      raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self):
      return self.file.fileno()

  real = writer._file
  writer._file = FullDisk(real)
  with pytest.raises(OSError, match="No space left") as raised:
    writer.write(2, {"loss": 0.5})
  assert raised.value.errno == errno.ENOSPC and writer._file.calls == 2
  assert [r["step"] for r in metrics.read_jsonl(path, torn_ok=False)] == [1]
  # Where even the cut back fails, the next write cuts first.
  writer._file = FullDisk(real)
  monkeypatch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(
      OSError(errno.EIO, "I/O error")))
  with pytest.raises(OSError, match="No space left"):
    writer.write(2, {"loss": 0.5})
  monkeypatch.undo()
  assert path.read_bytes().count(b"\n") == 1 and not path.read_bytes().endswith(
      b"\n")
  writer._file = real
  writer.write(2, {"loss": 0.25})
  writer.close()
  records = metrics.read_jsonl(path, torn_ok=False)
  assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.25)]
