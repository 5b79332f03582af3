"""Acting: after a turn's prompt, the policy writes its (thinking and) action.

A turn's generated pieces, as ``ContextLayout.turn_piece_lengths`` orders
them: optional free thinking after "<think>" (then "</think>" unless the model
wrote it, and "\\n<action>", fed), then the action span, decoded

* ``constrained``: under the candidate table's prefix mask, so every action is
  an allowed candidate (``sampling.decode_action``);
* ``free``: freely up to the table's width, stopping at "</action>", then
  parsed by exact token match against the allowed candidates
  (``sampling.match_action``); a span that matches none is an invalid action.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lamer_jax.agent import layout as layout_lib
from lamer_jax.agent.context import (Context, Span, const, feed_pieces,
                                     generated_span, piece_mask, span_positions)
from lamer_jax.agent.layout import ContextLayout
from lamer_jax.models import llama, sampling


def _ends_with(gen: sampling.GenerateOutput, token: int) -> jax.Array:
  """bool[R]: the row's last generated token is ``token``."""
  last = jnp.take_along_axis(gen.tokens, jnp.maximum(gen.lengths - 1, 0)[:, None],
                             axis=1)[:, 0]
  return (gen.lengths > 0) & (last == token)


def think(params, mcfg: llama.ModelConfig, ctx: Context, layout: ContextLayout,
          key: jax.Array, active: jax.Array, samp: sampling.SamplingConfig
          ) -> tuple[Context, dict[str, Span]]:
  """Free thinking tokens after "<think>", up to ``layout.think_tokens``, then
  the fed tail: "</think>" unless the row wrote it, and "\\n<action>".

  Returns the context and the spans ``{THINK: ..., THINK_TAIL: ...}``.
  """
  rows = active.shape[0]
  gen = sampling.generate(
      params, mcfg, key, ctx.cache, ctx.last_logits, ctx.next_pos,
      max_new_tokens=layout.think_tokens, sampling=samp,
      stop_tokens=(layout.eos_id,), stop_sequence=layout.think_stop,
      pad_id=layout.pad_id, active=active)
  closed = gen.stopped & active & ~_ends_with(gen, layout.eos_id)
  ctx, thought = generated_span(ctx, gen, active, layout.pad_id)
  ctx, tail = feed_pieces(params, mcfg, ctx, [
      (const(layout.think_close, rows),
       piece_mask(len(layout.think_close), active & ~closed, rows)),
      (const(layout.action_open, rows),
       piece_mask(len(layout.action_open), active, rows))])
  return ctx, {layout_lib.THINK: thought, layout_lib.THINK_TAIL: tail}


def free_action(params, mcfg: llama.ModelConfig, ctx: Context,
                layout: ContextLayout, key: jax.Array, active: jax.Array,
                allowed: jax.Array, samp: sampling.SamplingConfig
                ) -> tuple[Context, Span, jax.Array, jax.Array]:
  """The "free" action mode: up to ``action_len`` tokens after "<action>"
  (stopping at "</action>" or end of turn), parsed against the candidate
  table (actions followed by "</action>", tokenized canonically).

  Returns (ctx, span, int32[R] matched candidate (0 if none), bool[R] the
  span is an allowed candidate).
  """
  codec = layout.codec
  gen = sampling.generate(
      params, mcfg, key, ctx.cache, ctx.last_logits, ctx.next_pos,
      max_new_tokens=layout.action_len, sampling=samp,
      stop_tokens=(layout.eos_id,), stop_sequence=layout.action_stop,
      pad_id=layout.pad_id, active=active)
  ctx, span = generated_span(ctx, gen, active, layout.pad_id)
  index, parsed = sampling.match_action(
      span.tokens, span.real, jnp.asarray(codec.action_tokens),
      jnp.asarray(codec.action_lengths), allowed)
  return ctx, span, index, parsed


def constrained_action(params, mcfg: llama.ModelConfig, ctx: Context,
                       layout: ContextLayout, key: jax.Array, active: jax.Array,
                       allowed: jax.Array, samp: sampling.SamplingConfig
                       ) -> tuple[Context, Span, jax.Array, jax.Array]:
  """The "constrained" action mode: one allowed candidate, decoded under the
  table's prefix mask. Returns (ctx, span, int32[R] candidate, bool[R] parsed,
  which is ``active``: a constrained action is always a candidate)."""
  codec = layout.codec
  out = sampling.decode_action(
      params, mcfg, key, ctx.cache, ctx.last_logits, ctx.next_pos,
      jnp.asarray(codec.action_tokens), jnp.asarray(codec.action_lengths),
      allowed, samp, layout.pad_id,
      vocab_subset=jnp.asarray(sampling.action_vocab(codec.action_tokens,
                                                     codec.action_lengths)))
  span = Span(tokens=out.tokens, positions=span_positions(ctx.next_pos, out.mask),
              real=out.mask, generated=out.mask, logp=out.token_logprobs)
  ctx = Context(cache=out.cache, last_logits=out.last_logits,
                next_pos=out.next_positions)
  return ctx, span, out.index, active


def act(params, mcfg: llama.ModelConfig, ctx: Context, layout: ContextLayout,
        action_key: jax.Array, think_key: jax.Array, active: jax.Array,
        allowed: jax.Array, samp: sampling.SamplingConfig
        ) -> tuple[Context, dict[str, Span], jax.Array, jax.Array]:
  """The policy's part of a turn, after its prompt was fed.

  Args:
    action_key, think_key: PRNG keys of the action and the thinking span.
    active: bool[R] rows that play this turn.
    allowed: bool[R, A] allowed candidates (all False on inactive rows).

  Returns:
    (ctx, the turn's generated pieces by name, int32[R] chosen candidate,
    bool[R] the action is an allowed candidate).
  """
  spans = {}
  if layout.thinks:
    ctx, thought = think(params, mcfg, ctx, layout, think_key, active, samp)
    spans.update(thought)
  decode = free_action if layout.action_mode == "free" else constrained_action
  ctx, spans[layout_lib.ACTION], index, parsed = decode(
      params, mcfg, ctx, layout, action_key, active, allowed, samp)
  return ctx, spans, index, parsed
