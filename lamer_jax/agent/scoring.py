"""Scoring rows the policy wrote: teacher-forced log-probs and entropies.

The loss of every on-policy method recomputes the log-probs of the tokens the
rollout generated with one teacher-forced forward pass over the attempt's row,
under the same sampling distribution (temperature, and for constrained
actions the candidate table's prefix mask), so importance ratios are exact.
The same pass can hand out the hidden states at each turn's state slot, the
inputs of PPO's value head (``state_hidden``).
Candidate-level scores (the policy over an env's candidates) are
``models.sampling.score_candidates``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lamer_jax.agent.layout import ContextLayout
from lamer_jax.models import llama, sampling


def masked_entropy(logits: jax.Array, allowed: jax.Array | None = None,
                   temperature: float | jax.Array = 1.0) -> jax.Array:
  """Entropy (nats) of ``softmax(logits / temperature)`` over allowed tokens.

  Under constrained decoding the policy is the renormalised distribution over
  the allowed tokens, so that is the distribution whose entropy is returned.

  Args:
    logits: f32[..., V].
    allowed: bool[..., V] (broadcastable), tokens the sampler may pick; None
      means all.
    temperature: sampling temperature (> 0).

  Returns:
    f32[...]; 0 where no token is allowed.
  """
  z = logits.astype(jnp.float32) / temperature
  if allowed is None:
    allowed = jnp.ones(z.shape, jnp.bool_)
  allowed = jnp.broadcast_to(allowed, z.shape)
  z = jnp.where(allowed, z, -jnp.inf)
  any_allowed = allowed.any(-1, keepdims=True)
  # A row with nothing allowed would be all -inf: give it finite logits, the
  # result is zeroed below.
  z = jnp.where(any_allowed, z, 0.0)
  logq = jax.nn.log_softmax(z, axis=-1)
  logq = jnp.where(allowed, logq, 0.0)          # no -inf * 0 in value or grad
  h = -(jnp.exp(logq) * logq * allowed).sum(-1)
  return jnp.where(any_allowed[..., 0], h, 0.0)


def _hidden(params, mcfg: llama.ModelConfig, batch: dict[str, jax.Array]
            ) -> jax.Array:
  """The decoder's final hidden states over the rows, [M, C, D]."""
  _, hidden, _ = llama.forward(params, mcfg, batch["tokens"], batch["positions"],
                               token_mask=batch["token_mask"], compute_logits=False)
  return hidden


def pack_lengths(context_len: int, buckets: int) -> tuple[int, ...]:
  """The static lengths a packed forward picks from: ``buckets`` evenly
  spaced lengths up to C, each rounded up to a multiple of 128 (or C)."""
  if buckets < 1:
    raise ValueError(f"update_pack_buckets must be >= 1 to pack (0: off), got {buckets}")
  return tuple(sorted({min(context_len, -(-context_len * i // buckets // 128) * 128)
                       for i in range(1, buckets + 1)}))


def hidden_at(params, mcfg: llama.ModelConfig, batch: dict[str, jax.Array],
              query_slots: np.ndarray, pack_buckets: int = 0) -> jax.Array:
  """The decoder's final hidden states at ``query_slots`` of every row,
  [M, Q, D].

  ``pack_buckets`` > 0: each row's real slots (``token_mask``) move to its
  front, in order, with their positions, and the decoder runs over the
  smallest of ``pack_lengths(C, pack_buckets)`` that holds the longest row
  of the batch (a ``lax.switch``: one compiled forward per length). Hole
  slots are never attended to, so a real slot's hidden state is the same
  as without packing, up to float rounding; a query slot that is a hole
  gets the state of the real slot before it (its loss entries are masked).
  """
  query_slots = jnp.asarray(query_slots)
  if not pack_buckets:
    return _hidden(params, mcfg, batch)[:, query_slots]
  real = batch["token_mask"]
  c = real.shape[1]
  order = jnp.argsort(~real, axis=1, stable=True)         # real slots first
  packed_index = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)[:, query_slots]
  lengths = pack_lengths(c, pack_buckets)
  longest = real.sum(axis=1).max()
  which = jnp.sum(jnp.asarray(lengths[:-1]) < longest)

  def run(length):
    def branch(params):
      take = lambda a: jnp.take_along_axis(a, order[:, :length], axis=1)
      hidden = _hidden(params, mcfg, {"tokens": take(batch["tokens"]),
                                      "positions": take(batch["positions"]),
                                      "token_mask": take(real)})
      return jnp.take_along_axis(hidden, packed_index[..., None], axis=1)
    return branch

  if len(lengths) == 1:
    return run(lengths[0])(params)
  return jax.lax.switch(which, [run(n) for n in lengths], params)


def state_hidden(params, mcfg: llama.ModelConfig, layout: ContextLayout,
                 batch: dict[str, jax.Array]) -> jax.Array:
  """Hidden states at each turn's state slot (``layout.state_slots``), from
  a forward with no vocabulary projection: a value head's inputs, [M, T, D].

  Args:
    batch: rows [M, C] (tokens, positions, token_mask).
  """
  return _hidden(params, mcfg, batch)[:, jnp.asarray(layout.state_slots())]


def row_logprobs(params, mcfg: llama.ModelConfig, layout: ContextLayout,
                 batch: dict[str, jax.Array], temperature: float,
                 train_reflection: bool, with_state_hidden: bool = False,
                 pack_buckets: int = 0) -> tuple[jax.Array, ...]:
  """Teacher-forced log-probs and entropies of the generated tokens.

  Args:
    batch: rows [M, C] (tokens, positions, token_mask) plus ``action_allowed``
      bool[M, T, A].
    with_state_hidden: also return the hidden states at the turns' state
      slots (``state_hidden``), from the same forward pass: PPO's value head
      is trained on them without a second forward.
    pack_buckets: > 0 packs each row's real slots before the forward
      (``hidden_at``): the same numbers up to float rounding, less work on
      rows with holes.

  Returns:
    (logp f32[M, K], entropy f32[M, K]) at the slots
    ``layout.loss_slot_kinds(train_reflection)``; with ``with_state_hidden``,
    then the hidden states [M, T, D].
  """
  codec = layout.codec
  m = batch["tokens"].shape[0]
  t_n, la = layout.num_turns, layout.action_len
  slots_np, constrained = layout.loss_slot_kinds(train_reflection)
  slots = jnp.asarray(slots_np)
  c_idx, f_idx = np.nonzero(constrained)[0], np.nonzero(~constrained)[0]
  state_slots = layout.state_slots() if with_state_hidden else np.zeros((0,), int)
  # Every hidden state the loss reads: before each scored token, the states.
  queries = np.concatenate([slots_np[c_idx] - 1, slots_np[f_idx] - 1, state_slots])
  hidden = hidden_at(params, mcfg, batch, queries, pack_buckets)
  h_act, h_free, h_state = jnp.split(hidden, [c_idx.size, c_idx.size + f_idx.size],
                                     axis=1)
  targets = batch["tokens"][:, slots]
  tmask = batch["token_mask"][:, slots]
  logp = jnp.zeros(targets.shape, jnp.float32)
  ent = jnp.zeros(targets.shape, jnp.float32)
  if c_idx.size:   # T turns x La action tokens, turn-major
    # Only the table's tokens can be allowed there: the LM head's columns of
    # those tokens give the same masked distribution (as in decode_action).
    columns = jnp.asarray(sampling.action_vocab(codec.action_tokens,
                                                codec.action_lengths))
    weights = llama.head_weights(params, mcfg, columns)
    a_logits = llama.lm_head(params, mcfg, h_act, weights)
    a_logits = a_logits.reshape(m * t_n, la, -1)                      # [., La, U]
    a_tok = sampling.to_columns(targets[:, c_idx], columns).reshape(m * t_n, la)
    a_mask = tmask[:, c_idx].reshape(m * t_n, la)
    allowed = batch["action_allowed"].reshape(m * t_n, -1)
    a_logp, a_allowed = sampling.action_token_logprobs(
        a_logits, a_tok, a_mask, sampling.to_columns(
            jnp.asarray(codec.action_tokens), columns),
        jnp.asarray(codec.action_lengths), allowed, temperature,
        return_allowed=True)
    a_ent = masked_entropy(a_logits, a_allowed, temperature)
    logp = logp.at[:, c_idx].set(a_logp.reshape(m, -1))
    ent = ent.at[:, c_idx].set(a_ent.reshape(m, -1))
  if f_idx.size:   # thinking, free-form actions, reflections: whole vocabulary
    f_logits = llama.lm_head(params, mcfg, h_free)
    f_lp = jax.nn.log_softmax(f_logits.astype(jnp.float32) / temperature, axis=-1)
    f_tok = targets[:, f_idx]
    logp = logp.at[:, f_idx].set(
        jnp.take_along_axis(f_lp, f_tok[..., None], axis=-1)[..., 0])
    ent = ent.at[:, f_idx].set(masked_entropy(f_logits, None, temperature))
  if with_state_hidden:
    return logp, ent, h_state
  return logp, ent
