"""Tests for the multi-task train step (``lamer.make_mix_train_step``) and the
loss weighting that makes a mix's loss the loss over the union of its games."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.continuous import Continuous
from lamer_jax import losses
from lamer_jax.agent.layout import TrialShape, build_layout
from lamer_jax.agent.trial import RolloutConfig
from lamer_jax.algos import lamer as train_lib
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

MCFG = llama.TINY_CONFIGS["tiny-llama"]
ALGO = train_lib.AlgoConfig(estimator="grpo", normalize_std=True, gamma_step=1.0,
                            lr=1e-3, clip_eps_high=0.28, num_minibatches=2)


def _game(name, env, tasks=2, group=2):
  shape = TrialShape(num_tasks=tasks, group_size=group, num_attempts=1,
                     num_turns=env.max_turns)
  layout = build_layout(ByteTokenizer(), env, shape, memory="none")
  return train_lib.Game(env, layout, name=name)


# Two games with different layouts (turns, observation width, candidates).
GAMES = (_game("three", Continuous(envs_jax.make("guess", num_options=3), episodes=2)),
         _game("five", Continuous(envs_jax.make("guess", num_options=5, max_turns=2),
                                  episodes=2)))


@pytest.mark.parametrize("mode", losses.AGGREGATIONS)
def test_count_weighting_gives_the_union_aggregate(mode):
  key = jax.random.key(0)
  ka, kb, kc, kd = jax.random.split(key, 4)
  a = jax.random.normal(ka, (3, 7))
  b = jax.random.normal(kb, (5, 4))
  ma = jax.random.bernoulli(kc, 0.5, a.shape).at[1].set(False)   # an empty row
  mb = jax.random.bernoulli(kd, 0.3, b.shape)
  parts = [losses.aggregate(a, ma, mode), losses.aggregate(b, mb, mode)]
  weights = [losses.aggregate_count(ma, mode), losses.aggregate_count(mb, mode)]
  mixed = train_lib._weighted([{"v": p} for p in parts], weights)["v"]
  # The union: b's rows padded to a's width with masked-out slots.
  union = jnp.concatenate([a, jnp.pad(b, ((0, 0), (0, 3)))])
  umask = jnp.concatenate([ma, jnp.pad(mb, ((0, 0), (0, 3)))])
  np.testing.assert_allclose(mixed, losses.aggregate(union, umask, mode), rtol=1e-6)


@functools.lru_cache(maxsize=None)
def _two_steps(seed: int = 1):
  step = train_lib.make_mix_train_step(GAMES, MCFG, RolloutConfig(), ALGO)
  params = llama.init_params(MCFG, jax.random.key(0))
  state = train_lib.init_train_state(params, ALGO, jax.random.key(seed))
  params0 = jax.tree.map(np.array, state.params)
  out = []
  for _ in range(2):
    state, metrics = step(state)
    out.append(jax.tree.map(float, metrics))
  return step._cache_size(), params0, jax.tree.map(np.array, state.params), out


def test_mix_compiles_once_and_reports_per_game():
  cache, params0, params2, (m1, m2) = _two_steps()
  assert cache == 1
  for name, game in (("three", GAMES[0]), ("five", GAMES[1])):
    for k in ("pass@1", "episode_success/episode_1", "episode_success/episode_2",
              "regret/mean", "turns/mean"):
      assert f"{name}/{k}" in m1
    assert 0.0 <= m1[f"{name}/regret/mean"] <= 2.0
    assert 1.0 <= m1[f"{name}/turns/mean"] <= game.env.max_turns
  assert "pass@1" not in m1                     # no unprefixed game metrics
  assert m1["nonfinite/updates"] == ALGO.num_minibatches
  assert m1["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), params0, params2)
  assert any(jax.tree.leaves(changed))


def test_mix_is_deterministic():
  a, b = _two_steps(), _two_steps.__wrapped__()
  assert a[3] == b[3]
  assert jax.tree.all(jax.tree.map(np.array_equal, a[2], b[2]))


def test_mix_errors_name_the_game():
  with pytest.raises(ValueError, match="distinct non-empty names"):
    train_lib.make_mix_train_step((GAMES[0], GAMES[0]), MCFG, RolloutConfig(), ALGO)
  with pytest.raises(ValueError, match="at least one game"):
    train_lib.make_mix_train_step((), MCFG, RolloutConfig(), ALGO)
  odd = _game("odd", GAMES[1].env, tasks=3, group=1)
  with pytest.raises(ValueError, match="3 attempt rows .*of odd do not split into 2"):
    train_lib.make_mix_train_step((GAMES[0], odd), MCFG, RolloutConfig(), ALGO)
