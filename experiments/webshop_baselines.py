"""WebShop's ceiling and floor: the scripted oracle and uniform random play.

    python -m experiments.webshop_baselines --num_tasks=256
    python -m experiments.webshop_baselines --num_tasks=256 --max_turns=8

Both policies play the held-out tasks of ``experiments.evaluate`` (the same
seeds: ``--num_tasks=32`` plays the goals of a 32-task evaluation) in trials
of ``--attempts`` attempts that stop at the first success, through the shared
trial loop (``agent.trial.play_trials``). The oracle is
``WebShop.oracle_action`` (it reads the goal); random play draws every
action uniformly from the action mask (``random_baseline.RandomPolicy``).
The game runs with ``reward_mode="score"``: success (a purchase scoring
exactly 1) is the same in both modes, and the reward of a purchase is then
its score, so the mean score of an attempt is the summed reward over the
attempts that ran. Prints, per policy, pass@k, that mean score, and the
turns and invalid rate of ``evaluation.trial_metrics``.
"""

from __future__ import annotations

import functools
import sys
import types

from absl import flags
import jax
import jax.numpy as jnp

import envs_jax
from experiments import common
from experiments.random_baseline import RandomPolicy
from lamer_jax import evaluation
from lamer_jax.agent.trial import eval_seeds, play_trials, task_key


class OraclePolicy(RandomPolicy):
  """``WebShop.oracle_action`` on every row: a ``TrialPolicy`` with no
  memory (every attempt replays the same goal the same way)."""

  def __init__(self, env, num_turns: int):
    super().__init__(num_turns)
    self.env = env

  def act(self, turn_keys, state, allowed, active, akey, t):
    del allowed, akey, t
    return turn_keys, jax.vmap(self.env.oracle_action)(state), active, None


def play(env, policy, num_tasks: int, attempts: int, key: jax.Array
         ) -> dict[str, float]:
  """``evaluation.trial_metrics`` of ``policy`` on ``eval_seeds(num_tasks)``,
  plus ``score/mean``: the mean score of the attempts that ran (``env`` in
  reward_mode "score")."""
  params = env.default_params

  @jax.jit
  def run(key):
    init, _ = jax.vmap(env.reset, in_axes=(0, None))(
        jax.vmap(task_key)(eval_seeds(num_tasks)), params)
    result = play_trials(env, params, init, policy,
                         jax.random.split(key, attempts), env.max_turns)
    rec = result.records
    metrics = evaluation.trial_metrics(result.won, result.attempt_valid,
                                       rec.reward, rec.valid, rec.invalid)
    played = result.attempt_valid.sum()
    metrics["score/mean"] = jnp.where(rec.valid, rec.reward, 0.0).sum() / played
    return metrics

  return {k: float(v) for k, v in jax.device_get(run(key)).items()}


def define_flags() -> types.SimpleNamespace:
  return types.SimpleNamespace(
      env=flags.DEFINE_string("env", "webshop", "A registered WebShop variant."),
      num_tasks=flags.DEFINE_integer("num_tasks", 256, "Held-out tasks."),
      attempts=flags.DEFINE_integer("attempts", 3, "Attempts per trial."),
      max_turns=flags.DEFINE_integer("max_turns", 0, "Turns per attempt; 0: "
                                     "the game's (12)."),
      seed=flags.DEFINE_integer("seed", 0, "Seed of the random actions."))


def main(argv, args: types.SimpleNamespace):
  del argv  # checked by common.run_main
  for name in ("num_tasks", "attempts"):
    if getattr(args, name).value < 1:
      raise common.ConfigError(f"--{name} must be >= 1, got {getattr(args, name).value}")
  common.validate_choice("--env", args.env.value, envs_jax.registered())
  env = envs_jax.make(args.env.value)
  if not hasattr(env, "oracle_action"):
    raise common.ConfigError(f"--env={args.env.value!r} is not a WebShop game")
  changes = {"reward_mode": "score"}
  if args.max_turns.value:
    changes["max_turns"] = args.max_turns.value
  env = env.replace(**changes)
  key = jax.random.key(args.seed.value)
  for name, policy in (("scripted oracle", OraclePolicy(env, env.max_turns)),
                       ("uniformly random allowed actions", RandomPolicy(env.max_turns))):
    metrics = play(env, policy, args.num_tasks.value, args.attempts.value, key)
    print(f"{name} on {env.name} ({env.cat.num_products} products, {env.max_turns} "
          f"turns): {args.num_tasks.value} held-out tasks x {args.attempts.value} "
          "attempts")
    print(evaluation.format_report(metrics))
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                   if not k.startswith(("pass@", "success"))))


if __name__ == "__main__":
  _ARGS = define_flags()
  common.run_main(functools.partial(main, args=_ARGS), sys.argv)
