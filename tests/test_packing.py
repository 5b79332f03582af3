"""The update's packed forward (``algo.update_pack_buckets``): each row's real
slots moved to its front, the decoder over a shorter static length; the same
log-probs, entropies, hidden states, losses and gradients as over all C
slots, to float32 rounding, on rows a real rollout wrote."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common
from experiments.configs import tiny
from lamer_jax.agent import scoring
from lamer_jax.algos import lamer


def test_pack_lengths():
  assert scoring.pack_lengths(1000, 4) == (256, 512, 768, 1000)
  assert scoring.pack_lengths(1000, 1) == (1000,)
  assert scoring.pack_lengths(100, 3) == (100,)          # one multiple of 128 > C
  with pytest.raises(ValueError, match="update_pack_buckets"):
    scoring.pack_lengths(1000, 0)
  with pytest.raises(ValueError, match="update_pack_buckets must be >= 0"):
    lamer.AlgoConfig(update_pack_buckets=-1)


@pytest.fixture(scope="module")
def rollout():
  """One collected iteration of a 3-attempt reflection config: attempt rows
  with empty memory entries, unplayed turns and stopped reflections."""
  config = tiny.get_config()
  config.model.name = "micro-llama"
  config.rollout.num_tasks = 2
  config.rollout.group_size = 2
  config.rollout.memory = "reflection_only"
  config.rollout.reflection_tokens = 96
  config.algo.kl_coef = 0.05            # the reference forward is packed too
  exp = common.build(config, jit=False)
  game = exp.train_games[0]
  phases = lamer.make_step_phases((game,), exp.model.cfg, exp.train_rollout, exp.algo)
  k = jax.random.key(3)
  data, _ = jax.jit(lambda p: phases.collect(p, None, 0, k, jax.random.fold_in(k, 1)))(
      exp.model.params)
  return exp, game, data


def _close(a, b, what):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6,
                             err_msg=what)


def test_packed_scores_and_gradients_equal_the_full_forward(rollout):
  exp, game, data = rollout
  lay, mcfg, params = game.layout, exp.model.cfg, exp.model.params
  real = np.asarray(data["token_mask"])
  lengths = scoring.pack_lengths(lay.context_len, 4)
  # The rows have holes enough that packing runs a shorter forward.
  assert real.sum(1).max() <= lengths[-2] < lay.context_len, (real.sum(1), lengths)

  def scores(p, buckets):
    return scoring.row_logprobs(p, mcfg, lay, data, 0.7, True, pack_buckets=buckets)

  mask = np.asarray(data["loss_mask"])
  assert mask.any()
  full, packed = jax.jit(lambda p: (scores(p, 0), scores(p, 4)))(params)
  for name, a, b in zip(("logp", "entropy"), full, packed):
    _close(np.where(mask, a, 0), np.where(mask, b, 0), name)

  def objective(p, buckets):
    logp, ent = scores(p, buckets)
    return jnp.sum(jnp.where(mask, logp + 0.1 * ent, 0.0))

  g_full, g_packed = jax.jit(lambda p: (jax.grad(objective)(p, 0),
                                        jax.grad(objective)(p, 4)))(params)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_full),
                          jax.tree.leaves(g_packed)):
    scale = float(np.abs(np.asarray(a)).max()) or 1.0
    np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale,
                               atol=2e-5, err_msg=jax.tree_util.keystr(path))


def test_packed_hidden_states_at_real_slots(rollout):
  exp, game, data = rollout
  real = np.asarray(data["token_mask"])
  assert real.any(1).sum() >= 2 and not real.all()
  slots = np.arange(real.shape[1])
  a, b = jax.jit(lambda p: [scoring.hidden_at(p, exp.model.cfg, data, slots, n)
                            for n in (0, 3)])(exp.model.params)
  _close(np.where(real[..., None], a, 0), np.where(real[..., None], b, 0), "hidden")


def test_packed_update_equals_the_full_update(rollout):
  exp, game, data = rollout
  params = exp.model.params
  out = {}
  for buckets in (0, 4):
    algo = dataclasses.replace(exp.algo, update_pack_buckets=buckets)
    phases = lamer.make_step_phases((game,), exp.model.cfg, exp.train_rollout, algo)
    opt = lamer.make_optimizer(algo).init(params)
    (new, _, _), metrics = jax.jit(lambda p, o: phases.update(
        p, o, None, [data], p, jax.random.key(5)))(params, opt)
    out[buckets] = (new, metrics)
  assert {"grad_norm", "skipped"} <= set(out[0][1]), sorted(out[0][1])
  for k in out[0][1]:
    _close(out[0][1][k], out[4][1][k], k)
  assert float(out[4][1]["skipped"].sum()) == 0.0
  # (The parameters after one AdamW step are not compared: Adam's first step
  # is lr x sign(gradient), which flips on gradients within rounding of 0.)
