"""Orbax checkpoints of a ``TrainState`` and the run's configuration.

    ckpt = Checkpointer(workdir / "checkpoints", keep=3)
    ckpt.save(step, state, config=config.to_dict())
    state = ckpt.restore(abstract_state)          # latest step
    ckpt.close()

A checkpoint holds the parameters, the optimiser state, the step, the
training PRNG key (as raw ``key_data`` plus the name of its implementation,
since orbax stores plain arrays) and, as JSON, the configuration that produced
it. Saving uses orbax's atomic protocol: everything is written into
``<step>.orbax-checkpoint-tmp-*`` and renamed to ``<step>`` only once
complete, so an interrupted save never shadows the previous checkpoint; left
over temporary directories are removed when a ``Checkpointer`` opens the
directory. Only the last ``keep`` checkpoints are kept.

Every checkpoint is verified: its JSON holds a CRC-32 of each array's bytes,
computed from the arrays in memory before they are written, and ``restore``
recomputes them from what it read (orbax itself checks no contents). A save
refuses arrays with non-finite values. ``restore_verified`` is what a resuming
run calls: it tries the newest checkpoint first and, while one is corrupt
(unreadable, truncated, or checksums that differ), moves it aside into
``<directory>.corrupt/<step>`` with a warning (nothing is deleted) and falls
back to the next older one.

A checkpoint that cannot be read or whose contents differ from their checksums
raises ``CorruptCheckpointError``; one that does not fit the state it is
restored into (a different model or optimiser) raises ``CheckpointError``;
both name the path and what to do about it. ``StorageError`` (disk full,
read-only, not a directory) is raised for a save that the filesystem refused,
in one line that names the cause.
"""

from __future__ import annotations

import os
import shutil
import zlib
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from lamer_jax import storage
from lamer_jax.algos.lamer import TrainState

_STATE = "state"
_META = "meta"
CORRUPT_SUFFIX = ".corrupt"   # <directory>.corrupt/<step>: set-aside checkpoints


class CheckpointError(RuntimeError):
  """A checkpoint is incompatible with the run (or corrupt: the subclass)."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint is unreadable, incomplete, or its contents fail their
  checksums."""


def _host_leaves(tree: Any) -> dict[str, np.ndarray | None]:
  """``path -> host array`` of every leaf (None for an array this process
  cannot see whole: a multi-host shard, which goes unverified)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(_key_name(k) for k in path)
    if not getattr(leaf, "is_fully_addressable", True):
      out[name] = None
    else:
      out[name] = np.asarray(jax.device_get(leaf))
  return out


def checksums(host: dict[str, np.ndarray | None]) -> dict[str, str | None]:
  """``path -> CRC-32`` (hex) of each host array's dtype, shape and bytes
  (``host``: from ``_host_leaves``)."""
  out = {}
  for name, arr in host.items():
    if arr is None:
      out[name] = None
      continue
    head = f"{arr.dtype.str}{arr.shape}".encode()
    crc = zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1),
                     zlib.crc32(head))
    out[name] = f"{crc:08x}"
  return out


def nonfinite_leaves(host: dict[str, np.ndarray | None]) -> list[str]:
  """Paths of the floating-point host arrays that hold a NaN or an infinity."""
  return [name for name, arr in host.items()
          if arr is not None and jax.numpy.issubdtype(arr.dtype, jax.numpy.inexact)
          and not np.isfinite(arr).all()]


def state_to_tree(state: TrainState) -> dict[str, Any]:
  """The arrays of ``state`` as a plain dict (typed key -> raw key data)."""
  tree = {"params": state.params, "opt_state": state.opt_state,
          "step": state.step, "key": jax.random.key_data(state.key)}
  if state.ref_params is not None:
    tree["ref_params"] = state.ref_params
  if state.extra is not None:
    tree["extra"] = state.extra
  return tree


def tree_to_state(tree: dict[str, Any], key_impl: str) -> TrainState:
  """Inverse of ``state_to_tree``."""
  return TrainState(params=tree["params"], opt_state=tree["opt_state"],
                    ref_params=tree.get("ref_params"), step=tree["step"],
                    key=jax.random.wrap_key_data(tree["key"], impl=key_impl),
                    extra=tree.get("extra"))


def _short(e: Exception, limit: int = 300) -> str:
  """``Type: message`` cut to ``limit`` characters (tensorstore errors embed
  whole specs)."""
  text = f"{type(e).__name__}: {e}"
  return text if len(text) <= limit else text[:limit] + " ..."


def _abstract_tree(abstract_state: TrainState) -> dict[str, Any]:
  """ShapeDtypeStructs of ``state_to_tree`` for a (possibly abstract) state,
  with the shardings of ``abstract_state``'s leaves where they have one (so a
  checkpoint lands on the run's mesh, whichever mesh wrote it)."""
  shapes = jax.eval_shape(state_to_tree, abstract_state)
  # The same dict with the state's own leaves (the typed key in place of its
  # raw data, whose sharding is the key's).
  source = dict(shapes, params=abstract_state.params,
                opt_state=abstract_state.opt_state, step=abstract_state.step,
                key=abstract_state.key)
  for name in ("ref_params", "extra"):
    if name in shapes:
      source[name] = getattr(abstract_state, name)
  return jax.tree.map(
      lambda t, a: jax.ShapeDtypeStruct(t.shape, t.dtype,
                                        sharding=getattr(a, "sharding", None)),
      shapes, source)


def _key_name(k: Any) -> str:
  """A path entry's name; namedtuple fields and dict keys read alike, since
  orbax's metadata turns namedtuples into dicts."""
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_signatures(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """``path -> (shape, dtype)`` of every array leaf of a dict-of-arrays tree."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(_key_name(k) for k in path)
    out[name] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
  return out


class Checkpointer:
  """Saves and restores train states under one directory (thin orbax wrapper).

  Args:
    directory: where the step directories live (created if missing).
    keep: how many of the most recent checkpoints to keep (>= 1).
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.keep = keep
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        # Synchronous: the train step donates its input state, so the arrays
        # must be on disk before the next step may overwrite them.
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
        create=True)
    # Handlers named up front, so that metadata can be read before any
    # save or restore has registered them.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _META: ocp.JsonCheckpointHandler()})

  # ---- queries -----------------------------------------------------------
  def all_steps(self) -> list[int]:
    """Steps of the complete checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None when there is none."""
    return self._manager.latest_step()

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def disk_bytes(self, step: int) -> int:
    """What checkpoint ``step`` takes on disk (its files' sizes)."""
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(self.step_path(step)) for f in files)

  # ---- save ----------------------------------------------------------------
  def save(self, step: int, state: TrainState,
           config: dict[str, Any] | None = None) -> None:
    """Writes checkpoint ``step`` (atomically, with the checksums of its
    arrays) and drops the oldest ones beyond ``keep`` (logged).

    Args:
      step: the number of completed train steps ``state`` is the result of.
      state: the train state (its key may be a typed PRNG key).
      config: JSON-serialisable configuration stored beside the arrays.

    Raises:
      CheckpointError: ``state`` holds NaN or infinite values (nothing is
        written: a checkpoint never holds them).
      StorageError: the filesystem refused the write (disk full, read-only).
    """
    tree = state_to_tree(state)
    host = _host_leaves(tree)
    bad = nonfinite_leaves(host)
    if bad:
      raise CheckpointError(
          f"refusing to save checkpoint {self.step_path(step)}: non-finite values "
          f"in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    meta = {"config": config or {}, "step": int(step),
            "key_impl": str(jax.random.key_impl(state.key)),
            "checksums": checksums(host)}
    doing = f"writing checkpoint {self.step_path(step)}"
    latest = self.latest_step()
    if latest is not None:   # a new checkpoint takes about what the last took
      storage.check_free(self.directory, self.disk_bytes(latest), doing)
    before = set(self.all_steps())
    # orbax's threads report a failed write at length; the cause goes first.
    with storage.stderr_held() as held, storage.refused_writes(
        doing, say_first=lambda line: held.say_first(
            f"{line} (orbax's report of it follows)")):
      self._manager.save(int(step), args=ocp.args.Composite(**{
          _STATE: ocp.args.StandardSave(tree),
          _META: ocp.args.JsonSave(meta)}), force=True)
      self._manager.wait_until_finished()
    removed = sorted(before - set(self.all_steps()))
    if removed:
      logging.info("removed checkpoint(s) %s (keep_checkpoints=%d)",
                   ", ".join(map(str, removed)), self.keep)

  # ---- restore -------------------------------------------------------------
  def _resolve_step(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    elif step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory};"
                              f" available steps: {self.all_steps()}")
    return step

  def _advice(self, step: int) -> str:
    older = [s for s in self.all_steps() if s < step]
    fallback = (f" to fall back to step {older[-1]}" if older else "")
    return (f"Delete {self.step_path(step)}{fallback}, or start the run in a "
            "fresh --workdir.")

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON stored with checkpoint ``step`` (default: latest):
    ``{"config": ..., "step": ..., "key_impl": ...}``."""
    step = self._resolve_step(step)
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**{
          _META: ocp.args.JsonRestore()}))[_META]
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(
          f"checkpoint {self.step_path(step)} is unreadable (corrupt or "
          f"incomplete): {_short(e)}. {self._advice(step)}") from e

  def restore(self, abstract_state: TrainState,
              step: int | None = None) -> TrainState:
    """Restores checkpoint ``step`` (default: latest) into ``abstract_state``'s
    structure, shapes and dtypes (e.g. ``jax.eval_shape`` of the init), and
    onto its leaves' shardings where they carry one: give ``ShapeDtypeStruct``s
    with ``sharding.state_shardings(abstract, mesh)`` to restore onto another
    mesh than the one that saved.

    Raises:
      FileNotFoundError: there is no such checkpoint.
      CheckpointError: the checkpoint is corrupt, or its arrays do not match
        ``abstract_state`` (written by a different model or optimiser).
    """
    step = self._resolve_step(step)
    path = self.step_path(step)
    meta = self.restore_meta(step)
    target = _abstract_tree(abstract_state)
    try:
      saved = self._manager.item_metadata(step)[_STATE]
      if saved is None:
        raise ValueError(f"no '{_STATE}' item")
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(
          f"checkpoint {path} is unreadable (corrupt or incomplete): "
          f"{_short(e)}. {self._advice(step)}") from e
    self._check_compatible(path, meta, _leaf_signatures(saved),
                           _leaf_signatures(target))
    try:
      tree = self._manager.restore(step, args=ocp.args.Composite(**{
          _STATE: ocp.args.StandardRestore(target)}))[_STATE]
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptCheckpointError(
          f"checkpoint {path} could not be restored (corrupt, truncated or "
          f"written by an incompatible version): {_short(e)}. "
          f"{self._advice(step)}") from e
    self._verify(path, step, meta, tree)
    return tree_to_state(tree, meta.get("key_impl", "threefry2x32"))

  def _verify(self, path: str, step: int, meta: dict[str, Any],
              tree: dict[str, Any]) -> None:
    """Raises ``CorruptCheckpointError`` if restored arrays differ from the
    checksums saved with them."""
    saved = meta.get("checksums")
    if saved is None:
      logging.warning("checkpoint %s has no checksums (written by an older "
                      "version): restored unverified", path)
      return
    now = checksums(_host_leaves(tree))
    bad = sorted(n for n in set(saved) | set(now)
                 if saved.get(n) is not None and now.get(n) is not None
                 and saved[n] != now[n])
    if bad:
      raise CorruptCheckpointError(
          f"checkpoint {path} is corrupt: {len(bad)} array(s) differ from the "
          f"checksums written with them ({', '.join(bad[:5])}"
          f"{' ...' if len(bad) > 5 else ''}). {self._advice(step)}")

  def quarantine(self, step: int) -> str:
    """Moves checkpoint ``step`` into ``<directory>.corrupt/`` (never deletes
    it) and returns its new path."""
    target_dir = self.directory + CORRUPT_SUFFIX
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, str(step))
    n = 1
    while os.path.exists(target):
      target = os.path.join(target_dir, f"{step}.{n}")
      n += 1
    shutil.move(self.step_path(step), target)
    self._manager.reload()
    return target

  def restore_verified(self, abstract_state: TrainState
                       ) -> tuple[TrainState, int] | None:
    """The newest checkpoint that restores and verifies, and its step.

    Each newer one that is corrupt is moved aside (``quarantine``) with a
    warning that names it (on one host; with several, the error is raised). Returns None when the directory holds no
    checkpoint at all.

    Raises:
      CheckpointError: a checkpoint does not fit ``abstract_state`` (nothing
        is moved: that is the run's configuration, not the file).
      CorruptCheckpointError: checkpoints exist but none verifies (all were
        moved aside).
    """
    steps = self.all_steps()
    if not steps:
      return None
    moved = []
    for step in reversed(steps):
      try:
        return self.restore(abstract_state, step), step
      except CorruptCheckpointError as e:
        if jax.process_count() > 1:
          raise   # every host would move it at once: the user decides
        where = self.quarantine(step)
        moved.append(where)
        logging.warning("%s\nMoved it to %s and falling back to the previous "
                        "checkpoint.", e, where)
    raise CorruptCheckpointError(
        f"no checkpoint in {self.directory} verifies: all were moved to "
        f"{', '.join(moved)}. Start the run in a fresh --workdir (or restore "
        "one of them by hand).")

  def _check_compatible(self, path: str, meta: dict[str, Any],
                        saved: dict[str, tuple], wanted: dict[str, tuple]) -> None:
    """Raises ``CheckpointError`` listing the leaves that differ."""
    problems = []
    # Parameters first: they name the model's shapes most plainly.
    names = sorted(set(saved) | set(wanted),
                   key=lambda n: (not n.startswith("params/"), n))
    for name in names:
      if name not in saved:
        problems.append(f"{name}: missing from the checkpoint")
      elif name not in wanted:
        problems.append(f"{name}: in the checkpoint but not in this run")
      elif saved[name] != wanted[name]:
        problems.append(f"{name}: saved {saved[name][0]} {saved[name][1]}, this run "
                        f"expects {wanted[name][0]} {wanted[name][1]}")
    if not problems:
      return
    model = meta.get("config", {}).get("model", {}).get("name", "?")
    shown = "; ".join(problems[:5]) + (
        f"; ... ({len(problems) - 5} more)" if len(problems) > 5 else "")
    raise CheckpointError(
        f"checkpoint {path} does not fit this run's train state (it was written "
        f"for model {model!r}): {shown}. Restore it with the configuration it "
        "was trained with (evaluate --workdir reads it from the checkpoint), or "
        "train this configuration in a fresh --workdir.")

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
