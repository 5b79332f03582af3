"""pass@k of a policy that clicks uniformly among the allowed actions.

    python -m experiments.random_baseline --env=minesweeper --num_tasks=64
    python -m experiments.random_baseline --env=sokoban --num_tasks=10000
    python -m experiments.random_baseline --env=rps --episodes=3 --attempts=1

The floor a language model has to beat: on the held-out tasks of
``experiments.evaluate`` (the same seeds, so ``--num_tasks=64`` plays the
very boards of a 64-task evaluation), every attempt of a trial restarts from
the task's initial state and draws each action uniformly from
``env.action_mask`` (so, like constrained decoding, it never names an action
the mask rules out). Attempts are independent (no memory), and a trial
stops at its first success, as in evaluation. Prints the pass@k table and
the rest of ``evaluation.trial_metrics``. With ``--episodes=K`` each attempt
is an ORBIT continuous trial of K episodes (``envs_jax.continuous``) and the
per-episode success, steps and regret of ``evaluation.episode_metrics`` are
printed as well.
"""

from __future__ import annotations

import functools
import sys
import types

from absl import flags
import jax
import jax.numpy as jnp

import envs_jax
from envs_jax.continuous import Continuous
from experiments import common
from lamer_jax import evaluation
from lamer_jax.agent.trial import eval_seeds, play_trials, task_key


class RandomPolicy:
  """Uniform over the allowed actions, no memory: a ``TrialPolicy`` for the
  shared trial loop (``agent.trial.play_trials``). Turn t of an attempt
  draws with ``split(attempt key, T)[t]``."""

  def __init__(self, num_turns: int):
    self.num_turns = num_turns

  def empty_memory(self, rows):
    return jnp.zeros((rows,), jnp.bool_)      # nothing is remembered

  def start_attempt(self, memory, attempt, attempt_on, akey):
    del memory, attempt, attempt_on
    return jax.random.split(akey, self.num_turns), None

  def act(self, turn_keys, state, allowed, active, akey, t):
    del state, akey
    action = jax.random.categorical(turn_keys[t],
                                    jnp.where(allowed, 0.0, -jnp.inf))
    return turn_keys, action, active, None

  def skipped_turn(self, output_shapes):
    return output_shapes

  def end_attempt(self, turn_keys, aux, memory, attempt, attempt_on, won,
                  records, outputs, akey):
    del turn_keys, aux, attempt, attempt_on, won, records, outputs, akey
    return memory, None


def random_trials(env: envs_jax.Environment, num_tasks: int, attempts: int,
                  key: jax.Array, turns: int | None = None) -> dict[str, float]:
  """``evaluation.trial_metrics`` of uniformly random play on the held-out
  tasks ``eval_seeds(num_tasks)`` (jitted, host floats out)."""
  if num_tasks < 1 or attempts < 1:
    raise ValueError(f"num_tasks and attempts must be >= 1, got {num_tasks} and "
                     f"{attempts}")
  params = env.default_params
  turns = int(env.max_turns) if turns is None else turns

  @jax.jit
  def play(key):
    init, _ = jax.vmap(env.reset, in_axes=(0, None))(
        jax.vmap(task_key)(eval_seeds(num_tasks)), params)
    result = play_trials(env, params, init, RandomPolicy(turns),
                         jax.random.split(key, attempts), turns)
    rec = result.records
    metrics = evaluation.trial_metrics(result.won, result.attempt_valid,
                                       rec.reward, rec.valid, rec.invalid)
    if result.episodes is not None:
      metrics.update(evaluation.episode_metrics(
          result.episodes["solved"], result.episodes["steps"],
          result.attempt_valid))
    return metrics

  return {k: float(v) for k, v in jax.device_get(play(key)).items()}


def define_flags() -> types.SimpleNamespace:
  return types.SimpleNamespace(
      env=flags.DEFINE_string("env", "minesweeper", "Registered env name."),
      num_tasks=flags.DEFINE_integer("num_tasks", 64, "Held-out tasks."),
      attempts=flags.DEFINE_integer("attempts", 3, "Attempts per trial."),
      episodes=flags.DEFINE_integer(
          "episodes", 0, "0: the game as is; K: continuous trials of K "
          "episodes (ORBIT)."),
      seed=flags.DEFINE_integer("seed", 0, "Seed of the random actions."))


def main(argv, args: types.SimpleNamespace):
  del argv  # checked by common.run_main
  for name in ("num_tasks", "attempts"):
    if getattr(args, name).value < 1:
      raise common.ConfigError(f"--{name} must be >= 1, got "
                               f"{getattr(args, name).value}")
  if args.episodes.value < 0:
    raise common.ConfigError(f"--episodes must be >= 0, got {args.episodes.value}")
  common.validate_choice("--env", args.env.value, envs_jax.registered())
  env = envs_jax.make(args.env.value)
  if args.episodes.value:
    env = Continuous(env, episodes=args.episodes.value)
  metrics = random_trials(env, args.num_tasks.value, args.attempts.value,
                          jax.random.key(args.seed.value))
  print(f"uniformly random allowed actions on {env.name}: "
        f"{args.num_tasks.value} held-out tasks x {args.attempts.value} attempts")
  print(evaluation.format_report(metrics))
  print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                 if not k.startswith(("pass@", "success", "episode_"))))
  if args.episodes.value:
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                   if k.startswith("episode_")))


if __name__ == "__main__":
  _ARGS = define_flags()
  common.run_main(functools.partial(main, args=_ARGS), sys.argv)
