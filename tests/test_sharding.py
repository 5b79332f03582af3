"""Tests for lamer_jax.sharding on one device, plus the 8-device suite.

The 8-device tests (tests/multidevice) need
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before jax starts, so
``test_multidevice_suite`` runs them in a subprocess; this process keeps its
single device.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

import envs_jax
from lamer_jax import sharding
from lamer_jax.agent.layout import TrialShape, build_layout
from lamer_jax.agent.trial import RolloutConfig
from lamer_jax.algos import lamer as train_lib
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

_REPO = pathlib.Path(__file__).resolve().parent.parent
MCFG = llama.TINY_CONFIGS["tiny-llama"]


def _abstract_mesh(data, fsdp, tensor):
  return AbstractMesh((data, fsdp, tensor), sharding.AXES,
                      axis_types=(AxisType.Auto,) * 3)


def _abstract_params(cfg=MCFG):
  return jax.eval_shape(lambda k: llama.init_params(cfg, k), jax.random.key(0))


# ---- MeshConfig / make_mesh ---------------------------------------------------

@pytest.mark.parametrize("cfg,n,shape", [
    (sharding.MeshConfig(), 8, (8, 1, 1)),
    (sharding.MeshConfig(fsdp=4), 8, (2, 4, 1)),
    (sharding.MeshConfig(data=2, fsdp=-1, tensor=2), 16, (2, 4, 2)),
    (sharding.MeshConfig(data=2, fsdp=2, tensor=2), 8, (2, 2, 2)),
    (sharding.MeshConfig(), 1, (1, 1, 1)),
])
def test_mesh_config_shape(cfg, n, shape):
  assert cfg.shape(n) == shape


@pytest.mark.parametrize("cfg,n,match", [
    (sharding.MeshConfig(fsdp=3), 8, "fixed axes multiply to 3"),
    (sharding.MeshConfig(data=2, fsdp=2), 8, "has 4 devices but 8 are available"),
    (sharding.MeshConfig(data=4, tensor=4), 8, "has 16 devices"),
])
def test_mesh_config_errors(cfg, n, match):
  with pytest.raises(ValueError, match=match):
    cfg.shape(n)


@pytest.mark.parametrize("kwargs", [dict(data=0), dict(fsdp=-2),
                                    dict(data=-1, fsdp=-1)])
def test_mesh_config_rejects_bad_sizes(kwargs):
  with pytest.raises(ValueError):
    sharding.MeshConfig(**kwargs)


def test_make_mesh_single_device():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == sharding.AXES
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="fixed axes multiply to 2"):
    sharding.make_mesh(sharding.MeshConfig(fsdp=2))


# ---- partition specs ------------------------------------------------------------

def test_param_specs_fsdp_and_tensor():
  specs = sharding.param_specs(_abstract_params(), _abstract_mesh(1, 4, 2), MCFG)
  layers = specs["layers"]
  # [N, D=64, H*hd=64]: heads over tensor, D over fsdp; the layer axis never.
  assert layers["wq"] == P(None, "fsdp", "tensor")
  assert layers["wk"] == P(None, "fsdp", "tensor")      # 2 KV heads / 2
  assert layers["wo"] == P(None, "tensor", "fsdp")
  assert layers["w_gate"] == P(None, "fsdp", "tensor")  # [N, 64, F=128]
  assert layers["w_down"] == P(None, "tensor", "fsdp")
  assert layers["attn_norm"] == P() and specs["final_norm"] == P()
  assert specs["embed"] == P(None, "tensor")            # vocab 259: hidden


def test_param_specs_respect_heads_and_divisibility():
  specs = sharding.param_specs(_abstract_params(), _abstract_mesh(1, 1, 4), MCFG)
  assert specs["layers"]["wq"] == P(None, None, "tensor")   # 4 heads / 4
  assert specs["layers"]["wk"] == P(None, None, None)       # 2 KV heads
  # Without the config only divisibility counts: 32 columns / 4.
  bare = sharding.param_specs(_abstract_params(), _abstract_mesh(1, 1, 4))
  assert bare["layers"]["wk"] == P(None, None, "tensor")
  # fsdp=3 divides nothing of tiny-llama but the 3 columns of an extra head.
  params = dict(_abstract_params(), critic=jax.ShapeDtypeStruct((64, 3), "float32"))
  specs = sharding.param_specs(params, _abstract_mesh(1, 3, 1))
  assert specs["critic"] == P(None, "fsdp")
  assert specs["layers"]["wq"] == P(None, None, None)


def test_param_specs_untied_head_and_biases():
  cfg = llama.TINY_CONFIGS["tiny-qwen2"]
  specs = sharding.param_specs(_abstract_params(cfg), _abstract_mesh(2, 2, 2), cfg)
  # [D=64, V=259]: the vocabulary divides by nothing, the hidden size takes
  # "tensor", and no dimension is left for "fsdp".
  assert specs["lm_head"] == P("tensor", None)
  assert specs["layers"]["bq"] == P()                   # biases replicated
  assert specs["layers"]["wv"] == P(None, "fsdp", "tensor")


def test_state_shardings_mirror_params():
  algo = train_lib.AlgoConfig(kl_coef=0.1)
  abstract = jax.eval_shape(
      lambda k: train_lib.init_train_state(llama.init_params(MCFG, k), algo, k),
      jax.random.key(0))
  mesh = sharding.make_mesh()
  sh = sharding.state_shardings(abstract, mesh, MCFG)
  assert sh.params["layers"]["wq"].spec == P(None, None, None)
  assert jax.tree.structure(sh.ref_params) == jax.tree.structure(sh.params)
  adam = sh.opt_state[1][0]
  assert jax.tree.structure(adam.mu) == jax.tree.structure(sh.params)
  assert adam.count.spec == P() and sh.step.spec == P() and sh.key.spec == P()


# ---- the train step without and with a mesh ----------------------------------------

@pytest.fixture(scope="module")
def tiny_step_parts():
  env = envs_jax.make("guess")
  shape = TrialShape(num_tasks=2, group_size=2, num_attempts=2, num_turns=1)
  layout = build_layout(ByteTokenizer(), env, shape, memory="history_only",
                        reflection_tokens=8)
  algo = train_lib.AlgoConfig()
  state = train_lib.init_train_state(llama.init_params(MCFG, jax.random.key(0)),
                                     algo, jax.random.key(1))
  return env, layout, algo, state


def test_no_mesh_adds_no_sharding_constraint(tiny_step_parts):
  env, layout, algo, state = tiny_step_parts
  rollout_cfg = RolloutConfig()
  texts = {}
  for name, mesh in (("none", None), ("mesh", sharding.make_mesh())):
    step = train_lib.make_train_step(env, MCFG, layout, rollout_cfg, algo,
                                     jit=False, mesh=mesh)
    texts[name] = str(jax.make_jaxpr(step)(state))
  assert "sharding_constraint" not in texts["none"]
  assert texts["mesh"].count("sharding_constraint") > 10


def test_sharded_step_checks_rows():
  env = envs_jax.make("guess")
  shape = TrialShape(num_tasks=2, group_size=2, num_attempts=2, num_turns=1)
  layout = build_layout(ByteTokenizer(), env, shape, memory="history_only",
                        reflection_tokens=8)
  mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Auto,))
  with pytest.raises(ValueError, match="lack 'fsdp'"):
    train_lib.make_train_step(env, MCFG, layout, RolloutConfig(),
                              train_lib.AlgoConfig(), mesh=mesh)


# ---- multi-host initialisation ------------------------------------------------------

@pytest.fixture
def calls(monkeypatch):
  seen = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda **kw: seen.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  return seen


def test_initialize_distributed_noop_without_settings(calls):
  assert sharding.initialize_distributed(environ={}) is False
  assert not calls


def test_initialize_distributed_from_environment(calls):
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  assert sharding.initialize_distributed(environ=env) is True
  assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4,
                        process_id=3)]


def test_initialize_distributed_arguments_and_auto(calls):
  assert sharding.initialize_distributed("h:1", 2, 0, environ={})
  assert sharding.initialize_distributed(environ={"LAMER_DISTRIBUTED_AUTO": "1"})
  assert calls == [dict(coordinator_address="h:1", num_processes=2, process_id=0),
                   dict(coordinator_address=None, num_processes=None,
                        process_id=None)]
  with pytest.raises(ValueError, match="without a coordinator address"):
    sharding.initialize_distributed(environ={"JAX_PROCESS_ID": "1"})


# Faster, less optimised CPU code generation for the subprocesses below, which
# compile train steps and gradients: their results are compared with a
# tolerance (the 8-device suite compares programs built with the same flags).
_FAST_COMPILE = ("--xla_backend_optimization_level=0 "
                 "--xla_llvm_disable_expensive_passes=true")


# ---- two processes, one mesh ---------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes(tmp_path):
  """Two processes x 4 CPU devices, started like hosts of a pod slice, agree
  with each other and with this single-device process."""
  sys.path.insert(0, str(_REPO / "tests" / "multidevice"))
  try:
    import two_process_worker as worker  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ,
               XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {_FAST_COMPILE}",
               JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
               PYTHONPATH=os.pathsep.join(filter(None, [
                   str(_REPO), os.environ.get("PYTHONPATH")])))
    procs.append(subprocess.Popen(
        [sys.executable, str(_REPO / "tests" / "multidevice" /
                             "two_process_worker.py"), str(tmp_path / f"{pid}.json")],
        cwd=_REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True))
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  results = [json.loads((tmp_path / f"{pid}.json").read_text()) for pid in range(2)]
  for pid, r in enumerate(results):
    assert (r["process"], r["processes"], r["devices"], r["local_devices"]) == (
        pid, 2, 8, 4)
    assert r["wq_global_shape"] == [2, 64, 64]
    assert r["wq_local_shards"] == [[2, 16, 64]] * 4
  assert results[0]["seeds"] == results[1]["seeds"]        # no per-host drift
  assert results[0]["grad_norm"] == results[1]["grad_norm"]
  # The same computation on this process's single device.
  seeds, row_loss, grad_norm, checksum = jax.jit(
      lambda: worker.seeds_and_grads(worker.init_state(), *worker.batch()))()
  assert results[0]["seeds"] == np.asarray(seeds).tolist()
  np.testing.assert_allclose(results[0]["row_loss"], row_loss, rtol=1e-5)
  np.testing.assert_allclose(results[0]["grad_norm"], grad_norm, rtol=1e-5)
  np.testing.assert_allclose(results[0]["checksum"], checksum, rtol=1e-4)


# ---- the 8-device suite -----------------------------------------------------------

def test_multidevice_suite():
  env = dict(os.environ)
  # tests/conftest.py in the subprocess replaces this process's pinned count.
  env["LAMER_TEST_DEVICES"] = "8"
  env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""),
                                            _FAST_COMPILE]))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO),
                                                    env.get("PYTHONPATH")]))
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       str(_REPO / "tests" / "multidevice")],
      cwd=_REPO, env=env, capture_output=True, text=True, timeout=900,
      check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-5000:]
  assert " passed" in out and "skipped" not in out and "failed" not in out, out[-3000:]
