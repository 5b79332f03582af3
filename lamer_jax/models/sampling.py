"""KV-cache sampling: prefill, free decoding, constrained action decoding, scoring.

Every function here is a pure, jittable function of static shapes: token
budgets (``max_new_tokens``), the candidate-action table's shape and the
:class:`SamplingConfig` are static, so a rollout compiles once. The KV cache is
functional (:class:`llama.KVCache`): each call returns the updated cache, and
the jitted entry points that write to it donate the input cache's buffers, so
*a cache passed to* :func:`prefill`, :func:`generate` *or* :func:`decode_action`
*must not be used again by the caller* (use the returned one).

Decoding state between calls is the triple ``(cache, last_logits [B, V],
next_positions [B])``: the logits that predict each row's next token and the RoPE
position that token will get. Rows advance independently: a row that has
stopped feeds padding (``token_mask`` False) so its cache slots stay invisible
and its position does not move, while the cache's shared write index advances
by one slot per decode step for the whole batch.

Log-probabilities returned by the samplers are those of the distribution
actually sampled from: after temperature scaling, top-k / top-p filtering and
any validity mask. A loss that needs importance ratios must recompute them
with the same settings; training therefore samples with temperature only
(top-k / top-p truncation is not reproduced by :func:`action_token_logprobs`).
With ``temperature == 0`` (greedy) the sampled distribution is a point mass and
the returned log-probs are 0.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lamer_jax.models import llama

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to turn logits into a token (static: part of the compiled program).

  Attributes:
    temperature: logits are divided by it; 0 means greedy (argmax).
    top_k: keep only the k most likely tokens; 0 turns it off.
    top_p: keep the smallest set of most likely tokens whose probability mass
      reaches top_p (nucleus sampling); 1.0 turns it off.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


GREEDY = SamplingConfig(temperature=0.0)


# ----------------------------------------------------------------------------
# Token-level sampling helpers.
# ----------------------------------------------------------------------------


def _ensure_nonempty(allowed: jax.Array) -> jax.Array:
  """Rows with nothing allowed allow everything (keeps log_softmax NaN-free).

  Such rows only occur where the caller masks the result out (a finished
  action span), so what they sample does not matter, but a NaN would leak into
  gradients through ``jnp.where``.
  """
  return allowed | ~jnp.any(allowed, axis=-1, keepdims=True)


def _top_k_filter(x: jax.Array, k: int) -> jax.Array:
  """Sets all but the k largest entries of the last axis to -inf."""
  if k == 0 or k >= x.shape[-1]:
    return x
  kth = jax.lax.top_k(x, k)[0][..., -1:]
  return jnp.where(x >= kth, x, _NEG_INF)


def _top_p_filter(x: jax.Array, p: float) -> jax.Array:
  """Keeps the smallest prefix (by decreasing x) whose softmax mass reaches p."""
  if p >= 1.0:
    return x
  sorted_x = -jnp.sort(-x, axis=-1)
  probs = jax.nn.softmax(sorted_x, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = mass_before < p  # the most likely token is always kept
  threshold = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(x >= threshold, x, _NEG_INF)


def sampling_logprobs(logits: jax.Array, sampling: SamplingConfig,
                      allowed: jax.Array | None = None) -> jax.Array:
  """Log-probabilities of the distribution :func:`sample_token` draws from.

  Args:
    logits: [..., V] raw logits.
    sampling: temperature / top-k / top-p.
    allowed: optional bool[..., V]; tokens outside it get probability 0.
      Filtering by top-k / top-p happens among allowed tokens only.

  Returns:
    float32[..., V] normalised log-probs, -inf for excluded tokens. Greedy
    (temperature 0) gives 0 at the argmax and -inf elsewhere.
  """
  x = logits.astype(jnp.float32)
  if allowed is not None:
    allowed = _ensure_nonempty(allowed)
  if sampling.temperature == 0:
    if allowed is not None:
      x = jnp.where(allowed, x, _NEG_INF)
    best = jnp.argmax(x, axis=-1)
    one_hot = jax.nn.one_hot(best, x.shape[-1], dtype=jnp.bool_)
    return jnp.where(one_hot, 0.0, _NEG_INF)
  x = x / sampling.temperature
  if allowed is not None:
    x = jnp.where(allowed, x, _NEG_INF)
  x = _top_k_filter(x, sampling.top_k)
  x = _top_p_filter(x, sampling.top_p)
  return jax.nn.log_softmax(x, axis=-1)


def sample_token(key: jax.Array, logits: jax.Array, sampling: SamplingConfig,
                 allowed: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row.

  Args:
    key: PRNG key.
    logits: [B, V] raw logits.
    sampling: temperature / top-k / top-p.
    allowed: optional bool[B, V] validity mask.

  Returns:
    (token int32[B], its log-prob float32[B] under the sampled distribution).
  """
  return _draw(key, sampling_logprobs(logits, sampling, allowed), sampling)


def _draw(key: jax.Array, logp: jax.Array, sampling: SamplingConfig,
          columns: jax.Array | None = None, vocab: int = 0
          ) -> tuple[jax.Array, jax.Array]:
  """Gumbel-max draw from normalised log-probs ``logp`` [B, C].

  With ``columns`` (int32[C], the vocabulary ids of ``logp``'s columns) the
  noise is drawn for the whole vocabulary (``vocab`` wide) and read at those
  columns, so a draw over a vocabulary subset that holds every token of
  nonzero probability picks the same token as the full-vocabulary draw with
  the same key. Returns (column index int32[B], its log-prob float32[B]).
  """
  if sampling.temperature == 0:
    token = jnp.argmax(logp, axis=-1)
  else:
    shape = logp.shape if columns is None else logp.shape[:-1] + (vocab,)
    noise = jax.random.gumbel(key, shape, jnp.float32)
    if columns is not None:
      noise = noise[..., columns]
    token = jnp.argmax(logp + noise, axis=-1)
  token = token.astype(jnp.int32)
  return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def positions_from_mask(token_mask: jax.Array,
                        start: jax.Array | None = None) -> jax.Array:
  """RoPE positions of a chunk: ``start + (number of earlier real tokens)``.

  Args:
    token_mask: bool[B, L], True for real tokens.
    start: optional int32[B] position of each row's first real token (e.g.
      ``next_positions`` from the previous call); defaults to 0.

  Returns:
    int32[B, L]; padding tokens get the position of the next real token.
  """
  pos = jnp.cumsum(token_mask.astype(jnp.int32), axis=1) - token_mask.astype(jnp.int32)
  if start is not None:
    pos = pos + start[:, None]
  return pos


# ----------------------------------------------------------------------------
# Prefill and free-form generation.
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def prefill(params: llama.Params, cfg: llama.ModelConfig, tokens: jax.Array,
            token_mask: jax.Array, positions: jax.Array, cache: llama.KVCache,
            ) -> tuple[llama.KVCache, jax.Array, jax.Array]:
  """Writes a chunk of tokens into the cache and returns the decoding state.

  Rows may be padded anywhere (typically on the right); every row must hold at
  least one real token. Only the hidden state at each row's last real token
  goes through the vocabulary projection.

  Args:
    params, cfg: the model.
    tokens: int32[B, L] token ids.
    token_mask: bool[B, L], False for padding.
    positions: int32[B, L] RoPE positions (see :func:`positions_from_mask`).
    cache: KV cache with room for L more slots (donated).

  Returns:
    (cache, last_logits float32[B, V] at each row's last real token,
    next_positions int32[B] = that token's position + 1).
  """
  chex.assert_rank([tokens, token_mask, positions], 2)
  chex.assert_equal_shape([tokens, token_mask, positions])
  _, hidden, cache = llama.forward(params, cfg, tokens, positions, cache,
                                   token_mask, compute_logits=False)
  length = tokens.shape[1]
  last = length - 1 - jnp.argmax(token_mask[:, ::-1], axis=1)  # [B]
  last_hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  last_logits = llama.lm_head(params, cfg, last_hidden)
  next_positions = jnp.take_along_axis(positions, last[:, None], axis=1)[:, 0] + 1
  return cache, last_logits, next_positions.astype(jnp.int32)


@struct.dataclass
class GenerateOutput:
  """Result of :func:`generate`.

  Attributes:
    tokens: int32[B, T] generated tokens, ``pad_id`` where ``mask`` is False.
    logprobs: float32[B, T] log-prob of each token under the sampled
      distribution, 0 where ``mask`` is False.
    mask: bool[B, T], True for generated tokens up to and including the stop
      token.
    lengths: int32[B] number of generated tokens (``mask.sum(1)``).
    stopped: bool[B] the row ended on a stop token or the stop sequence (not
      on the budget, and not inactive from the start).
    cache: the cache holding the prompt and all generated tokens.
    last_logits: float32[B, V] logits after each row's last generated token.
    next_positions: int32[B] RoPE position of each row's next token.
  """

  tokens: jax.Array
  logprobs: jax.Array
  mask: jax.Array
  lengths: jax.Array
  stopped: jax.Array
  cache: llama.KVCache
  last_logits: jax.Array
  next_positions: jax.Array


def _decode_step(params, cfg, cache, token, position, active):
  """Feeds one token per row; inactive rows feed padding. Returns (logits, cache)."""
  logits, _, cache = llama.forward(params, cfg, token[:, None], position[:, None],
                                   cache, active[:, None])
  return logits[:, 0], cache


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "max_new_tokens", "sampling", "stop_tokens",
                     "stop_sequence", "pad_id"),
    donate_argnames=("cache",))
def generate(params: llama.Params, cfg: llama.ModelConfig, key: jax.Array,
             cache: llama.KVCache, last_logits: jax.Array,
             next_positions: jax.Array, *, max_new_tokens: int,
             sampling: SamplingConfig = SamplingConfig(),
             stop_tokens: tuple[int, ...] = (), pad_id: int = 0,
             stop_sequence: tuple[int, ...] = (),
             active: jax.Array | None = None) -> GenerateOutput:
  """Samples up to ``max_new_tokens`` tokens per row, stopping rows independently.

  A row stops after emitting any of ``stop_tokens``, or once its last tokens
  spell ``stop_sequence`` (e.g. the tokens of ``"</action>"``); the stop
  tokens are kept: written to the cache and counted in ``mask``. The loop
  ends early when every row has stopped. Each step writes one cache slot for
  the whole batch, so the cache needs ``max_new_tokens`` free slots and
  ``cache.index`` advances by the number of steps run (``lengths.max()``).

  Args:
    params, cfg: the model.
    key: PRNG key.
    cache: KV cache after the prompt (donated).
    last_logits: float32[B, V] logits predicting each row's first new token.
    next_positions: int32[B] position of each row's first new token.
    max_new_tokens: static budget T.
    sampling: static sampling settings.
    stop_tokens: static tuple of token ids that end a row.
    pad_id: token id written where ``mask`` is False.
    stop_sequence: static token ids whose appearance (as the row's latest
      tokens, contiguously) ends a row.
    active: optional bool[B]: rows that generate at all (others write
      nothing and do not keep the loop running).

  Returns:
    A :class:`GenerateOutput`.
  """
  b = last_logits.shape[0]
  chex.assert_shape(next_positions, (b,))
  if cache.max_len < max_new_tokens:
    raise ValueError(f"cache has {cache.max_len} slots < max_new_tokens="
                     f"{max_new_tokens}")
  t_max = max_new_tokens
  stops = jnp.asarray(stop_tokens, jnp.int32).reshape(-1)
  seq = jnp.asarray(stop_sequence, jnp.int32).reshape(-1)
  n_seq = max(1, len(stop_sequence))

  def cond(carry):
    t, _, _, _, active, *_ = carry
    return (t < t_max) & jnp.any(active)

  def body(carry):
    t, cache, logits, pos, active, stopped, window, tokens, logprobs, mask = carry
    tok, lp = sample_token(jax.random.fold_in(key, t), logits, sampling)
    tok = jnp.where(active, tok, pad_id)
    new_logits, cache = _decode_step(params, cfg, cache, tok, pos, active)
    logits = jnp.where(active[:, None], new_logits, logits)
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, t))
    logprobs = jax.lax.dynamic_update_slice(
        logprobs, jnp.where(active, lp, 0.0)[:, None], (0, t))
    mask = jax.lax.dynamic_update_slice(mask, active[:, None], (0, t))
    pos = pos + active.astype(jnp.int32)
    stop = jnp.any(tok[:, None] == stops[None, :], axis=1)
    if stop_sequence:
      window = jnp.concatenate([window[:, 1:], tok[:, None]], axis=1)
      stop = stop | jnp.all(window == seq[None, :], axis=1)
    stopped = stopped | (active & stop)
    active = active & ~stop
    return (t + 1, cache, logits, pos, active, stopped, window, tokens, logprobs,
            mask)

  active = (jnp.ones((b,), jnp.bool_) if active is None
            else jnp.asarray(active, jnp.bool_))
  carry = (jnp.zeros((), jnp.int32), cache, last_logits.astype(jnp.float32),
           next_positions.astype(jnp.int32), active, jnp.zeros((b,), jnp.bool_),
           jnp.full((b, n_seq), -1, jnp.int32),
           jnp.full((b, t_max), pad_id, jnp.int32),
           jnp.zeros((b, t_max), jnp.float32), jnp.zeros((b, t_max), jnp.bool_))
  _, cache, logits, pos, _, stopped, _, tokens, logprobs, mask = jax.lax.while_loop(
      cond, body, carry)
  return GenerateOutput(tokens=tokens, logprobs=logprobs, mask=mask,
                        lengths=mask.sum(axis=1, dtype=jnp.int32), stopped=stopped,
                        cache=cache, last_logits=logits, next_positions=pos)


# ----------------------------------------------------------------------------
# Constrained decoding over a candidate-action table.
# ----------------------------------------------------------------------------


def _allowed_tokens(alive: jax.Array, column: jax.Array, vocab: int) -> jax.Array:
  """Tokens that continue some alive candidate.

  Args:
    alive: bool[B, A] candidates still consistent, allowed and long enough.
    column: int32[A] each candidate's token at the current step.
    vocab: V.

  Returns:
    bool[B, V].
  """
  counts = jnp.zeros((alive.shape[0], vocab), jnp.int32)
  counts = counts.at[:, column].add(alive.astype(jnp.int32))
  return counts > 0


def action_vocab(table_tokens, table_lengths) -> np.ndarray:
  """int32[U] the sorted distinct token ids of a candidate table's real tokens:
  the only tokens constrained decoding can emit (``decode_action``'s
  ``vocab_subset``)."""
  table_tokens, table_lengths = np.asarray(table_tokens), np.asarray(table_lengths)
  real = np.arange(table_tokens.shape[1])[None, :] < table_lengths[:, None]
  return np.unique(table_tokens[real]).astype(np.int32)


def to_columns(tokens: jax.Array, columns: jax.Array) -> jax.Array:
  """Token ids -> their indices in ``columns`` (sorted, :func:`action_vocab`).
  Ids not in ``columns`` (padding) get some index: callers mask them out."""
  return jnp.clip(jnp.searchsorted(columns, tokens), 0,
                  columns.shape[0] - 1).astype(jnp.int32)


def _check_table(table_tokens, table_lengths, action_mask):
  chex.assert_rank([table_tokens, table_lengths, action_mask], [2, 1, 2])
  chex.assert_equal_shape_prefix([table_tokens, table_lengths], 1)
  chex.assert_axis_dimension(action_mask, 1, table_tokens.shape[0])


@struct.dataclass
class ActionOutput:
  """Result of :func:`decode_action`.

  Attributes:
    index: int32[B] chosen candidate (0, meaningless, for rows with no allowed
      candidate).
    tokens: int32[B, La] its tokens, ``pad_id`` where ``mask`` is False.
    token_logprobs: float32[B, La] per-token log-probs under the sampled
      (masked) distribution, 0 where ``mask`` is False.
    logprob: float32[B] their sum: log pi(candidate) under constrained decoding.
    mask: bool[B, La], True for the chosen candidate's tokens.
    cache: cache holding the action tokens (La slots were written).
    last_logits: float32[B, V] logits after the action.
    next_positions: int32[B] position of the token after the action.
  """

  index: jax.Array
  tokens: jax.Array
  token_logprobs: jax.Array
  logprob: jax.Array
  mask: jax.Array
  cache: llama.KVCache
  last_logits: jax.Array
  next_positions: jax.Array


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "pad_id"),
                   donate_argnames=("cache",))
def decode_action(params: llama.Params, cfg: llama.ModelConfig, key: jax.Array,
                  cache: llama.KVCache, last_logits: jax.Array,
                  next_positions: jax.Array, table_tokens: jax.Array,
                  table_lengths: jax.Array, action_mask: jax.Array,
                  sampling: SamplingConfig = SamplingConfig(), pad_id: int = 0,
                  vocab_subset: jax.Array | None = None) -> ActionOutput:
  """Samples one candidate action per row, token by token, under a prefix mask.

  At step j only tokens that continue a candidate that is allowed by
  ``action_mask``, agrees with the tokens sampled so far and is longer than j
  may be sampled, so every result is a valid allowed candidate. The table must
  be prefix-free (see :func:`check_prefix_free`); once the chosen candidate is
  complete the row feeds padding for the remaining steps.

  Args:
    params, cfg: the model.
    key: PRNG key.
    cache: KV cache after the prompt (donated); needs La free slots.
    last_logits: float32[B, V] logits predicting the first action token.
    next_positions: int32[B].
    table_tokens: int32[A, La] candidate token ids (padded past each length).
    table_lengths: int32[A] candidate lengths (>= 1).
    action_mask: bool[B, A] candidates allowed in each row.
    sampling: static sampling settings (only temperature is reproduced by
      :func:`action_token_logprobs`).
    pad_id: token id written where ``mask`` is False.
    vocab_subset: optional int32[U] token ids holding every real table token
      (:func:`action_vocab`). Each step then projects the hidden state onto
      those U columns only instead of the whole vocabulary (for SmolLM2 the
      projection is about a fifth of a decode step's FLOPs) and computes the
      full ``last_logits`` once, after the action. The same key picks the same
      candidates as without it (the masked distribution is the same; see
      ``_draw``); log-probs agree to float32 rounding.

  Returns:
    An :class:`ActionOutput`.
  """
  _check_table(table_tokens, table_lengths, action_mask)
  b, v = last_logits.shape
  num_steps = table_tokens.shape[1]
  if cache.max_len < num_steps:
    raise ValueError(f"cache has {cache.max_len} slots < action length {num_steps}")
  table_lengths = table_lengths.astype(jnp.int32)

  if vocab_subset is None:
    columns, weights, logits0 = None, None, last_logits.astype(jnp.float32)
    table_cols = table_tokens
  else:
    columns = jnp.asarray(vocab_subset, jnp.int32)
    weights = llama.head_weights(params, cfg, columns)
    logits0 = last_logits.astype(jnp.float32)[:, columns]
    table_cols = to_columns(table_tokens, columns)   # real tokens are in it

  def body(carry, j):
    cache, logits, hidden, pos, consistent = carry
    alive = consistent & (table_lengths > j)[None, :]
    active = jnp.any(alive, axis=1)
    column = table_tokens[:, j]
    allowed = _allowed_tokens(alive, table_cols[:, j], logits.shape[-1])
    logp = sampling_logprobs(logits, sampling, allowed)
    col, lp = _draw(jax.random.fold_in(key, j), logp, sampling, columns, v)
    tok = col if columns is None else columns[col]
    tok = jnp.where(active, tok, pad_id)
    if columns is None:
      new_logits, cache = _decode_step(params, cfg, cache, tok, pos, active)
    else:     # the subset's logits; the full ones once, after the loop
      _, new_hidden, cache = llama.forward(params, cfg, tok[:, None], pos[:, None],
                                           cache, active[:, None], compute_logits=False)
      new_logits = llama.lm_head(params, cfg, new_hidden[:, 0], weights)
      hidden = jnp.where(active[:, None], new_hidden[:, 0], hidden)
    logits = jnp.where(active[:, None], new_logits, logits)
    pos = pos + active.astype(jnp.int32)
    consistent = consistent & ((column[None, :] == tok[:, None]) | ~active[:, None])
    return ((cache, logits, hidden, pos, consistent),
            (tok, jnp.where(active, lp, 0.0), active))

  hidden0 = (jnp.zeros((b, 0), jnp.float32) if columns is None else
             jnp.zeros((b, cfg.hidden_size), cfg.compute_dtype))
  carry = (cache, logits0, hidden0, next_positions.astype(jnp.int32),
           action_mask.astype(jnp.bool_))
  (cache, logits, hidden, pos, consistent), (tokens, logprobs, mask) = jax.lax.scan(
      body, carry, jnp.arange(num_steps))
  if columns is not None:     # rows that fed no token keep their logits
    logits = jnp.where(jnp.any(mask, axis=0)[:, None],
                       llama.lm_head(params, cfg, hidden),
                       last_logits.astype(jnp.float32))
  tokens, logprobs, mask = tokens.T, logprobs.T, mask.T  # [B, La]
  num_tokens = mask.sum(axis=1, dtype=jnp.int32)
  chosen = consistent & (table_lengths[None, :] == num_tokens[:, None])
  index = jnp.argmax(chosen, axis=1).astype(jnp.int32)
  return ActionOutput(index=index, tokens=tokens, token_logprobs=logprobs,
                      logprob=logprobs.sum(axis=1), mask=mask, cache=cache,
                      last_logits=logits, next_positions=pos)


def match_action(tokens: jax.Array, mask: jax.Array, table_tokens: jax.Array,
                 table_lengths: jax.Array, action_mask: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Parses free-form action spans by exact token match with the candidates.

  Args:
    tokens: int32[B, L] generated spans; mask: bool[B, L] their real tokens
      (a prefix of each row).
    table_tokens, table_lengths: the candidate table (``[A, La]``, ``[A]``).
    action_mask: bool[B, A] the candidates allowed in each row.

  Returns:
    (int32[B] index of the matching allowed candidate, 0 where none;
    bool[B] whether one matched).
  """
  la = table_tokens.shape[1]
  length = mask.sum(axis=1)
  if tokens.shape[1] < la:
    tokens = jnp.pad(tokens, ((0, 0), (0, la - tokens.shape[1])))
  tokens = tokens[:, :la]
  beyond = jnp.arange(la)[None, :] >= table_lengths[:, None]          # [A, La]
  same = (tokens[:, None, :] == table_tokens[None]) | beyond[None]
  match = (jnp.all(same, axis=2) & (length[:, None] == table_lengths[None, :])
           & action_mask)
  return jnp.argmax(match, axis=1).astype(jnp.int32), jnp.any(match, axis=1)


def action_token_logprobs(logits: jax.Array, action_tokens: jax.Array,
                          token_mask: jax.Array, table_tokens: jax.Array,
                          table_lengths: jax.Array, action_mask: jax.Array,
                          temperature: float = 1.0, return_allowed: bool = False,
                          ) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Recomputes constrained per-token log-probs of chosen actions (for losses).

  Rebuilds, from the chosen tokens, the prefix masks that :func:`decode_action`
  sampled under and applies them to fresh logits, so with the same temperature
  (and no top-k / top-p) the result equals ``decode_action``'s
  ``token_logprobs``. Differentiable with respect to ``logits``.

  Args:
    logits: [B, La, V]; ``logits[:, j]`` predicts action token j (i.e. they are
      the model's outputs at the position before each action token).
    action_tokens: int32[B, La] chosen tokens (``ActionOutput.tokens``).
    token_mask: bool[B, La] (``ActionOutput.mask``).
    table_tokens: int32[A, La]; table_lengths: int32[A].
    action_mask: bool[B, A] as given to ``decode_action``.
    temperature: > 0.

    return_allowed: also return the prefix masks, bool[B, La, V] (the
      support of the constrained policy at each step, e.g. for its entropy).

  Returns:
    float32[B, La] log-probs, 0 where ``token_mask`` is False (and the masks
    when ``return_allowed``).
  """
  _check_table(table_tokens, table_lengths, action_mask)
  chex.assert_rank(logits, 3)
  chex.assert_equal_shape([action_tokens, token_mask])
  chex.assert_equal_shape_prefix([logits, action_tokens], 2)
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"temperature must be > 0 to recompute log-probs, got "
                     f"{temperature}")
  num_steps = table_tokens.shape[1]
  steps = jnp.arange(num_steps)
  # matches[b, a, i]: candidate a's token i equals the chosen token i.
  matches = table_tokens[None, :, :] == action_tokens[:, None, :]
  # Exclusive prefix product: candidate agrees with all chosen tokens before j.
  agree_before = jnp.cumprod(matches, axis=2)
  agree_before = jnp.concatenate(
      [jnp.ones_like(agree_before[..., :1]), agree_before[..., :-1]], axis=2)
  alive = (action_mask[:, :, None] & agree_before.astype(jnp.bool_)
           & (table_lengths[None, :, None] > steps[None, None, :]))  # [B, A, La]
  allowed = jax.vmap(_allowed_tokens, in_axes=(2, 1, None), out_axes=1)(
      alive, table_tokens, logits.shape[-1])  # [B, La, V]
  x = logits.astype(jnp.float32) / temperature
  x = jnp.where(_ensure_nonempty(allowed), x, _NEG_INF)
  logp = jax.nn.log_softmax(x, axis=-1)
  chosen = jnp.take_along_axis(logp, action_tokens[..., None], axis=-1)[..., 0]
  chosen = jnp.where(token_mask, chosen, 0.0)
  return (chosen, allowed) if return_allowed else chosen


# ----------------------------------------------------------------------------
# Candidate scoring (SAC policy over candidates).
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg", "candidate_chunk"))
def score_candidates(params: llama.Params, cfg: llama.ModelConfig,
                     cache: llama.KVCache, last_logits: jax.Array,
                     next_positions: jax.Array, table_tokens: jax.Array,
                     table_lengths: jax.Array,
                     candidate_chunk: int | None = None) -> jax.Array:
  """Sum of unconstrained token log-probs of every candidate after each prompt.

  The prompt is not recomputed: candidates run as teacher-forced continuations
  on copies of the prompt's cache, ``candidate_chunk`` candidates at a time
  (the copies take ``B * candidate_chunk`` rows of cache memory; default: all
  A at once). The cache passed in is only read (not donated).

  Args:
    params, cfg: the model.
    cache: KV cache after the prompt; needs La - 1 free slots.
    last_logits: float32[B, V] logits predicting each candidate's first token.
    next_positions: int32[B].
    table_tokens: int32[A, La]; table_lengths: int32[A] (>= 1).
    candidate_chunk: static number of candidates per forward pass.

  Returns:
    float32[B, A]: log p(candidate | prompt) at temperature 1.
  """
  chex.assert_rank([table_tokens, table_lengths, last_logits], [2, 1, 2])
  b = last_logits.shape[0]
  num_cands, la = table_tokens.shape
  table_lengths = table_lengths.astype(jnp.int32)
  first = jnp.take(jax.nn.log_softmax(last_logits.astype(jnp.float32), axis=-1),
                   table_tokens[:, 0], axis=1)  # [B, A]
  if la == 1:
    return first
  chunk = num_cands if candidate_chunk is None else min(candidate_chunk, num_cands)
  num_chunks = -(-num_cands // chunk)
  pad = num_chunks * chunk - num_cands
  inputs = jnp.pad(table_tokens[:, :-1], ((0, pad), (0, 0)))  # [A', La-1]
  targets = jnp.pad(table_tokens[:, 1:], ((0, pad), (0, 0)))
  # Token j is fed only if token j+1 exists (and is then scored).
  fed = jnp.arange(la - 1)[None, :] < jnp.pad(table_lengths, (0, pad))[:, None] - 1
  positions = jnp.broadcast_to(
      next_positions[:, None, None] + jnp.arange(la - 1)[None, None, :],
      (b, chunk, la - 1)).reshape(b * chunk, la - 1)

  def score_chunk(args):
    chunk_inputs, chunk_targets, chunk_fed = args  # [c, La-1] each
    tokens = jnp.broadcast_to(chunk_inputs[None], (b,) + chunk_inputs.shape)
    token_mask = jnp.broadcast_to(chunk_fed[None], tokens.shape)
    rows = llama.KVCache(k=jnp.repeat(cache.k, chunk, axis=1),
                         v=jnp.repeat(cache.v, chunk, axis=1),
                         mask=jnp.repeat(cache.mask, chunk, axis=0),
                         index=cache.index)
    logits, _, _ = llama.forward(params, cfg, tokens.reshape(b * chunk, la - 1),
                                 positions, rows,
                                 token_mask.reshape(b * chunk, la - 1))
    logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, chunk, la - 1, -1)
    target_logp = jnp.take_along_axis(
        logp, jnp.broadcast_to(chunk_targets[None, ..., None],
                               (b, chunk, la - 1, 1)), axis=-1)[..., 0]
    return jnp.sum(jnp.where(token_mask, target_logp, 0.0), axis=-1)  # [B, c]

  per_chunk = jax.lax.map(score_chunk, (inputs.reshape(num_chunks, chunk, la - 1),
                                        targets.reshape(num_chunks, chunk, la - 1),
                                        fed.reshape(num_chunks, chunk, la - 1)))
  rest = jnp.moveaxis(per_chunk, 0, 1).reshape(b, num_chunks * chunk)[:, :num_cands]
  return first + rest
