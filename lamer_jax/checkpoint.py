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

A checkpoint that cannot be read (truncated or missing files) or that does
not fit the state it is restored into (a different model or optimiser) raises
``CheckpointError`` naming the path and what to do about it.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lamer_jax.algos.lamer import TrainState

_STATE = "state"
_META = "meta"


class CheckpointError(RuntimeError):
  """A checkpoint is corrupt, incomplete or incompatible with the run."""


def state_to_tree(state: TrainState) -> dict[str, Any]:
  """The arrays of ``state`` as a plain dict (typed key -> raw key data)."""
  tree = {"params": state.params, "opt_state": state.opt_state,
          "step": state.step, "key": jax.random.key_data(state.key)}
  if state.ref_params is not None:
    tree["ref_params"] = state.ref_params
  return tree


def tree_to_state(tree: dict[str, Any], key_impl: str) -> TrainState:
  """Inverse of ``state_to_tree``."""
  return TrainState(params=tree["params"], opt_state=tree["opt_state"],
                    ref_params=tree.get("ref_params"), step=tree["step"],
                    key=jax.random.wrap_key_data(tree["key"], impl=key_impl))


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
  if "ref_params" in shapes:
    source["ref_params"] = abstract_state.ref_params
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

  # ---- save ----------------------------------------------------------------
  def save(self, step: int, state: TrainState,
           config: dict[str, Any] | None = None) -> None:
    """Writes checkpoint ``step`` (atomically) and drops the oldest ones.

    Args:
      step: the number of completed train steps ``state`` is the result of.
      state: the train state (its key may be a typed PRNG key).
      config: JSON-serialisable configuration stored beside the arrays.
    """
    meta = {"config": config or {}, "step": int(step),
            "key_impl": str(jax.random.key_impl(state.key))}
    self._manager.save(int(step), args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(state_to_tree(state)),
        _META: ocp.args.JsonSave(meta)}), force=True)
    self._manager.wait_until_finished()

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
      raise CheckpointError(
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
      raise CheckpointError(
          f"checkpoint {path} is unreadable (corrupt or incomplete): "
          f"{_short(e)}. {self._advice(step)}") from e
    self._check_compatible(path, meta, _leaf_signatures(saved),
                           _leaf_signatures(target))
    try:
      tree = self._manager.restore(step, args=ocp.args.Composite(**{
          _STATE: ocp.args.StandardRestore(target)}))[_STATE]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint {path} could not be restored (corrupt, truncated or "
          f"written by an incompatible version): {_short(e)}. "
          f"{self._advice(step)}") from e
    return tree_to_state(tree, meta.get("key_impl", "threefry2x32"))

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
