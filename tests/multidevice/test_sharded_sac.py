"""The SAC step on 8 (fake CPU) devices against one device.

Same seed, same config: on a ``data=8`` mesh each device acts in one of the 8
envs and keeps that env's rows of the replay buffer; the minibatch of 8 windows
is split over the devices and the gradients all-reduced. It must act the same,
store the same transitions and apply the same update as without a mesh, up to
float32 reduction order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from experiments.configs import sac as sac_configs
from lamer_jax import sharding
from lamer_jax.agent import candidates as cand_lib
from lamer_jax.algos import sac
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

MCFG = llama.TINY_CONFIGS["micro-llama"]
CFG = sac.SACConfig(num_envs=8, env_steps=2, updates=1, batch_size=8, capacity=8,
                    learning_starts=8, q_hidden=(16,), short_prompt=True, lr=1e-3,
                    critic_warmup=0)
STEPS = 2
# Discrete outcomes of acting: identical samples give identical values.
EXACT = ("episodes", "success/episode", "replay/size", "env_steps", "updates",
         "her/relabeled")


def _run(mesh):
  env = envs_jax.make("playground")
  params = env.default_params.replace(
      goal_probs=jnp.asarray(sac_configs.GRASP_ONLY, jnp.float32))
  prompt = cand_lib.CandidatePrompt.build(ByteTokenizer(), env, short=True)
  state = sac.init_state(env, params, llama.init_params(MCFG, jax.random.key(0)), MCFG,
                         CFG, jax.random.key(1))
  if mesh is not None:
    state = sharding.shard_train_state(state, mesh, MCFG,
                                       sac.state_shardings(state, mesh, MCFG))
  step = sac.make_train_step(env, params, MCFG, prompt, CFG, mesh=mesh)
  metrics = []
  for _ in range(STEPS):
    state, m = step(state)
    metrics.append(jax.device_get(m))
  return state, metrics


@pytest.fixture(scope="module")
def runs():
  mesh = sharding.make_mesh(sharding.MeshConfig(8, 1, 1), jax.devices()[:8])
  return {"one": _run(None), "data8": _run(mesh)}


def test_acting_and_update_match_one_device(runs):
  (one, m_one), (eight, m_eight) = runs["one"], runs["data8"]
  assert m_one[-1]["updates"] == 2           # both steps updated
  for a, b in zip(m_one, m_eight):
    for k in EXACT:
      assert a[k] == b[k], k
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
  same = lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  jax.tree.map(same, one.extra["replay"], eight.extra["replay"])
  jax.tree.map(same, one.extra["env"], eight.extra["env"])
  close = lambda x, y: np.testing.assert_allclose(np.asarray(y), np.asarray(x),
                                                  rtol=1e-4, atol=1e-6)
  jax.tree.map(close, one.params, eight.params)
  jax.tree.map(close, one.extra["heads"], eight.extra["heads"])


def test_env_rows_and_replay_are_split(runs):
  state, _ = runs["data8"]
  rows = jax.tree.leaves((state.extra["replay"], state.extra["env"],
                          state.extra["ep_return"]))
  split = [x for x in rows if x.ndim >= 1 and x.shape[0] == CFG.num_envs]
  assert split, "no env-row leaves"
  for x in split:
    assert {s[0] for s in sharding.addressable_shapes(x)} == {1}, x.shape
  for x in jax.tree.leaves(state.extra["target"]):    # replicated on data=8
    assert sharding.addressable_shapes(x)[0] == x.shape


def test_env_rows_must_divide_the_mesh():
  env = envs_jax.make("playground")
  mesh = sharding.make_mesh(sharding.MeshConfig(8, 1, 1), jax.devices()[:8])
  prompt = cand_lib.CandidatePrompt.build(ByteTokenizer(), env, short=True)
  cfg = sac.SACConfig(num_envs=4, batch_size=8, capacity=8, learning_starts=8)
  with pytest.raises(ValueError, match="sac.num_envs"):
    sac.make_train_step(env, env.default_params, MCFG, prompt, cfg, mesh=mesh)
