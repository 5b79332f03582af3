"""Tests for ``lamer_jax.algos.lamer``: one whole LaMer iteration, jitted.

Three small steps (tiny-llama, guess with 3 numbers, 2 tasks), each compiled
once per module:

* ``lamer``: 2 trials x 3 attempts with reflections (``reflection_only``,
  4-token budget), GiGPO, a KL penalty to the reference policy, lr > 0, two
  minibatches;
* ``frozen``: the same rollout with GRPO (std-normalised) and lr = 0;
* ``baseline``: single-episode RL (one attempt, no memory, 2x the trials).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import envs_jax
from lamer_jax.agent.layout import TrialShape, build_layout
from lamer_jax.agent.trial import RolloutConfig, eval_seeds
from lamer_jax.algos import lamer as train_lib
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

MCFG = llama.TINY_CONFIGS["tiny-llama"]
NUM_TASKS, GROUP, ATTEMPTS = 2, 2, 3
SETUPS = {
    "lamer": dict(
        attempts=ATTEMPTS, memory="reflection_only", group=GROUP,
        algo=train_lib.AlgoConfig(estimator="gigpo", lr=1e-3, kl_coef=0.1,
                                  num_minibatches=2)),
    "frozen": dict(
        attempts=ATTEMPTS, memory="reflection_only", group=GROUP,
        algo=train_lib.AlgoConfig(estimator="grpo", normalize_std=True,
                                  lr=0.0)),
    "baseline": dict(
        attempts=1, memory="none", group=GROUP * ATTEMPTS,
        algo=train_lib.AlgoConfig(estimator="gigpo", lr=1e-3)),
}


class Run:
  """A compiled train step and the states/metrics of two calls."""

  def __init__(self, name: str):
    spec = SETUPS[name]
    env = envs_jax.make("guess", num_options=3)
    shape = TrialShape(num_tasks=NUM_TASKS, group_size=spec["group"],
                       num_attempts=spec["attempts"], num_turns=1)
    layout = build_layout(ByteTokenizer(), env, shape, memory=spec["memory"],
                          reflection_tokens=4)
    self.algo = spec["algo"]
    self.attempts = spec["attempts"]
    self.step = train_lib.make_train_step(env, MCFG, layout, RolloutConfig(),
                                          self.algo)
    params = llama.init_params(MCFG, jax.random.key(0))
    state = train_lib.init_train_state(params, self.algo, jax.random.key(1))
    # The step donates its input state: keep host copies of what we compare.
    self.params0 = jax.tree.map(np.array, state.params)
    state, metrics = self.step(state)
    self.cache_after_first = self.step._cache_size()
    self.params1 = jax.tree.map(np.array, state.params)
    self.metrics1 = jax.tree.map(float, metrics)
    state, metrics = self.step(state)
    self.cache_after_second = self.step._cache_size()
    self.metrics2 = jax.tree.map(float, metrics)
    self.state2 = state


@functools.lru_cache(maxsize=None)
def _run(name: str) -> Run:
  return Run(name)


@pytest.fixture(params=sorted(SETUPS))
def run(request) -> Run:
  return _run(request.param)


def _max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(x - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_compiles_once(run):
  assert run.cache_after_first == 1
  assert run.cache_after_second == 1
  assert int(run.state2.step) == 2


def test_first_minibatch_is_on_policy(run):
  for m in (run.metrics1, run.metrics2):
    assert abs(m["loss/ratio_mean"] - 1.0) < 1e-5
    assert abs(m["loss/approx_kl"]) < 1e-6
    assert m["loss/clip_frac"] == 0.0


def test_metrics_are_finite_and_consistent(run):
  for m in (run.metrics1, run.metrics2):
    assert all(np.isfinite(v) for v in m.values()), m
    passes = [m[f"pass@{k}"] for k in range(1, run.attempts + 1)]
    assert all(0.0 <= p <= 1.0 for p in passes)
    assert passes == sorted(passes)
    assert m["generated_tokens"] > 0
    assert m["loss/grad_norm"] > 0


def test_params_change_with_positive_lr():
  for name in ("lamer", "baseline"):
    r = _run(name)
    assert _max_abs_diff(r.params0, r.params1) > 1e-6, name


def test_params_frozen_with_zero_lr():
  r = _run("frozen")
  assert _max_abs_diff(r.params0, r.params1) == 0.0
  assert _max_abs_diff(r.params0, r.state2.params) == 0.0


def test_kl_penalty_path():
  r = _run("lamer")
  # The reference policy is the initial one and stays frozen.
  assert _max_abs_diff(r.params0, r.state2.ref_params) == 0.0
  # Step 1 starts at the reference (k3 estimate 0); step 2 has moved away.
  assert abs(r.metrics1["loss/kl_ref"]) < 1e-6
  assert r.metrics2["loss/kl_ref"] > 0
  assert _run("frozen").state2.ref_params is None


def test_lamer_writes_reflections_and_baseline_does_not():
  lamer, base = _run("lamer"), _run("baseline")
  # A failed first attempt is followed by a reflection of >= 1 token.
  assert any(m["attempts/mean"] > 1 for m in (lamer.metrics1, lamer.metrics2))
  assert lamer.metrics1["reflection_tokens/mean"] >= 1
  assert base.metrics1["reflection_tokens/mean"] == 0
  assert base.metrics1["attempts/mean"] == 1
  assert "pass@2" not in base.metrics1


def test_batched_evaluation_plays_each_batch_like_a_separate_call():
  """batch_size=2 over 4 tasks = two 2-task evaluations with keys folded in
  order; per-task means (pass@k) are the mean of the two halves'."""
  env = envs_jax.make("guess", num_options=3)
  shape = TrialShape(num_tasks=4, group_size=1, num_attempts=2, num_turns=1)
  layout = build_layout(ByteTokenizer(), env, shape, memory="history_only",
                        reflection_tokens=4)
  params = llama.init_params(MCFG, jax.random.key(0))
  cfg = RolloutConfig()
  seeds = eval_seeds(4)
  key = jax.random.key(5)
  played = []
  batched = train_lib.make_eval_fn(env, MCFG, layout, cfg, batch_size=2,
                                   on_batch=played.append)
  single = train_lib.make_eval_fn(env, MCFG, layout.with_tasks(2, group_size=1),
                                  cfg)
  got = jax.device_get(batched(params, key, seeds))
  jax.effects_barrier()
  assert played == [2, 2]   # the progress hook heard of each batch
  halves = [jax.device_get(single(params, jax.random.fold_in(key, i),
                                  seeds[2 * i:2 * i + 2])) for i in range(2)]
  for k in ("pass@1", "pass@2", "return/mean"):
    np.testing.assert_allclose(got[k], (halves[0][k] + halves[1][k]) / 2,
                               rtol=1e-6, err_msg=k)
  with pytest.raises(ValueError, match="4 evaluation tasks do not split into "
                     "batches of 3"):
    train_lib.make_eval_fn(env, MCFG, layout, cfg, batch_size=3)(params, key, seeds)
