"""Device meshes and partition specs; a leaf module (it imports nothing else
of lamer_jax, so every algorithm's step can use it: ``algos.lamer.
make_train_step(..., mesh=)`` compiles the sharded step).

A mesh has three named axes:

    data    splits the rollout rows (tasks x trials) and the training batch;
            parameters are replicated over it.
    fsdp    also splits rows, and shards every weight matrix over its largest
            divisible dimension (ZeRO-3 style: gathered where used).
    tensor  Megatron-style tensor parallelism: attention heads and the MLP
            hidden dimension are split, so each device computes a slice.

Rows are split over ``("data", "fsdp")`` together, so a mesh of ``data=2,
fsdp=4`` processes 8 groups of rows, like ``data=8``, while holding a quarter
of the weights per device. Gradients are reduced across those axes by the
compiler (the loss is a mean over all rows); nothing here writes a collective.

Multi-host: call :func:`initialize_distributed` first in every process, then
build the mesh over ``jax.devices()`` (all hosts' devices). Every host runs
the same program on the same replicated train state: task seeds and sampling
keys are derived from ``state.key`` by the same ``jax.random`` calls on every
host, so all hosts agree on the global batch without exchanging seeds, and
each host's devices compute only their share of its rows, as the row
sharding assigns them. There is no per-host seed (and so no drift between
hosts), and changing the mesh does not change which tasks are played.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
ROW_AXES = ("data", "fsdp")   # mesh axes the rows (tasks x trials) are split over

# Weights split over "tensor": name -> (candidate dims in order of preference,
# the ModelConfig head count that the tensor size must divide, or None). Dims
# count from the end so that the stacked layer axis never matters.
_TENSOR_DIMS = {
    "wq": ((-1,), "num_heads"),
    "wk": ((-1,), "num_kv_heads"),
    "wv": ((-1,), "num_kv_heads"),
    "wo": ((-2,), "num_heads"),
    "w_gate": ((-1,), None),
    "w_up": ((-1,), None),
    "w_down": ((-2,), None),
    "embed": ((-2, -1), None),     # [V, D]: vocab if divisible, else hidden
    "lm_head": ((-1, -2), None),   # [D, V]: vocab if divisible, else hidden
}
_STACKED = "layers"   # top-level key whose leaves carry a leading layer axis


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes; one of them may be -1 (all remaining devices)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    sizes = dataclasses.astuple(self)
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"mesh axis sizes must be positive or -1, got {self}")
    if sizes.count(-1) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {self}")

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes for ``num_devices`` devices.

    Raises:
      ValueError: the sizes do not multiply to ``num_devices``, or the fixed
        sizes do not divide it (when one axis is -1).
    """
    sizes = dataclasses.astuple(self)
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % fixed:
        raise ValueError(
            f"{num_devices} devices do not split into a mesh with "
            f"{dict(zip(AXES, sizes))}: the fixed axes multiply to {fixed}, "
            f"which does not divide {num_devices}")
      sizes = tuple(num_devices // fixed if s == -1 else s for s in sizes)
    elif fixed != num_devices:
      raise ValueError(
          f"mesh {dict(zip(AXES, sizes))} has {fixed} devices but "
          f"{num_devices} are available; set one axis to -1 or make the "
          f"sizes multiply to {num_devices}")
    return sizes


def make_mesh(cfg: MeshConfig = MeshConfig(),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over ``devices`` (default: all).

  Uses ``jax.make_mesh`` for a topology-aware device order, with every axis
  in ``AxisType.Auto`` mode (shardings propagated by the compiler).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = cfg.shape(len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                       devices=devices)


def _axis_size(mesh: Mesh, name: str) -> int:
  if name not in mesh.shape:
    raise ValueError(f"mesh axes {tuple(mesh.shape)} lack {name!r}; build the "
                     f"mesh with lamer_jax.sharding.make_mesh")
  return mesh.shape[name]


def num_row_shards(mesh: Mesh) -> int:
  """How many groups the rows are split into (data x fsdp)."""
  return _axis_size(mesh, "data") * _axis_size(mesh, "fsdp")


def row_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (row) axis split over ("data", "fsdp"); other axes whole."""
  return NamedSharding(mesh, P(ROW_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain_rows(tree: Any, mesh: Mesh | None, axis: int = 0) -> Any:
  """Asks the compiler to split every leaf's ``axis`` (rows) over the row axes.

  Identity when ``mesh`` is None (single-device code paths stay unchanged).
  """
  if mesh is None:
    return tree
  sharding = NamedSharding(mesh, P(*([None] * axis), ROW_AXES))
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding),
                      tree)


def constrain_kv_cache(cache: Any, mesh: Mesh | None) -> Any:
  """Splits a ``llama.KVCache`` by rows: k/v ``[N, B, ...]``, mask ``[B, S]``.

  Without it the compiler may lay the cache out after the (FSDP-split)
  projection weights instead, and reshuffle it at every decoding step.
  """
  if mesh is None:
    return cache
  return cache.replace(k=constrain_rows(cache.k, mesh, axis=1),
                       v=constrain_rows(cache.v, mesh, axis=1),
                       mask=constrain_rows(cache.mask, mesh))


def _leaf_spec(name: str | None, shape: tuple[int, ...], stacked: bool,
               fsdp: int, tensor: int, mcfg: Any) -> P:
  """PartitionSpec of one weight (see :func:`param_specs`)."""
  first = 1 if stacked else 0          # the stacked layer axis is never split
  ndim = len(shape)
  if ndim - first < 2:
    return P()                          # norms, biases, scalars: replicated
  dims: list[Any] = [None] * ndim
  if tensor > 1 and name in _TENSOR_DIMS:
    candidates, heads_attr = _TENSOR_DIMS[name]
    heads = getattr(mcfg, heads_attr) if (mcfg is not None and heads_attr) else None
    for d in candidates:
      d = d % ndim
      if shape[d] % tensor == 0 and (heads is None or heads % tensor == 0):
        dims[d] = "tensor"
        break
  if fsdp > 1:
    free = [d for d in range(first, ndim)
            if dims[d] is None and shape[d] % fsdp == 0]
    if free:
      dims[max(free, key=lambda d: (shape[d], -d))] = "fsdp"
  return P(*dims)


def _key_name(entry: Any) -> str | None:
  return getattr(entry, "key", getattr(entry, "name", None))


def param_specs(params: Any, mesh: Mesh, mcfg: Any = None) -> Any:
  """PartitionSpecs for a parameter pytree (``lamer_jax.models.llama`` layout).

  Rules, per leaf (``[in, out]`` matrices; leaves under ``layers`` have a
  leading stacked-layer axis, which is never split):
    * vectors (norms, biases) are replicated;
    * "tensor": ``wq``/``wk``/``wv``/``w_gate``/``w_up`` split their output
      (heads, MLP hidden), ``wo``/``w_down`` their input, ``embed`` and
      ``lm_head`` the vocabulary (else the hidden size), when divisible; with
      ``mcfg`` given, attention weights split only whole (KV) heads;
    * "fsdp": the largest remaining dimension divisible by the axis size
      (any matrix, including ones this list does not name, e.g. a critic head).
  A weight no dimension of which divides stays replicated over that axis.

  Args:
    params: parameter pytree, of arrays or ``jax.ShapeDtypeStruct``.
    mesh: a mesh from :func:`make_mesh`.
    mcfg: optional ``llama.ModelConfig``, for head-aligned tensor splits.

  Returns:
    A pytree of ``PartitionSpec`` with the structure of ``params``.
  """
  fsdp, tensor = _axis_size(mesh, "fsdp"), _axis_size(mesh, "tensor")

  def spec(path, leaf):
    names = [_key_name(p) for p in path]
    stacked = bool(names) and names[0] == _STACKED
    return _leaf_spec(names[-1] if names else None, tuple(leaf.shape), stacked,
                      fsdp, tensor, mcfg)

  return jax.tree_util.tree_map_with_path(spec, params)


def _same_layout(tree: Any, treedef: Any, shapes: list[tuple[int, ...]]) -> bool:
  if jax.tree.structure(tree) != treedef:
    return False
  return [tuple(x.shape) for x in jax.tree.leaves(tree)] == shapes


def state_shardings(state: Any, mesh: Mesh, mcfg: Any = None) -> Any:
  """NamedShardings for a ``TrainState`` (or a dict with a "params" entry).

  The params follow :func:`param_specs`; every subtree laid out like
  the params (Adam's ``mu``/``nu``, ``ref_params``) mirrors them; all other
  leaves (step, key, optimiser counts) are replicated. Works on concrete or
  abstract (``jax.eval_shape``) states, e.g. to restore a checkpoint onto a
  new mesh.
  """
  params = state["params"] if isinstance(state, dict) else state.params
  p_shard = jax.tree.map(lambda s: NamedSharding(mesh, s),
                         param_specs(params, mesh, mcfg))
  treedef = jax.tree.structure(params)
  shapes = [tuple(x.shape) for x in jax.tree.leaves(params)]
  like_params = lambda x: _same_layout(x, treedef, shapes)
  rep = replicated(mesh)
  return jax.tree.map(lambda x: p_shard if like_params(x) else rep, state,
                      is_leaf=like_params)


def shard_train_state(state: Any, mesh: Mesh, mcfg: Any = None,
                      shardings: Any = None) -> Any:
  """Places a (host or single-device) train state onto ``mesh``.

  A jitted identity with ``out_shardings``, which also works across the
  processes of a multi-host run (``jax.device_put`` cannot place typed PRNG
  keys there, and checks every leaf with a collective). Every process must
  pass the same values (the same seeds or checkpoint on every host); this is
  not checked. ``shardings``: the layout to place it in (default
  :func:`state_shardings`; SAC's state splits its env rows too).
  """
  if shardings is None:
    shardings = state_shardings(state, mesh, mcfg)
  return jax.jit(lambda s: s, out_shardings=shardings)(state)


def shard_params(params: Any, mesh: Mesh, mcfg: Any = None) -> Any:
  """Places a parameter pytree onto ``mesh`` by :func:`param_specs` (as
  :func:`shard_train_state` places a whole state)."""
  return shard_train_state({"params": params}, mesh, mcfg)["params"]


def check_rows(num_rows: int, mesh: Mesh, what: str = "rollout rows") -> None:
  """Raises ValueError unless ``num_rows`` splits evenly over the row axes."""
  shards = num_row_shards(mesh)
  if num_rows % shards:
    raise ValueError(
        f"{num_rows} {what} do not split over data x fsdp = {shards} devices; "
        f"choose num_tasks x group_size (and the minibatch rows) as a "
        f"multiple of {shards}")


_ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"
_ENV_AUTO = "LAMER_DISTRIBUTED_AUTO"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           auto: bool | None = None,
                           environ: dict[str, str] | None = None) -> bool:
  """Starts ``jax.distributed`` for a multi-host run, or does nothing.

  Call it first, in every process, with the same command line on every host.
  Arguments left as None are read from the environment:
  ``JAX_COORDINATOR_ADDRESS`` ("host:port" of process 0),
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, and ``LAMER_DISTRIBUTED_AUTO=1``
  for ``auto``. With ``auto`` set, ``jax.distributed.initialize()`` detects
  the cluster itself (Cloud TPU pod slices, SLURM, Open MPI); otherwise the
  coordinator address is required and the process count/id, when missing,
  are left to JAX's detection. Nothing set: a single-host run, no-op.

  Returns:
    True if this call initialised the distributed runtime.
  """
  env = os.environ if environ is None else environ
  if coordinator_address is None:
    coordinator_address = env.get(_ENV_ADDRESS) or None
  if num_processes is None and env.get(_ENV_NUM_PROCESSES):
    num_processes = int(env[_ENV_NUM_PROCESSES])
  if process_id is None and env.get(_ENV_PROCESS_ID):
    process_id = int(env[_ENV_PROCESS_ID])
  if auto is None:
    auto = env.get(_ENV_AUTO, "").lower() in ("1", "true", "yes")
  if coordinator_address is None and not auto:
    if num_processes is not None or process_id is not None:
      raise ValueError(
          f"num_processes/process_id given without a coordinator address: set "
          f"{_ENV_ADDRESS}=host:port (process 0) or {_ENV_AUTO}=1")
    return False
  if jax.distributed.is_initialized():
    return False
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def describe(mesh: Mesh) -> str:
  """One line: axis sizes, device kind and process count."""
  kinds = sorted({d.device_kind for d in mesh.devices.flat})
  procs = len({d.process_index for d in mesh.devices.flat})
  sizes = ", ".join(f"{k}={v}" for k, v in mesh.shape.items())
  return (f"mesh({sizes}) over {mesh.devices.size} x {'/'.join(kinds)} in "
          f"{procs} process(es)")


def addressable_shapes(x: jax.Array) -> list[tuple[int, ...]]:
  """Shapes of the shards of ``x`` this process holds (for tests and logs)."""
  return [tuple(s.data.shape) for s in x.addressable_shards]

