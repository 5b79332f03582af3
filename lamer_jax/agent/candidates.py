"""An LLM policy over an env's candidate actions, with Q heads (SAC-GLAM).

The policy scores each allowed candidate by the sum of its token log-probs after
the prompt (no length normalisation, as MAGELLAN; ``score="mean"`` divides by
the candidate's length, for from-scratch models) and is the softmax of those
scores over the allowed candidates. The critic reads the decoder's hidden state
at the end of prompt + candidate (REFERENCES.md). Both come from ONE pass:

1. the prompts ``[system] user(obs) <action>`` of a batch of states are
   prefilled once into a KV cache;
2. the cache is repeated for the ``M`` candidates each state allows (not the
   whole table: Playground allows at most 8 of its ~100), and the candidates
   run as teacher-forced continuations on those copies, so the prompt is
   never recomputed per candidate.

The prompt has a static shape: ``prefix | observation tokens (padded to the
codec's capacity) | suffix``. Its padding sits in the middle and is masked
out of attention, and positions skip it, so the last prompt token is always
at index ``P - 1`` and the candidates continue at position ``length``.

    prompt = CandidatePrompt.build(tokenizer, env, short=True)
    out = candidate_outputs(params, cfg, prompt, symbols, mask, heads=twin)
    out.logp     # f32[B, M] log pi(a | s) over the allowed candidates (-inf elsewhere)
    out.q        # (q1, q2) f32[B, M], or None without heads
    out.actions  # int32[B, M] the candidates' indices into env.action_strings
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.text import TextCodec
from lamer_jax import sac_losses
from lamer_jax.agent.layout import ACTION_CLOSE, ACTION_OPEN, chat_pieces
from lamer_jax.models import heads as heads_lib
from lamer_jax.models import llama


def _tokens(tokenizer, text: str) -> np.ndarray:
  return np.asarray(tokenizer.encode(text, add_special_tokens=False) if text else [],
                    np.int32)


SCORES = ("sum", "mean")     # a candidate's score: its token log-probs' sum or mean


def max_allowed(env) -> int:
  """The most candidates ``env`` allows at once (``env.max_allowed_actions``
  where the game declares it, else its whole table)."""
  return int(getattr(env, "max_allowed_actions", env.num_actions))


@dataclasses.dataclass(frozen=True, eq=False)
class CandidatePrompt:
  """The static pieces of the candidate policy's prompt (host side, once).

  Attributes:
    codec: the env's codec (candidates end with ``</action>``, which makes
      the table prefix-free).
    prefix, suffix: int32 tokens before and after the observation.
    num_candidates: M, candidates scored per state (``max_allowed(env)``).
    score: one of ``SCORES``, how token log-probs make a candidate's score.
  """

  codec: TextCodec
  prefix: np.ndarray
  suffix: np.ndarray
  num_candidates: int
  score: str = "sum"

  @classmethod
  def build(cls, tokenizer, env, *, short: bool = False,
            score: str = "sum") -> "CandidatePrompt":
    """``short``: no instructions, only the observation and ``<action>`` (for
    from-scratch models, which get nothing from English rules). ``score``:
    one of ``SCORES``."""
    if score not in SCORES:
      raise ValueError(f"candidate score must be one of {SCORES}, got {score!r}")
    chat = chat_pieces(tokenizer)
    codec = TextCodec.for_env(tokenizer, env, action_terminator=ACTION_CLOSE)
    if short:
      prefix = chat.user_open
    else:
      prefix = (chat.system_open + env.instructions + "\nAnswer with exactly one "
                f"action inside {ACTION_OPEN}...{ACTION_CLOSE}." + chat.system_close
                + chat.user_open)
    return cls(codec=codec, prefix=_tokens(tokenizer, prefix),
               suffix=_tokens(tokenizer, chat.user_close + ACTION_OPEN),
               num_candidates=min(max_allowed(env), env.num_actions), score=score)

  @property
  def prompt_len(self) -> int:
    return len(self.prefix) + self.codec.max_tokens + len(self.suffix)

  @property
  def candidate_len(self) -> int:
    return int(self.codec.action_tokens.shape[1])

  @property
  def context_len(self) -> int:
    return self.prompt_len + self.candidate_len

  def prompts(self, symbols: jax.Array) -> tuple[jax.Array, jax.Array]:
    """int32[B, S] symbols -> (tokens int32[B, P], mask bool[B, P])."""
    obs = jax.vmap(self.codec.encode_general)(symbols)   # compiles fast
    b = symbols.shape[0]
    const = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.int32), (b, len(x)))
    ones = lambda x: jnp.ones((b, len(x)), jnp.bool_)
    tokens = jnp.concatenate([const(self.prefix), obs.ids, const(self.suffix)], 1)
    mask = jnp.concatenate([ones(self.prefix), obs.mask, ones(self.suffix)], 1)
    return tokens, mask


def allowed_candidates(mask: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
  """The first ``m`` allowed actions of each row, in table order.

  Args:
    mask: bool[B, A].

  Returns:
    (actions int32[B, m], valid bool[B, m]); invalid entries point at action 0.
    Rows allowing more than ``m`` lose the rest (``max_allowed`` bounds it).
  """
  order = jnp.argsort(jnp.where(mask, 0, 1), axis=-1, stable=True)[:, :m]
  valid = jnp.take_along_axis(mask, order, axis=-1)
  return jnp.where(valid, order, 0).astype(jnp.int32), valid


@struct.dataclass
class CandidateOutputs:
  """What ``candidate_outputs`` returns (see the module docstring)."""

  actions: jax.Array      # int32[B, M]
  valid: jax.Array        # bool[B, M]
  scores: jax.Array       # f32[B, M] summed (or mean) token log-probs
  logp: jax.Array         # f32[B, M] log pi over the valid candidates, -inf elsewhere
  q: Any                  # (q1, q2) f32[B, M] or None
  dropped: jax.Array      # int32[], allowed candidates beyond M (should be 0)


def candidate_outputs(params: llama.Params, cfg: llama.ModelConfig,
                      prompt: CandidatePrompt, symbols: jax.Array,
                      mask: jax.Array, heads: Any = None,
                      critic_backbone_grad: bool = True) -> CandidateOutputs:
  """The policy (and, with ``heads``, twin Q values) at a batch of states.

  Args:
    params, cfg: the decoder.
    prompt: the static prompt pieces.
    symbols: int32[B, S] observations (``env.render_symbols``).
    mask: bool[B, A] allowed actions (``env.action_mask``).
    heads: twin Q head params (``heads.init_twin``) or None.
    critic_backbone_grad: False stops the Q loss's gradient at the hidden
      states (the heads train alone on the decoder's features).
  """
  b = symbols.shape[0]
  m = prompt.num_candidates
  la = prompt.candidate_len
  actions, valid = allowed_candidates(mask, m)
  dropped = jnp.sum(jnp.maximum(mask.sum(-1) - m, 0)).astype(jnp.int32)
  tokens, tmask = prompt.prompts(symbols)
  positions = jnp.maximum(jnp.cumsum(tmask, axis=1) - 1, 0).astype(jnp.int32)
  length = tmask.sum(1).astype(jnp.int32)
  cache = llama.init_cache(cfg, b, prompt.context_len)
  _, hidden, cache = llama.forward(params, cfg, tokens, positions, cache, tmask,
                                   compute_logits=False)
  first_logp = jax.nn.log_softmax(llama.lm_head(params, cfg, hidden[:, -1]), -1)

  table = jnp.asarray(prompt.codec.action_tokens)
  lengths = jnp.asarray(prompt.codec.action_lengths)
  cand = table[actions]                                   # [B, M, La]
  cand_len = lengths[actions]                             # [B, M]
  fed = jnp.arange(la)[None, None] < cand_len[..., None]  # [B, M, La]
  rows = llama.KVCache(k=jnp.repeat(cache.k, m, axis=1), v=jnp.repeat(cache.v, m, axis=1),
                       mask=jnp.repeat(cache.mask, m, axis=0), index=cache.index)
  cpos = jnp.broadcast_to(length[:, None, None] + jnp.arange(la)[None, None],
                          (b, m, la)).reshape(b * m, la)
  _, c_hidden, _ = llama.forward(params, cfg, cand.reshape(b * m, la), cpos, rows,
                                 fed.reshape(b * m, la), compute_logits=False)
  c_hidden = c_hidden.reshape(b, m, la, -1)
  # Token j + 1 of a candidate is predicted at its position j.
  logits = llama.lm_head(params, cfg, c_hidden[:, :, :-1])          # [B, M, La-1, V]
  later = jnp.take_along_axis(jax.nn.log_softmax(logits, -1),
                              cand[..., 1:, None], axis=-1)[..., 0]
  later = jnp.where(fed[..., 1:], later, 0.0).sum(-1)
  first = jnp.take_along_axis(first_logp, cand[..., 0], axis=-1)   # [B, M]
  scores = first + later
  if prompt.score == "mean":
    scores = scores / jnp.maximum(cand_len, 1).astype(scores.dtype)
  logp = sac_losses.masked_log_softmax(scores, valid)
  q = None
  if heads is not None:
    end = jnp.take_along_axis(c_hidden, jnp.maximum(cand_len - 1, 0)[..., None, None],
                              axis=2)[:, :, 0]                       # [B, M, D]
    if not critic_backbone_grad:
      end = jax.lax.stop_gradient(end)
    q = heads_lib.apply_twin(heads, end)
  return CandidateOutputs(actions=actions, valid=valid, scores=scores, logp=logp,
                          q=q, dropped=dropped)
