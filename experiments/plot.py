"""Learning curves, or per-episode success, of training runs, as a PNG.

    python -m experiments.plot --workdir runs/a --workdir runs/b --output curves.png
    python -m experiments.plot --kind=episodes --workdir runs/a --output episodes.png

``--kind=curves`` (the default): one column per k (pass@1 .. pass@N),
training rollouts on the top row and held-out evaluation (``eval/`` metrics)
on the bottom row, one line per workdir labelled ``name (method)`` from its
``config.json``.

``--kind=episodes``, for continuous trials (method orbit): success of episode
1 .. K of a trial against the episode index, one panel per game (games that
trained or were evaluated together log ``<game>/episode_success/...``; a
single game logs unprefixed keys), one line per workdir. Each run's line comes
from its held-out evaluation (``eval/...``) at the last step that has one, or
at ``--step``; a run without evaluation episode metrics falls back to its last
training record, and the panel title then says "train". The legend gives each
line's step, its episode 1 -> K improvement and its mean in-context regret.

Reads only ``metrics.jsonl`` and ``config.json``; renders with matplotlib's
Agg backend (no display needed).
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
SPLITS = {"eval/": "held-out eval", "": "train"}
KINDS = ("curves", "episodes")
NOT_CONTINUOUS = ("no episode_success metrics: these runs are not continuous "
                  "trials (method orbit)")
# After the split prefix: ``[<game>/]episode_success/episode_<k>``.
_EPISODE_KEY = re.compile(r"(?:(?P<game>[^/]+)/)?episode_success/episode_(?P<k>\d+)")


def save(fig, path: str) -> str:
  """Writes ``fig`` to ``path`` as a PNG (making its folder), closes it and
  returns ``path``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png", dpi=110)
  plt.close(fig)
  return path


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
  return save(fig, output)


def _episode_values(record: dict[str, Any], prefix: str) -> dict[str, dict[int, float]]:
  """``{game: {k: success}}`` of the split ``prefix`` ("eval/" or "") in one
  record; the game is "" for unprefixed (single-game) keys."""
  out: dict[str, dict[int, float]] = {}
  for key, value in record.items():
    if not key.startswith(prefix) or (not prefix and key.startswith("eval/")):
      continue
    if m := _EPISODE_KEY.fullmatch(key[len(prefix):]):
      out.setdefault(m.group("game") or "", {})[int(m.group("k"))] = float(value)
  return out


def episode_record(records: Sequence[dict[str, Any]], step: int | None = None
                   ) -> tuple[str, dict[str, Any]] | None:
  """The record and split prefix that a run's per-episode line is drawn from.

  Args:
    records: the run's metrics records.
    step: take the (last) record with this step; None: the last record with
      held-out episode metrics, else the last with training ones.

  Returns:
    ``("eval/", record)`` when the chosen record has held-out episode metrics,
    ``("", record)`` when it has only training ones, None when there is none.
  """
  if step is not None:
    records = [r for r in records if r.get("step") == step][-1:]
  for prefix in SPLITS:
    for record in reversed(records):
      if _episode_values(record, prefix):
        return prefix, record
  return None


def episode_series(records: Sequence[dict[str, Any]], step: int | None = None
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{game: (episode indices 1..K, success fractions)}`` of one run.

  Args:
    records: the run's metrics records.
    step: as in ``episode_record``.

  Returns:
    One entry per game ("" for a single, unprefixed game), from the record
    ``episode_record`` picks (held-out eval if it has any, else training);
    empty when the run has no episode metrics.
  """
  chosen = episode_record(records, step)
  return {} if chosen is None else _record_series(chosen[1], chosen[0])


def _record_series(record: dict[str, Any], prefix: str
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``episode_series`` of one record and split prefix."""
  return {game: (np.asarray(sorted(by_k), dtype=np.int64),
                 np.asarray([by_k[k] for k in sorted(by_k)], dtype=np.float64))
          for game, by_k in sorted(_episode_values(record, prefix).items())}


def _episode_note(record: dict[str, Any], prefix: str, game: str,
                  values: np.ndarray) -> str:
  """``step s: ep 1->K +x pts, regret r`` for a legend label."""
  game_prefix = f"{prefix}{game}/" if game else prefix
  improvement = record.get(f"{game_prefix}episode_improvement",
                           values[-1] - values[0])
  note = (f"step {record.get('step', '?')}: ep 1->{len(values)} "
          f"{100.0 * improvement:+.1f} pts")
  if (regret := record.get(f"{game_prefix}regret/mean")) is not None:
    note += f", regret {regret:.2f}"
  return note


def plot_episodes(runs: Sequence[tuple[str, list[dict[str, Any]]]], output: str,
                  step: int | None = None) -> str:
  """Draws per-episode success against episode index, one panel per game.

  Args:
    runs: (label, metrics records) per run, as from ``load_runs``.
    output: the PNG file to write.
    step: the train step to read each run at (the record with that step);
      None: each run's last held-out evaluation, else its last training record.

  Returns:
    ``output``.

  Raises:
    ValueError: no run has episode metrics (at ``step``, if given).
  """
  panels: dict[str, list[tuple[str, str, np.ndarray, np.ndarray]]] = {}
  for label, records in runs:
    chosen = episode_record(records, step)
    if chosen is None:
      continue
    prefix, record = chosen
    for game, (ks, values) in _record_series(record, prefix).items():
      panels.setdefault(game, []).append(
          (f"{label}, {_episode_note(record, prefix, game, values)}", prefix,
           ks, values))
  if not panels:
    if step is not None and any(episode_series(r) for _, r in runs):
      raise ValueError(f"no run has episode_success metrics at step {step}")
    raise ValueError(NOT_CONTINUOUS)
  cols = min(3, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.4 * rows),
                           squeeze=False, sharey=True)
  for i, (ax, (game, lines)) in enumerate(zip(axes.flat, sorted(panels.items()))):
    splits = {prefix for _, prefix, _, _ in lines}
    for label, prefix, ks, values in lines:
      if len(splits) > 1:
        label += f" [{SPLITS[prefix]}]"
      ax.plot(ks, 100.0 * values, marker="o", markersize=4, label=label)
    ax.set_title(f"{game or 'episodes'}: "
                 f"{' / '.join(SPLITS[p] for p in SPLITS if p in splits)}")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("episode in trial")
    if i % cols == 0:
      ax.set_ylabel("% of attempts solving the episode")
    ax.legend(loc="best", fontsize="small", frameon=False)
  for ax in list(axes.flat)[len(panels):]:
    ax.set_visible(False)
  fig.tight_layout()
  return save(fig, output)


def define_flags() -> types.SimpleNamespace:
  """The command-line flags (defined only when run as a program)."""
  return types.SimpleNamespace(
      workdirs=flags.DEFINE_multi_string("workdir", [], "Training run directory "
                                         "(repeat for several runs)."),
      kind=flags.DEFINE_enum("kind", "curves", KINDS, "curves: pass@k over "
                             "train steps; episodes: success per episode index "
                             "of continuous trials (method orbit)."),
      output=flags.DEFINE_string("output", None, "PNG file to write (default: "
                                 "<kind>.png)."),
      smooth=flags.DEFINE_integer("smooth", 1, "Moving-average window over "
                                  "train steps (1: raw; --kind=curves)."),
      step=flags.DEFINE_integer("step", None, "Train step to read the "
                                "episodes at (default: each run's last "
                                "evaluation; --kind=episodes)."))


def main(argv, args: types.SimpleNamespace):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not args.workdirs.value:
    raise app.UsageError("give at least one --workdir")
  kind = args.kind.value
  output = args.output.value or f"{kind}.png"
  if kind == "curves":
    if args.step.value is not None:
      raise app.UsageError("--step is for --kind=episodes")
    path = plot_curves(load_runs(args.workdirs.value), output, args.smooth.value)
  else:
    if args.smooth.value != 1:
      raise app.UsageError("--smooth is for --kind=curves")
    path = plot_episodes(load_runs(args.workdirs.value), output, args.step.value)
  print(f"wrote {path}")


if __name__ == "__main__":
  _ARGS = define_flags()
  app.run(functools.partial(main, args=_ARGS))
