"""Metric writers: JSON lines and TensorBoard event files by default."""

from __future__ import annotations

import json
import logging

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
