"""Checkpoints: exact round trip, retention, atomic saves, verification and
fallback, storage errors, clear messages."""

from __future__ import annotations

import glob
import os
import subprocess

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamer_jax import checkpoint, storage
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


def test_round_trip_of_extra_state_is_exact(tmp_path):
  """PPO's value head and its Adam state (``TrainState.extra``) come back bit
  for bit, with the structure of the optimiser state; a state without them
  does not restore into one that has them."""
  params = jax.tree.map(lambda x: x + 0.25, loading.load("tiny-llama").params)
  algo = AlgoConfig(estimator="gae", value_hidden=(16, 8))
  state = init_train_state(params, algo, jax.random.key(7))
  rng = np.random.default_rng(0)
  # Every value-head and Adam array non-trivial (a fresh head's last layer
  # and its moments are zeros); the step counts stay integers.
  extra = jax.tree.map(
      lambda x: (jnp.asarray(rng.normal(size=x.shape), x.dtype)
                 if jnp.issubdtype(x.dtype, jnp.floating) else x + 5),
      state.extra)
  state = state.replace(extra=extra, step=jnp.int32(4))
  with checkpoint.Checkpointer(tmp_path, keep=2) as ckpt:
    ckpt.save(4, state)
  with checkpoint.Checkpointer(tmp_path, keep=2) as ckpt:
    restored, step = ckpt.restore_verified(jax.eval_shape(lambda: state))
    assert step == 4
    assert _leaves_equal(restored.extra, state.extra)
    assert jax.tree.structure(restored.extra) == jax.tree.structure(state.extra)
    assert _leaves_equal(restored.params, state.params)
    assert _leaves_equal(restored.opt_state, state.opt_state)
  plain = init_train_state(params, AlgoConfig(), jax.random.key(7))
  with checkpoint.Checkpointer(tmp_path / "plain", keep=2) as ckpt:
    ckpt.save(1, plain)
    with pytest.raises(checkpoint.CheckpointError,
                       match="extra/value/layers/0/b: missing from the checkpoint"):
      ckpt.restore(jax.eval_shape(lambda: state))


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


# ---- verification, fallback, storage errors -----------------------------------
def _flip_bytes(step_dir, n: int = 16) -> str:
  """Flips ``n`` bytes in the middle of the step's largest data file."""
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True)
           if os.path.isfile(f)]
  target = max(files, key=os.path.getsize)
  with open(target, "r+b") as f:
    f.seek(os.path.getsize(target) // 2)
    data = bytearray(f.read(n))
    f.seek(-len(data), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in data))
  return target


def test_checksums_name_the_array_that_changed():
  state = _state()
  tree = checkpoint.state_to_tree(state)
  before = checkpoint.checksums(checkpoint._host_leaves(tree))
  tree["params"]["embed"] = tree["params"]["embed"].at[3, 5].add(1e-7)
  after = checkpoint.checksums(checkpoint._host_leaves(tree))
  assert [k for k in before if before[k] != after[k]] == ["params/embed"]


def test_bit_flipped_checkpoint_is_moved_aside_and_the_previous_restored(
    tmp_path, caplog):
  state = _state()
  with checkpoint.Checkpointer(tmp_path / "ckpt", keep=3) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state.replace(step=jnp.int32(step)))
  _flip_bytes(tmp_path / "ckpt" / "3")
  with checkpoint.Checkpointer(tmp_path / "ckpt", keep=3) as ckpt:
    with pytest.raises(checkpoint.CorruptCheckpointError, match="ckpt/3"):
      ckpt.restore(jax.eval_shape(lambda: state))
    with caplog.at_level("WARNING"):
      restored, step = ckpt.restore_verified(jax.eval_shape(lambda: state))
    assert step == 2 and int(restored.step) == 2
    assert _leaves_equal(restored.params, state.params)
    assert ckpt.all_steps() == [1, 2]
    # Nothing is deleted: the corrupt one is set aside, and the warning says where.
    assert (tmp_path / "ckpt.corrupt" / "3").is_dir()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "ckpt/3" in said and "ckpt.corrupt/3" in said
    # Training goes on from step 2: new checkpoints rotate as usual.
    ckpt.save(3, state.replace(step=jnp.int32(3)))
    ckpt.save(4, state.replace(step=jnp.int32(4)))
    assert ckpt.all_steps() == [2, 3, 4]


def test_no_verified_checkpoint_left_is_an_error(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(1, state)
  _flip_bytes(tmp_path / "ckpt" / "1")
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    with pytest.raises(checkpoint.CorruptCheckpointError, match="no checkpoint .* verifies"):
      ckpt.restore_verified(jax.eval_shape(lambda: state))
    assert ckpt.restore_verified(jax.eval_shape(lambda: state)) is None
  assert (tmp_path / "ckpt.corrupt" / "1").is_dir()


def test_incompatible_checkpoint_is_not_moved(tmp_path):
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(1, _state("tiny-llama"))
    other = _state("small-llama")
    with pytest.raises(checkpoint.CheckpointError) as err:
      ckpt.restore_verified(jax.eval_shape(lambda: other))
    assert not isinstance(err.value, checkpoint.CorruptCheckpointError)
    assert ckpt.all_steps() == [1]


def test_non_finite_state_is_never_saved(tmp_path):
  state = _state()
  bad = state.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan),
                                          state.params))
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match="non-finite values in params/"):
      ckpt.save(1, bad)
    assert ckpt.all_steps() == []


def _mount_tmpfs(path, size: str) -> None:
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0 or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
      capture_output=True).returncode:
    pytest.skip("needs root to mount a tmpfs")


@pytest.fixture
def tiny_disk(tmp_path):
  """A 600 KiB filesystem: room for one checkpoint of ``_state()`` (350 KiB on
  disk), not two."""
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, "600k")
  yield disk
  subprocess.run(["umount", str(disk)], check=False)


def test_full_disk_is_one_clear_error_before_writing(tiny_disk):
  state = _state()
  with checkpoint.Checkpointer(tiny_disk / "ckpt") as ckpt:
    ckpt.save(1, state)
    with pytest.raises(storage.StorageError, match="disk full .* free at"):
      ckpt.save(2, state)
    assert ckpt.all_steps() == [1]


def test_full_disk_inside_orbax_states_the_cause_first(tiny_disk, monkeypatch,
                                                       capfd):
  state = _state()
  monkeypatch.setattr(storage, "check_free", lambda *a: None)   # let orbax hit it
  with checkpoint.Checkpointer(tiny_disk / "ckpt") as ckpt:
    ckpt.save(1, state)
    with pytest.raises(storage.StorageError) as err:
      ckpt.save(2, state)
    assert ckpt.all_steps() == [1]
  message = str(err.value)
  assert "disk full (No space left on device)" in message and "ckpt/2" in message
  err_text = capfd.readouterr().err
  first = err_text.index("StorageError: ")
  assert "Traceback" not in err_text[:first] and "RESOURCE_EXHAUSTED" not in err_text[:first]


@pytest.mark.parametrize("case", ["file", "read_only"])
def test_unwritable_workdir_is_named_before_the_run(tmp_path, case):
  if case == "file":
    path = tmp_path / "run"
    path.write_text("not a directory")
    expected = "not a directory"
  else:
    _mount_tmpfs(tmp_path / "ro", "64k")
    subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "ro")], check=True)
    path = tmp_path / "ro" / "run"
    expected = "read-only filesystem"
  try:
    with pytest.raises(storage.StorageError, match=expected) as err:
      storage.check_workdir(str(path))
    assert str(path) in str(err.value) and "--workdir" in str(err.value)
  finally:
    if case == "read_only":
      subprocess.run(["umount", str(tmp_path / "ro")], check=False)


def test_storage_cause_is_found_in_wrapped_and_textual_errors():
  import errno as errno_lib  # pylint: disable=g-import-not-at-top
  try:
    try:
      raise OSError(errno_lib.ENOSPC, "No space left on device")
    except OSError as inner:
      raise RuntimeError("save failed") from inner
  except RuntimeError as e:
    assert storage.os_error_in(e).errno == errno_lib.ENOSPC
  text = ValueError("RESOURCE_EXHAUSTED: Failed to write 5 bytes: No space left on "
                    "device [os_error_code='28']")
  assert storage.os_error_in(text).errno == errno_lib.ENOSPC
  assert storage.os_error_in(ValueError("shape mismatch")) is None
