"""Learning curves of one or more training runs, as a PNG.

    python -m experiments.plot --workdir runs/a --workdir runs/b --output curves.png

One column per k (pass@1 .. pass@N), training rollouts on the top row and
held-out evaluation (``eval/`` metrics) on the bottom row, one line per
workdir labelled ``name (method)`` from its ``config.json``. Reads only
``metrics.jsonl`` and ``config.json``; renders with matplotlib's Agg backend
(no display needed).
"""

from __future__ import annotations

import functools
import json
import os
import re
import types
from typing import Any, Sequence

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from lamer_jax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position

ROWS = (("", "train"), ("eval/", "held-out eval"))


def run_label(workdir: str) -> str:
  """``name (method)`` from the run's config.json, else the directory name."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
    return f"{config.get('name', os.path.basename(workdir))} ({config.get('method', '?')})"
  return os.path.basename(os.path.normpath(workdir))


def load_runs(workdirs: Sequence[str]) -> list[tuple[str, list[dict[str, Any]]]]:
  """(label, metrics records) per workdir; labels made unique."""
  runs = []
  for w in workdirs:
    path = os.path.join(w, metrics.JSONL_NAME)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: is {w} a training run?")
    runs.append((run_label(w), metrics.read_jsonl(path)))
  labels = [label for label, _ in runs]
  return [(f"{label} [{os.path.basename(os.path.normpath(w))}]"
           if labels.count(label) > 1 else label, records)
          for (label, records), w in zip(runs, workdirs)]


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
  if window <= 1 or len(y) < window:
    return y
  kernel = np.ones(window) / window
  return np.convolve(y, kernel, mode="valid")


def _series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  pts = [(r["step"], r[key]) for r in records if key in r]
  if not pts:
    return np.zeros(0), np.zeros(0)
  steps, values = np.asarray(pts, dtype=np.float64).T
  return steps, values


def plot_curves(runs: Sequence[tuple[str, list[dict[str, Any]]]], output: str,
                smooth: int = 1) -> str:
  """Draws pass@k over steps for every run; returns ``output``."""
  ks = sorted({int(m.group(1)) for _, records in runs for r in records
               for key in r if (m := re.fullmatch(r"(?:eval/)?pass@(\d+)", key))})
  if not ks:
    raise ValueError("no pass@k metrics in the given runs")
  fig, axes = plt.subplots(len(ROWS), len(ks), figsize=(4.2 * len(ks), 7.0),
                           squeeze=False, sharex=True, sharey=True)
  for row, (prefix, title) in enumerate(ROWS):
    for col, k in enumerate(ks):
      ax = axes[row, col]
      for label, records in runs:
        steps, values = _series(records, f"{prefix}pass@{k}")
        if not len(steps):
          continue
        if prefix == "" and smooth > 1 and len(steps) >= smooth:
          values = _moving_average(values, smooth)
          steps = steps[smooth - 1:]
        ax.plot(steps, 100.0 * values, marker="o" if prefix else None,
                markersize=3, label=label)
      ax.set_title(f"{title}: pass@{k}")
      ax.set_ylim(-2, 102)
      ax.grid(alpha=0.3)
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
      if row == len(ROWS) - 1:
        ax.set_xlabel("train step")
      if col == 0:
        ax.set_ylabel("% of trials solved")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  if not handles:
    handles, labels = axes[-1, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)),
             frameon=False)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  fig.savefig(output, format="png", dpi=110)
  plt.close(fig)
  return output


def define_flags() -> types.SimpleNamespace:
  """The command-line flags (defined only when run as a program)."""
  return types.SimpleNamespace(
      workdirs=flags.DEFINE_multi_string("workdir", [], "Training run directory "
                                         "(repeat for several runs)."),
      output=flags.DEFINE_string("output", "curves.png", "PNG file to write."),
      smooth=flags.DEFINE_integer("smooth", 1, "Moving-average window over "
                                  "train steps (1: raw)."))


def main(argv, args: types.SimpleNamespace):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not args.workdirs.value:
    raise app.UsageError("give at least one --workdir")
  path = plot_curves(load_runs(args.workdirs.value), args.output.value,
                     args.smooth.value)
  print(f"wrote {path}")


if __name__ == "__main__":
  _ARGS = define_flags()
  app.run(functools.partial(main, args=_ARGS))
