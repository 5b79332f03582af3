"""The sharded train step on 8 (fake CPU) devices against one device.

Same seed, same global batch (4 tasks x 2 trials x 2 attempts = 16 rows, two
minibatches of 8): the step on a ``data=8`` mesh and on a ``data=2 x fsdp=4``
mesh must play the same tasks, sample the same actions and apply the same
update as on ``data=1``, up to float32 reduction order.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

import envs_jax
from lamer_jax import sharding
from lamer_jax.agent.layout import TrialShape, build_layout
from lamer_jax.agent.trial import RolloutConfig
from lamer_jax.algos import lamer as train_lib
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

MCFG = llama.TINY_CONFIGS["tiny-llama"]
SHAPE = TrialShape(num_tasks=4, group_size=2, num_attempts=2, num_turns=1)
ROLLOUT = RolloutConfig()
# A large learning rate, so that the update is far above float32 noise, and
# an Adam epsilon far above float32 noise in the gradients, so that the update
# is a well-conditioned function of them (see the parameter test's bound).
ALGO = train_lib.AlgoConfig(lr=1e-3, num_minibatches=2, adam_eps=1e-3)
# Gradients summed in another order agree to this relative error (float32
# reductions over at most ~1e4 terms; the moments are checked against it).
GRAD_RTOL = 1e-4
MESHES = {"data1": (1, 1, 1), "data8": (8, 1, 1), "data2_fsdp4": (2, 4, 1)}
# Discrete outcomes of the rollout: identical samples give identical values.
EXACT = ("pass@1", "pass@2", "generated_tokens", "attempts/mean", "turns/mean",
         "invalid_rate")


def _setup():
  env = envs_jax.make("guess")
  layout = build_layout(ByteTokenizer(), env, SHAPE, memory="history_only",
                        reflection_tokens=8)
  return env, layout


def _init_state():
  params = llama.init_params(MCFG, jax.random.key(0))
  return train_lib.init_train_state(params, ALGO, jax.random.key(1))


def _mesh(name):
  d, f, t = MESHES[name]
  return sharding.make_mesh(sharding.MeshConfig(d, f, t),
                            jax.devices()[:d * f * t])


@pytest.fixture(scope="module")
def runs():
  """Per mesh: the compiled step, its HLO, state before/after, metrics."""
  env, layout = _setup()
  out = {}
  for name in MESHES:
    mesh = _mesh(name)
    step = train_lib.make_train_step(env, MCFG, layout, ROLLOUT, ALGO, mesh=mesh)
    state = sharding.shard_train_state(_init_state(), mesh, MCFG)
    compiled = step.lower(state).compile()
    new_state, metrics = compiled(state)
    out[name] = dict(mesh=mesh, step=compiled, hlo=compiled.as_text(),
                     state=new_state, metrics=jax.device_get(metrics),
                     host=jax.device_get(new_state.params), layout=layout)
  return out


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", ["data8", "data2_fsdp4"])
def test_metrics_match_single_device(runs, name):
  ref, got = runs["data1"]["metrics"], runs[name]["metrics"]
  assert set(ref) == set(got)
  for k in EXACT:
    assert got[k] == ref[k], k
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # The loss saw a real signal: a non-zero gradient and advantages.
  assert ref["loss/grad_norm"] > 1e-3 and ref["advantage/abs_mean"] > 0


@pytest.mark.parametrize("name", ["data8", "data2_fsdp4"])
def test_updated_params_match_single_device(runs, name):
  init = jax.device_get(_init_state().params)
  ref, got = runs["data1"]["host"], runs[name]["host"]
  assert _max_abs_diff(ref, init) > 0.5 * ALGO.lr   # the step moved the weights
  ref_opt = jax.device_get(runs["data1"]["state"].opt_state)
  got_opt = jax.device_get(runs[name]["state"].opt_state)
  for x, y in zip(jax.tree.leaves(ref_opt), jax.tree.leaves(got_opt)):
    np.testing.assert_allclose(y, x, rtol=GRAD_RTOL, atol=1e-9)
  # The bound on the parameters, derived rather than guessed. Adam's update at
  # step t is u = m / (sqrt(v) + eps) with bias-corrected moments: m is a convex
  # combination of the gradients so far and sqrt(v) a weighted root mean square
  # of them, so a gradient error of at most d per entry moves m and sqrt(v) by at
  # most d each, and u by at most d / eps + |u| d / eps <= 2 d / eps (|u| <= 1
  # for t <= 2). Over the T = 2 minibatch steps the weights move apart by at
  # most T * lr * 2 d / eps, with d = GRAD_RTOL * (largest gradient entry). With
  # optax's default eps = 1e-8 the same bound is 1e5 times looser: an entry
  # whose gradient is near eps has an ill-conditioned update (g / (|g| + eps)),
  # which is why a fixed 1e-2 * lr once failed on a 1.04e-5 difference.
  nu = ref_opt[1][0].nu
  # nu = (1 - b2) (b2 g1^2 + g2^2) >= (1 - b2) b2 max(g1, g2)^2 entrywise.
  g_max = max(float(np.sqrt(np.max(np.asarray(v)) / ((1 - ALGO.b2) * ALGO.b2)))
              for v in jax.tree.leaves(nu))
  bound = 2 * ALGO.lr * 2 * GRAD_RTOL * g_max / ALGO.adam_eps
  assert _max_abs_diff(got, ref) <= bound, (_max_abs_diff(got, ref), bound)
  assert int(runs[name]["state"].step) == 1
  np.testing.assert_array_equal(jax.random.key_data(runs[name]["state"].key),
                                jax.random.key_data(runs["data1"]["state"].key))


def test_fsdp_params_are_sharded(runs):
  state = runs["data2_fsdp4"]["state"]
  layers = state.params["layers"]
  expected = {  # [N, in, out]: the largest dimension divisible by 4 over fsdp
      "wq": (P(None, "fsdp", None), (2, 16, 64)),
      "wk": (P(None, "fsdp", None), (2, 16, 32)),
      "wo": (P(None, "fsdp", None), (2, 16, 64)),
      "w_gate": (P(None, None, "fsdp"), (2, 64, 32)),
      "w_down": (P(None, "fsdp", None), (2, 32, 64)),
      "attn_norm": (P(), (2, 64)),
  }
  for name, (spec, shard) in expected.items():
    x = layers[name]
    assert x.sharding.spec == spec, name
    assert sharding.addressable_shapes(x) == [shard] * 8, name
    assert len(x.sharding.device_set) == 8
  embed = state.params["embed"]          # vocab 259 is prime: hidden is split
  assert sharding.addressable_shapes(embed) == [(259, 16)] * 8
  mu = state.opt_state[1][0].mu          # Adam moments mirror the params
  assert mu["layers"]["wq"].sharding.spec == P(None, "fsdp", None)
  assert sharding.addressable_shapes(mu["embed"]) == [(259, 16)] * 8
  assert state.step.sharding.is_fully_replicated
  # On data=8 the weights are whole on every device.
  wq8 = runs["data8"]["state"].params["layers"]["wq"]
  assert sharding.addressable_shapes(wq8) == [(2, 64, 64)] * 8


@pytest.mark.parametrize("name,rows", [("data1", 8), ("data8", 1),
                                       ("data2_fsdp4", 1)])
def test_rollout_rows_are_split(runs, name, rows):
  """The per-device KV cache [layers, rows, C, kv heads, head dim] in the HLO."""
  c = runs[name]["layout"].context_len
  shapes = set(re.findall(rf"f32\[2,(\d+),{c},2,16\]", runs[name]["hlo"]))
  assert shapes == {str(rows)}


def test_tensor_parallel_placement():
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
  state = sharding.shard_train_state(_init_state(), mesh, MCFG)
  layers = state.params["layers"]
  assert layers["wq"].sharding.spec == P(None, "fsdp", "tensor")
  assert sharding.addressable_shapes(layers["wq"]) == [(2, 32, 32)] * 8
  assert layers["wo"].sharding.spec == P(None, "tensor", "fsdp")
  assert layers["w_down"].sharding.spec == P(None, "tensor", "fsdp")
  assert state.params["embed"].sharding.spec == P(None, "tensor")


def test_mesh_shapes_and_errors():
  assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=4))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="does not divide 8"):
    sharding.make_mesh(sharding.MeshConfig(fsdp=3))
  with pytest.raises(ValueError, match="8 are available"):
    sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2))


def test_rows_must_divide_the_data_axes():
  env, layout = _setup()
  mesh = sharding.make_mesh(sharding.MeshConfig(data=8))
  with pytest.raises(ValueError, match="do not split over data x fsdp = 8"):
    train_lib.make_train_step(env, MCFG, layout.with_tasks(3, group_size=2),
                              ROLLOUT, ALGO, mesh=mesh)


def _tree(state):
  """A train state as orbax-friendly arrays (the typed key as raw data)."""
  return {"params": state.params, "opt_state": state.opt_state,
          "step": state.step, "key": jax.random.key_data(state.key)}


def test_checkpoint_restores_onto_another_mesh(runs, tmp_path):
  """Saved from data=2 x fsdp=4; restored onto data=8, fsdp=2 x tensor=4 and
  the source mesh. From the data=8 restore, the next step must agree with
  the next step on the source mesh.
  """
  src = runs["data2_fsdp4"]
  abstract = jax.eval_shape(lambda: _tree(_init_state()))
  path = tmp_path / "ckpt"
  meshes = {"data8": sharding.MeshConfig(data=8),
            "tp4": sharding.MeshConfig(data=1, fsdp=2, tensor=4),
            "data2_fsdp4": sharding.MeshConfig(data=2, fsdp=4)}
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, _tree(src["state"]))
    ckpt.wait_until_finished()
    restored = {}
    for name, cfg in meshes.items():
      mesh = sharding.make_mesh(cfg)
      shardings = sharding.state_shardings(abstract, mesh, MCFG)
      target = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          abstract, shardings)
      restored[name] = ckpt.restore(path, target)
      assert _max_abs_diff(restored[name]["params"], src["host"]) == 0.0
      wq = restored[name]["params"]["layers"]["wq"]
      assert wq.sharding.mesh.shape == mesh.shape
  assert sharding.addressable_shapes(
      restored["data8"]["params"]["layers"]["wq"]) == [(2, 64, 64)] * 8
  # tensor=4 does not divide the 2 KV heads: wk is split over fsdp only.
  tp = restored["tp4"]["params"]["layers"]
  assert sharding.addressable_shapes(tp["wq"]) == [(2, 32, 16)] * 8
  assert tp["wk"].sharding.spec == P(None, "fsdp", None)

  def state(tree):
    return train_lib.TrainState(params=tree["params"],
                                opt_state=tree["opt_state"], ref_params=None,
                                step=tree["step"],
                                key=jax.random.wrap_key_data(tree["key"]))

  _, m_moved = runs["data8"]["step"](state(restored["data8"]))
  _, m_source = src["step"](state(restored["data2_fsdp4"]))
  m_moved, m_source = jax.device_get((m_moved, m_source))
  assert m_moved["loss/grad_norm"] > 0
  for k, v in m_source.items():
    np.testing.assert_allclose(m_moved[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
