"""experiments.train / evaluate on 8 (fake CPU) devices through ``config.mesh``.

Two runs of the same config and seed on different meshes (data=2 x fsdp=4
and data=8) must log the same rollouts and, up to float32 reduction order,
the same losses; the train state must really be laid out on the mesh; and a
run checkpointed on one mesh must resume on another.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments import common, evaluate, train
from experiments.configs import tiny
from lamer_jax import checkpoint, metrics, sharding

MESHES = {"data2_fsdp4": (2, 4, 1), "data8": (8, 1, 1)}
# Discrete outcomes of the rollouts: identical samples give identical values.
EXACT = ("pass@1", "pass@2", "pass@3", "generated_tokens", "attempts/mean")


def _config(mesh, steps=2):
  config = tiny.get_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = MESHES[mesh]
  config.rollout.num_tasks = 4
  config.rollout.group_size = 2     # 8 trials: one per row shard
  config.algo.num_minibatches = 3   # 24 attempt rows -> 3 x 8
  config.train.steps = steps
  config.train.eval_every = 0
  config.train.checkpoint_every = 1
  config.eval.num_tasks = 8
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = {}
  for name in MESHES:
    workdir = str(tmp_path_factory.mktemp(name))
    exp = common.build(_config(name))
    results, signum = train.train(exp.config, workdir, experiment=exp,
                                  progress=False)
    assert signum is None
    out[name] = dict(exp=exp, workdir=workdir, eval=results,
                     records=metrics.read_jsonl(f"{workdir}/{metrics.JSONL_NAME}"))
  return out


def test_build_uses_the_configured_mesh(runs):
  for name, sizes in MESHES.items():
    mesh = runs[name]["exp"].mesh
    assert tuple(mesh.shape.values()) == sizes
    assert mesh.devices.size == 8


def test_meshes_log_the_same_run(runs):
  a, b = runs["data2_fsdp4"]["records"], runs["data8"]["records"]
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
  for ra, rb in zip(a, b):
    for k in EXACT:
      assert ra[k] == rb[k], k
    for k in ("loss/pg_loss", "loss/grad_norm", "loss/entropy", "return/mean"):
      np.testing.assert_allclose(ra[k], rb[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for k in ("pass@1", "pass@3"):
    assert runs["data2_fsdp4"]["eval"][k] == runs["data8"]["eval"][k]


def test_restored_state_lands_on_the_mesh(runs):
  run = runs["data2_fsdp4"]
  abstract = common.abstract_state(run["exp"])
  with checkpoint.Checkpointer(f"{run['workdir']}/{common.CHECKPOINT_DIR}") as ckpt:
    state = ckpt.restore(abstract)
  wq = state.params["layers"]["wq"]                  # [L, D, H*hd] = [2, 64, 64]
  assert wq.sharding.spec == P(None, "fsdp", None)
  assert sharding.addressable_shapes(wq) == [(2, 16, 64)] * 8
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == wq.shape]
  assert len(moments) >= 2                   # Adam's mu and nu follow the weights
  assert all(m.sharding.spec == P(None, "fsdp", None) for m in moments)
  assert int(state.step) == 2


def test_resume_on_another_mesh(runs, tmp_path):
  """Checkpoint of the data=2 x fsdp=4 run at step 2, resumed for a third
  step on data=8: the same third step as the data=8 run resumed from its own
  step-2 checkpoint (both states are equal up to reduction order)."""
  third = {}
  for src in MESHES:
    workdir = tmp_path / src
    workdir.mkdir()
    with checkpoint.Checkpointer(f"{runs[src]['workdir']}/{common.CHECKPOINT_DIR}") as c:
      state = c.restore(common.abstract_state(runs[src]["exp"]))
      meta = c.restore_meta()
    with checkpoint.Checkpointer(f"{workdir}/{common.CHECKPOINT_DIR}") as c:
      c.save(2, state, meta["config"])
    exp = runs["data8"]["exp"]
    with exp.config.unlocked():
      exp.config.train.steps = 3
    try:
      train.train(exp.config, str(workdir), experiment=exp, progress=False)
    finally:
      with exp.config.unlocked():
        exp.config.train.steps = 2
    third[src] = metrics.read_jsonl(workdir / metrics.JSONL_NAME)[-1]
  a, b = third["data2_fsdp4"], third["data8"]
  assert a["step"] == b["step"] == 3
  for k in EXACT:
    assert a[k] == b[k], k
  for k in ("loss/pg_loss", "loss/grad_norm"):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_evaluate_checkpoint_with_all_devices(runs):
  run = runs["data2_fsdp4"]
  report = evaluate.run(None, run["workdir"])
  assert report["step"] == 2 and report["num_tasks"] == 8
  assert report["config"]["mesh"] == {"data": -1, "fsdp": 1, "tensor": 1}
  for k in ("pass@1", "pass@3"):
    assert report["metrics"][k] == run["eval"][k]


def test_mesh_that_does_not_fit_the_rows_is_rejected():
  config = _config("data8")
  config.rollout.group_size = 3    # 12 trials over 8 row shards
  config.algo.num_minibatches = 1
  with pytest.raises(ValueError, match=r"rollout.num_tasks x group_size = 12 does "
                     r"not split over mesh.data x mesh.fsdp = 8 devices"):
    common.validate(config)
  assert jax.device_count() == 8
