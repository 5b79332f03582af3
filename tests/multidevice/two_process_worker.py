"""One of two processes (4 fake CPU devices each) sharing an 8-device mesh.

Run by ``tests/test_sharding.py::test_two_processes``; reads the coordinator
settings from the environment like a multi-host run, places a train state on
a ``data=2 x fsdp=4`` mesh spanning both processes, and computes, with rows
split across the processes, the task seeds of the first step and the
gradient of a loss over a batch of rows. Writes them as JSON to argv[1].
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from lamer_jax import sharding
from lamer_jax.agent.trial import task_seeds
from lamer_jax.algos import lamer as train_lib
from lamer_jax.models import llama

MCFG = llama.TINY_CONFIGS["tiny-llama"]
ROWS, LENGTH = 8, 12


def batch():
  """The same token rows on every process (and in the single-process check)."""
  tokens = jax.random.randint(jax.random.key(7), (ROWS, LENGTH), 0,
                              MCFG.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(LENGTH), (ROWS, LENGTH))
  return tokens, positions


def init_state():
  algo = train_lib.AlgoConfig()
  params = llama.init_params(MCFG, jax.random.key(0))
  return train_lib.init_train_state(params, algo, jax.random.key(1))


def seeds_and_grads(state, tokens, positions, mesh=None):
  """First-step task seeds; per-row losses; gradient norm and a checksum."""
  _, k_task, _, _ = jax.random.split(state.key, 4)
  seeds = task_seeds(k_task, ROWS // 2)
  tokens, positions = sharding.constrain_rows((tokens, positions), mesh)

  def loss_fn(params):
    _, hidden, _ = llama.forward(params, MCFG, tokens, positions)
    row_loss = jnp.mean(jnp.square(hidden), axis=(1, 2))   # [ROWS]
    return jnp.mean(row_loss), row_loss

  (_, row_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  checksum = sum(jnp.sum(g * (i + 1)) for i, g in enumerate(jax.tree.leaves(grads)))
  return seeds, row_loss, jnp.sqrt(sum(jnp.sum(g * g) for g in
                                       jax.tree.leaves(grads))), checksum


def main(out_path: str) -> None:
  assert sharding.initialize_distributed(), "coordinator settings missing"
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
  # One compiled init instead of dozens of eager ops (each compiled).
  state = sharding.shard_train_state(jax.jit(init_state)(), mesh, MCFG)
  tokens, positions = jax.device_put(batch(), sharding.replicated(mesh))
  fn = jax.jit(lambda s, t, p: seeds_and_grads(s, t, p, mesh),
               out_shardings=sharding.replicated(mesh))
  seeds, row_loss, grad_norm, checksum = fn(state, tokens, positions)
  wq = state.params["layers"]["wq"]
  result = {
      "process": jax.process_index(), "processes": jax.process_count(),
      "devices": jax.device_count(), "local_devices": jax.local_device_count(),
      "wq_local_shards": sharding.addressable_shapes(wq),
      "wq_global_shape": list(wq.shape),
      "seeds": np.asarray(seeds).tolist(),
      "row_loss": np.asarray(row_loss).tolist(),
      "grad_norm": float(grad_norm), "checksum": float(checksum),
  }
  multihost_utils.sync_global_devices("done")
  with open(out_path, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main(sys.argv[1])
