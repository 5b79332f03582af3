"""Feeding a batch of growing contexts: the KV cache, row spans, prompt pieces.

Every row of a rollout batch has its own context, written into one KV cache of
C slots per row. A chunk of prompt tokens is *fed* (one forward pass that
writes the cache); generated tokens are written by the samplers. Either way
the rollout records what entered the row as a :class:`Span`, and the spans,
in the order of ``ContextLayout.pieces()``, make the attempt's training row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from lamer_jax import sharding
from lamer_jax.models import llama, sampling


@struct.dataclass
class Context:
  """The decoding state of R rows between calls.

  Attributes:
    cache: the rows' KV cache.
    last_logits: float32[R, V] logits predicting each row's next token.
    next_pos: int32[R] RoPE position of each row's next token.
  """

  cache: llama.KVCache
  last_logits: jax.Array
  next_pos: jax.Array


@struct.dataclass
class Span:
  """L consecutive slots of R rows, as they entered the context.

  Attributes:
    tokens: int32[R, L] token ids (padding where not real).
    positions: int32[R, L] RoPE positions (0 where not real).
    real: bool[R, L] slots the model saw (False: holes, never attended to).
    generated: bool[R, L] slots the policy sampled (they carry a loss).
    logp: float32[R, L] behaviour log-probs of generated slots, 0 elsewhere.
  """

  tokens: jax.Array
  positions: jax.Array
  real: jax.Array
  generated: jax.Array
  logp: jax.Array

  @property
  def width(self) -> int:
    return self.tokens.shape[1]

  @classmethod
  def prompt(cls, tokens, positions, real) -> "Span":
    """A fed span: nothing in it was generated."""
    return cls(tokens=tokens, positions=positions, real=real,
               generated=jnp.zeros_like(real),
               logp=jnp.zeros(real.shape, jnp.float32))

  @classmethod
  def concat(cls, spans: list["Span"]) -> "Span":
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *spans)


def empty_context(mcfg: llama.ModelConfig, rows: int, context_len: int,
                  mesh: jax.sharding.Mesh | None = None) -> Context:
  """R empty contexts of ``context_len`` slots (rows split over ``mesh``)."""
  cache = llama.init_cache(mcfg, rows, context_len)
  cache = sharding.constrain_kv_cache(cache, mesh)  # [sharding] no-op w/o mesh
  return Context(cache=cache,
                 last_logits=jnp.zeros((rows, mcfg.vocab_size), jnp.float32),
                 next_pos=jnp.zeros((rows,), jnp.int32))


def const(piece, rows: int) -> jax.Array:
  """A constant token piece, int32[rows, len(piece)]."""
  return jnp.broadcast_to(jnp.asarray(piece, jnp.int32), (rows, len(piece)))


def piece_mask(length: int, on: jax.Array, rows: int) -> jax.Array:
  """bool[rows, length]: the whole piece where ``on`` (bool[rows]), else none."""
  return jnp.broadcast_to(jnp.asarray(on)[..., None], (rows, length))


def span_positions(next_pos: jax.Array, mask: jax.Array) -> jax.Array:
  """RoPE positions of a span whose real tokens are a prefix of it."""
  return jnp.where(mask, next_pos[:, None] + jnp.cumsum(mask, axis=1) - 1, 0)


def feed(params, mcfg: llama.ModelConfig, ctx: Context, tokens: jax.Array,
         mask: jax.Array) -> tuple[Context, Span]:
  """Writes a prompt chunk int32[R, L] (real where ``mask``) into the contexts.

  Returns the new context (its ``last_logits`` predict the token after each
  row's last real slot; rows with no real slot keep theirs) and the chunk's
  span.
  """
  csum = jnp.cumsum(mask.astype(jnp.int32), axis=1)
  positions = ctx.next_pos[:, None] + csum - 1
  positions = jnp.where(mask, positions, 0)
  _, hidden, cache = llama.forward(params, mcfg, tokens, positions, ctx.cache, mask,
                                   compute_logits=False)
  length = tokens.shape[1]
  last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)
  h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  logits = llama.lm_head(params, mcfg, h_last)
  any_real = jnp.any(mask, axis=1)
  ctx = Context(cache=cache,
                last_logits=jnp.where(any_real[:, None], logits, ctx.last_logits),
                next_pos=ctx.next_pos + csum[:, -1])
  return ctx, Span.prompt(tokens, positions, mask)


def feed_pieces(params, mcfg: llama.ModelConfig, ctx: Context,
                pieces: list[tuple[jax.Array, jax.Array]]) -> tuple[Context, Span]:
  """Feeds several (tokens [R, Li], mask [R, Li]) pieces as one chunk."""
  tokens = jnp.concatenate([t for t, _ in pieces], axis=1)
  mask = jnp.concatenate([m for _, m in pieces], axis=1)
  return feed(params, mcfg, ctx, tokens, mask)


def generated_span(ctx: Context, gen: sampling.GenerateOutput, active: jax.Array,
                   pad_id: int) -> tuple[Context, Span]:
  """The context after ``sampling.generate`` and the span it wrote; rows not
  ``active`` (bool[R]) wrote nothing."""
  mask = gen.mask & active[:, None]
  tokens = jnp.where(mask, gen.tokens, pad_id)
  span = Span(tokens=tokens, positions=span_positions(ctx.next_pos, mask),
              real=mask, generated=mask, logp=jnp.where(mask, gen.logprobs, 0.0))
  ctx = Context(cache=gen.cache, last_logits=gen.last_logits,
                next_pos=gen.next_positions)
  return ctx, span
