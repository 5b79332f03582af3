"""Tests for cross-episode returns and group-relative advantages."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamer_jax import returns as rt

GS, GT = 0.5, 0.9  # gamma_step, gamma_traj of the hand-computed cases


def hand_batch():
  """Four trials (N=3, T=3): success at attempt 0, 1, 2, and never.

  Attempts after the success did not run (all turns invalid).
  """
  r = np.zeros((4, 3, 3), np.float32)
  # turns played per attempt, per trial
  lengths = [(2, 0, 0), (3, 2, 0), (3, 2, 1), (3, 3, 3)]
  r[0, 0, :2] = [0.0, 1.0]                 # success at attempt 0
  r[1, 0] = -1.0                           # success at attempt 1
  r[1, 1, :2] = [2.0, 10.0]
  r[2, 0] = -1.0                           # success at attempt 2
  r[2, 1, :2] = [0.0, -1.0]
  r[2, 2, 0] = 4.0
  r[3] = -1.0                              # never
  v = np.arange(3)[None, None, :] < np.array(lengths)[..., None]
  r = np.where(v, r, 50.0).astype(np.float32)  # unplayed turns: ignored
  return r, v


def np_cross_returns(r, v, gs, gt):
  """Direct evaluation of the paper's formula with loops."""
  rows, n_att, turns = r.shape
  g = np.zeros_like(r)
  for i in range(rows):
    for n in range(n_att):
      for t in range(turns):
        g[i, n, t] = sum(gs ** (l - t) * r[i, n, l] * v[i, n, l]
                         for l in range(t, turns))
  g0 = np.array([[sum(gs ** l * r[i, n, l] * v[i, n, l] for l in range(turns))
                  for n in range(n_att)] for i in range(rows)])
  big = np.zeros_like(r)
  for i in range(rows):
    for n in range(n_att):
      fut = sum(gt ** (m - n) * g0[i, m] for m in range(n + 1, n_att))
      big[i, n] = (g[i, n] + fut) * v[i, n]
  return g * v, big


def random_trials(rng, rows, n_att, turns, p_win=0.35):
  """Trials that stop at the first success; attempt lengths vary."""
  r = rng.normal(size=(rows, n_att, turns)).astype(np.float32)
  v = np.zeros((rows, n_att, turns), bool)
  av = np.zeros((rows, n_att), bool)
  for i in range(rows):
    for n in range(n_att):
      av[i, n] = True
      v[i, n, :rng.integers(1, turns + 1)] = True
      if rng.random() < p_win:
        break
  return r, v, av


def np_group_adv(scores, valid, g, normalize_std, eps=1e-6):
  out = np.zeros_like(scores)
  for start in range(0, scores.shape[0], g):
    block, m = scores[start:start + g], valid[start:start + g]
    vals = block[m]
    if len(vals) < 2:
      continue
    adv = block - vals.mean()
    if normalize_std:
      adv = adv / (vals.std(ddof=1) + eps)
    out[start:start + g] = np.where(m, adv, 0.0)
  return out


def np_gigpo(ret, keys, valid, g, normalize_std, eps=1e-6):
  """Step-level term by explicit dict grouping."""
  out = np.zeros_like(ret)
  for start in range(0, ret.shape[0], g):
    groups = collections.defaultdict(list)
    for idx in zip(*np.nonzero(valid[start:start + g])):
      i = (start + idx[0],) + tuple(idx[1:])
      groups[int(keys[i])].append(i)
    for members in groups.values():
      if len(members) < 2:
        continue
      vals = np.array([ret[i] for i in members])
      for i in members:
        a = ret[i] - vals.mean()
        if normalize_std:
          a = a / (vals.std(ddof=1) + eps)
        out[i] = a
  return out


def test_attempt_returns_hand():
  r, v = hand_batch()
  g = np.asarray(rt.attempt_returns(r, v, GS))
  np.testing.assert_allclose(g[1, 0], [-1.75, -1.5, -1.0], atol=1e-6)
  np.testing.assert_allclose(g[1, 1], [7.0, 10.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(g[0, 1:], 0.0)


def test_cross_episode_returns_hand():
  r, v = hand_batch()
  big = np.asarray(rt.cross_episode_returns(r, v, GS, GT))
  # success at attempt 0: nothing comes after it
  np.testing.assert_allclose(big[0], [[0.5, 1, 0], [0, 0, 0], [0, 0, 0]],
                             atol=1e-6)
  # success at attempt 1: G^(0) = g^(0) + 0.9 * 7
  np.testing.assert_allclose(
      big[1], [[4.55, 4.8, 5.3], [7, 10, 0], [0, 0, 0]], atol=1e-5)
  # success at attempt 2: future(0) = 0.9 * -0.5 + 0.81 * 4 = 2.79
  np.testing.assert_allclose(
      big[2], [[1.04, 1.29, 1.79], [3.1, 2.6, 0], [4, 0, 0]], atol=1e-5)
  # never: future(1) = 0.9 * -1.75, future(0) = (0.9 + 0.81) * -1.75
  np.testing.assert_allclose(
      big[3], [[-4.7425, -4.4925, -3.9925], [-3.325, -3.075, -2.575],
               [-1.75, -1.5, -1.0]], atol=1e-5)
  _, ref = np_cross_returns(r, v, GS, GT)
  np.testing.assert_allclose(big, ref, atol=1e-5)


def test_reflection_returns_hand():
  r, v = hand_batch()
  av = v.any(-1)
  big = rt.cross_episode_returns(r, v, GS, GT)
  refl = np.asarray(rt.reflection_returns(big, av))
  np.testing.assert_allclose(
      refl, [[0, 0, 0], [7, 0, 0], [3.1, 4, 0], [-3.325, -1.75, 0]], atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_returns_random_vs_numpy(seed):
  rng = np.random.default_rng(seed)
  r, v, _ = random_trials(rng, 6, 3, 4)
  g_ref, big_ref = np_cross_returns(r, v, 0.95, 0.6)
  np.testing.assert_allclose(rt.attempt_returns(r, v, 0.95), g_ref,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(rt.cross_episode_returns(r, v, 0.95, 0.6),
                             big_ref, rtol=1e-5, atol=1e-5)


def test_single_attempt_returns_equal_attempt_returns():
  rng = np.random.default_rng(3)
  r, v, _ = random_trials(rng, 4, 1, 5)
  np.testing.assert_allclose(rt.cross_episode_returns(r, v, 0.9, 0.5),
                             rt.attempt_returns(r, v, 0.9), atol=1e-6)


def test_grpo_hand():
  scores = np.array([[1, 3], [5, 100], [2, 7], [9, 9]], np.float32)
  valid = np.array([[1, 1], [1, 0], [1, 0], [0, 0]], bool)
  a = np.asarray(rt.grpo_advantages(scores, valid, 2, normalize_std=False))
  np.testing.assert_allclose(a, [[-2, 0], [2, 0], [0, 0], [0, 0]], atol=1e-6)
  # group 0: mean 3, Bessel std 2; group 1 has a single valid entry -> 0
  a = np.asarray(rt.grpo_advantages(scores, valid, 2, normalize_std=True,
                                    eps=0.0))
  np.testing.assert_allclose(a, [[-1, 0], [1, 0], [0, 0], [0, 0]], atol=1e-6)


@pytest.mark.parametrize("normalize_std", [False, True])
def test_grpo_random_vs_numpy(normalize_std):
  rng = np.random.default_rng(7)
  scores = rng.normal(size=(12, 3)).astype(np.float32)
  valid = rng.random((12, 3)) < 0.6
  valid[9:] = False
  valid[9, 0] = True  # last group: a singleton
  got = rt.grpo_advantages(scores, valid, 3, normalize_std)
  want = np_group_adv(scores, valid, 3, normalize_std)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(got)[9:] == 0)


def test_grpo_rejects_bad_group_size():
  with pytest.raises(ValueError):
    rt.grpo_advantages(jnp.zeros((5, 2)), jnp.ones((5, 2), bool), 2, False)


@pytest.mark.parametrize("normalize_std", [False, True])
def test_gigpo_step_vs_dict_grouping(normalize_std):
  rng = np.random.default_rng(11)
  r, v, _ = random_trials(rng, 6, 3, 4)
  ret = np_cross_returns(r, v, 0.95, 0.6)[1].astype(np.float32)
  keys = rng.integers(0, 4, size=r.shape).astype(np.uint32)
  keys[:, :, 0] = 99  # every attempt restarts from the same initial state
  got = rt.gigpo_step_advantages(ret, keys, v, 3, normalize_std)
  want = np_gigpo(ret, keys, v, 3, normalize_std)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gigpo_singletons_and_groups_apart():
  ret = np.array([[[1.0, 2.0]], [[3.0, 5.0]]], np.float32)   # R=2, N=1, T=2
  keys = np.array([[[7, 1]], [[7, 2]]], np.uint32)
  v = np.ones_like(ret, bool)
  # one group of 2 rows: key 7 pools (1, 3); keys 1 and 2 are singletons
  got = np.asarray(rt.gigpo_step_advantages(ret, keys, v, 2))
  np.testing.assert_allclose(got, [[[-1, 0]], [[1, 0]]])
  # two groups of one row each: equal keys in different tasks do not pool
  got = np.asarray(rt.gigpo_step_advantages(ret, keys, v, 1))
  np.testing.assert_allclose(got, 0.0)


def np_lamer(r, v, av, keys, g, estimator, normalize_std, step_weight,
             eps=1e-6):
  _, big = np_cross_returns(r, v, 0.95, 0.6)
  scores = big[:, :, 0]
  turn = np.zeros_like(r)
  refl = np.zeros(av.shape, np.float32)
  for start in range(0, r.shape[0], g):
    vals = scores[start:start + g][av[start:start + g]]
    if len(vals) < 2:
      continue
    mu, sd = vals.mean(), vals.std(ddof=1)

    def norm(x, mu=mu, sd=sd):
      return (x - mu) / (sd + eps) if normalize_std else x - mu

    for i in range(start, start + g):
      for n in range(r.shape[1]):
        if av[i, n]:
          turn[i, n] = np.where(v[i, n], norm(scores[i, n]), 0.0)
        if n + 1 < r.shape[1] and av[i, n + 1]:
          refl[i, n] = norm(big[i, n + 1, 0])
  if estimator == "gigpo":
    turn = turn + step_weight * np_gigpo(big, keys, v, g, normalize_std, eps)
  return turn, refl, big


@pytest.mark.parametrize("estimator,normalize_std",
                         [("grpo", True), ("gigpo", False)])
def test_lamer_advantages_vs_numpy(estimator, normalize_std):
  rng = np.random.default_rng(5)
  r, v, av = random_trials(rng, 8, 3, 4)
  keys = rng.integers(0, 3, size=r.shape).astype(np.uint32)
  adv = rt.lamer_advantages(
      r, v, av, keys, group_size=4, gamma_step=0.95, gamma_traj=0.6,
      estimator=estimator, normalize_std=normalize_std, step_weight=0.5)
  turn, refl, big = np_lamer(r, v, av, keys, 4, estimator, normalize_std, 0.5)
  np.testing.assert_allclose(adv.returns, big, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(adv.turn, turn, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(adv.reflection, refl, rtol=1e-4, atol=1e-4)


def test_lamer_single_attempt_is_plain_grpo():
  rng = np.random.default_rng(9)
  r, v, av = random_trials(rng, 6, 1, 5)
  keys = np.zeros(r.shape, np.uint32)
  adv = rt.lamer_advantages(
      r, v, av, keys, group_size=3, gamma_step=1.0, gamma_traj=0.123,
      estimator="grpo", normalize_std=True)
  episode_return = (r * v).sum(-1)  # [R, 1], undiscounted with gamma_step 1
  want = np_group_adv(episode_return, av, 3, True)
  np.testing.assert_allclose(adv.turn, np.where(v, want[..., None], 0.0),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(adv.reflection, 0.0)


def test_lamer_rejects_unknown_estimator():
  r, v = hand_batch()
  with pytest.raises(ValueError):
    rt.lamer_advantages(r, v, v.any(-1), np.zeros(r.shape, np.uint32),
                        group_size=2, gamma_step=GS, gamma_traj=GT,
                        estimator="ppo", normalize_std=False)


def test_broadcast_to_tokens():
  turn = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
  refl = np.array([[100, 200], [300, 400]], np.float32)
  ids = np.array([[[-1, 0, 0, -1, 2, 3], [1, 1, 3, 3, -1, -1]],
                  [[-1, -1, -1, -1, -1, -1], [0, 1, 2, 3, -1, 0]]], np.int32)
  got = np.asarray(rt.broadcast_to_tokens(turn, refl, ids))
  want = np.array([[[0, 0, 0, 0, 2, 100], [4, 4, 200, 200, 0, 0]],
                   [[0] * 6, [9, 10, 11, 400, 0, 9]]], np.float32)
  np.testing.assert_array_equal(got, want)


def test_everything_jits():
  r, v = hand_batch()
  av = v.any(-1)
  keys = np.zeros(r.shape, np.uint32)
  big = jax.jit(rt.cross_episode_returns)(r, v, GS, GT)
  np.testing.assert_allclose(big, rt.cross_episode_returns(r, v, GS, GT),
                             atol=1e-6)
  jax.jit(rt.attempt_returns)(r, v, GS)
  jax.jit(rt.reflection_returns)(big, av)
  grpo = jax.jit(rt.grpo_advantages, static_argnums=(2, 3))
  grpo(big[..., 0], av, 2, True)
  gigpo = jax.jit(rt.gigpo_step_advantages, static_argnums=(3, 4))
  gigpo(big, keys, v, 2, False)
  lamer = jax.jit(functools.partial(
      rt.lamer_advantages, group_size=2, estimator="gigpo",
      normalize_std=False))
  adv = lamer(r, v, av, keys, gamma_step=GS, gamma_traj=GT)
  eager = rt.lamer_advantages(r, v, av, keys, group_size=2, gamma_step=GS,
                              gamma_traj=GT, estimator="gigpo",
                              normalize_std=False)
  np.testing.assert_allclose(adv.turn, eager.turn, atol=1e-6)
  ids = np.full((4, 3, 5), -1, np.int32)
  jax.jit(rt.broadcast_to_tokens)(adv.turn, adv.reflection, ids)


# ---- GAE (estimator "gae") -----------------------------------------------------

def np_gae(r, values, valid, gamma, lam, boot=None, trunc=None):
  """GAE by its definition: a sum of discounted TD errors over the attempt's
  valid turns in order, after the last of them V = boot if truncated else 0."""
  out = np.zeros(r.shape, np.float64)
  for i, n in np.ndindex(*r.shape[:2]):
    idx = [t for t in range(r.shape[2]) if valid[i, n, t]]
    tail = boot[i, n] if boot is not None and trunc[i, n] else 0.0
    nxt = [values[i, n, s] for s in idx[1:]] + [tail]
    deltas = [r[i, n, s] + gamma * nv - values[i, n, s] for s, nv in zip(idx, nxt)]
    for k, t in enumerate(idx):
      out[i, n, t] = sum((gamma * lam) ** j * d for j, d in enumerate(deltas[k:]))
  return out


def gae_batch(rng, rows=6, n_att=2, turns=5, prefix=True):
  r = rng.normal(size=(rows, n_att, turns)).astype(np.float32)
  values = rng.normal(size=r.shape).astype(np.float32)
  if prefix:   # what the trial loop makes: the played turns come first
    valid = np.arange(turns) < rng.integers(0, turns + 1, size=(rows, n_att, 1))
  else:        # holes anywhere: skipped, not a step of the discount
    valid = rng.random(r.shape) < 0.6
  boot = rng.normal(size=(rows, n_att)).astype(np.float32)
  trunc = rng.random((rows, n_att)) < 0.5
  return r, values, valid, boot, trunc


@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("bootstrap", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_gae_random_vs_numpy(prefix, bootstrap, seed):
  rng = np.random.default_rng(seed)
  r, values, valid, boot, trunc = gae_batch(rng, prefix=prefix)
  for gamma, lam in ((0.95, 0.95), (0.8, 0.0), (1.0, 1.0), (0.9, 0.5)):
    kw = dict(bootstrap=boot, truncated=trunc) if bootstrap else {}
    got = rt.gae_advantages(r, values, valid, gamma, lam, **kw)
    want = np_gae(r, values, valid, gamma, lam,
                  *((boot, trunc) if bootstrap else ()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                               err_msg=f"gamma {gamma} lambda {lam}")
    assert np.all(np.asarray(got)[~valid] == 0.0)


def test_gae_special_lambdas():
  """lambda = 1: A + V is the discounted return; lambda = 0: the TD error."""
  rng = np.random.default_rng(3)
  r, values, valid, _, _ = gae_batch(rng)
  mc = rt.gae_advantages(r, values, valid, 0.9, 1.0) + np.where(valid, values, 0)
  np.testing.assert_allclose(mc, rt.attempt_returns(r, valid, 0.9), rtol=1e-5,
                             atol=1e-5)
  td = rt.gae_advantages(r, values, valid, 0.9, 0.0)
  nxt = np.where(np.pad(valid[..., 1:], ((0, 0), (0, 0), (0, 1))),
                 np.pad(values[..., 1:], ((0, 0), (0, 0), (0, 1))), 0.0)
  np.testing.assert_allclose(td, np.where(valid, r + 0.9 * nxt - values, 0.0),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="needs the truncated flags"):
    rt.gae_advantages(r, values, valid, 0.9, 0.5, bootstrap=values[..., 0])


@pytest.mark.parametrize("normalize_std", [False, True])
def test_lamer_advantages_gae(normalize_std):
  rng = np.random.default_rng(4)
  r, values, valid, _, _ = gae_batch(rng, rows=8, n_att=1)
  av = valid.any(-1) | (rng.random((8, 1)) < 0.5)
  keys = np.zeros(r.shape, np.uint32)
  adv = rt.lamer_advantages(r, valid, av, keys, group_size=4, gamma_step=0.95,
                            gamma_traj=0.6, estimator="gae",
                            normalize_std=normalize_std, values=values,
                            gae_lambda=0.9)
  v = valid & av[..., None]
  raw = np_gae(r, values, v, 0.95, 0.9)
  # The value targets are the un-whitened advantages plus V.
  np.testing.assert_allclose(adv.returns, np.where(v, raw + values, 0.0),
                             rtol=1e-5, atol=1e-5)
  want = raw
  if normalize_std:
    want = np.where(v, (raw - raw[v].mean()) / (raw[v].std(ddof=1) + 1e-6), 0.0)
    assert abs(float(np.asarray(adv.turn)[v].mean())) < 1e-5
  np.testing.assert_allclose(adv.turn, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(adv.reflection, np.zeros((8, 1)))


def test_lamer_advantages_gae_needs_one_attempt_and_values():
  rng = np.random.default_rng(5)
  r, values, valid, _, _ = gae_batch(rng, rows=4, n_att=3)
  keys = np.zeros(r.shape, np.uint32)
  kw = dict(group_size=2, gamma_step=0.95, gamma_traj=0.6, estimator="gae",
            normalize_std=False)
  with pytest.raises(ValueError, match=r"set rollout.num_attempts=1 and "
                     r"rollout.memory='none'.*got 3 attempts"):
    rt.lamer_advantages(r, valid, valid.any(-1), keys, values=values, **kw)
  with pytest.raises(ValueError, match="needs the values"):
    rt.lamer_advantages(r[:, :1], valid[:, :1], valid[:, :1].any(-1),
                        keys[:, :1], **kw)
