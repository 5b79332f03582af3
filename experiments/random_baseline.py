"""pass@k of a policy that clicks uniformly among the allowed actions.

    python -m experiments.random_baseline --env=minesweeper --num_tasks=64
    python -m experiments.random_baseline --env=sokoban --num_tasks=10000

The floor a language model has to beat: on the held-out tasks of
``experiments.evaluate`` (the same seeds, so ``--num_tasks=64`` plays the
very boards of a 64-task evaluation), every attempt of a trial restarts from
the task's initial state and draws each action uniformly from
``env.action_mask`` (so, like constrained decoding, it never names an action
the mask rules out). Attempts are independent (no memory), and a trial
stops at its first success, as in evaluation. Prints the pass@k table and
the rest of ``evaluation.trial_metrics``.
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
from lamer_jax import evaluation
from lamer_jax.rollout import task_key
from lamer_jax.train_step import eval_seeds


def random_trials(env: envs_jax.Environment, num_tasks: int, attempts: int,
                  key: jax.Array, turns: int | None = None) -> dict[str, float]:
  """``evaluation.trial_metrics`` of uniformly random play on the held-out
  tasks ``eval_seeds(num_tasks)`` (jitted, host floats out)."""
  params = env.default_params
  turns = int(env.max_turns) if turns is None else turns

  @jax.jit
  def play(key):
    init, _ = jax.vmap(env.reset, in_axes=(0, None))(
        jax.vmap(task_key)(eval_seeds(num_tasks)), params)

    def attempt(over, akey):
      def turn(carry, tkey):
        state, done = carry
        allowed = jax.vmap(env.action_mask, in_axes=(0, None))(state, params)
        action = jax.random.categorical(tkey, jnp.where(allowed, 0.0, -jnp.inf))
        state, ts = jax.vmap(env.step, in_axes=(0, 0, None))(state, action, params)
        played = ~done
        return (state, done | ts.done), (ts.reward, played, ts.invalid, ts.won & played)

      _, (rewards, played, invalid, won) = jax.lax.scan(
          turn, (init, jnp.zeros(num_tasks, jnp.bool_)), jax.random.split(akey, turns))
      won = jnp.any(won, axis=0)
      valid = ~over
      return over | won, (won & valid, valid, rewards.T, played.T, invalid.T)

    _, (won, valid, rewards, played, invalid) = jax.lax.scan(
        attempt, jnp.zeros(num_tasks, jnp.bool_), jax.random.split(key, attempts))
    move = lambda x: jnp.moveaxis(x, 0, 1)       # [N, R, ...] -> [R, N, ...]
    return evaluation.trial_metrics(move(won), move(valid), move(rewards),
                                    move(played), move(invalid))

  return {k: float(v) for k, v in jax.device_get(play(key)).items()}


def define_flags() -> types.SimpleNamespace:
  return types.SimpleNamespace(
      env=flags.DEFINE_string("env", "minesweeper", "Registered env name."),
      num_tasks=flags.DEFINE_integer("num_tasks", 64, "Held-out tasks."),
      attempts=flags.DEFINE_integer("attempts", 3, "Attempts per trial."),
      seed=flags.DEFINE_integer("seed", 0, "Seed of the random actions."))


def main(argv, args: types.SimpleNamespace):
  del argv  # checked by common.run_main
  env = envs_jax.make(args.env.value)
  metrics = random_trials(env, args.num_tasks.value, args.attempts.value,
                          jax.random.key(args.seed.value))
  print(f"uniformly random allowed actions on {args.env.value}: "
        f"{args.num_tasks.value} held-out tasks x {args.attempts.value} attempts")
  print(evaluation.format_table(metrics))
  print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                 if not k.startswith(("pass@", "success"))))


if __name__ == "__main__":
  _ARGS = define_flags()
  common.run_main(functools.partial(main, args=_ARGS), sys.argv)
