"""The memory a trial carries from attempt to attempt, and the prefix it makes.

After a failed attempt k (not the last), entry k of the memory holds, by
memory mode, the reflection the model wrote and/or the actions it took. The
next attempt's prefix (system prompt) lists the entries of the attempts
before it, each in a fixed-width slot: unused slots are holes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from lamer_jax.agent.context import const, piece_mask
from lamer_jax.agent.layout import ContextLayout


@struct.dataclass
class Memory:
  """M = max(1, N - 1) entries per row.

  Attributes:
    reflection: int32[R, M, Lr] reflection tokens (Lr = reflection budget).
    reflection_mask: bool[R, M, Lr] real reflection tokens.
    history: int32[R, M, T * Ld] "{action}; " per played turn (Ld: widest).
    history_mask: bool[R, M, T * Ld].
    valid: bool[R, M] the entry was written.
  """

  reflection: jax.Array
  reflection_mask: jax.Array
  history: jax.Array
  history_mask: jax.Array
  valid: jax.Array

  @classmethod
  def empty(cls, layout: ContextLayout, rows: int) -> "Memory":
    n_mem = max(1, layout.num_attempts - 1)
    r_len = layout.reflection_tokens
    h_len = layout.num_turns * layout.display_tokens.shape[1]
    return cls(
        reflection=jnp.full((rows, n_mem, r_len), layout.pad_id, jnp.int32),
        reflection_mask=jnp.zeros((rows, n_mem, r_len), jnp.bool_),
        history=jnp.full((rows, n_mem, h_len), layout.pad_id, jnp.int32),
        history_mask=jnp.zeros((rows, n_mem, h_len), jnp.bool_),
        valid=jnp.zeros((rows, n_mem), jnp.bool_))


def _store(buf: jax.Array, slot: jax.Array, on: jax.Array, value) -> jax.Array:
  """buf[:, slot] = value on rows where ``on``. buf: [R, M, ...]; on: bool[R]."""
  old = buf[:, slot]
  on = on.reshape((-1,) + (1,) * (old.ndim - 1))
  return buf.at[:, slot].set(jnp.where(on, value, old))


def prefix_chunk(layout: ContextLayout, memory: Memory, attempt: jax.Array,
                 rows: int) -> tuple[jax.Array, jax.Array]:
  """Tokens and mask int32/bool[R, prefix_len] of attempt ``attempt``'s prefix:
  system open, the memory entries of earlier attempts, system close."""
  parts = [const(layout.prefix_open, rows)]
  masks = [jnp.ones((rows, len(layout.prefix_open)), jnp.bool_)]
  steps = jnp.arange(layout.memory_headers.shape[1])
  hsteps = jnp.arange(layout.history_headers.shape[1])
  for k in range(layout.num_attempts - 1):
    on = memory.valid[:, k] & (k < attempt)  # [R]
    if layout.uses_reflection:
      parts.append(const(layout.memory_headers[k], rows))
      masks.append(on[:, None] & (steps < layout.memory_header_lengths[k])[None])
      parts.append(memory.reflection[:, k])
      masks.append(memory.reflection_mask[:, k] & on[:, None])
    if layout.uses_history:
      parts.append(const(layout.history_headers[k], rows))
      masks.append(on[:, None] & (hsteps < layout.history_header_lengths[k])[None])
      parts.append(memory.history[:, k])
      masks.append(memory.history_mask[:, k] & on[:, None])
    if layout.memory_entry_len:
      parts.append(const(layout.memory_sep, rows))
      masks.append(piece_mask(len(layout.memory_sep), on, rows))
  parts.append(const(layout.prefix_close, rows))
  masks.append(jnp.ones((rows, len(layout.prefix_close)), jnp.bool_))
  return jnp.concatenate(parts, axis=1), jnp.concatenate(masks, axis=1)


def remember(layout: ContextLayout, memory: Memory, attempt: jax.Array,
             write: jax.Array, reflection: jax.Array | None,
             reflection_mask: jax.Array | None, actions: jax.Array,
             played: jax.Array) -> Memory:
  """Memory after attempt ``attempt``: rows where ``write`` (bool[R]) fill
  entry ``attempt`` with their reflection (int32/bool[R, Lr], if the mode
  keeps reflections) and the actions they played (int32/bool[R, T])."""
  slot = jnp.clip(attempt, 0, memory.valid.shape[1] - 1)
  if layout.uses_reflection:
    memory = memory.replace(
        reflection=_store(memory.reflection, slot, write, reflection),
        reflection_mask=_store(memory.reflection_mask, slot, write, reflection_mask))
  if layout.uses_history:
    # "{action}; " for every turn whose action was played, each in a
    # fixed-width slot (an unparsable free-form action shows nothing).
    disp_t = jnp.asarray(layout.display_tokens)
    disp_l = jnp.asarray(layout.display_lengths)
    rows = actions.shape[0]
    d_tok = disp_t[actions].reshape(rows, -1)                          # [R, T*Ld]
    d_mask = ((jnp.arange(disp_t.shape[1])[None, None, :]
               < disp_l[actions][..., None]) & played[..., None]).reshape(rows, -1)
    memory = memory.replace(history=_store(memory.history, slot, write, d_tok),
                            history_mask=_store(memory.history_mask, slot, write,
                                                d_mask))
  return memory.replace(valid=_store(memory.valid, slot, write, write))
