"""SAC + HER learns Playground's Grasp goals from scratch (minutes on CPU).

The short version of ``experiments/sac_study.py`` (its full table, with SAC
and PPO and 3 seeds, is in docs/RESULTS.md): ``micro-llama`` from scratch,
byte codec, 16 envs, 100 SAC steps (3200 env steps). The success rate of the
episodes it plays in its last 800 env steps must beat that of its first 800
(the untrained, near-uniform policy: ~13%) by 8 points.
"""

from __future__ import annotations

import numpy as np
import pytest

from experiments import sac_study

ENV_STEPS = 3200
BINS = 4


@pytest.mark.slow
def test_sac_her_improves_on_its_first_episodes():
  run = sac_study.run("sac_her", seed=0, env_steps=ENV_STEPS, eval_tasks=16)
  first, *_, last = sac_study.binned(run["curve"], sac_study.bin_edges(ENV_STEPS, BINS))
  assert run["train_steps"] == 100
  assert np.isfinite(run["trace"]["loss/critic"]).all()
  assert last > first + 0.08, (first, last, run["trace"]["entropy/mean"][::10])
