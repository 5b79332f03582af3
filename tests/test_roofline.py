"""The roofline cost model of experiments/roofline.py."""

import types

import pytest

from experiments import roofline

_CFG = types.SimpleNamespace(hidden_size=8, intermediate_size=16, num_layers=2,
                             num_heads=2, num_kv_heads=1, head_dim=4, vocab_size=100)


def test_decode_cost_counts_weights_cache_and_head_columns():
  block = 8 * 8 + 2 * 8 * 4 + 8 * 8 + 3 * 8 * 16
  assert roofline.matmul_params(_CFG) == 2 * block + 100 * 8
  full = roofline.decode_cost(_CFG, batch=4, context=10)
  assert full.bytes == pytest.approx((2 * block + 800) * 4 / 4 + 2 * 2 * 1 * 4 * 10 * 4)
  assert full.flops == pytest.approx(2 * (2 * block + 800) + 4 * 2 * 2 * 4 * 10)
  head = roofline.decode_cost(_CFG, batch=4, context=10, vocab=5)
  assert full.flops - head.flops == pytest.approx(2 * 95 * 8)
  assert full.bytes - head.bytes == pytest.approx(95 * 8 * 4 / 4)


def test_fractions_and_measured_limits_are_positive():
  limits = roofline.measure_limits(copy_mib=8, dot_n=128, repeats=2)
  assert limits.bandwidth > 0 and limits.flops > 0
  cost = roofline.TokenCost(bytes=limits.bandwidth, flops=limits.flops / 2)
  assert roofline.fractions(2.0, cost, limits) == pytest.approx(
      {"bandwidth": 2.0, "flops": 1.0})
  assert "GB/s" in roofline.describe(limits)
