"""Cross-episode returns and group-relative advantages (LaMer, GRPO, GiGPO).

Shapes used throughout:
  R  trials (rows). The ``B`` tasks x ``G`` trials per task are flattened
     task-major, so row ``r`` belongs to task ``r // G`` and the rows of one
     task form the *group* ``[G * (r // G), G * (r // G) + G)``.
  N  attempts per trial.
  T  turn budget per attempt.
  C  tokens per training row.

Returns (LaMer paper's formula; rewards in env units):
  g_t^(n) = sum_{l >= t} gamma_step^(l - t) r_l^(n)           (one attempt)
  G_t^(n) = g_t^(n) + sum_{m > n} gamma_traj^(m - n) g_0^(m)  (cross-episode)
Attempts that never ran (after the trial's first success, or beyond) have every
turn invalid, so they contribute ``g_0^(m) = 0``. The released LaMer code also
discounts the next attempts by the steps left in the current attempt; we follow
the paper. The reflection written after attempt ``n`` is credited with
``G_0^(n+1)``.

Advantages (``lamer_advantages``), defined as:
  1. Episode term. Each attempt that ran gets the score ``S^(n) = G_0^(n)``.
     Within a task group, all valid attempt scores of all ``G`` trials pool
     into one sample with mean ``mu`` and (Bessel-corrected) standard deviation
     ``sigma``; ``A_ep^(n) = S^(n) - mu``, divided by ``sigma + eps`` when
     ``normalize_std``. ``A_ep^(n)`` is given to every valid turn of attempt n.
  2. Reflection term. The reflection after attempt ``n`` (it exists when
     attempt ``n + 1`` ran) has score ``G_0^(n+1)`` and advantage
     ``G_0^(n+1) - mu`` (divided by ``sigma + eps`` when ``normalize_std``),
     with the SAME ``mu`` and ``sigma`` as the episode term.
  3. GiGPO only: ``step_weight`` times the step-level term: within a task
     group, valid turns whose anchor ``state_key`` is equal form a sub-group;
     a turn's step advantage is ``G_t^(n)`` minus its sub-group's mean (divided
     by the sub-group's std + eps when ``normalize_std``).
  A group (or sub-group) with fewer than two valid entries gives advantage 0.
  With ``N = 1`` this is plain single-episode GRPO / GiGPO (the RL baselines).

GAE (``estimator="gae"``: PPO with a value head, one attempt per trial only):
  delta_t = r_t + gamma_step * V_next(t) - V(s_t)
  A_t     = sum_{l >= 0} (gamma_step * lambda)^l delta_{t+l}
  over the valid turns of each attempt, where ``V_next(t)`` is the next valid
  turn's value while the attempt goes on, and after its last valid turn 0 when
  the attempt ended in a terminal state and ``bootstrap`` (V of the state it
  reached) when it was cut by the turn budget (``truncated``); with no
  bootstrap given, every end counts as terminal. The value targets are
  ``A_t + V(s_t)`` (``Advantages.returns``); with ``normalize_std`` the
  advantages are whitened over the batch's valid turns (PPO's usual
  normalisation, as verl's GAE), the targets are not. No group is used.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct

ESTIMATORS = ("grpo", "gigpo", "gae")
# Why and how "gae" is restricted (raised by lamer_advantages and the train
# step, checked by experiments.common.validate).
GAE_ONE_ATTEMPT = (
    "estimator 'gae' (PPO with a value head) trains single episodes: its value "
    "head sees one attempt's state and no cross-episode return; set "
    "rollout.num_attempts=1 and rollout.memory='none' (method 'rl', e.g. "
    "experiments/configs/rl.py:sokoban,gae)")


@struct.dataclass
class GroupStats:
  """Statistics of each row's task group, broadcast back to rows.

  Attributes:
    mean: f32[R], mean of the group's valid scores (0 for an empty group).
    std: f32[R], Bessel-corrected standard deviation (0 with < 2 entries).
    count: f32[R], number of valid scores in the group.
  """

  mean: jax.Array
  std: jax.Array
  count: jax.Array


@struct.dataclass
class Advantages:
  """LaMer advantages of one batch of trials.

  Attributes:
    turn: f32[R, N, T], advantage of each turn's action tokens (0 if invalid).
    reflection: f32[R, N], advantage of the reflection written after attempt
      n (0 where attempt n + 1 did not run, and for n = N - 1).
    returns: f32[R, N, T], cross-episode returns G_t^(n) (0 if invalid); for
      ``"gae"`` the value targets ``A_t + V(s_t)``.
  """

  turn: jax.Array
  reflection: jax.Array
  returns: jax.Array


def attempt_returns(rewards: jax.Array, turn_valid: jax.Array,
                    gamma_step: float | jax.Array) -> jax.Array:
  """Discounted return of each turn within its own attempt.

  ``g_t = sum_{l >= t} gamma_step^(l - t) r_l`` over valid turns ``l``
  (invalid turns contribute no reward but keep their place in the discount).

  Args:
    rewards: f32[R, N, T], reward of each turn.
    turn_valid: bool[R, N, T], the turn was played.
    gamma_step: discount per turn, in [0, 1].

  Returns:
    f32[R, N, T] returns; 0 on invalid turns.
  """
  chex.assert_rank(rewards, 3)
  chex.assert_equal_shape([rewards, turn_valid])
  acc = _discounted_suffix_sum(rewards, turn_valid, gamma_step)
  return jnp.where(turn_valid, acc, 0.0)


def _discounted_suffix_sum(rewards, turn_valid, gamma_step):
  """Unmasked reverse accumulation over the last axis (see attempt_returns)."""
  r = jnp.where(turn_valid, rewards, 0.0).astype(jnp.float32)
  gamma = jnp.asarray(gamma_step, jnp.float32)

  def body(carry, r_t):
    carry = r_t + gamma * carry
    return carry, carry

  init = jnp.zeros(r.shape[:-1], jnp.float32)
  _, acc = jax.lax.scan(body, init, jnp.moveaxis(r, -1, 0), reverse=True)
  return jnp.moveaxis(acc, 0, -1)


def cross_episode_returns(rewards: jax.Array, turn_valid: jax.Array,
                          gamma_step: float | jax.Array,
                          gamma_traj: float | jax.Array) -> jax.Array:
  """LaMer's cross-episode return, the paper's formula.

  ``G_t^(n) = g_t^(n) + sum_{m > n} gamma_traj^(m - n) g_0^(m)``, where
  ``g_0^(m)`` is the whole discounted return of attempt ``m`` (0 for attempts
  that never ran). Unlike the released LaMer code, the later attempts are not
  further discounted by the steps left in the current attempt.

  Args:
    rewards: f32[R, N, T], reward of each turn.
    turn_valid: bool[R, N, T], the turn was played.
    gamma_step: discount per turn within an attempt.
    gamma_traj: discount per attempt.

  Returns:
    f32[R, N, T] returns; 0 on invalid turns.
  """
  chex.assert_rank(rewards, 3)
  chex.assert_equal_shape([rewards, turn_valid])
  acc = _discounted_suffix_sum(rewards, turn_valid, gamma_step)
  start = acc[..., 0]  # [R, N]: g_0^(n), 0 for attempts with no valid turn
  gamma = jnp.asarray(gamma_traj, jnp.float32)

  def body(later, g0_next):
    # later = sum_{m > n+1} gamma^(m-n-1) g0^(m); returns the same for n.
    later = gamma * (g0_next + later)
    return later, later

  # Scan over attempts n = N-2 .. 0 with g0^(n+1) as input; attempt N-1 has 0.
  shifted = jnp.moveaxis(start[:, 1:], 1, 0)  # [N-1, R]
  init = jnp.zeros(start.shape[:1], jnp.float32)
  _, future = jax.lax.scan(body, init, shifted, reverse=True)
  future = jnp.concatenate([jnp.moveaxis(future, 0, 1), init[:, None]], axis=1)
  return jnp.where(turn_valid, acc + future[..., None], 0.0)


def reflection_returns(returns: jax.Array,
                       attempt_valid: jax.Array) -> jax.Array:
  """Return credited to the reflection written after each attempt.

  Args:
    returns: f32[R, N, T], cross-episode returns ``G`` (see
      ``cross_episode_returns``).
    attempt_valid: bool[R, N], the attempt ran.

  Returns:
    f32[R, N]: ``G_0^(n+1)`` for the reflection after attempt ``n``; 0 where
    attempt ``n + 1`` did not run, and for ``n = N - 1``.
  """
  chex.assert_rank([returns, attempt_valid], [3, 2])
  chex.assert_equal_shape_prefix([returns, attempt_valid], 2)
  ran_next = jnp.pad(attempt_valid[:, 1:], ((0, 0), (0, 1)))
  next_start = jnp.pad(returns[:, 1:, 0], ((0, 0), (0, 1)))
  return jnp.where(ran_next, next_start, 0.0)


def group_stats(scores: jax.Array, valid: jax.Array,
                group_size: int) -> GroupStats:
  """Mean / std / count of the valid scores of each row's task group.

  Args:
    scores: f32[R, K], any trailing extent ``K`` (e.g. attempts).
    valid: bool[R, K].
    group_size: ``G``, trials per task; ``R`` must be a multiple of it.

  Returns:
    GroupStats with f32[R] fields (every row of a group gets the same values).
  """
  chex.assert_rank(scores, 2)
  chex.assert_equal_shape([scores, valid])
  rows, k = scores.shape
  if rows % group_size:
    raise ValueError(f"{rows} rows are not a multiple of group_size "
                     f"{group_size}")
  x = jnp.where(valid, scores, 0.0).astype(jnp.float32)
  x = x.reshape(rows // group_size, group_size * k)
  m = valid.reshape(x.shape)
  count = m.sum(-1).astype(jnp.float32)
  mean = x.sum(-1) / jnp.maximum(count, 1.0)
  sq = jnp.where(m, (x - mean[:, None]) ** 2, 0.0).sum(-1)
  std = jnp.sqrt(sq / jnp.maximum(count - 1.0, 1.0))
  std = jnp.where(count > 1, std, 0.0)
  return GroupStats(mean=jnp.repeat(mean, group_size),
                    std=jnp.repeat(std, group_size),
                    count=jnp.repeat(count, group_size))


def normalize_with_stats(scores: jax.Array, valid: jax.Array,
                         stats: GroupStats, normalize_std: bool,
                         eps: float = 1e-6) -> jax.Array:
  """Group-relative advantage of ``scores`` under given group statistics.

  Args:
    scores: f32[R, K].
    valid: bool[R, K].
    stats: GroupStats of f32[R] (from ``group_stats``, possibly of other
      scores of the same groups).
    normalize_std: divide by ``std + eps``.
    eps: added to the std.

  Returns:
    f32[R, K]; 0 where invalid or where the group has fewer than 2 entries.
  """
  chex.assert_rank(scores, 2)
  chex.assert_equal_shape([scores, valid])
  chex.assert_shape([stats.mean, stats.std, stats.count], (scores.shape[0],))
  adv = scores - stats.mean[:, None]
  if normalize_std:
    adv = adv / (stats.std[:, None] + eps)
  keep = valid & (stats.count[:, None] > 1)
  return jnp.where(keep, adv, 0.0)


def grpo_advantages(scores: jax.Array, valid: jax.Array, group_size: int,
                    normalize_std: bool, eps: float = 1e-6) -> jax.Array:
  """GRPO advantage: score minus its task group's mean (over / std + eps).

  All valid entries of the group's ``G`` rows pool into one sample; the std is
  Bessel-corrected (as ``torch.std`` in verl).

  Args:
    scores: f32[R, K].
    valid: bool[R, K].
    group_size: ``G``, trials per task.
    normalize_std: divide by ``std + eps`` (else mean-centring only).
    eps: added to the std.

  Returns:
    f32[R, K]; 0 where invalid and for groups with a single valid entry.
  """
  stats = group_stats(scores, valid, group_size)
  return normalize_with_stats(scores, valid, stats, normalize_std, eps)


def gigpo_step_advantages(returns: jax.Array, state_keys: jax.Array,
                          turn_valid: jax.Array, group_size: int,
                          normalize_std: bool = False,
                          eps: float = 1e-6) -> jax.Array:
  """GiGPO's step-level term: advantage within anchor-state sub-groups.

  Within a task group, valid turns whose ``state_key`` is equal (across all
  trials and attempts of the group) form a sub-group. Built from a pairwise
  equality matrix of ``[G*N*T, G*N*T]`` per task, so memory grows with the
  square of the turns per task (fine for LaMer's sizes: 8*3*7 = 168).

  Args:
    returns: f32[R, N, T], per-turn returns (LaMer: cross-episode ``G``).
    state_keys: uint32[R, N, T], anchor-state id of each turn's observation.
    turn_valid: bool[R, N, T].
    group_size: ``G``, trials per task.
    normalize_std: divide by the sub-group's Bessel-corrected std + eps
      (False = GiGPO's ``mean_norm``, LaMer's default).
    eps: added to the std.

  Returns:
    f32[R, N, T]; 0 on invalid turns and for singleton sub-groups.
  """
  chex.assert_rank(returns, 3)
  chex.assert_equal_shape([returns, state_keys, turn_valid])
  rows = returns.shape[0]
  if rows % group_size:
    raise ValueError(f"{rows} rows are not a multiple of group_size "
                     f"{group_size}")
  shape = returns.shape
  x = jnp.where(turn_valid, returns, 0.0).astype(jnp.float32)
  x = x.reshape(rows // group_size, -1)          # [B, M]
  keys = state_keys.reshape(x.shape)
  m = turn_valid.reshape(x.shape)
  same = (keys[:, :, None] == keys[:, None, :]) & m[:, :, None] & m[:, None, :]
  count = same.sum(-1).astype(jnp.float32)       # [B, M]
  mean = jnp.einsum("bij,bj->bi", same.astype(jnp.float32), x)
  mean = mean / jnp.maximum(count, 1.0)
  adv = x - mean
  if normalize_std:
    dev = jnp.where(same, (x[:, None, :] - mean[:, :, None]) ** 2, 0.0)
    std = jnp.sqrt(dev.sum(-1) / jnp.maximum(count - 1.0, 1.0))
    adv = adv / (std + eps)
  adv = jnp.where(m & (count > 1), adv, 0.0)
  return adv.reshape(shape)


def gae_advantages(rewards: jax.Array, values: jax.Array, turn_valid: jax.Array,
                   gamma: float | jax.Array, lam: float | jax.Array, *,
                   bootstrap: jax.Array | None = None,
                   truncated: jax.Array | None = None) -> jax.Array:
  """Generalised advantage estimation over the valid turns of each attempt.

  ``delta_t = r_t + gamma * V_next(t) - V(s_t)`` and ``A_t = sum_l (gamma *
  lam)^l delta_{t+l}``, both over the attempt's valid turns in order (an
  invalid turn is skipped, not a step of the discount: the trial loop only
  leaves invalid turns after an attempt's end, where nothing follows).
  ``V_next(t)`` is the value of the next valid turn; after the last valid
  turn it is ``bootstrap`` where ``truncated`` (a time-limit cut: the state
  reached still has a future) and 0 otherwise (a terminal state).

  Args:
    rewards: f32[R, N, T].
    values: f32[R, N, T], ``V(s_t)`` of each turn's state (ignored where
      invalid).
    turn_valid: bool[R, N, T], the turn was played.
    gamma: discount per turn.
    lam: GAE's lambda in [0, 1] (0: one-step TD errors, 1: Monte-Carlo
      returns minus ``V``).
    bootstrap: optional f32[R, N], V of the state each attempt reached after
      its last valid turn; None: every attempt ends in a terminal state.
    truncated: bool[R, N], the attempt was cut by the turn budget (needed with
      ``bootstrap``).

  Returns:
    f32[R, N, T] advantages; 0 on invalid turns.
  """
  chex.assert_rank([rewards, values], 3)
  chex.assert_equal_shape([rewards, values, turn_valid])
  lead = rewards.shape[:-1]
  if bootstrap is None:
    tail = jnp.zeros(lead, jnp.float32)
  else:
    if truncated is None:
      raise ValueError("gae_advantages: a bootstrap value needs the truncated "
                       "flags of the attempts")
    chex.assert_shape([bootstrap, truncated], lead)
    tail = jnp.where(truncated, bootstrap, 0.0).astype(jnp.float32)
  gamma = jnp.asarray(gamma, jnp.float32)
  lam = jnp.asarray(lam, jnp.float32)
  r = jnp.where(turn_valid, rewards, 0.0).astype(jnp.float32)
  v = jnp.where(turn_valid, values, 0.0).astype(jnp.float32)

  def body(carry, xs):
    # carry: (value of the next valid turn, or the tail; its advantage, 0
    # after the last valid turn).
    next_v, next_adv = carry
    r_t, v_t, valid = xs
    delta = r_t + gamma * next_v - v_t
    adv = delta + gamma * lam * next_adv
    carry = (jnp.where(valid, v_t, next_v), jnp.where(valid, adv, next_adv))
    return carry, jnp.where(valid, adv, 0.0)

  move = lambda x: jnp.moveaxis(x, -1, 0)
  init = (tail, jnp.zeros(lead, jnp.float32))
  _, adv = jax.lax.scan(body, init, (move(r), move(v), move(turn_valid)),
                        reverse=True)
  return jnp.moveaxis(adv, 0, -1)


def whiten(x: jax.Array, valid: jax.Array, eps: float = 1e-6) -> jax.Array:
  """``(x - mean) / (std + eps)`` over the valid entries (Bessel-corrected
  std, as the group statistics); 0 where invalid."""
  chex.assert_equal_shape([x, valid])
  count = valid.sum().astype(jnp.float32)
  mean = jnp.where(valid, x, 0.0).sum() / jnp.maximum(count, 1.0)
  sq = jnp.where(valid, (x - mean) ** 2, 0.0).sum()
  std = jnp.sqrt(sq / jnp.maximum(count - 1.0, 1.0))
  return jnp.where(valid, (x - mean) / (std + eps), 0.0)


def lamer_advantages(rewards: jax.Array, turn_valid: jax.Array,
                     attempt_valid: jax.Array, state_keys: jax.Array, *,
                     group_size: int, gamma_step: float | jax.Array,
                     gamma_traj: float | jax.Array, estimator: str,
                     normalize_std: bool, step_weight: float = 1.0,
                     eps: float = 1e-6, values: jax.Array | None = None,
                     gae_lambda: float | jax.Array = 0.95,
                     bootstrap: jax.Array | None = None,
                     truncated: jax.Array | None = None) -> Advantages:
  """LaMer advantages of turns and reflections (definition: module docstring).

  Args:
    rewards: f32[R, N, T].
    turn_valid: bool[R, N, T], the turn was played.
    attempt_valid: bool[R, N], the attempt ran.
    state_keys: uint32[R, N, T], anchor-state ids (used by ``"gigpo"`` only).
    group_size: ``G``, trials per task (static).
    gamma_step: discount per turn.
    gamma_traj: discount per attempt.
    estimator: ``"grpo"`` (episode term only), ``"gigpo"`` (plus the
      step-level term) or ``"gae"`` (from ``values``; ``N`` must be 1),
      static.
    normalize_std: divide by group std + eps (static); for ``"gae"``, whiten
      the advantages over the batch's valid turns.
    step_weight: weight of GiGPO's step-level term.
    eps: added to the stds.
    values: f32[R, N, T], ``V(s_t)`` of each turn (``"gae"`` only).
    gae_lambda: GAE's lambda (``"gae"`` only).
    bootstrap, truncated: see ``gae_advantages`` (``"gae"`` only).

  Returns:
    Advantages(turn f32[R, N, T], reflection f32[R, N], returns f32[R, N, T]).

  Raises:
    ValueError: an unknown estimator, or ``"gae"`` without values or with
      more than one attempt per trial.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got "
                     f"{estimator!r}")
  chex.assert_rank([rewards, attempt_valid], [3, 2])
  chex.assert_equal_shape([rewards, turn_valid, state_keys])
  chex.assert_equal_shape_prefix([rewards, attempt_valid], 2)
  turn_valid = turn_valid & attempt_valid[..., None]
  if estimator == "gae":
    if rewards.shape[1] != 1:
      raise ValueError(GAE_ONE_ATTEMPT + f"; got {rewards.shape[1]} attempts")
    if values is None:
      raise ValueError("estimator 'gae' needs the values of the turns' states")
    adv = gae_advantages(rewards, values, turn_valid, gamma_step, gae_lambda,
                         bootstrap=bootstrap, truncated=truncated)
    targets = jnp.where(turn_valid, adv + values, 0.0)
    if normalize_std:
      adv = whiten(adv, turn_valid, eps)
    return Advantages(turn=adv, reflection=jnp.zeros(attempt_valid.shape,
                                                     jnp.float32),
                      returns=targets)
  returns = cross_episode_returns(rewards, turn_valid, gamma_step, gamma_traj)
  scores = returns[..., 0]                       # S^(n) = G_0^(n), [R, N]
  stats = group_stats(scores, attempt_valid, group_size)
  episode = normalize_with_stats(scores, attempt_valid, stats, normalize_std,
                                 eps)
  turn = jnp.where(turn_valid, episode[..., None], 0.0)
  if estimator == "gigpo":
    turn = turn + step_weight * gigpo_step_advantages(
        returns, state_keys, turn_valid, group_size, normalize_std, eps)
  reflection_valid = jnp.pad(attempt_valid[:, 1:], ((0, 0), (0, 1)))
  reflection = normalize_with_stats(
      reflection_returns(returns, attempt_valid), reflection_valid, stats,
      normalize_std, eps)
  return Advantages(turn=turn, reflection=reflection, returns=returns)


def broadcast_to_tokens(turn_adv: jax.Array, reflection_adv: jax.Array,
                        token_turn_ids: jax.Array) -> jax.Array:
  """Per-token advantages of the training rows (one row per attempt).

  Args:
    turn_adv: f32[R, N, T], advantage of each turn's action tokens.
    reflection_adv: f32[R, N], advantage of the reflection after attempt n.
    token_turn_ids: int32[R, N, C]: ``t`` in [0, T) for tokens of turn t's
      action, ``T`` for reflection tokens, -1 for tokens with no loss
      (prompt, observations, padding).

  Returns:
    f32[R, N, C]; 0 where the id is -1.
  """
  chex.assert_rank([turn_adv, reflection_adv, token_turn_ids], [3, 2, 3])
  chex.assert_equal_shape_prefix([turn_adv, reflection_adv, token_turn_ids], 2)
  turns = turn_adv.shape[-1]
  table = jnp.concatenate([turn_adv, reflection_adv[..., None]], axis=-1)
  idx = jnp.clip(token_turn_ids, 0, turns)
  out = jnp.take_along_axis(table, idx, axis=-1)
  return jnp.where(token_turn_ids >= 0, out, 0.0).astype(jnp.float32)
