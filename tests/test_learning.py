"""LaMer learns to use its memory: a from-scratch model on guess-the-number.

The game hides 1 or 2; one guess per attempt, 2 attempts per trial, and the
second attempt's system prompt lists the first attempt's guess
(``history_only`` memory). No single attempt can beat chance, so pass@1 stays
at 1/2 whatever the policy; a policy that reads its memory and never repeats a
failed guess solves every trial by its second attempt (pass@2 = 1, against
3/4 for a memoryless policy). The gap is exactly what cross-episode meta-RL has
to learn, from its own rollouts only, with ``make_train_step`` (rollout,
cross-episode returns, GRPO, PPO update) as the whole training loop.

Setup, chosen for a reliable result in well under a minute of training on a
2-core CPU: a 1-block decoder (``micro-llama``) with the byte-level codec, 16
tasks x 8 trials per step, lr 3e-3, and short prompts (the chat template,
the memory and the observation only: a from-scratch model gets nothing from
the English instructions, which would triple the context and the cost).
Training stops early once the second attempts win reliably.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest

import envs_jax
from lamer_jax.agent.layout import TrialShape, build_layout, short_prompt
from lamer_jax.agent.trial import RolloutConfig, eval_seeds
from lamer_jax.algos import lamer as train_lib
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

MODEL = "micro-llama"
NUM_TASKS, GROUP_SIZE = 16, 8
MAX_STEPS = 150
WINDOW = 10              # steps per point of the printed curve
STOP_SUCCESS = 0.97      # early stop: window mean of P(win | attempt 2 ran)
EVAL_TASKS = 512         # held-out tasks for the before / after evaluation
ALGO = train_lib.AlgoConfig(estimator="grpo", normalize_std=True, gamma_traj=0.6,
                            lr=3e-3, entropy_coef=0.0, weight_decay=0.0)


def _fmt(values) -> str:
  return " ".join(f"{v:5.3f}" for v in values)


@pytest.mark.slow
def test_lamer_learns_to_use_memory_on_guess():
  t0 = time.time()
  env = envs_jax.make("guess", num_options=2)
  shape = TrialShape(num_tasks=NUM_TASKS, group_size=GROUP_SIZE,
                     num_attempts=2, num_turns=1)
  layout = short_prompt(build_layout(ByteTokenizer(), env, shape, memory="history_only"),
                        ByteTokenizer())
  mcfg = llama.TINY_CONFIGS[MODEL]
  step = train_lib.make_train_step(env, mcfg, layout, RolloutConfig(), ALGO)
  evaluate = train_lib.make_eval_fn(
      env, mcfg, layout.with_tasks(EVAL_TASKS, group_size=1), RolloutConfig())
  seeds = eval_seeds(EVAL_TASKS)
  eval_key = jax.random.key(2)
  keys = ("pass@1", "pass@2", "success_given_run/attempt_2")

  def held_out(params):
    m = evaluate(params, eval_key, seeds)
    return [float(m[k]) for k in keys]

  params = llama.init_params(mcfg, jax.random.key(0))
  before = held_out(params)
  state = train_lib.init_train_state(params, ALGO, jax.random.key(1))
  print(f"\n{layout.describe()}; {llama.num_params(params)} parameters")
  print(f"held-out before: pass@1, pass@2, P(win | attempt 2) = {_fmt(before)}")
  print("steps   pass@1 pass@2 P(win|att2)  (train, window means)   time")
  history = []
  for i in range(MAX_STEPS):
    state, metrics = step(state)
    history.append([float(metrics[k]) for k in keys])
    if (i + 1) % WINDOW == 0:
      window = np.mean(history[-WINDOW:], axis=0)
      print(f"{i + 1 - WINDOW + 1:3d}-{i + 1:3d}  {_fmt(window)}"
            f"{'':24s}{time.time() - t0:5.0f}s")
      if window[2] >= STOP_SUCCESS:
        break
  after = held_out(state.params)
  print(f"held-out after {len(history)} steps: {_fmt(after)}; "
        f"{time.time() - t0:.0f}s in all")

  p1_before, p2_before, _ = before
  p1, p2, second = after
  # Before: a memoryless random policy (pass@1 ~ 1/2, pass@2 ~ 3/4).
  assert 0.4 < p1_before < 0.6 and 0.65 < p2_before < 0.85
  # After: the second attempt avoids the failed guess.
  assert second > 0.9
  assert p2 > 0.95 and p2 - p2_before > 0.12
  # The gain comes from the later attempt, not from the first one.
  assert p2 - p1 > 0.35
  assert 0.4 < p1 < 0.6
