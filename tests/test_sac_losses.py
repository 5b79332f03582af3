"""Tests for the discrete SAC targets and losses (lamer_jax.sac_losses) against plain
numpy loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamer_jax import sac_losses as sl

GAMMA = 0.9
RNG = np.random.default_rng(0)
B, A = 6, 5
MASK = RNG.random((B, A)) < 0.6
MASK[:, 0] = True                   # every state allows something ...
MASK[1] = [True, False, False, False, False]   # ... one allows a single candidate
SCORES = RNG.normal(size=(B, A)).astype(np.float32)
Q = RNG.normal(size=(B, A)).astype(np.float32)
Q[~MASK] = np.nan                    # disallowed Q values are garbage: never read
ALPHA = 0.3


def np_logp(scores, mask):
  out = np.full(scores.shape, -np.inf, np.float64)
  for b in range(scores.shape[0]):
    allowed = np.flatnonzero(mask[b])
    if len(allowed):
      s = scores[b, allowed].astype(np.float64)
      out[b, allowed] = s - np.log(np.sum(np.exp(s)))
  return out


LOGP = np_logp(SCORES, MASK)


def np_soft_value(q, logp, mask, alpha):
  return np.asarray([sum(np.exp(logp[b, a]) * (q[b, a] - alpha * logp[b, a])
                         for a in range(q.shape[1]) if mask[b, a])
                     for b in range(q.shape[0])])


def np_nstep(r, term, trunc, valid, v, gamma):
  """The definition, step by step: accumulate rewards; stop without bootstrap at a
  terminal; bootstrap from the step's next state at a truncation, before an invalid
  step, or at the window's end."""
  out = []
  for b in range(r.shape[0]):
    y, n = 0.0, r.shape[1]
    for i in range(n):
      y += gamma ** i * r[b, i]
      if term[b, i]:
        break
      if trunc[b, i] or i == n - 1 or not valid[b, i + 1]:
        y += gamma ** (i + 1) * v[b, i]
        break
    out.append(y)
  return np.asarray(out)


def test_masked_log_softmax_matches_numpy_and_has_finite_grads():
  logp = jax.jit(sl.masked_log_softmax)(SCORES, MASK)
  np.testing.assert_allclose(np.where(MASK, logp, 0), np.where(MASK, LOGP, 0), atol=1e-6)
  assert np.all(np.asarray(logp)[~MASK] == -np.inf)
  none = np.zeros((2, A), bool)       # rows with no candidate: all -inf, finite grads
  assert np.all(np.asarray(sl.masked_log_softmax(SCORES[:2], none)) == -np.inf)
  grad = jax.grad(lambda s: sl.policy_loss(sl.masked_log_softmax(s, none), Q[:2], none,
                                           ALPHA))(jnp.asarray(SCORES[:2]))
  assert np.all(np.asarray(grad) == 0)


def test_soft_value_entropy_and_target_entropy():
  v = jax.jit(sl.soft_value)(Q, LOGP.astype(np.float32), MASK, ALPHA)
  np.testing.assert_allclose(v, np_soft_value(Q, LOGP, MASK, ALPHA), rtol=1e-5, atol=1e-6)
  ent = np.asarray([-sum(np.exp(LOGP[b, a]) * LOGP[b, a] for a in range(A) if MASK[b, a])
                    for b in range(B)])
  np.testing.assert_allclose(sl.entropy(LOGP.astype(np.float32), MASK), ent, atol=1e-6)
  target = np.asarray(jax.jit(sl.target_entropy, static_argnums=1)(MASK, 0.5))
  np.testing.assert_allclose(target, 0.5 * np.log(MASK.sum(1)), rtol=1e-6)
  assert target[1] == 0 and np.all(target[MASK.sum(1) > 1] > 0)   # positive: alpha can rise
  for bad in (0.0, -0.5, 1.5):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
      sl.target_entropy(MASK, bad)


# A fixed batch of 4-step windows: every way a window can end.
N = 4
T, F = True, False
TERM = np.asarray([[F, F, F, F], [F, T, F, F], [T, F, F, F], [F, F, F, T],
                   [F, F, F, F], [F, F, F, F], [F, F, T, F]])
TRUNC = np.asarray([[F, F, F, F], [F, F, F, F], [F, F, F, F], [F, F, F, F],
                    [T, F, F, F], [F, F, T, F], [F, F, F, F]])
VALID = np.asarray([[T, T, T, T], [T, T, F, F], [T, F, F, F], [T, T, T, T],
                    [T, F, F, F], [T, T, T, F], [T, T, F, F]])   # row 6: the head cuts it
REW = RNG.normal(size=TERM.shape).astype(np.float32)
BOOT = RNG.normal(size=TERM.shape).astype(np.float32)
ENDS = [3, 1, 0, 3, 0, 2, 1]


def test_nstep_targets_match_the_definition():
  expect = np_nstep(REW, TERM, TRUNC, VALID, BOOT, GAMMA)
  y = jax.jit(sl.nstep_targets, static_argnums=5)(REW, TERM, TRUNC, VALID, BOOT, GAMMA)
  np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)
  # Hand values of three rows: full window, terminal at step 1, truncation at step 0.
  g = GAMMA
  np.testing.assert_allclose(
      np.asarray(y)[[0, 1, 4]],
      [REW[0] @ g ** np.arange(4) + g ** 4 * BOOT[0, 3], REW[1, 0] + g * REW[1, 1],
       REW[4, 0] + g * BOOT[4, 0]], rtol=1e-5)
  # Steps past the window's end do not count, whatever they hold.
  junk = REW.copy()
  junk[~sl.window_end(TERM, TRUNC, VALID)[0]] = 1e6
  np.testing.assert_allclose(sl.nstep_targets(junk, TERM, TRUNC, VALID, BOOT, GAMMA), y,
                             rtol=1e-6)
  # window_end, and the [B] form of the bootstrap values (V only at the end's next state).
  included, end = sl.window_end(TERM, TRUNC, VALID)
  np.testing.assert_array_equal(end, ENDS)
  np.testing.assert_array_equal(included, np.arange(N)[None] <= np.asarray(ENDS)[:, None])
  v_end = BOOT[np.arange(len(ENDS)), ENDS]
  np.testing.assert_allclose(sl.nstep_targets(REW, TERM, TRUNC, VALID, v_end, GAMMA), y,
                             rtol=1e-6)


def test_nstep_random_windows():
  rng = np.random.default_rng(3)
  shape = (64, 5)
  term = rng.random(shape) < 0.15
  trunc = ~term & (rng.random(shape) < 0.15)
  valid = np.cumprod(rng.random(shape) < 0.85, axis=1).astype(bool)
  valid[:, 0] = True
  r, v = rng.normal(size=shape), rng.normal(size=shape)
  np.testing.assert_allclose(
      sl.nstep_targets(r, term, trunc, valid, jnp.asarray(v, jnp.float32), 0.99),
      np_nstep(r, term, trunc, valid, v, 0.99), rtol=1e-5, atol=1e-5)


def test_critic_and_policy_losses_match_numpy():
  rng = np.random.default_rng(1)
  q1, q2, y = (rng.normal(size=B).astype(np.float32) for _ in range(3))
  expect = np.mean((q1 - y) ** 2) + np.mean((q2 - y) ** 2)
  np.testing.assert_allclose(jax.jit(sl.critic_loss)([q1, q2], y), expect, rtol=1e-6)
  np.testing.assert_allclose(sl.critic_loss(jnp.stack([q1, q2]), y), expect, rtol=1e-6)
  expect = np.mean([sum(np.exp(LOGP[b, a]) * (ALPHA * LOGP[b, a] - Q[b, a])
                        for a in range(A) if MASK[b, a]) for b in range(B)])
  got = jax.jit(sl.policy_loss)(LOGP.astype(np.float32), Q, MASK, ALPHA)
  np.testing.assert_allclose(got, expect, rtol=1e-5)
  # The critic loss trains only the critic: no gradient into the targets.
  gy = jax.grad(lambda t: sl.critic_loss([q1, q2], t))(jnp.asarray(y))
  assert np.all(np.asarray(gy) == 0)


def test_policy_gradient_finite_with_masked_candidates():
  # logp of -inf and Q of NaN where not allowed: loss and gradients stay finite, and
  # the gradient is zero on the disallowed scores.
  def loss(scores):
    logp = sl.masked_log_softmax(scores, MASK)
    return (sl.policy_loss(logp, Q, MASK, ALPHA)
            + sl.soft_value(jnp.asarray(np.nan_to_num(Q)), logp, MASK, ALPHA).sum()
            + sl.entropy(logp, MASK).sum())
  val, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(SCORES))
  assert np.isfinite(float(val)) and np.all(np.isfinite(np.asarray(grad)))
  assert np.all(np.asarray(grad)[~MASK] == 0)
  assert np.any(np.asarray(grad)[MASK] != 0)
  # The policy gradient moves probability toward the higher-Q candidate (alpha 0).
  qs = jnp.asarray([[0.0, 1.0]])
  g = jax.grad(lambda s: sl.policy_loss(sl.masked_log_softmax(s, jnp.ones((1, 2), bool)),
                                        qs, jnp.ones((1, 2), bool), 0.0))(jnp.zeros((1, 2)))
  assert float(g[0, 1]) < 0 < float(g[0, 0])


def test_temperature_gradient_sign():
  target = jnp.full((4,), 1.0)
  grad = jax.jit(jax.grad(sl.temperature_loss))
  low, high = jnp.full((4,), 0.2), jnp.full((4,), 1.6)
  log_alpha = jnp.asarray(-3.0)
  g_low, g_high = float(grad(log_alpha, low, target)), float(grad(log_alpha, high, target))
  np.testing.assert_allclose([g_low, g_high], [-0.8, 0.6], rtol=1e-6)
  # One descent step: alpha rises when entropy is below the target, falls above.
  assert np.exp(-3.0 - 0.1 * g_low) > np.exp(-3.0) > np.exp(-3.0 - 0.1 * g_high)
  # Entropies are constants of the temperature loss.
  assert float(jax.grad(sl.temperature_loss, 1)(log_alpha, low, target).sum()) == 0
  # With MAGELLAN's target log(1/n) <= 0 alpha could only fall; ours can rise.
  logp = sl.masked_log_softmax(jnp.asarray([[4.0, 0.0, 0.0]]), jnp.ones((1, 3), bool))
  ent = sl.entropy(logp, jnp.ones((1, 3), bool))
  ours = sl.target_entropy(jnp.ones((1, 3), bool), 0.5)
  assert float(grad(log_alpha, ent, ours)) < 0
  assert float(grad(log_alpha, ent, -jnp.log(3.0) * jnp.ones(1))) > 0


def test_polyak():
  target = {"w": jnp.ones((2, 2)), "b": jnp.zeros(3)}
  online = {"w": jnp.full((2, 2), 3.0), "b": jnp.ones(3)}
  out = jax.jit(sl.polyak, static_argnums=2)(target, online, 0.25)
  np.testing.assert_allclose(out["w"], 1.5)
  np.testing.assert_allclose(out["b"], 0.25)
  jax.tree.map(np.testing.assert_array_equal, sl.polyak(target, online, 0.0), target)
  with pytest.raises(ValueError, match="tau"):
    sl.polyak(target, online, 1.5)
