"""A LLaMA-family decoder as pure functions of a parameter pytree.

Covers LLaMA / SmolLM2 (RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or
untied embeddings), Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm).

Parameters are a nested dict of arrays whose per-layer weights are stacked on a
leading ``num_layers`` axis, so the blocks run under one ``lax.scan``: compile
time does not grow with depth, and sharding specs are written once per kind of
weight. The layout (``[in, out]`` matrices) is:

    embed        [V, D]
    layers/attn_norm [N, D]       layers/mlp_norm [N, D]
    layers/wq    [N, D, H*hd]     layers/wk, wv   [N, D, K*hd]   layers/wo [N, H*hd, D]
    layers/bq    [N, H*hd]        layers/bk, bv   [N, K*hd]      (attention_bias)
    layers/q_norm, k_norm [N, hd]                                (qk_norm)
    layers/w_gate, w_up [N, D, F] layers/w_down   [N, F, D]
    final_norm   [D]
    lm_head      [D, V]                                          (untied only)

The KV cache is a fixed-size ring of ``max_len`` slots shared by the batch with a
scalar write index and a per-row validity mask. Rows of different lengths are
handled by the mask (padding slots are simply never attended to), while RoPE
positions are passed explicitly per token, so holes in the cache do not shift
positions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Params = dict[str, Any]

_NEG_INF = -1e30  # finite, so fully-masked (padding) query rows stay NaN-free


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static architecture of a decoder (hashable: usable as a jit static arg)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-5
  tie_embeddings: bool = True
  attention_bias: bool = False      # Qwen2: biases on q, k, v projections
  qk_norm: bool = False             # Qwen3: RMSNorm over each head of q and k
  rope_interleaved: bool = False    # rotate pairs (x[2i], x[2i+1]) (GGUF layout)
  max_position: int = 8192
  dtype: str = "float32"            # compute dtype; parameters stay float32
  remat: bool = False               # rematerialise each block in the backward pass
  # Queries per attention block for long chunks (0: one block). A chunk of L
  # queries over S keys then holds [B, H, block, S] scores at a time instead
  # of [B, H, L, S], in the forward and (each block rematerialised) in the
  # backward: what a training row of thousands of slots needs.
  attention_block: int = 512
  # A chunk of several tokens attending to a KV cache (a prefill) reads only
  # the cache's filled prefix, rounded up to one of at most this many static
  # windows (a ``lax.switch`` on the cache index; 0 or 1: the whole cache).
  # Early turns of a long context then skip the empty slots. One-token steps
  # always read the whole cache: slicing it costs them more than it saves.
  cache_windows: int = 8
  name: str = "llama"

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


@struct.dataclass
class KVCache:
  """Keys/values of every layer for ``max_len`` slots.

  Attributes:
    k, v: [N, B, S, K, hd] cached keys and values (RoPE already applied to k).
    mask: bool[B, S], slot holds a real token of that row.
    index: int32 scalar, next slot to write (shared by all rows).
  """

  k: jax.Array
  v: jax.Array
  mask: jax.Array
  index: jax.Array

  @property
  def max_len(self) -> int:
    return self.k.shape[2]


def init_cache(cfg: ModelConfig, batch: int, max_len: int,
               dtype: Any = None) -> KVCache:
  """An empty cache of ``max_len`` slots for ``batch`` rows."""
  dtype = cfg.compute_dtype if dtype is None else dtype
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                 mask=jnp.zeros((batch, max_len), jnp.bool_),
                 index=jnp.zeros((), jnp.int32))


def init_params(cfg: ModelConfig, key: jax.Array, scale: float = 0.02) -> Params:
  """Random parameters (normal(0, scale) matrices, unit norms, zero biases)."""
  n, d, f, v = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  hq, hk = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  shapes = {"wq": (n, d, hq), "wk": (n, d, hk), "wv": (n, d, hk), "wo": (n, hq, d),
            "w_gate": (n, d, f), "w_up": (n, d, f), "w_down": (n, f, d)}
  keys = jax.random.split(key, len(shapes) + 2)
  layers = {name: scale * jax.random.normal(k, s, jnp.float32)
            for (name, s), k in zip(shapes.items(), keys)}
  layers["attn_norm"] = jnp.ones((n, d), jnp.float32)
  layers["mlp_norm"] = jnp.ones((n, d), jnp.float32)
  if cfg.attention_bias:
    layers["bq"] = jnp.zeros((n, hq), jnp.float32)
    layers["bk"] = jnp.zeros((n, hk), jnp.float32)
    layers["bv"] = jnp.zeros((n, hk), jnp.float32)
  if cfg.qk_norm:
    layers["q_norm"] = jnp.ones((n, cfg.head_dim), jnp.float32)
    layers["k_norm"] = jnp.ones((n, cfg.head_dim), jnp.float32)
  params = {"embed": scale * jax.random.normal(keys[-2], (v, d), jnp.float32),
            "layers": layers, "final_norm": jnp.ones((d,), jnp.float32)}
  if not cfg.tie_embeddings:
    params["lm_head"] = scale * jax.random.normal(keys[-1], (d, v), jnp.float32)
  return params


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """RMSNorm computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (y * weight.astype(jnp.float32)).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float,
               interleaved: bool) -> jax.Array:
  """Rotary embedding. x: [B, L, heads, hd]; positions: int32[B, L]."""
  hd = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, hd/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  if interleaved:
    x1, x2 = x32[..., 0::2], x32[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    out = out.reshape(x.shape)
  else:
    x1, x2 = x32[..., : hd // 2], x32[..., hd // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def _attention(q, k, v, mask, dtype, block: int = 0, prefix=None):
  """q: [B, L, H, hd]; k, v: [B, S, K, hd]; mask: bool[B, L, S] -> [B, L, H*hd].

  ``prefix``: optional (k, v, mask bool[B, P]) of P earlier slots that every
  query may attend to (a KV cache's window), placed before ``k``/``v``.

  With ``0 < block < L`` the queries go through in blocks of ``block`` (a
  ``lax.map`` of rematerialised blocks; the last block padded): the same
  numbers, with the score tensor bounded by the block.
  """
  b, l, h, hd = q.shape
  if 0 < block < l:
    n = -(-l // block)
    pad = n * block - l
    qb = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mb = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
    qb = jnp.moveaxis(qb.reshape(b, n, block, h, hd), 1, 0)
    mb = jnp.moveaxis(mb.reshape(b, n, block, mask.shape[-1]), 1, 0)
    one = jax.checkpoint(lambda xs: _attention(xs[0], k, v, xs[1], dtype,
                                               prefix=prefix),
                         prevent_cse=False)
    out = jax.lax.map(one, (qb, mb))                       # [n, B, block, H*hd]
    return jnp.moveaxis(out, 0, 1).reshape(b, n * block, h * hd)[:, :l]
  if prefix is not None:
    kp, vp, mp = prefix
    k = jnp.concatenate([kp, k], axis=1)
    v = jnp.concatenate([vp, v], axis=1)
    mask = jnp.concatenate([jnp.broadcast_to(mp[:, None, :], (b, l, mp.shape[1])),
                            mask], axis=-1)
  kv = k.shape[2]
  q = q.reshape(b, l, kv, h // kv, hd)
  scores = jnp.einsum("blkgd,bskd->bkgls", q, k,
                      preferred_element_type=jnp.float32) / math.sqrt(hd)
  scores = jnp.where(mask[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  out = jnp.einsum("bkgls,bskd->blkgd", probs, v)
  return out.reshape(b, l, h * hd)


def key_windows(cfg: ModelConfig, max_len: int) -> tuple[int, ...]:
  """The static key windows (prefix lengths, multiples of 128 up to
  ``max_len``) cached attention chooses from."""
  n = max(1, min(cfg.cache_windows, -(-max_len // 128)))
  step = -(-max_len // n // 128) * 128
  return tuple(sorted({min(max_len, step * i) for i in range(1, n + 1)}))


def _block(cfg: ModelConfig, x, layer, positions, attend_mask, kv_in):
  """One decoder block -> (x, (k, v) of the chunk).

  kv_in: None (attention within the chunk) or (k_cache, v_cache, cache_mask,
  windows, which): the chunk also attends to the cache's first
  ``windows[which]`` slots where ``cache_mask`` holds.
  """
  dt = cfg.compute_dtype
  b, l, _ = x.shape
  w = jax.tree.map(lambda a: a.astype(dt), layer)
  h = rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
  q = h @ w["wq"]
  k = h @ w["wk"]
  v = h @ w["wv"]
  if cfg.attention_bias:
    q, k, v = q + w["bq"], k + w["bk"], v + w["bv"]
  q = q.reshape(b, l, cfg.num_heads, cfg.head_dim)
  k = k.reshape(b, l, cfg.num_kv_heads, cfg.head_dim)
  v = v.reshape(b, l, cfg.num_kv_heads, cfg.head_dim)
  if cfg.qk_norm:
    q = rms_norm(q, w["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, w["k_norm"], cfg.rms_norm_eps)
  q = apply_rope(q, positions, cfg.rope_theta, cfg.rope_interleaved)
  k = apply_rope(k, positions, cfg.rope_theta, cfg.rope_interleaved)
  if kv_in is None:
    attn = _attention(q, k, v, attend_mask, dt, cfg.attention_block)
  else:
    k_cache, v_cache, cache_mask, windows, which = kv_in
    window = lambda width: lambda q, k, v, kc, vc, mc: _attention(
        q, k, v, attend_mask, dt, cfg.attention_block,
        prefix=(kc[:, :width].astype(dt), vc[:, :width].astype(dt), mc[:, :width]))
    args = (q, k, v, k_cache, v_cache, cache_mask)
    if len(windows) == 1:
      attn = window(windows[0])(*args)
    else:
      attn = jax.lax.switch(which, [window(width) for width in windows], *args)
  x = x + attn @ w["wo"]
  h = rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
  x = x + (jax.nn.silu(h @ w["w_gate"]) * (h @ w["w_up"])) @ w["w_down"]
  return x, (k, v)


def head_weights(params: Params, cfg: ModelConfig,
                 columns: jax.Array | None = None) -> jax.Array:
  """The vocabulary projection in the compute dtype and its stored layout
  ([V, D] tied, [D, V] untied), or only the ``columns`` (int32[U] token ids)
  of it. Gathering U columns once lets a decoder that may emit only U tokens
  skip the rest of the projection (see :func:`lm_head`'s ``weights``)."""
  if cfg.tie_embeddings:
    w = params["embed"] if columns is None else params["embed"][columns]
  else:
    w = params["lm_head"] if columns is None else params["lm_head"][:, columns]
  return w.astype(cfg.compute_dtype)


def lm_head(params: Params, cfg: ModelConfig, hidden: jax.Array,
            weights: jax.Array | None = None) -> jax.Array:
  """Logits (float32) from final hidden states [..., D] -> [..., V], or
  [..., U] with ``weights = head_weights(params, cfg, columns)``."""
  w = head_weights(params, cfg) if weights is None else weights
  spec = "...d,vd->...v" if cfg.tie_embeddings else "...d,dv->...v"
  return jnp.einsum(spec, hidden, w, preferred_element_type=jnp.float32)


def forward(params: Params, cfg: ModelConfig, tokens: jax.Array,
            positions: jax.Array, cache: KVCache | None = None,
            token_mask: jax.Array | None = None, compute_logits: bool = True,
            ) -> tuple[jax.Array | None, jax.Array, KVCache | None]:
  """Runs the decoder on a chunk of tokens.

  Args:
    params: parameter pytree (see module docstring).
    cfg: the architecture.
    tokens: int32[B, L] token ids.
    positions: int32[B, L] RoPE positions of those tokens.
    cache: optional KV cache. With a cache, the chunk is written to slots
      ``[cache.index, cache.index + L)`` and attends to every earlier valid slot
      of its row; without one, attention is causal within the chunk.
    token_mask: bool[B, L], False for padding tokens (never attended to).
      Defaults to all True.
    compute_logits: if False, skip the (large) vocabulary projection.

  Returns:
    (logits float32[B, L, V] or None, hidden [B, L, D] after the final norm,
    the updated cache or None).
  """
  b, l = tokens.shape
  if token_mask is None:
    token_mask = jnp.ones((b, l), jnp.bool_)
  x = params["embed"].astype(cfg.compute_dtype)[tokens]
  layers = params["layers"]

  causal = jnp.tril(jnp.ones((l, l), jnp.bool_))
  attend = causal[None] & token_mask[:, None, :]     # within the chunk
  if cache is not None:
    # Earlier slots: written before this chunk and holding a real token.
    cache_mask = cache.mask & (jnp.arange(cache.max_len) < cache.index)
    windows = key_windows(cfg, cache.max_len) if l > 1 else (cache.max_len,)
    # The smallest window that holds every slot before the chunk.
    which = jnp.sum(jnp.asarray(windows[:-1]) < cache.index)

  def body(x, xs):
    if cache is None:   # nothing to keep of the keys and values
      return _block(cfg, x, xs, positions, attend, None)[0], None
    layer, k_c, v_c = xs
    return _block(cfg, x, layer, positions, attend,
                  (k_c, v_c, cache_mask, windows, which))

  if cfg.remat:
    body = jax.checkpoint(body, prevent_cse=False)
  xs = layers if cache is None else (layers, cache.k, cache.v)
  x, kv = jax.lax.scan(body, x, xs)
  hidden = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
  logits = lm_head(params, cfg, hidden) if compute_logits else None
  if cache is not None:
    # One write of the chunk's keys and values into every layer's slots
    # (in place when the cache is a loop carry or donated): the layers only
    # read the cache.
    at = (0, 0, cache.index, 0, 0)
    cache = KVCache(
        k=jax.lax.dynamic_update_slice(cache.k, kv[0].astype(cache.k.dtype), at),
        v=jax.lax.dynamic_update_slice(cache.v, kv[1].astype(cache.v.dtype), at),
        mask=jax.lax.dynamic_update_slice(cache.mask, token_mask, (0, cache.index)),
        index=cache.index + l)
  return logits, hidden, cache


def num_params(params: Params) -> int:
  """Total number of parameters."""
  return sum(int(x.size) for x in jax.tree.leaves(params))


# Small named configurations for tests and from-scratch experiments.
TINY_CONFIGS: dict[str, ModelConfig] = {
    "tiny-llama": ModelConfig(vocab_size=259, hidden_size=64, intermediate_size=128,
                              num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                              name="tiny-llama"),
    "tiny-qwen2": ModelConfig(vocab_size=259, hidden_size=64, intermediate_size=128,
                              num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                              attention_bias=True, tie_embeddings=False,
                              rope_theta=1e6, rms_norm_eps=1e-6, name="tiny-qwen2"),
    "tiny-qwen3": ModelConfig(vocab_size=259, hidden_size=64, intermediate_size=128,
                              num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                              qk_norm=True, tie_embeddings=True, rope_theta=1e6,
                              rms_norm_eps=1e-6, name="tiny-qwen3"),
    "small-llama": ModelConfig(vocab_size=259, hidden_size=128, intermediate_size=384,
                               num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                               name="small-llama"),
    # One block: half the cost of tiny-llama; the CPU learning test trains it.
    "micro-llama": ModelConfig(vocab_size=259, hidden_size=64, intermediate_size=128,
                               num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16,
                               name="micro-llama"),
}
