"""Policy-gradient losses on per-token log-probabilities.

``ppo_policy_loss`` is the PPO clipped surrogate used by LaMer and its RL
baselines (as in verl): asymmetric clip range, dual clip for negative
advantages (Ye et al. 2020), an entropy bonus and an optional k3 KL penalty to
a reference policy, aggregated over tokens in one of verl's three modes. The
entropies it takes come from ``agent.scoring.masked_entropy``.
``value_loss`` and ``explained_variance`` are PPO's critic terms (estimator
``"gae"``), per turn rather than per token.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def aggregate(values: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
  """Reduces per-token values to a scalar.

  Args:
    values: f32[..., C]; rows are all leading axes flattened.
    mask: bool[..., C], tokens that count.
    mode: ``"token-mean"`` (sum over all masked tokens / their number),
      ``"seq-mean-token-sum"`` (per-row sum, averaged over rows with at least
      one masked token) or ``"seq-mean-token-mean"`` (per-row mean, averaged
      the same way).

  Returns:
    f32 scalar; 0 when no token is masked.
  """
  if mode not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got "
                     f"{mode!r}")
  chex.assert_equal_shape([values, mask])
  v = jnp.where(mask, values, 0.0)
  if mode == "token-mean":
    return v.sum() / jnp.maximum(mask.sum(), 1)
  v = v.reshape(-1, v.shape[-1])
  counts = mask.reshape(v.shape).sum(-1)
  per_row = v.sum(-1)
  if mode == "seq-mean-token-mean":
    per_row = per_row / jnp.maximum(counts, 1)
  has = counts > 0
  return jnp.where(has, per_row, 0.0).sum() / jnp.maximum(has.sum(), 1)


def aggregate_count(mask: jax.Array, mode: str) -> jax.Array:
  """f32: what ``aggregate(values, mask, mode)`` divides by: the masked tokens
  (``"token-mean"``) or the rows holding at least one (the per-row modes).

  Weighting the aggregates of several batches by their counts gives the
  aggregate of the batches together (a multi-task loss over the union).
  """
  if mode not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got "
                     f"{mode!r}")
  if mode == "token-mean":
    return mask.sum().astype(jnp.float32)
  rows = mask.reshape(-1, mask.shape[-1])
  return jnp.any(rows, axis=-1).sum().astype(jnp.float32)


def _nonzero(coef) -> bool:
  """True for a concrete non-zero number (traced coefficients pass)."""
  return isinstance(coef, (int, float)) and coef != 0


def ppo_policy_loss(
    logp: jax.Array,
    logp_old: jax.Array,
    advantages: jax.Array,
    loss_mask: jax.Array,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = 3.0,
    aggregation: str = "token-mean",
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
    logp_ref: jax.Array | None = None,
    kl_coef: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clipped policy loss (to minimise), per token, aggregated.

  Per token, with ``ratio = exp(logp - logp_old)`` and advantage ``A``:
    pg = max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + clip_eps_high))
    pg = min(pg, -A * dual_clip)            where A < 0 (dual clip)
  loss = agg(pg) - entropy_coef * agg(entropy) + kl_coef * agg(kl), with
  ``kl = exp(ref - logp) - (ref - logp) - 1`` (k3 estimator, >= 0).
  ``logp_old``, ``advantages`` and ``logp_ref`` are constants (no gradient).
  Unmasked tokens are zeroed before any arithmetic, so garbage there (e.g. -inf
  log-probs of padding) cannot leak NaNs into values or gradients.

  Args:
    logp: f32[..., C], log-prob of each sampled token under the current policy.
    logp_old: f32[..., C], the same under the policy that sampled.
    advantages: f32[..., C], per-token advantages.
    loss_mask: bool[..., C], tokens that carry a loss (generated tokens).
    clip_eps: lower clip range of the ratio.
    clip_eps_high: upper clip range; defaults to ``clip_eps``.
    dual_clip: the ``c > 1`` of the dual clip; None disables it.
    aggregation: see ``aggregate``.
    entropy: f32[..., C], policy entropy at each token (required when
      ``entropy_coef != 0``).
    entropy_coef: weight of the entropy bonus (ignored when entropy is None).
    logp_ref: f32[..., C], log-prob under the reference policy (required when
      ``kl_coef != 0``).
    kl_coef: weight of the KL penalty (ignored when logp_ref is None).

  Returns:
    (loss, metrics): f32 scalar and a dict of f32 scalars: ``pg_loss``,
    ``entropy`` and ``kl_ref`` (the aggregated terms that enter the loss; 0
    when not given), ``clip_frac`` (fraction of tokens where the clipped term
    is active), ``dual_clip_frac``, ``approx_kl`` (token mean of k3 estimate of
    KL(old || new): ``ratio - 1 - log ratio``) and ``ratio_mean``; the
    diagnostics are token means.
  """
  chex.assert_equal_shape([logp, logp_old, advantages, loss_mask])
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
  if entropy is None and _nonzero(entropy_coef):
    raise ValueError("entropy_coef != 0 needs the per-token entropy")
  if logp_ref is None and _nonzero(kl_coef):
    raise ValueError("kl_coef != 0 needs logp_ref")
  eps_high = clip_eps if clip_eps_high is None else clip_eps_high
  mask = loss_mask.astype(jnp.bool_)

  def zero(a):
    return jnp.where(mask, a, 0.0)

  logp = zero(logp)
  logp_old = jax.lax.stop_gradient(zero(logp_old))
  adv = jax.lax.stop_gradient(zero(advantages))

  log_ratio = logp - logp_old
  ratio = jnp.exp(log_ratio)
  pg_unclipped = -adv * ratio
  pg_clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_high)
  pg = jnp.maximum(pg_unclipped, pg_clipped)
  clipped = pg_clipped > pg_unclipped
  dual = jnp.zeros_like(mask)
  if dual_clip is not None:
    bound = -adv * dual_clip
    dual = (adv < 0) & (pg > bound)
    pg = jnp.where(adv < 0, jnp.minimum(pg, bound), pg)

  pg_loss = aggregate(pg, mask, aggregation)
  loss = pg_loss
  ent = jnp.zeros((), jnp.float32)
  if entropy is not None:
    chex.assert_equal_shape([entropy, mask])
    ent = aggregate(zero(entropy), mask, aggregation)
    loss = loss - entropy_coef * ent
  kl_ref = jnp.zeros((), jnp.float32)
  if logp_ref is not None:
    chex.assert_equal_shape([logp_ref, mask])
    delta = jax.lax.stop_gradient(zero(logp_ref)) - logp
    kl_ref = aggregate(jnp.exp(delta) - delta - 1.0, mask, aggregation)
    loss = loss + kl_coef * kl_ref

  def token_mean(a):
    return aggregate(a.astype(jnp.float32), mask, "token-mean")

  metrics = {
      "pg_loss": pg_loss,
      "entropy": ent,
      "kl_ref": kl_ref,
      "clip_frac": token_mean(clipped),
      "dual_clip_frac": token_mean(dual),
      "approx_kl": jax.lax.stop_gradient(token_mean(ratio - 1.0 - log_ratio)),
      "ratio_mean": jax.lax.stop_gradient(token_mean(ratio)),
  }
  return loss, metrics


def value_loss(values: jax.Array, values_old: jax.Array, targets: jax.Array,
               mask: jax.Array, clip: float | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO's value loss, the mean over masked entries (turns) of
  ``0.5 * (V - target)^2``.

  With ``clip``, PPO's clipped form: ``0.5 * max((V - target)^2,
  (V_clip - target)^2)`` with ``V_clip = V_old + clip(V - V_old, -clip,
  clip)``, so one update cannot move a value far from the one the advantages
  were computed with. ``values_old`` and ``targets`` are constants.

  Args:
    values: f32[...], the value head's current predictions.
    values_old: f32[...], its predictions before the update.
    targets: f32[...], the value targets (GAE's ``A + V_old``).
    mask: bool[...], entries that count (valid turns).
    clip: the clip range; None: the plain squared error.

  Returns:
    (loss, metrics): f32 scalar (0 with nothing masked) and ``{"value": loss,
    "value_clip_frac": fraction of entries where the clipped term is the
    larger}``.
  """
  chex.assert_equal_shape([values, values_old, targets, mask])
  mask = mask.astype(jnp.bool_)
  v = jnp.where(mask, values, 0.0)
  old = jax.lax.stop_gradient(jnp.where(mask, values_old, 0.0))
  y = jax.lax.stop_gradient(jnp.where(mask, targets, 0.0))
  err = (v - y) ** 2
  clipped = jnp.zeros_like(mask)
  if clip is not None:
    v_clip = old + jnp.clip(v - old, -clip, clip)
    err_clip = (v_clip - y) ** 2
    clipped = err_clip > err
    err = jnp.maximum(err, err_clip)
  count = jnp.maximum(mask.sum(), 1)
  loss = 0.5 * jnp.where(mask, err, 0.0).sum() / count
  frac = jnp.where(mask, clipped, False).sum() / count
  return loss, {"value": loss, "value_clip_frac": frac.astype(jnp.float32)}


def explained_variance(pred: jax.Array, target: jax.Array,
                       mask: jax.Array) -> jax.Array:
  """``1 - Var(target - pred) / Var(target)`` over the masked entries: 1 for
  a perfect value function, 0 for one that predicts the mean, negative for
  worse; 0 when the targets do not vary (nothing to explain)."""
  chex.assert_equal_shape([pred, target, mask])
  mask = mask.astype(jnp.bool_)
  count = jnp.maximum(mask.sum(), 1).astype(jnp.float32)

  def var(x):
    x = jnp.where(mask, x, 0.0).astype(jnp.float32)
    mean = x.sum() / count
    return jnp.where(mask, (x - mean) ** 2, 0.0).sum() / count

  var_y = var(target)
  return jnp.where(var_y > 0, 1.0 - var(target - pred) / jnp.where(
      var_y > 0, var_y, 1.0), 0.0)
