"""Discrete soft actor-critic over a candidate set, as functions of arrays (no model).

The policy is a distribution over the ``A`` candidate actions of a state, of which
``mask`` allows some; ``logp[b, a] = log pi(a | s_b)``, normalised over the allowed
candidates (``masked_log_softmax``; disallowed ones may hold ``-inf`` or anything:
every function here reads only allowed entries, and neither values nor gradients
become NaN there). Expectations over actions are exact sums over the allowed
candidates (SAC-GLAM / MAGELLAN; REFERENCES.md):

    pi(a)          = exp(logp(a))                              (0 where not allowed)
    H(s)           = -sum_a pi(a) log pi(a)                    (entropy)
    V(s)           = sum_a pi(a) (Q_targ_min(s, a) - alpha log pi(a))     (soft value)
    y              = sum_{i<k} gamma^i r_i + gamma^k (1 - terminal_{k-1}) V(s_k)
    critic loss    = sum_heads mean_B (Q_h(s, a) - y)^2
    policy loss    = mean_B sum_a pi(a) (alpha log pi(a) - Q_min(s, a))
    alpha loss     = mean_B log_alpha (H(s) - H_target(s))
    H_target(s)    = fraction * log(#allowed candidates of s),  fraction in (0, 1]

with ``k`` the window's end (``nstep_targets``). The target entropy is positive
(below the uniform policy's ``log n``), so alpha rises when the policy is more
certain than the target and falls when it is less: MAGELLAN's ``log(1/n) <= 0``
lies at or below every entropy, so its alpha can only fall. The alpha loss takes
``log_alpha`` (not ``alpha``) times the entropy gap, as Stable-Baselines3 does: its
gradient, the mean gap, does not vanish as alpha goes to 0.

Gradients: targets, Q values in the policy loss, alpha in the policy and value
terms, and the entropies in the alpha loss are constants (``stop_gradient``), so
each loss trains only its own parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def masked_log_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """log pi over the allowed candidates: ``scores`` log-softmaxed over the last axis
  where ``mask``, ``-inf`` elsewhere (a row with none allowed is all ``-inf``;
  finite gradients in every case)."""
  safe = jnp.where(mask, scores, -jnp.inf)
  top = jnp.max(safe, axis=-1, keepdims=True)
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  shifted = jnp.where(mask, scores - top, 0.0)
  total = jnp.sum(jnp.where(mask, jnp.exp(shifted), 0.0), axis=-1, keepdims=True)
  lse = jnp.log(jnp.where(total > 0, total, 1.0))
  return jnp.where(mask, shifted - lse, -jnp.inf)


def _probs(logp: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(pi, safe logp): both 0 where not allowed."""
  safe = jnp.where(mask, logp, 0.0)
  return jnp.where(mask, jnp.exp(safe), 0.0), safe


def entropy(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """f32[B]: ``-sum_a pi(a) log pi(a)`` over the allowed candidates."""
  pi, safe = _probs(logp, mask)
  return -jnp.sum(pi * safe, axis=-1)


def target_entropy(mask: jax.Array, fraction: float = 0.5) -> jax.Array:
  """f32[B]: ``fraction * log(#allowed)`` per state (0 with one or no candidate).

  Raises:
    ValueError: ``fraction`` outside (0, 1].
  """
  fraction = float(fraction)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"target entropy fraction must lie in (0, 1], got {fraction}")
  n = jnp.sum(mask, axis=-1).astype(jnp.float32)
  return fraction * jnp.log(jnp.maximum(n, 1.0))


def soft_value(q_target_min: jax.Array, logp: jax.Array, mask: jax.Array,
               alpha: jax.Array | float) -> jax.Array:
  """f32[B]: ``V(s) = sum_a pi(a) (q(a) - alpha log pi(a))`` over the allowed
  candidates (0 for a state with none).

  Args:
    q_target_min: f32[B, A], the minimum of the target critic's heads.
    logp: f32[B, A], log pi at the same states.
    mask: bool[B, A].
    alpha: the temperature (a constant here).
  """
  pi, safe = _probs(logp, mask)
  q = jnp.where(mask, q_target_min, 0.0)
  alpha = jax.lax.stop_gradient(jnp.asarray(alpha, jnp.float32))
  return jnp.sum(pi * (q - alpha * safe), axis=-1)


def window_end(terminal: jax.Array, truncated: jax.Array, valid: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """Where each n-step window ends (see ``nstep_targets``).

  Returns:
    (included bool[B, n], end int32[B]): the steps that count (``0..end``) and the
    index of the last one, whose next state the target bootstraps from.
  """
  stop = terminal | truncated
  # Step i counts if it is valid and no earlier step ended the episode or was invalid.
  go_on = valid & ~stop
  before = jnp.concatenate(
      [jnp.ones(go_on.shape[:-1] + (1,), jnp.bool_),
       jnp.cumprod(go_on[..., :-1].astype(jnp.int32), axis=-1).astype(jnp.bool_)], -1)
  included = valid & before
  end = jnp.maximum(jnp.sum(included, axis=-1) - 1, 0).astype(jnp.int32)
  return included, end


def nstep_targets(rewards: jax.Array, terminal: jax.Array, truncated: jax.Array,
                  valid: jax.Array, bootstrap_values: jax.Array, gamma: float
                  ) -> jax.Array:
  """f32[B]: n-step soft targets ``y = sum_{i<k} gamma^i r_i + gamma^k (1 -
  terminal_{k-1}) V(s_k)``.

  Input format: row ``b`` is the window of steps ``t, t+1, ..., t+n-1`` of one env
  (``replay.gather(state, env_idx, t_idx, jnp.arange(n))``), step ``i`` going from
  ``s_{t+i}`` to ``s_{t+i+1}``:

  * ``rewards``, ``terminal``, ``truncated``: f32 / bool[B, n] per step;
  * ``valid``: bool[B, n], the step is stored and belongs to the same episode as
    step 0 (``valid[:, 0]`` must be True);
  * ``bootstrap_values``: f32[B, n], ``V(s_{t+i+1})`` of each step's stored next
    state, of which only the end step's is read; or f32[B], already that value
    (compute ``window_end`` first and evaluate V only at its next states).

  The window ends at step ``e`` (``k = e + 1`` steps): the first step that is
  terminal (success: no bootstrap) or truncated (time limit: it bootstraps from
  its next state, a time limit is NOT a terminal), else the last valid step before
  an invalid one (the episode's next step is not stored yet, or the window ran past
  the buffer's head: bootstrap), else step ``n - 1``. Steps after ``e`` are ignored.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  included, end = window_end(terminal, truncated, valid)
  n = rewards.shape[-1]
  discounts = jnp.asarray(gamma, jnp.float32) ** jnp.arange(n, dtype=jnp.float32)
  ret = jnp.sum(jnp.where(included, rewards, 0.0) * discounts, axis=-1)
  take = lambda x: jnp.take_along_axis(x, end[:, None], axis=-1)[:, 0]
  v = bootstrap_values if bootstrap_values.ndim == 1 else take(bootstrap_values)
  v = jnp.where(take(terminal), 0.0, jax.lax.stop_gradient(v))
  return ret + jnp.asarray(gamma, jnp.float32) ** (end + 1).astype(jnp.float32) * v


def critic_loss(q: Sequence[jax.Array] | jax.Array, targets: jax.Array) -> jax.Array:
  """f32: ``sum_h mean_B (q_h - y)^2``.

  Args:
    q: the heads' Q of the taken actions, a sequence of f32[B] or f32[H, B].
    targets: f32[B] (``nstep_targets``; a constant here).
  """
  q = jnp.stack(list(q)) if not isinstance(q, jax.Array) else q
  y = jax.lax.stop_gradient(targets)
  return jnp.sum(jnp.mean((q - y[None]) ** 2, axis=-1))


def policy_loss(logp: jax.Array, q_min: jax.Array, mask: jax.Array,
                alpha: jax.Array | float) -> jax.Array:
  """f32: ``mean_B sum_a pi(a) (alpha log pi(a) - q_min(a))`` over the allowed
  candidates (``q_min``, the online heads' minimum, and alpha are constants)."""
  pi, safe = _probs(logp, mask)
  q = jax.lax.stop_gradient(jnp.where(mask, q_min, 0.0))
  alpha = jax.lax.stop_gradient(jnp.asarray(alpha, jnp.float32))
  return jnp.mean(jnp.sum(pi * (alpha * safe - q), axis=-1))


def temperature_loss(log_alpha: jax.Array, entropy_: jax.Array,
                     target_entropy_: jax.Array) -> jax.Array:
  """f32: ``mean_B log_alpha (H - H_target)`` (entropies constant).

  Its gradient wrt ``log_alpha`` is the mean gap ``H - H_target``: a descent step
  raises alpha when the policy's entropy is below the target and lowers it when
  above.
  """
  gap = jax.lax.stop_gradient(jnp.asarray(entropy_) - jnp.asarray(target_entropy_))
  return jnp.mean(log_alpha * gap)


def polyak(target: Any, online: Any, tau: float) -> Any:
  """``(1 - tau) target + tau online``, leaf by leaf (tau in [0, 1])."""
  if isinstance(tau, (int, float)) and not 0.0 <= tau <= 1.0:
    raise ValueError(f"tau must lie in [0, 1], got {tau}")
  return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)
