"""Evaluation metrics of trials: pass@k, per-attempt success, regret.

A trial is N attempts at one task that stops at its first success, so
``pass@k`` (solved within the first k attempts) is LaMer's headline metric and
the per-attempt success rates show whether later attempts improve on earlier
ones. ``in_context_regret`` is ORBIT's cumulative regret over episodes, and
``episode_metrics`` its per-episode success of continuous trials.
Attempt numbers in metric names are 1-based (``success/attempt_1`` is the first
attempt), like the k of ``pass@k``.
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den as f32, 0 where den == 0."""
  num = jnp.asarray(num, jnp.float32)
  den = jnp.asarray(den, jnp.float32)
  return jnp.where(den > 0, num / jnp.maximum(den, 1.0), 0.0)


def trial_metrics(won: jax.Array, attempt_valid: jax.Array,
                  rewards: jax.Array, turn_valid: jax.Array,
                  invalid: jax.Array,
                  tokens_per_turn: jax.Array | None = None
                  ) -> dict[str, jax.Array]:
  """Success and behaviour statistics of a batch of trials (jittable).

  Args:
    won: bool[R, N], the attempt ended in success.
    attempt_valid: bool[R, N], the attempt ran.
    rewards: f32[R, N, T], reward of each turn.
    turn_valid: bool[R, N, T], the turn was played.
    invalid: bool[R, N, T], the turn's action was invalid / had no effect.
    tokens_per_turn: f32[R, N, T], generated tokens of each turn (optional).

  Returns:
    Dict of f32 scalars:
      ``pass@k`` (k = 1..N): fraction of trials solved within the first k
        attempts.
      ``success/attempt_k``: fraction of all trials whose attempt k ran and
        won.
      ``success_given_run/attempt_k``: the same among trials whose attempt k
        ran (0 when no trial reached attempt k).
      ``return/mean``: mean over trials of the summed rewards of all attempts
        (undiscounted, env units).
      ``invalid_rate``: fraction of played turns with an invalid action.
      ``turns/mean``: mean number of played turns per attempt that ran.
      ``attempts/mean``: mean number of attempts that ran per trial.
      ``tokens_per_turn``: mean generated tokens per played turn (if given).
  """
  chex.assert_rank([won, attempt_valid, rewards], [2, 2, 3])
  chex.assert_equal_shape([won, attempt_valid])
  chex.assert_equal_shape([rewards, turn_valid, invalid])
  chex.assert_equal_shape_prefix([won, rewards], 2)
  attempts = won.shape[1]
  turn_valid = turn_valid & attempt_valid[..., None]
  success = won & attempt_valid
  solved_by = jnp.cumsum(success, axis=1) > 0     # [R, N]
  metrics = {}
  for k in range(attempts):
    metrics[f"pass@{k + 1}"] = solved_by[:, k].mean(dtype=jnp.float32)
  for k in range(attempts):
    metrics[f"success/attempt_{k + 1}"] = success[:, k].mean(
        dtype=jnp.float32)
    metrics[f"success_given_run/attempt_{k + 1}"] = _ratio(
        success[:, k].sum(), attempt_valid[:, k].sum())
  total = jnp.where(turn_valid, rewards, 0.0).sum(axis=(1, 2))
  metrics["return/mean"] = total.mean(dtype=jnp.float32)
  played = turn_valid.sum()
  metrics["invalid_rate"] = _ratio((invalid & turn_valid).sum(), played)
  metrics["turns/mean"] = _ratio(played, attempt_valid.sum())
  metrics["attempts/mean"] = attempt_valid.sum(1).mean(dtype=jnp.float32)
  if tokens_per_turn is not None:
    chex.assert_equal_shape([tokens_per_turn, rewards])
    metrics["tokens_per_turn"] = _ratio(
        jnp.where(turn_valid, tokens_per_turn, 0.0).sum(), played)
  return metrics


def episode_metrics(solved: jax.Array, steps: jax.Array,
                    attempt_valid: jax.Array,
                    optimal_return: float = 1.0) -> dict[str, jax.Array]:
  """ORBIT's metrics of continuous trials (K episodes per attempt; jittable).

  Averages run over the attempts that ran (with ORBIT's one attempt per
  trial: over trials). Episode numbers in names are 1-based.

  Args:
    solved: bool[R, N, K], episode k of the attempt was solved.
    steps: int32[R, N, K], turns episode k took.
    attempt_valid: bool[R, N], the attempt ran.
    optimal_return: J*, the best return of one episode (1: reward 1 per
      solved episode).

  Returns:
    Dict of f32 scalars:
      ``episode_success/episode_k``: fraction of attempts whose episode k
        was solved.
      ``episode_steps/episode_k``: mean turns of episode k.
      ``episode_success/any``: fraction with at least one solved episode.
      ``episode_improvement``: success of episode K minus that of episode 1
        (in-context learning across episodes).
      ``regret/mean``: mean in-context regret ``K * J* - sum_e G(e)``, G(e)
        = J* for a solved episode, 0 otherwise.
  """
  chex.assert_rank([solved, steps, attempt_valid], [3, 3, 2])
  chex.assert_equal_shape([solved, steps])
  valid = attempt_valid.reshape(-1)
  solved = solved.reshape(valid.shape[0], -1)
  steps = steps.reshape(valid.shape[0], -1)
  count = valid.sum()
  mean = lambda x: _ratio(jnp.where(valid, x, 0).sum(), count)
  episodes = solved.shape[1]
  metrics = {}
  for k in range(episodes):
    metrics[f"episode_success/episode_{k + 1}"] = mean(solved[:, k])
  for k in range(episodes):
    metrics[f"episode_steps/episode_{k + 1}"] = mean(steps[:, k])
  metrics["episode_success/any"] = mean(jnp.any(solved, axis=1))
  metrics["episode_improvement"] = (metrics[f"episode_success/episode_{episodes}"]
                                    - metrics["episode_success/episode_1"])
  regret = in_context_regret(jnp.where(solved, optimal_return, 0.0),
                             optimal_return)
  metrics["regret/mean"] = mean(regret)
  return metrics


def format_table(metrics: dict[str, object]) -> str:
  """Markdown table of pass@k and per-attempt success (host side).

  Args:
    metrics: a dict as returned by ``trial_metrics`` (arrays or floats).

  Returns:
    One row per attempt k with columns ``pass@k``, ``success/attempt_k`` and
    ``success_given_run/attempt_k``, as percentages with one decimal.
  """
  ks = sorted(int(m.group(1)) for key in metrics
              if (m := re.fullmatch(r"pass@(\d+)", key)))
  if not ks:
    raise ValueError("metrics hold no pass@k entry")

  def cell(key):
    if key not in metrics:
      return "-"
    return f"{100.0 * float(np.asarray(metrics[key])):.1f}"

  lines = ["| k | pass@k | success/attempt_k | success_given_run/attempt_k |",
           "|---|---|---|---|"]
  for k in ks:
    lines.append(f"| {k} | {cell(f'pass@{k}')} | "
                 f"{cell(f'success/attempt_{k}')} | "
                 f"{cell(f'success_given_run/attempt_{k}')} |")
  return "\n".join(lines)


def game_prefixes(metrics: dict[str, object]) -> list[str]:
  """The per-game prefixes of a metrics dict (``["maze/", "rps/"]``), in
  order of appearance; ``[""]`` for unprefixed single-game metrics."""
  prefixes = []
  for key in metrics:
    m = re.fullmatch(r"(.*/)?pass@\d+", key)
    if m and (m.group(1) or "") not in prefixes:
      prefixes.append(m.group(1) or "")
  return prefixes


def mean_over_games(metrics: dict[str, object], key: str) -> float:
  """``metrics[key]``, or the mean of ``"<game>/<key>"`` over the games of a
  mix (NaN when no game reports it)."""
  if key in metrics:
    return float(np.asarray(metrics[key]))
  values = [float(np.asarray(metrics[p + key])) for p in game_prefixes(metrics)
            if p + key in metrics]
  return float(np.mean(values)) if values else float("nan")


def format_report(metrics: dict[str, object]) -> str:
  """``format_table`` per game (a heading per game of a mix) and, for
  continuous trials, a table of success and steps per episode with the
  improvement and the regret (host side)."""
  out = []
  for prefix in game_prefixes(metrics) or [""]:
    game = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    if prefix:
      out.append(f"{prefix[:-1]}:")
    out.append(format_table(game))
    ks = sorted(int(m.group(1)) for key in game
                if (m := re.fullmatch(r"episode_success/episode_(\d+)", key)))
    if ks:
      cell = lambda key, scale=100.0, fmt=".1f": (
          f"{scale * float(np.asarray(game[key])):{fmt}}" if key in game else "-")
      out += ["| episode | success | steps |", "|---|---|---|"]
      out += [f"| {k} | {cell(f'episode_success/episode_{k}')} | "
              f"{cell(f'episode_steps/episode_{k}', 1.0, '.2f')} |" for k in ks]
      out.append(f"episode {ks[-1]} - episode 1: "
                 f"{cell('episode_improvement', fmt='+.1f')} points; in-context "
                 f"regret {cell('regret/mean', 1.0, '.3f')} (of {ks[-1]})")
    out.append("")
  return "\n".join(out).rstrip("\n")


def in_context_regret(episode_returns: jax.Array,
                      optimal_return: float | jax.Array) -> jax.Array:
  """ORBIT's in-context regret of each trial: ``E * J* - sum_e G(e)``.

  Args:
    episode_returns: f32[R, E], return of each of the E episodes of a trial.
    optimal_return: J*, the best achievable return of one episode.

  Returns:
    f32[R] regret (same units as the returns).
  """
  chex.assert_rank(episode_returns, 2)
  episodes = episode_returns.shape[1]
  g = episode_returns.astype(jnp.float32)
  return episodes * jnp.asarray(optimal_return, jnp.float32) - g.sum(-1)
