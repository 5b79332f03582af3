"""Tests for the PPO policy loss and the masked entropy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamer_jax import losses
from lamer_jax.agent.scoring import masked_entropy


def np_aggregate(x, m, mode):
  x = np.where(m, x, 0.0).reshape(-1, x.shape[-1])
  m = m.reshape(x.shape)
  if mode == "token-mean":
    return x.sum() / max(m.sum(), 1)
  rows = [x[i].sum() / (m[i].sum() if mode == "seq-mean-token-mean" else 1)
          for i in range(len(x)) if m[i].any()]
  return float(np.mean(rows)) if rows else 0.0


def np_ppo(logp, old, adv, mask, clip, clip_high, dual, mode, ent, ent_coef,
           ref, kl_coef):
  """Plain per-token loops: an independent restatement of the objective."""
  pg = np.zeros_like(logp)
  for idx in np.ndindex(*logp.shape):
    ratio = np.exp(logp[idx] - old[idx])
    a = adv[idx]
    term = max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip_high))
    if dual is not None and a < 0:
      term = min(term, -a * dual)
    pg[idx] = term
  pg_loss = np_aggregate(pg, mask, mode)
  ent_v = np_aggregate(ent, mask, mode)
  d = ref - logp
  kl_v = np_aggregate(np.exp(d) - d - 1, mask, mode)
  return pg_loss - ent_coef * ent_v + kl_coef * kl_v, pg_loss, ent_v, kl_v


def batch(seed=0, shape=(3, 4, 6)):
  rng = np.random.default_rng(seed)
  old = rng.normal(-1.5, 0.5, shape).astype(np.float32)
  logp = (old + rng.normal(0, 0.4, shape)).astype(np.float32)
  adv = rng.normal(0, 1, shape).astype(np.float32)
  mask = rng.random(shape) < 0.7
  mask[1, 2] = False                       # an empty row
  ent = rng.uniform(0, 2, shape).astype(np.float32)
  ref = (old + rng.normal(0, 0.3, shape)).astype(np.float32)
  # make sure the dual clip triggers: negative advantage, large ratio
  logp[0, 0, 0], old[0, 0, 0], adv[0, 0, 0], mask[0, 0, 0] = 0.0, -3.0, -1.0, 1
  return logp, old, adv, mask, ent, ref


@pytest.mark.parametrize("mode", losses.AGGREGATIONS)
def test_ppo_loss_vs_numpy(mode):
  logp, old, adv, mask, ent, ref = batch()
  loss, metrics = losses.ppo_policy_loss(
      logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28, dual_clip=3.0,
      aggregation=mode, entropy=ent, entropy_coef=0.01, logp_ref=ref,
      kl_coef=0.05)
  want, pg, ent_v, kl_v = np_ppo(logp, old, adv, mask, 0.2, 0.28, 3.0, mode,
                                 ent, 0.01, ref, 0.05)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["pg_loss"], pg, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["entropy"], ent_v, rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_ref"], kl_v, rtol=1e-5)
  ratio = np.exp(logp - old)[mask]
  np.testing.assert_allclose(metrics["ratio_mean"], ratio.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["approx_kl"],
                             (ratio - 1 - np.log(ratio)).mean(), rtol=1e-4)
  a = adv[mask]
  clipped = (-a * np.clip(ratio, 0.8, 1.28)) > (-a * ratio)
  np.testing.assert_allclose(metrics["clip_frac"], clipped.mean(), rtol=1e-6)
  assert float(metrics["dual_clip_frac"]) > 0


def test_dual_clip_bounds_the_loss_of_negative_advantages():
  logp, old = np.array([[0.0]]), np.array([[-3.0]])   # ratio e^3 ~ 20
  adv, mask = np.array([[-1.0]]), np.array([[True]])
  with_dual, _ = losses.ppo_policy_loss(logp, old, adv, mask, dual_clip=3.0)
  without, _ = losses.ppo_policy_loss(logp, old, adv, mask, dual_clip=None)
  np.testing.assert_allclose(with_dual, 3.0, rtol=1e-6)
  np.testing.assert_allclose(without, np.exp(3.0), rtol=1e-5)
  # asymmetric clip: positive advantage, ratio 2 is capped at 1 + 0.28
  l, _ = losses.ppo_policy_loss(np.log([[2.0]]), np.zeros((1, 1)),
                                np.ones((1, 1)), mask, clip_eps_high=0.28)
  np.testing.assert_allclose(l, -1.28, rtol=1e-6)


def test_empty_mask_is_zero_and_nan_free():
  logp = np.full((2, 3), -np.inf, np.float32)
  z = np.zeros((2, 3), np.float32)
  mask = np.zeros((2, 3), bool)
  for mode in losses.AGGREGATIONS:
    loss, metrics = losses.ppo_policy_loss(logp, z, z, mask, aggregation=mode,
                                           entropy=z, logp_ref=z, kl_coef=0.1)
    assert float(loss) == 0.0
    assert all(np.isfinite(v) for v in metrics.values())


def test_gradient_sign_and_masked_garbage():
  logp, old, adv, mask, ent, ref = batch(1)
  logp = old.copy()                         # ratio 1: inside the clip range
  logp[~mask] = -np.inf                     # garbage where there is no loss
  old[~mask] = np.nan

  def f(lp):
    return losses.ppo_policy_loss(lp, old, adv, mask, logp_ref=ref,
                                  kl_coef=0.0)[0]

  grad = np.asarray(jax.grad(f)(jnp.asarray(logp)))
  assert np.all(np.isfinite(grad))
  assert np.all(grad[~mask] == 0)
  # descent raises the log-prob of positive-advantage tokens, lowers negatives
  step = -grad
  assert np.all(step[mask & (adv > 0)] > 0)
  assert np.all(step[mask & (adv < 0)] < 0)
  # the gradient of the token mean at ratio 1 is -A / (number of tokens)
  np.testing.assert_allclose(grad[mask], -adv[mask] / mask.sum(), rtol=1e-5)


def test_kl_gradient_pulls_towards_reference():
  logp = np.array([[-1.0, -2.0]], np.float32)
  ref = np.array([[-1.5, -1.5]], np.float32)
  z = np.zeros_like(logp)
  mask = np.ones_like(logp, bool)
  g = jax.grad(lambda lp: losses.ppo_policy_loss(
      lp, lp, z, mask, logp_ref=ref, kl_coef=1.0)[0])(logp)
  # above the reference -> pushed down (positive grad), below -> pushed up
  assert g[0, 0] > 0 and g[0, 1] < 0


def test_missing_entropy_or_reference_raises():
  z = np.zeros((1, 2), np.float32)
  mask = np.ones((1, 2), bool)
  with pytest.raises(ValueError):
    losses.ppo_policy_loss(z, z, z, mask, entropy_coef=0.1)
  with pytest.raises(ValueError):
    losses.ppo_policy_loss(z, z, z, mask, kl_coef=0.1)
  with pytest.raises(ValueError):
    losses.ppo_policy_loss(z, z, z, mask, aggregation="sum")


def np_entropy(logits, allowed, temperature):
  out = np.zeros(logits.shape[:-1])
  for idx in np.ndindex(*logits.shape[:-1]):
    z = logits[idx][allowed[idx]] / temperature
    if z.size == 0:
      continue
    p = np.exp(z - z.max())
    p /= p.sum()
    out[idx] = -(p * np.log(p)).sum()
  return out


def test_masked_entropy_vs_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 3, (4, 5, 11)).astype(np.float32)
  allowed = rng.random((4, 5, 11)) < 0.5
  allowed[0, 0] = False                     # nothing allowed -> 0
  allowed[0, 1] = False
  allowed[0, 1, 3] = True                   # one token -> 0
  for temp in (1.0, 0.7):
    got = masked_entropy(logits, allowed, temp)
    np.testing.assert_allclose(got, np_entropy(logits, allowed, temp),
                               rtol=1e-5, atol=1e-6)
  full = masked_entropy(logits, None, 1.0)
  np.testing.assert_allclose(
      full, np_entropy(logits, np.ones_like(allowed), 1.0), rtol=1e-5)
  np.testing.assert_allclose(
      masked_entropy(np.zeros((1, 8)), None), np.log(8.0), rtol=1e-6)
  grad = jax.grad(lambda x: masked_entropy(x, allowed, 0.7).sum())(
      logits)
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[~allowed] == 0)


def test_everything_jits():
  logp, old, adv, mask, ent, ref = batch(3)
  fn = jax.jit(functools.partial(losses.ppo_policy_loss, clip_eps=0.2,
                                 dual_clip=3.0, aggregation="token-mean",
                                 entropy_coef=0.001, kl_coef=0.01))
  loss, metrics = fn(logp, old, adv, mask, entropy=ent, logp_ref=ref)
  eager, _ = losses.ppo_policy_loss(logp, old, adv, mask, entropy=ent,
                                    entropy_coef=0.001, logp_ref=ref,
                                    kl_coef=0.01)
  np.testing.assert_allclose(loss, eager, rtol=1e-6)
  assert set(metrics) >= {"pg_loss", "clip_frac", "approx_kl", "entropy",
                          "kl_ref", "ratio_mean"}
  jax.jit(masked_entropy)(np.zeros((2, 5)), np.ones((2, 5), bool), 0.7)


@pytest.mark.parametrize("clip", [None, 0.2])
def test_value_loss_vs_numpy(clip):
  rng = np.random.default_rng(0)
  v, old, y = (rng.normal(size=(4, 6)).astype(np.float32) for _ in range(3))
  mask = rng.random((4, 6)) < 0.7
  loss, metrics = losses.value_loss(v, old, y, mask, clip=clip)
  err = (v - y) ** 2
  if clip is not None:
    err = np.maximum(err, (old + np.clip(v - old, -clip, clip) - y) ** 2)
  np.testing.assert_allclose(loss, 0.5 * err[mask].mean(), rtol=1e-6)
  assert metrics["value"] == loss
  assert (metrics["value_clip_frac"] > 0) == (clip is not None)
  # Gradient only through the current values, and only where masked.
  g_v, g_old, g_y = jax.grad(lambda *a: losses.value_loss(*a, mask, clip=clip)[0],
                             argnums=(0, 1, 2))(v, old, y)
  assert np.all(np.asarray(g_old) == 0) and np.all(np.asarray(g_y) == 0)
  assert np.all(np.asarray(g_v)[~mask] == 0)
  if clip is None:
    np.testing.assert_allclose(g_v, np.where(mask, v - y, 0) / mask.sum(),
                               rtol=1e-5)
  empty = losses.value_loss(v, old, y, np.zeros_like(mask))[0]
  assert float(empty) == 0.0


def test_explained_variance():
  rng = np.random.default_rng(1)
  y = rng.normal(size=(3, 5)).astype(np.float32)
  mask = rng.random((3, 5)) < 0.8
  garbage = np.where(mask, 0.0, 1e6).astype(np.float32)   # unmasked: ignored
  assert abs(float(losses.explained_variance(y + garbage, y, mask)) - 1.0) < 1e-6
  mean = np.full_like(y, y[mask].mean())
  assert abs(float(losses.explained_variance(mean + garbage, y, mask))) < 1e-5
  noisy = y + rng.normal(size=y.shape).astype(np.float32)
  res = (y - noisy)[mask]
  np.testing.assert_allclose(losses.explained_variance(noisy, y, mask),
                             1 - res.var() / y[mask].var(), rtol=1e-5)
  # Constant targets: nothing to explain, 0 rather than NaN.
  assert float(losses.explained_variance(y, np.ones_like(y), mask)) == 0.0
