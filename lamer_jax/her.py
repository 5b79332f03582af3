"""Hindsight relabeling (HER) of transitions sampled from ``lamer_jax.replay``.

A sampled transition (env ``i``, logical position ``t``) is relabeled with
probability ``ratio``: a *source step* ``t'`` of the same episode is chosen,

* ``final``: ``t'`` = the last stored step of the episode (for an episode still
  running, its newest stored step);
* ``future``: ``t'`` uniform over the stored steps ``t <= t' <= final``,

and the new goal ``g'`` is drawn uniformly among the goals true in ``achieved[t']``
(the goals the state after step ``t'`` satisfies). A transition whose source step
achieves no goal keeps its goal (and is not counted as relabeled). For a relabeled
transition, and for every step of its n-step window (the same ``g'``):

    goal     = g'
    obs[0] = next_obs[0] = g'            (the goal symbol; its id is the goal index)
    reward   = reward_win * achieved[g']  (1.0 / 0.0 by default)
    terminal = achieved[g']               (success ends the episode)
    truncated, mask, action, next_mask unchanged

``truncated`` is kept: it only says that the stored episode ended there by the time
limit (the next stored step belongs to another episode), and the target then
bootstraps from the stored ``next_obs``, whatever the goal. An original success
that is not a success of ``g'`` becomes a non-terminal step that bootstraps from
its ``next_obs``, the state it reached (stored for this reason). The window stops
at the first relabeled success (``sac_losses.nstep_targets`` ends windows at a
terminal), so steps past it, which the relabeled episode would not have had, never
count.

Choice of strategy and ratio (the SAC-GLAM paper's could not be read, see
REFERENCES.md): ``future`` with ``ratio = 0.8`` is the default, HER's (Andrychowicz
et al. 2017) best setting (k = 4 relabeled goals per original, i.e. 4/5 of the
replayed transitions); ``future`` also covers the goals that only hold on one step
(Playground's ``Grow X`` holds on the step X grows), which ``final`` misses
unless the growth was the episode's last step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lamer_jax import replay

STRATEGIES = ("final", "future")
GOAL_SYMBOL = 0                 # the position of the goal in every observation


def _check(strategy: str, ratio: float) -> float:
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
  ratio = float(ratio)
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"relabel ratio must lie in [0, 1], got {ratio}")
  return ratio


def source_steps(key: jax.Array, state: replay.ReplayState, env_idx: jax.Array,
                 t_idx: jax.Array, strategy: str) -> jax.Array:
  """int32[B]: the logical position ``t'`` whose achieved goals relabel each step
  (see the module docstring for ``final`` and ``future``)."""
  _check(strategy, 0.0)
  last = replay.episode_last(state, env_idx, t_idx)
  if strategy == "final":
    return last
  return jax.random.randint(key, t_idx.shape, t_idx, last + 1, dtype=jnp.int32)


def draw_goals(key: jax.Array, achieved: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A goal uniform among the true ones of each row (Gumbel-max over them).

  Args:
    key: PRNG key.
    achieved: bool[B, G].

  Returns:
    (goal int32[B], any bool[B]); ``goal`` is meaningless where ``any`` is False.
  """
  noise = jax.random.gumbel(key, achieved.shape)
  goal = jnp.argmax(jnp.where(achieved, noise, -jnp.inf), axis=-1).astype(jnp.int32)
  return goal, jnp.any(achieved, axis=-1)


def her_goals(key: jax.Array, state: replay.ReplayState, env_idx: jax.Array,
              t_idx: jax.Array, strategy: str = "future", ratio: float = 0.8
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The hindsight goals of sampled steps.

  Args:
    key: PRNG key.
    state: the buffer (its data a ``replay.Transition`` pytree).
    env_idx, t_idx: int32[B], the sampled steps (``replay.sample_indices``).
    strategy: ``"final"`` or ``"future"``.
    ratio: in [0, 1] (a Python number), the probability that a step is relabeled.

  Returns:
    (goal int32[B], relabeled bool[B], source int32[B]): the new goal, whether the
    step takes it (drawn with probability ``ratio`` and its source step achieves
    some goal) and the source step ``t'``.

  Raises:
    ValueError: unknown strategy, or ratio outside [0, 1].
  """
  ratio = _check(strategy, ratio)
  k_src, k_goal, k_coin = jax.random.split(key, 3)
  source = source_steps(k_src, state, env_idx, t_idx, strategy)
  achieved, _ = replay.gather(state, env_idx, source)
  goal, has = draw_goals(k_goal, achieved.achieved)
  coin = jax.random.uniform(k_coin, t_idx.shape) < ratio
  return goal, coin & has, source


def relabel(batch: replay.Transition, goal: jax.Array, relabeled: jax.Array,
            reward_win: float = 1.0) -> replay.Transition:
  """``batch`` with goal ``goal[b]`` where ``relabeled[b]`` (see the module docstring).

  Args:
    batch: transitions with leading axes ``[B]`` or ``[B, n]`` (a window per row:
      every step of row ``b`` takes row ``b``'s goal).
    goal: int32[B].
    relabeled: bool[B]; rows where it is False are returned unchanged.
    reward_win: the reward of a success.
  """
  lead = batch.reward.shape
  shape = (lead[0],) + (1,) * (len(lead) - 1)
  g = jnp.broadcast_to(jnp.reshape(goal, shape), lead).astype(jnp.int32)
  on = jnp.broadcast_to(jnp.reshape(relabeled, shape), lead)
  hit = jnp.take_along_axis(batch.achieved, g[..., None], axis=-1)[..., 0]
  swap = lambda obs: obs.at[..., GOAL_SYMBOL].set(
      jnp.where(on, g, obs[..., GOAL_SYMBOL]))
  return batch.replace(
      goal=jnp.where(on, g, batch.goal),
      obs=swap(batch.obs), next_obs=swap(batch.next_obs),
      reward=jnp.where(on, jnp.where(hit, reward_win, 0.0), batch.reward
                       ).astype(batch.reward.dtype),
      terminal=jnp.where(on, hit, batch.terminal))


def hindsight(key: jax.Array, state: replay.ReplayState, env_idx: jax.Array,
              t_idx: jax.Array, batch: replay.Transition, strategy: str = "future",
              ratio: float = 0.8, reward_win: float = 1.0
              ) -> tuple[replay.Transition, dict[str, jax.Array]]:
  """``her_goals`` then ``relabel``: the sampled ``batch`` (gathered at
  ``env_idx, t_idx``, leading ``[B]`` or ``[B, n]``) relabeled.

  Returns:
    (batch, info) with info ``{"goal", "relabeled", "source"}`` (``her_goals``).
  """
  goal, relabeled, source = her_goals(key, state, env_idx, t_idx, strategy, ratio)
  return (relabel(batch, goal, relabeled, reward_win),
          {"goal": goal, "relabeled": relabeled, "source": source})
