"""experiments.sac_study: its configs, binned curves, table, plot and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import common
from experiments import sac_study


@pytest.mark.parametrize("method", sac_study.METHODS)
def test_configs_are_valid_and_sized_to_the_budget(method):
  config = sac_study.study_config(method, seed=2, env_steps=960, eval_tasks=16)
  common.validate(config)
  assert config.train.seed == 2 and config.eval.num_tasks == 16
  if method == "ppo":
    per_step = 8 * 8 * 3
    assert config.rollout.num_attempts == 1 and config.algo.estimator == "gae"
  else:
    per_step = config.sac.num_envs * config.sac.env_steps
    assert config.sac.her_strategy == ("future" if method == "sac_her" else "none")
    assert config.sac.eval_env == "playground"
  assert config.train.steps == 960 // per_step


def test_binned_success_counts_episodes_by_the_bin_they_end_in():
  # (cumulative env steps, episodes, won) per train step.
  curve = [(10, 2, 1), (20, 2, 0), (30, 4, 4), (40, 0, 0)]
  got = sac_study.binned(curve, np.asarray([20.0, 40.0]))
  np.testing.assert_allclose(got, [1 / 4, 4 / 4])
  assert np.isnan(sac_study.binned([(10, 0, 0)], np.asarray([10.0])))[0]


def _run(method, seed, rate):
  curve = [(32.0 * (i + 1), 4.0, 4.0 * rate * (i / 9)) for i in range(10)]
  return {"method": method, "seed": seed, "curve": curve, "eval_success": rate,
          "train_steps": 10, "wall_s": 1.0}


def test_table_and_plot(tmp_path):
  results = [_run(m, s, r) for s in range(2)
             for m, r in (("sac_her", 0.8), ("sac", 0.5), ("ppo", 0.2))]
  text = sac_study.table(results, 320, 2)
  rows = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
  assert set(rows) == {"SAC + HER", "SAC", "PPO (GAE)"}
  # Last bin: steps 5..9 of the ramp rate * i / 9, i.e. rate * 35 / 45; then
  # the greedy eval, rate.
  assert "| 62.2 +- 0.0 | 80.0 +- 0.0 |" in rows["SAC + HER"]
  png = sac_study.plot(results, 320, 2, str(tmp_path / "c.png"))
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_keeps_stored_runs_and_checks_the_budget(tmp_path):
  path = tmp_path / "sac_study.json"
  assert sac_study.load_results(str(path), 320) == []
  path.write_text(json.dumps({"env_steps": 320, "results": [_run("sac", 0, 0.5)]}))
  assert sac_study.load_results(str(path), 320)[0]["method"] == "sac"
  with pytest.raises(ValueError, match="--env_steps=320"):
    sac_study.load_results(str(path), 640)
