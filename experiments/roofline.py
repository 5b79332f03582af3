"""The machine's limits, measured, and what a decoded token costs against them.

A benchmark row says what fraction of the limit it reaches: decoding one
token of a decoder reads every weight once per step (shared by the batch) and
its row's KV cache, and does about two FLOPs per weight plus the attention's
four per key and head dimension. Against the memory bandwidth (a large copy)
and the matmul peak (a large ``jnp.dot``) that this module measures on the
machine at hand, a row's tokens/s is a fraction of each limit:

    limits = measure_limits()
    cost = decode_cost(cfg, batch=16, context=96)
    fractions(tokens_per_s, cost, limits)   # {"bandwidth": 0.31, "flops": 0.04}

Both limits are best-of-n timings of all the cores together (XLA's CPU
runtime splits the copy and the dot over its threads), so a fraction near 1
is as fast as this machine can go.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Limits:
  bandwidth: float       # bytes/s, read + write of a large copy
  flops: float           # FLOP/s of a large float32 matmul
  device: str


def _best(fn, arg, repeats: int) -> float:
  jax.block_until_ready(fn(arg))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(arg))
    best = min(best, time.perf_counter() - t)
  return best


def measure_limits(copy_mib: int = 512, dot_n: int = 2048, repeats: int = 5) -> Limits:
  """Copy bandwidth (a ``copy_mib`` MiB float32 array, read and written in place) and
  matmul peak (``dot_n`` square float32 ``jnp.dot``) of the default device."""
  # In place (donated): one read and one write per element. A copy into a
  # fresh buffer would time the kernel's page faults (a tenth of this).
  copy = jax.jit(lambda a: a + 1.0, donate_argnums=0)
  holder = [copy(jnp.ones((copy_mib * 2**20 // 4,), jnp.float32))]

  def step(_):
    holder[0] = copy(holder[0])
    return holder[0]
  t_copy = _best(step, None, repeats)
  del holder
  a = jnp.ones((dot_n, dot_n), jnp.float32)
  dot = jax.jit(lambda m: jnp.dot(m, m))
  t_dot = _best(dot, a, repeats)
  return Limits(bandwidth=2 * copy_mib * 2**20 / t_copy, flops=2 * dot_n**3 / t_dot,
                device=str(jax.devices()[0].platform))


@dataclasses.dataclass(frozen=True)
class TokenCost:
  bytes: float           # bytes read per decoded token
  flops: float           # FLOPs per decoded token


def matmul_params(cfg, vocab: int | None = None) -> int:
  """Weights multiplied per token: the blocks' projections and the LM head
  (``vocab`` of its columns; all of them by default)."""
  h, i = cfg.hidden_size, cfg.intermediate_size
  q = cfg.num_heads * cfg.head_dim
  kv = cfg.num_kv_heads * cfg.head_dim
  block = h * q + 2 * h * kv + q * h + 3 * h * i
  return cfg.num_layers * block + (cfg.vocab_size if vocab is None else vocab) * h


def decode_cost(cfg, batch: int, context: float, weight_bytes: int = 4,
                cache_bytes: int = 4, vocab: int | None = None) -> TokenCost:
  """Per decoded token at ``batch`` rows attending to ``context`` keys: the
  weights (read once per step, shared by the rows) plus the row's KV cache;
  2 FLOPs per weight plus 4 per key, head and head dimension (scores and
  values). ``vocab``: LM-head columns projected (all by default)."""
  weights = matmul_params(cfg, vocab) * weight_bytes / batch
  kv = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * context * cache_bytes
  flops = (2 * matmul_params(cfg, vocab)
           + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context)
  return TokenCost(bytes=weights + kv, flops=flops)


def fractions(tokens_per_s: float, cost: TokenCost, limits: Limits) -> dict[str, float]:
  """The fraction of each limit that ``tokens_per_s`` reaches."""
  return {"bandwidth": tokens_per_s * cost.bytes / limits.bandwidth,
          "flops": tokens_per_s * cost.flops / limits.flops}


def describe(limits: Limits) -> str:
  return (f"measured limits ({limits.device}): copy bandwidth "
          f"{limits.bandwidth / 1e9:.1f} GB/s, float32 matmul "
          f"{limits.flops / 1e9:.1f} GFLOP/s")

