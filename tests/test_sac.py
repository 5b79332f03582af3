"""SAC-GLAM: the candidate policy, the compiled SAC step, its resume, its errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from experiments import common
from experiments.configs import sac as sac_configs
from lamer_jax import checkpoint
from lamer_jax.agent import candidates as cand_lib
from lamer_jax.algos import sac
from lamer_jax.models import heads, llama, loading

GRASP = jnp.asarray(sac_configs.GRASP_ONLY, jnp.float32)


@pytest.fixture(scope="module")
def model():
  return loading.load("tiny-llama", key=jax.random.key(0))


@pytest.fixture(scope="module")
def world():
  env = envs_jax.make("playground")
  return env, env.default_params.replace(goal_probs=GRASP)


def _states(env, params, n, seed=0):
  envs, _ = jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(jax.random.key(seed), n), params)
  sym = jax.vmap(env.render_symbols, in_axes=(0, None))(envs, params)
  mask = jax.vmap(env.action_mask, in_axes=(0, None))(envs, params)
  return envs, sym, mask


def test_candidate_scores_equal_full_forward(model, world):
  """The cached continuation scores equal one plain forward over prompt +
  candidate, and pi is their softmax over the allowed candidates."""
  env, params = world
  prompt = cand_lib.CandidatePrompt.build(model.tokenizer, env, short=True)
  twin = heads.init_twin(jax.random.key(1), model.cfg.hidden_size, (16,))
  twin = jax.tree.map(lambda x: x + 0.1, twin)      # non-zero Q outputs
  _, sym, mask = _states(env, params, 3)
  out = cand_lib.candidate_outputs(model.params, model.cfg, prompt, sym, mask, twin)
  tokens, tmask = prompt.prompts(sym)
  codec = prompt.codec
  for b in range(3):
    allowed = np.flatnonzero(np.asarray(mask[b]))
    assert sorted(np.asarray(out.actions[b])[np.asarray(out.valid[b])]) == list(allowed)
    real = np.asarray(tokens[b])[np.asarray(tmask[b])]
    for j in np.flatnonzero(np.asarray(out.valid[b])):
      a = int(out.actions[b, j])
      cand = codec.action_tokens[a, :codec.action_lengths[a]]
      row = jnp.asarray(np.concatenate([real, cand]))[None]
      logits, hidden, _ = llama.forward(model.params, model.cfg, row,
                                        jnp.arange(row.shape[1])[None])
      logp = jax.nn.log_softmax(logits[0], -1)
      n = len(real)
      want = sum(float(logp[n - 1 + i, cand[i]]) for i in range(len(cand)))
      np.testing.assert_allclose(float(out.scores[b, j]), want, rtol=1e-4, atol=1e-4)
      q1, _ = heads.apply_twin(twin, hidden[0, -1])
      np.testing.assert_allclose(float(out.q[0][b, j]), float(q1), rtol=1e-4, atol=1e-4)
    valid = np.asarray(out.valid[b])
    probs = np.exp(np.asarray(out.logp[b])[valid])
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    ref = np.exp(np.asarray(out.scores[b])[valid] - np.asarray(out.scores[b])[valid].max())
    np.testing.assert_allclose(probs, ref / ref.sum(), rtol=1e-4)


def test_mean_scores_divide_by_the_candidate_length(model, world):
  env, params = world
  _, sym, mask = _states(env, params, 2)
  out = {}
  for score in cand_lib.SCORES:
    prompt = cand_lib.CandidatePrompt.build(model.tokenizer, env, short=True, score=score)
    out[score] = cand_lib.candidate_outputs(model.params, model.cfg, prompt, sym, mask)
  lengths = np.asarray(prompt.codec.action_lengths)[np.asarray(out["sum"].actions)]
  np.testing.assert_allclose(np.asarray(out["mean"].scores),
                             np.asarray(out["sum"].scores) / lengths, rtol=1e-5)
  with pytest.raises(ValueError, match="candidate score must be one of"):
    cand_lib.CandidatePrompt.build(model.tokenizer, env, score="max")


def test_playground_never_allows_more_than_its_bound(world):
  env, _ = world
  params = env.default_params
  envs, _, mask = _states(env, params, 256, seed=3)
  step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
  for t in range(15):
    assert int(mask.sum(-1).max()) <= env.max_allowed_actions
    k = jax.random.fold_in(jax.random.key(4), t)
    choice = jax.random.categorical(k, jnp.where(mask, 0.0, -jnp.inf))
    envs, _ = step(jax.random.split(k, 256), envs, choice, params)
    mask = jax.vmap(env.action_mask, in_axes=(0, None))(envs, params)


CFG = sac.SACConfig(num_envs=4, env_steps=2, updates=2, batch_size=8, capacity=16,
                    learning_starts=8, q_hidden=(16,), short_prompt=True, lr=1e-3,
                    critic_warmup=1)


@pytest.fixture(scope="module")
def step_fn(model, world):
  env, params = world
  prompt = cand_lib.CandidatePrompt.build(model.tokenizer, env, short=True)
  return sac.make_train_step(env, params, model.cfg, prompt, CFG)


def _init(model, world, seed=1):
  env, params = world
  p = jax.tree.map(jnp.copy, model.params)
  return jax.device_put(sac.init_state(env, params, p, model.cfg, CFG,
                                       jax.random.key(seed)), jax.devices()[0])


def _equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_step_compiles_once_learns_and_resumes_bit_identically(model, world, step_fn,
                                                              tmp_path):
  state = _init(model, world)
  metrics = []
  for _ in range(2):
    state, m = step_fn(state)
    metrics.append(jax.device_get(m))
  # Step 1 stored 8 transitions (= learning_starts): both steps updated.
  assert metrics[0]["updates"] == 2 and metrics[1]["updates"] == 4
  assert metrics[1]["replay/size"] == 16
  assert metrics[1]["actor_on"] == 1.0 and metrics[0]["nonfinite/skipped_updates"] == 0
  assert np.isfinite(metrics[1]["loss/critic"]) and metrics[1]["alpha"] > 0
  assert metrics[1]["candidates/dropped"] == 0
  # Save after 2 steps; 1 more step from the restore equals 1 more step.
  tree_path = tmp_path / "ckpt"
  with checkpoint.Checkpointer(str(tree_path)) as ck:
    ck.save(2, state, {"name": "test"})
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = ck.restore(abstract, 2)
  assert _equal(checkpoint.state_to_tree(state), checkpoint.state_to_tree(restored))
  a, ma = step_fn(state)
  b, mb = step_fn(restored)
  assert _equal(checkpoint.state_to_tree(a), checkpoint.state_to_tree(b))
  assert jax.device_get(ma) == jax.device_get(mb)
  assert step_fn._cache_size() == 1           # one compilation for every call


def test_same_seed_same_numbers(model, world, step_fn):
  runs = []
  for _ in range(2):
    state = _init(model, world, seed=5)
    for _ in range(2):
      state, m = step_fn(state)
    runs.append(jax.device_get(m))
  assert runs[0] == runs[1]


def test_eval_reports_success_per_goal_type(model):
  env = envs_jax.make("playground-test")
  prompt = cand_lib.CandidatePrompt.build(model.tokenizer, env, short=True)
  ev = sac.make_eval_fn(env, env.default_params, model.cfg, prompt, batch_size=16)
  m = jax.device_get(ev(model.params, jax.random.key(0), jnp.arange(32)))
  assert 0.0 <= m["pass@1"] <= 1.0
  total = sum(m[f"tasks/{t.replace(' ', '_')}"] for t in sac.goal_types(env)[0])
  assert total == 32
  assert 1 <= m["steps/mean"] <= env.max_turns


@pytest.mark.parametrize("change,match", [
    ({"her_ratio": 1.5}, "relabel ratio"),
    ({"her_strategy": "episode"}, "her_strategy"),
    ({"batch_size": 4096, "capacity": 8, "num_envs": 4}, "smaller|exceeds"),
    ({"target_entropy_fraction": 0.0}, "target_entropy_fraction"),
    ({"learning_starts": 10**6}, "learning_starts"),
    ({"candidate_score": "max"}, "candidate_score must be one of"),
])
def test_bad_sac_settings_name_the_fix(change, match):
  with pytest.raises(ValueError, match=match):
    sac.SACConfig(**change)


def test_config_errors_name_the_fix():
  config = sac_configs.get_config("sac_her,tiny")
  config.sac.her_ratio = -0.1
  with pytest.raises(common.ConfigError, match="relabel ratio"):
    common.validate(config)
  config = sac_configs.get_config("sac_her,tiny")
  config.env.name = "guess"
  config.rollout.num_turns = None
  with config.unlocked():
    config.env.params = type(config.env.params)()
  with pytest.raises(common.ConfigError, match="goal-conditioned"):
    common.validate(config)


def test_unknown_goal_is_rejected():
  env = envs_jax.make("playground")
  with pytest.raises(ValueError, match="ids run from 0"):
    sac.check_goals(env, [env.num_goals])
  with pytest.raises(ValueError, match="did you mean 'Grasp cow'"):
    sac.check_goals(env, ["Grasp cows"])
  assert sac.check_goals(env, [0, "Grow carrot"]) == [0, env.goal_strings.index(
      "Grow carrot")]
