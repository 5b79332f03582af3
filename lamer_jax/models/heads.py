"""Small MLP heads on the decoder's hidden states: PPO's value head, SAC's Q heads.

Parameters are plain dicts of arrays (like the decoder's, see ``llama``), so
they shard, checkpoint and Polyak-average as any other pytree:

    head = heads.init_mlp(key, in_dim=cfg.hidden_size, hidden=(256, 256))
    v = heads.apply_mlp(head, hidden_states)          # [..., D] -> [...]
    twin = heads.init_twin(key, cfg.hidden_size, hidden=(256, 256))
    q1, q2 = heads.apply_twin(twin, hidden_states)    # [..., D] -> 2 x [...]

Heads compute in float32 whatever the decoder's dtype. The last layer starts at
zero, so a fresh head predicts 0 for every input (a neutral value / Q estimate,
and no large early targets); its hidden layers use He-normal initialisation
for the ReLU.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

Params = dict[str, Any]


def init_mlp(key: jax.Array, in_dim: int, hidden: Sequence[int] = (256, 256),
             out_dim: int = 1) -> Params:
  """An MLP ``in_dim -> hidden... -> out_dim`` with ReLU between layers.

  Returns:
    ``{"layers": [{"w": f32[i, o], "b": f32[o]}, ...]}``.
  """
  dims = [int(in_dim), *[int(h) for h in hidden], int(out_dim)]
  if min(dims) < 1:
    raise ValueError(f"every layer width must be >= 1, got {dims}")
  keys = jax.random.split(key, len(dims) - 1)
  layers = []
  for i, (k, d_in, d_out) in enumerate(zip(keys, dims[:-1], dims[1:])):
    last = i == len(dims) - 2
    w = (jnp.zeros((d_in, d_out), jnp.float32) if last else
         jax.random.normal(k, (d_in, d_out), jnp.float32) * jnp.sqrt(2.0 / d_in))
    layers.append({"w": w, "b": jnp.zeros((d_out,), jnp.float32)})
  return {"layers": layers}


def apply_mlp(params: Params, x: jax.Array) -> jax.Array:
  """``[..., in_dim] -> [...]`` (``out_dim == 1``) or ``[..., out_dim]``."""
  h = x.astype(jnp.float32)
  layers = params["layers"]
  for i, layer in enumerate(layers):
    h = h @ layer["w"] + layer["b"]
    if i < len(layers) - 1:
      h = jax.nn.relu(h)
  return h[..., 0] if h.shape[-1] == 1 else h


def init_twin(key: jax.Array, in_dim: int, hidden: Sequence[int] = (256, 256)
              ) -> Params:
  """Two independent scalar heads (SAC's twin critics), ``{"q1", "q2"}``."""
  k1, k2 = jax.random.split(key)
  return {"q1": init_mlp(k1, in_dim, hidden), "q2": init_mlp(k2, in_dim, hidden)}


def apply_twin(params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Both heads on the same inputs: ``(q1 [...], q2 [...])``."""
  return apply_mlp(params["q1"], x), apply_mlp(params["q2"], x)
