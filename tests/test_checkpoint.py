"""Checkpoints: exact round trip, retention, atomic saves, clear errors."""

from __future__ import annotations

import glob
import os

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamer_jax import checkpoint
from lamer_jax.models import loading
from lamer_jax.algos.lamer import AlgoConfig, init_train_state


def _state(model: str = "tiny-llama", step: int = 3, kl_coef: float = 0.0):
  """A train state whose every array differs from a fresh init."""
  params = loading.load(model).params
  params = jax.tree.map(lambda x: x + 0.25, params)
  state = init_train_state(params, AlgoConfig(kl_coef=kl_coef), jax.random.key(7))
  opt_state = jax.tree.map(lambda x: x + 1 if x.dtype == jnp.float32 else x,
                           state.opt_state)
  return state.replace(opt_state=opt_state, step=jnp.int32(step),
                       key=jax.random.split(state.key)[0])


def _leaves_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) and x.dtype == y.dtype
      for x, y in zip(la, lb))


def test_round_trip_is_exact_and_keeps_typed_key(tmp_path):
  state = _state(kl_coef=0.1)   # ref_params saved too
  with checkpoint.Checkpointer(tmp_path / "ckpt", keep=2) as ckpt:
    ckpt.save(3, state, config={"model": {"name": "tiny-llama"}, "lr": 1e-6})
  with checkpoint.Checkpointer(tmp_path / "ckpt", keep=2) as ckpt:
    assert ckpt.latest_step() == 3
    restored = ckpt.restore(jax.eval_shape(lambda: state))
    meta = ckpt.restore_meta()
  assert _leaves_equal(restored.params, state.params)
  assert _leaves_equal(restored.opt_state, state.opt_state)
  assert _leaves_equal(restored.ref_params, state.ref_params)
  assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state.opt_state)
  assert int(restored.step) == 3
  assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(restored.key),
                                jax.random.key_data(state.key))
  assert meta["config"] == {"model": {"name": "tiny-llama"}, "lr": 1e-6}
  assert meta["step"] == 3


def test_keeps_only_the_last_k(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path, keep=2) as ckpt:
    for step in range(1, 5):
      ckpt.save(step, state.replace(step=jnp.int32(step)))
    assert ckpt.all_steps() == [3, 4]
    assert int(ckpt.restore(jax.eval_shape(lambda: state), step=3).step) == 3
    with pytest.raises(FileNotFoundError, match="available steps: \\[3, 4\\]"):
      ckpt.restore(jax.eval_shape(lambda: state), step=1)
  assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_interrupted_save_never_shadows_the_previous_checkpoint(tmp_path,
                                                                monkeypatch):
  state = _state()
  ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
  ckpt.save(1, state.replace(step=jnp.int32(1)))
  # Fail the final rename: everything of step 2 is written, but only into
  # orbax's temporary directory.
  path_cls = type(epath.Path(tmp_path))
  real_rename = path_cls.rename

  def broken_rename(self, target):
    if ".orbax-checkpoint-tmp" in self.name:
      raise OSError("simulated crash before commit")
    return real_rename(self, target)

  monkeypatch.setattr(path_cls, "rename", broken_rename)
  with pytest.raises(OSError, match="simulated crash"):
    ckpt.save(2, state.replace(step=jnp.int32(2)))
  monkeypatch.undo()
  assert glob.glob(str(tmp_path / "2.orbax-checkpoint-tmp*"))
  assert not (tmp_path / "2").exists()
  ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
  assert ckpt.all_steps() == [1]
  assert int(ckpt.restore(jax.eval_shape(lambda: state)).step) == 1
  # Reopening removes the leftover (in the background; a save waits for it).
  ckpt.save(2, state.replace(step=jnp.int32(2)))
  assert ckpt.all_steps() == [1, 2]
  assert not glob.glob(str(tmp_path / "*orbax-checkpoint-tmp*"))
  ckpt.close()


def test_truncated_checkpoint_raises_a_clear_error(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
    ckpt.save(1, state)
    ckpt.save(2, state)
  files = [f for f in glob.glob(str(tmp_path / "2" / "state" / "**"), recursive=True)
           if os.path.isfile(f) and os.path.getsize(f) > 1]
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
  with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
    with pytest.raises(checkpoint.CheckpointError) as err:
      ckpt.restore(jax.eval_shape(lambda: state))
    message = str(err.value)
    assert str(tmp_path / "2") in message
    assert "fall back to step 1" in message and "fresh --workdir" in message
    # The older checkpoint is still fine.
    assert _leaves_equal(ckpt.restore(jax.eval_shape(lambda: state), step=1).params,
                         state.params)


def test_checkpoint_of_another_model_raises_a_clear_error(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state("tiny-llama"), config={"model": {"name": "tiny-llama"}})
    other = _state("small-llama")
    with pytest.raises(checkpoint.CheckpointError) as err:
      ckpt.restore(jax.eval_shape(lambda: other))
  message = str(err.value)
  assert str(tmp_path / "1") in message
  assert "'tiny-llama'" in message
  assert "params/embed: saved (259, 64) float32, this run expects (259, 128)" in message


def test_no_checkpoint_is_a_file_not_found_error(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
      ckpt.restore(jax.eval_shape(lambda: _state()))
