"""The per-phase profile of a LaMer iteration (experiments/bench_phases.py):
its FLOP counts by hand, its synthetic update data, one profile of a tiny
config. Timings are measured, never asserted."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments import bench_phases, common, roofline
from experiments.configs import tiny
from lamer_jax.algos import lamer
from lamer_jax.models import llama

_CFG = llama.TINY_CONFIGS["tiny-llama"]   # 2 layers, hidden 64, 4 heads x 16, 2 kv heads
_BODY = 2 * (64 * 64 + 2 * 64 * 2 * 16 + 64 * 64 + 3 * 64 * 128)  # weights per token
_ATTN = 4 * 2 * 4 * 16                                            # per query and key


def test_prefill_and_decode_flops_by_hand():
  windows = llama.key_windows(_CFG, 1000)
  assert len(windows) > 1, windows
  # A chunk at the start reads the first window; past it, the next one.
  assert bench_phases.prefill_flops(_CFG, rows=3, width=10, start=0, context_len=1000) \
      == 3 * (2 * _BODY * 10 + _ATTN * 10 * (windows[0] + 10) + 2 * 259 * 64)
  late = bench_phases.prefill_flops(_CFG, rows=1, width=10, start=windows[0] + 1,
                                    context_len=1000)
  assert late == 2 * _BODY * 10 + _ATTN * 10 * (windows[1] + 10) + 2 * 259 * 64
  # Decoding: every token reads the whole cache and projects on its columns.
  assert bench_phases.decode_flops(_CFG, rows=2, steps=5, context_len=1000,
                                   head_columns=7, final_head=False) \
      == 2 * 5 * (2 * (_BODY + 7 * 64) + _ATTN * 1000)
  with_tail = bench_phases.decode_flops(_CFG, rows=2, steps=5, context_len=1000,
                                        head_columns=7, final_head=True)
  assert with_tail - 2 * 5 * (2 * (_BODY + 7 * 64) + _ATTN * 1000) == 2 * 2 * 259 * 64


def _tiny_experiment():
  config = tiny.get_config()
  config.model.name = "micro-llama"
  config.rollout.num_tasks = 1
  config.rollout.group_size = 2
  config.rollout.memory = "reflection_only"
  config.rollout.reflection_tokens = 8
  return config


def test_update_flops_counts_every_slot_and_head():
  exp = common.build(_tiny_experiment(), jit=False)
  lay, algo = exp.train_games[0].layout, exp.algo
  mcfg = exp.model.cfg
  c = lay.context_len
  one = bench_phases.update_flops(mcfg, lay, 1, algo.train_reflection)
  assert bench_phases.update_flops(mcfg, lay, 4, algo.train_reflection) == 4 * one
  body = 3 * (2 * roofline.matmul_params(mcfg, vocab=0) * c
              + 4 * mcfg.num_layers * mcfg.num_heads * mcfg.head_dim * c * c)
  slots, constrained = lay.loss_slot_kinds(algo.train_reflection)
  head = one - body
  # Between: every loss slot on the table's columns, and on the whole vocabulary.
  assert 3 * 2 * len(slots) * mcfg.hidden_size <= head
  assert constrained.any()
  assert head < 3 * 2 * len(slots) * mcfg.hidden_size * mcfg.vocab_size


def test_synthetic_update_data_trains_without_skips():
  exp = common.build(_tiny_experiment(), jit=False)
  game, algo = exp.train_games[0], exp.algo
  one = dataclasses.replace(algo, num_minibatches=1, ppo_epochs=1)
  phases = lamer.make_step_phases((game,), exp.model.cfg, exp.train_rollout, one)
  key = jax.random.key(0)
  params = exp.model.params
  data = bench_phases.synthetic_update_data(phases, game.layout, params, one, key,
                                            exp.model.cfg.vocab_size)
  opt = lamer.make_optimizer(one).init(params)
  (new_params, _, _), metrics = jax.jit(
      lambda p, o, d: phases.update(p, o, None, [d], p, key))(params, opt, data)
  assert float(metrics["skipped"].sum()) == 0.0
  assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool((a != b).any()),
                                       new_params, params))
  assert any(moved)


def test_profile_reports_every_phase_of_an_iteration():
  result = bench_phases.profile(_tiny_experiment(), update_rows=3, reflection_probe=4)
  phases = {p.name.split(" (")[0]: p for p in result["phases"]}
  n = 3  # attempts
  assert set(phases) == {"attempt prefix prefill", "turn prompt prefills",
                         "action decoding", "env steps", "reflection prompt prefill",
                         "reflection decoding", "update forward + backward + AdamW"}
  assert all(p.seconds > 0 for p in phases.values())
  assert phases["action decoding"].per_iteration == n
  assert phases["reflection decoding"].per_iteration == n - 1
  assert phases["update forward + backward + AdamW"].per_iteration == \
      result["attempt_rows"] / 3
  assert phases["env steps"].flops == 0 and phases["action decoding"].flops > 0
  limits = roofline.Limits(bandwidth=1e10, flops=1e11, device="cpu")
  text = bench_phases.markdown(result, limits)
  assert text.count("\n| ") == len(phases) + 1
  assert "Iteration (sum of the phases)" in text


def test_profile_refuses_update_rows_that_split_a_trial():
  with pytest.raises(ValueError, match="multiple of the 3 attempts"):
    bench_phases.profile(_tiny_experiment(), update_rows=2)
