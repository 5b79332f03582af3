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
                 train_reflection: bool, with_state_hidden: bool = False
                 ) -> tuple[jax.Array, ...]:
  """Teacher-forced log-probs and entropies of the generated tokens.

  Args:
    batch: rows [M, C] (tokens, positions, token_mask) plus ``action_allowed``
      bool[M, T, A].
    with_state_hidden: also return the hidden states at the turns' state
      slots (``state_hidden``), from the same forward pass: PPO's value head
      is trained on them without a second forward.

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
  hidden = _hidden(params, mcfg, batch)
  targets = batch["tokens"][:, slots]
  tmask = batch["token_mask"][:, slots]
  logp = jnp.zeros(targets.shape, jnp.float32)
  ent = jnp.zeros(targets.shape, jnp.float32)
  c_idx, f_idx = np.nonzero(constrained)[0], np.nonzero(~constrained)[0]
  if c_idx.size:   # T turns x La action tokens, turn-major
    # Only the table's tokens can be allowed there: the LM head's columns of
    # those tokens give the same masked distribution (as in decode_action).
    columns = jnp.asarray(sampling.action_vocab(codec.action_tokens,
                                                codec.action_lengths))
    weights = llama.head_weights(params, mcfg, columns)
    a_logits = llama.lm_head(params, mcfg, hidden[:, slots[c_idx] - 1], weights)
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
    f_logits = llama.lm_head(params, mcfg, hidden[:, slots[f_idx] - 1])
    f_lp = jax.nn.log_softmax(f_logits.astype(jnp.float32) / temperature, axis=-1)
    f_tok = targets[:, f_idx]
    logp = logp.at[:, f_idx].set(
        jnp.take_along_axis(f_lp, f_tok[..., None], axis=-1)[..., 0])
    ent = ent.at[:, f_idx].set(masked_entropy(f_logits, None, temperature))
  if with_state_hidden:
    return logp, ent, hidden[:, jnp.asarray(layout.state_slots())]
  return logp, ent
