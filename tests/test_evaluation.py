"""Tests for pass@k, per-attempt success and in-context regret."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamer_jax import evaluation


def hand_trials():
  """Four trials, N=3 attempts, T=2 turns: won at attempt 1, 2, 3, never."""
  av = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], bool)
  won = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], bool)
  # won[0, 1] lies in an attempt that never ran: it must be ignored
  tv = np.repeat(av[..., None], 2, axis=-1)
  tv[1, 1, 1] = False                      # the winning attempt took 1 turn
  tv[0, 1, :] = True                       # turns of a non-running attempt
  rewards = np.where(tv, 1.0, 100.0).astype(np.float32)
  invalid = np.zeros_like(tv)
  invalid[2, 0, :] = True
  invalid[3, 2, 1] = True
  invalid[1, 2, 0] = True                  # not played: ignored
  tokens = np.where(tv, 5.0, 1000.0).astype(np.float32)
  return won, av, rewards, tv, invalid, tokens


def test_trial_metrics_hand():
  m = evaluation.trial_metrics(*hand_trials())
  m = {k: float(v) for k, v in m.items()}
  expected = {
      "pass@1": 0.25, "pass@2": 0.5, "pass@3": 0.75,
      "success/attempt_1": 0.25, "success/attempt_2": 0.25,
      "success/attempt_3": 0.25,
      "success_given_run/attempt_1": 0.25,
      "success_given_run/attempt_2": 1 / 3,
      "success_given_run/attempt_3": 0.5,
      # summed rewards of played turns: 2, 3, 6, 6
      "return/mean": 17 / 4,
      "invalid_rate": 3 / 17,
      "turns/mean": 17 / 9,
      "attempts/mean": 9 / 4,
      "tokens_per_turn": 5.0,
  }
  assert set(m) == set(expected)
  for k, v in expected.items():
    assert m[k] == pytest.approx(v, rel=1e-6), k


def test_trial_metrics_without_tokens_and_unreached_attempt():
  won, av, rewards, tv, invalid, _ = hand_trials()
  av[:, 2] = False
  m = evaluation.trial_metrics(won, av, rewards, tv, invalid)
  assert "tokens_per_turn" not in m
  assert float(m["success_given_run/attempt_3"]) == 0.0
  assert float(m["pass@3"]) == float(m["pass@2"]) == 0.5


def test_trial_metrics_jits():
  args = hand_trials()
  eager = evaluation.trial_metrics(*args)
  jitted = jax.jit(evaluation.trial_metrics)(*args)
  for k in eager:
    np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-6)


def test_format_table():
  table = evaluation.format_table(evaluation.trial_metrics(*hand_trials()))
  lines = table.splitlines()
  assert lines[0].startswith("| k | pass@k |")
  assert len(lines) == 5
  assert "| 1 | 25.0 | 25.0 | 25.0 |" in lines
  assert "| 2 | 50.0 | 25.0 | 33.3 |" in lines
  assert "| 3 | 75.0 | 25.0 | 50.0 |" in lines
  with pytest.raises(ValueError):
    evaluation.format_table({"return/mean": 1.0})


def test_in_context_regret():
  g = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
               np.float32)
  np.testing.assert_allclose(evaluation.in_context_regret(g, 1.0), [1, 3, 0])
  np.testing.assert_allclose(
      jax.jit(evaluation.in_context_regret)(g, 2.0), [4, 6, 3])


def test_format_report_per_game_and_per_episode():
  single = evaluation.trial_metrics(*hand_trials())
  assert evaluation.format_report(single) == evaluation.format_table(single)
  solved = jnp.array([[[False, True, True]], [[True, True, True]]])
  steps = jnp.array([[[4, 2, 1]], [[3, 1, 1]]], jnp.int32)
  episodes = evaluation.episode_metrics(solved, steps, jnp.ones((2, 1), bool))
  mix = {f"{game}/{k}": v for game in ("maze", "rps")
         for k, v in {**single, **episodes}.items()}
  report = evaluation.format_report(mix)
  assert evaluation.game_prefixes(mix) == ["maze/", "rps/"]
  assert report.startswith("maze:\n| k | pass@k")
  assert "\nrps:\n| k | pass@k" in report
  assert "| 1 | 50.0 | 3.50 |" in report and "| 3 | 100.0 | 1.00 |" in report
  assert "episode 3 - episode 1: +50.0 points; in-context regret 0.500 (of 3)" in report
  assert evaluation.mean_over_games(mix, "pass@1") == pytest.approx(
      float(single["pass@1"]))
  assert np.isnan(evaluation.mean_over_games(mix, "nope"))
