"""A replay buffer of transitions held in a train state: added to and sampled inside jit.

A per-env time ring: every leaf of the stored pytree is ``[num_envs, capacity, ...]``
(``capacity`` steps per env), and every ``add`` writes ``k`` consecutive steps of
every env at the same time positions, so the buffer keeps, per env, its newest
``min(steps added, capacity)`` steps in time order. Positions are *logical*: in
each env, ``t = 0`` is the oldest stored step and ``t = count - 1`` the newest;
the slot of ``t`` is ``(head - count + t) mod capacity``. The buffer also keeps an
episode id per stored step (per env, it starts at 0 and increments after each step
that ends an episode), so the stored steps of one episode are a contiguous run of
logical positions and ``gather`` can tell which later steps belong to the same
episode (n-step windows, HER ``future`` / ``final``: see ``lamer_jax.her``).

    state = replay.init(replay.Transition.example(S, A, G), num_envs, capacity)
    state = replay.add(state, batch)                 # batch leaves [num_envs, k, ...]
    env_idx, t_idx = replay.sample_indices(state, key, batch_size)
    window, valid = replay.gather(state, env_idx, t_idx, jnp.arange(3))   # [B, 3, ...]

Why not flashbax. flashbax 0.1.3 (the newest release) declares ``jax>=0.4.25,
chex>=0.1.8, flax>=0.6.11`` with no upper bounds and a hard ``tensorstore``
dependency (for its Vault), so it would not force other versions on the project,
and its trajectory buffer runs on jax 0.10.2 (its add and sample of a pytree of
int32[S] and bool[G] leaves inside jit were checked; jax 0.11 is not excluded
by the declared range but was not tried). It does not give what HER and n-step
targets need, though: its ``sample`` returns windows of one fixed
``sample_sequence_length`` drawn among the starts that have that many stored steps
after them, without their indices or any notion of episodes. HER ``future`` needs
any later step of the same episode (up to the longest horizon, 15 steps in
Playground) and n-step targets need to know where the episode ends, so a wrapper
would have to sample windows of length n + horizon (about 18x the data gathered per
transition), would never sample each env's newest L - 1 steps as a window start
(checked: with L = 4, steps 7..9 of 0..9 never start a window), and would have to
track episode ids itself. Such a wrapper would reach into ``state.experience``
anyway, keeping only flashbax's ``init``/``add`` (about 20 lines), and the project
would carry a new dependency for them. So this module is the small pure equivalent,
with the same ring layout as flashbax's trajectory buffer (``[add_batch, time,
...]``, a write index shared by all rows), plus episode ids and index-based gathers.

Empty buffer: ``sample_indices`` needs at least one stored step (check
``can_sample`` outside, or ``count`` under ``lax.cond``); on an empty buffer it
returns position 0, which holds the zeros of ``init``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Transition:
  """One stored environment step (the fields HER and the SAC update read).

  Observations are stored as *symbols* (``env.render_symbols``), not tokens: the
  goal is symbol 0 of every observation and its symbol id is the goal index
  (Playground's contract), so relabeling sets symbol 0 and the update re-encodes
  the symbols with the codec inside jit, which swaps exactly the goal's tokens.

  The next observation and its mask are stored with the step rather than read from
  position t + 1 of the same env: after a step that ends an episode, t + 1 holds the
  first observation of the next episode (the reset), not the state the step reached,
  which a truncation must bootstrap from (and which a relabeled terminal, no longer
  terminal under its new goal, bootstraps from too); and the newest step, at the
  ring's write head, has no t + 1 yet.

  The episode id is not a field: the buffer computes and keeps it
  (``ReplayState.episode``) from each step's ``terminal | truncated``, so it is
  always consistent with the stored steps.

  Attributes:
    obs: int32[S] symbols of the observation the action was chosen in (-1 padding).
    mask: bool[A] the candidate actions allowed there.
    action: int32 the action taken (index into ``env.action_strings``).
    reward: f32 the step's reward.
    terminal: bool the step ended the episode for real (success in Playground):
      no bootstrap after it.
    truncated: bool the step ended the episode by the time limit (not a terminal:
      the target bootstraps from ``next_obs``).
    goal: int32 the goal pursued (``obs[0]``).
    achieved: bool[G] the goals the state AFTER the step satisfies
      (``env.achieved_goals(next_state)``).
    next_obs: int32[S] symbols of the state after the step (before any reset).
    next_mask: bool[A] the candidates allowed there.
  """

  obs: jax.Array
  mask: jax.Array
  action: jax.Array
  reward: jax.Array
  terminal: jax.Array
  truncated: jax.Array
  goal: jax.Array
  achieved: jax.Array
  next_obs: jax.Array
  next_mask: jax.Array

  @property
  def done(self) -> jax.Array:
    """bool: the step ended its episode (``terminal | truncated``)."""
    return self.terminal | self.truncated

  @classmethod
  def example(cls, num_symbols: int, num_actions: int, num_goals: int) -> Transition:
    """A zero transition of the given sizes (the ``example`` of ``init``)."""
    i32, b = jnp.int32, jnp.bool_
    return cls(obs=jnp.zeros((num_symbols,), i32), mask=jnp.zeros((num_actions,), b),
               action=jnp.zeros((), i32), reward=jnp.zeros((), jnp.float32),
               terminal=jnp.zeros((), b), truncated=jnp.zeros((), b),
               goal=jnp.zeros((), i32), achieved=jnp.zeros((num_goals,), b),
               next_obs=jnp.zeros((num_symbols,), i32),
               next_mask=jnp.zeros((num_actions,), b))


def transition_from_step(env, params, state, action, next_state, ts) -> Transition:
  """The transition of one live step ``next_state, ts = env.step(key, state, action,
  params)`` of a goal-conditioned env (one with ``achieved_goals``; jittable,
  vmappable over envs).

  ``terminal = ts.done & ~ts.truncated`` (a real end; in Playground, success),
  ``truncated = ts.truncated``, ``goal = obs[0]``.
  """
  obs = env.render_symbols(state, params)
  return Transition(
      obs=obs, mask=env.action_mask(state, params),
      action=jnp.asarray(action, jnp.int32), reward=jnp.asarray(ts.reward, jnp.float32),
      terminal=ts.done & ~ts.truncated, truncated=jnp.asarray(ts.truncated, jnp.bool_),
      goal=obs[0], achieved=env.achieved_goals(next_state),
      next_obs=env.render_symbols(next_state, params),
      next_mask=env.action_mask(next_state, params))


@struct.dataclass
class ReplayState:
  """The ring (a pytree: it lives in the train state).

  Attributes:
    data: the stored pytree, every leaf ``[num_envs, capacity, ...]``.
    episode: int32[num_envs, capacity] the episode id of each stored step.
    next_episode: int32[num_envs] the id of each env's current (next) episode.
    head: int32 the slot the next add writes first (shared by all envs).
    count: int32 stored steps per env (``<= capacity``; the same for all envs).
  """

  data: Any
  episode: jax.Array
  next_episode: jax.Array
  head: jax.Array
  count: jax.Array

  @property
  def num_envs(self) -> int:
    return self.episode.shape[0]

  @property
  def capacity(self) -> int:
    return self.episode.shape[1]


def init(example: Any, num_envs: int, capacity: int) -> ReplayState:
  """An empty buffer for ``num_envs`` envs of ``capacity`` steps each.

  Args:
    example: one step's pytree (e.g. ``Transition.example(...)``): its leaves'
      shapes and dtypes; the values are ignored.
    num_envs: envs added together (the leading axis of every added batch).
    capacity: steps kept per env (the buffer holds ``num_envs * capacity`` steps).
  """
  if num_envs < 1 or capacity < 1:
    raise ValueError(f"num_envs and capacity must be >= 1, got {num_envs}, {capacity}")
  data = jax.tree.map(
      lambda x: jnp.zeros((num_envs, capacity) + jnp.shape(x), jnp.asarray(x).dtype),
      example)
  return ReplayState(data=data, episode=jnp.zeros((num_envs, capacity), jnp.int32),
                     next_episode=jnp.zeros((num_envs,), jnp.int32),
                     head=jnp.zeros((), jnp.int32), count=jnp.zeros((), jnp.int32))


def add(state: ReplayState, batch: Any, done: jax.Array | None = None) -> ReplayState:
  """Appends ``k`` consecutive steps of every env (overwriting the oldest when full).

  Args:
    state: the buffer.
    batch: the steps, the stored pytree with leaves ``[num_envs, k, ...]`` (step
      ``j`` of env ``i`` follows step ``j - 1``, and step 0 follows the env's last
      added step).
    done: bool[num_envs, k], the step ended its episode; None:
      ``batch.terminal | batch.truncated`` (a ``Transition`` batch).

  Returns:
    The buffer with the steps stored; each step's episode id is its env's current
    id plus the number of episode ends before it within the batch.

  Raises:
    ValueError: the buffer is smaller than one batch (``k > capacity``), or the
      batch's structure or shapes do not match the stored pytree.
  """
  num_envs, capacity = state.num_envs, state.capacity
  if jax.tree.structure(batch) != jax.tree.structure(state.data):
    raise ValueError(f"batch structure {jax.tree.structure(batch)} does not match the "
                     f"buffer's {jax.tree.structure(state.data)}")
  k = None
  for b, d in zip(jax.tree.leaves(batch), jax.tree.leaves(state.data)):
    shape = jnp.shape(b)
    if len(shape) < 2 or shape[0] != num_envs or tuple(shape[2:]) != d.shape[2:]:
      raise ValueError(f"batch leaf of shape {shape}: expected ({num_envs}, k) + "
                       f"{d.shape[2:]}")
    if k is not None and shape[1] != k:
      raise ValueError(f"batch leaves disagree on k: {shape[1]} and {k}")
    k = shape[1]
  if k > capacity:
    raise ValueError(f"the buffer is smaller than one batch: capacity {capacity} steps "
                     f"per env, batch of {k} steps per env")
  if done is None:
    done = batch.terminal | batch.truncated
  done = jnp.asarray(done, jnp.bool_)
  if done.shape != (num_envs, k):
    raise ValueError(f"done has shape {done.shape}, expected {(num_envs, k)}")
  slots = (state.head + jnp.arange(k, dtype=jnp.int32)) % capacity
  data = jax.tree.map(lambda d, b: d.at[:, slots].set(jnp.asarray(b, d.dtype)),
                      state.data, batch)
  ends = jnp.cumsum(done.astype(jnp.int32), axis=1)
  ids = state.next_episode[:, None] + ends - done.astype(jnp.int32)
  return ReplayState(data=data, episode=state.episode.at[:, slots].set(ids),
                     next_episode=state.next_episode + ends[:, -1],
                     head=(state.head + k) % capacity,
                     count=jnp.minimum(state.count + k, capacity))


def can_sample(state: ReplayState, min_steps: int = 1) -> jax.Array:
  """bool: at least ``min_steps`` steps are stored (over all envs)."""
  return state.count * state.num_envs >= min_steps


def _slot(state: ReplayState, t: jax.Array) -> jax.Array:
  """The ring slot of logical position ``t`` (clipped into the stored range)."""
  t = jnp.clip(t, 0, jnp.maximum(state.count - 1, 0))
  return (state.head - state.count + t) % state.capacity


def sample_indices(state: ReplayState, key: jax.Array, batch_size: int
                   ) -> tuple[jax.Array, jax.Array]:
  """``batch_size`` stored steps, uniformly and with replacement.

  Every env stores the same number of steps, so an env uniform in
  ``[0, num_envs)`` and a position uniform in ``[0, count)`` is uniform over the
  stored steps.

  Returns:
    (env_idx int32[B], t_idx int32[B]): env and logical position of each step.

  Raises:
    ValueError: the buffer can never hold one minibatch
      (``batch_size > num_envs * capacity``).
  """
  if batch_size > state.num_envs * state.capacity:
    raise ValueError(f"the buffer is smaller than one batch: it holds at most "
                     f"{state.num_envs * state.capacity} steps, batch_size={batch_size}")
  k_env, k_t = jax.random.split(key)
  env_idx = jax.random.randint(k_env, (batch_size,), 0, state.num_envs, dtype=jnp.int32)
  t_idx = jax.random.randint(k_t, (batch_size,), 0, jnp.maximum(state.count, 1),
                             dtype=jnp.int32)
  return env_idx, t_idx


def gather(state: ReplayState, env_idx: jax.Array, t_idx: jax.Array,
           offsets: jax.Array | None = None) -> tuple[Any, jax.Array]:
  """The stored steps at ``t_idx + offsets`` of envs ``env_idx`` (n-step windows).

  Args:
    state: the buffer.
    env_idx, t_idx: int32[B], from ``sample_indices``.
    offsets: int32[n] offsets from ``t_idx`` (e.g. ``jnp.arange(n)``; negative ones
      look back), or None for the steps themselves.

  Returns:
    (data, valid): the stored pytree with leaves ``[B, n, ...]`` (``[B, ...]`` for
    ``offsets=None``) and bool[B, n] (bool[B]): the position is stored
    (``0 <= t < count``) and its step belongs to the same episode as ``t_idx``.
    Invalid entries hold some other stored step: mask them with ``valid``.
  """
  env_idx = jnp.asarray(env_idx, jnp.int32)
  t_idx = jnp.asarray(t_idx, jnp.int32)
  if offsets is None:
    t, env = t_idx, env_idx
  else:
    offsets = jnp.asarray(offsets, jnp.int32)
    t = t_idx[:, None] + offsets[None, :]
    env = env_idx[:, None]
  slots = _slot(state, t)
  data = jax.tree.map(lambda x: x[env, slots], state.data)
  own = state.episode[env_idx, _slot(state, t_idx)]
  own = own if offsets is None else own[:, None]
  valid = (t >= 0) & (t < state.count) & (state.episode[env, slots] == own)
  return data, valid


def episode_ids(state: ReplayState, env_idx: jax.Array, t_idx: jax.Array) -> jax.Array:
  """int32[B]: the episode id of each stored step."""
  return state.episode[env_idx, _slot(state, t_idx)]


def episode_last(state: ReplayState, env_idx: jax.Array, t_idx: jax.Array) -> jax.Array:
  """int32[B]: the logical position of the last stored step of each step's episode
  (``>= t_idx``; for an episode still running, its newest stored step).

  Episode ids do not decrease along logical positions, so this is a binary search
  (``capacity.bit_length()`` gathers of B ids) for the last position whose id equals
  the step's.
  """
  env_idx = jnp.asarray(env_idx, jnp.int32)
  t_idx = jnp.asarray(t_idx, jnp.int32)
  own = episode_ids(state, env_idx, t_idx)

  def body(_, carry):
    lo, hi = carry          # invariant: id(lo) == own, the answer lies in [lo, hi]
    mid = (lo + hi + 1) // 2
    same = state.episode[env_idx, _slot(state, mid)] == own
    return jnp.where(same, mid, lo), jnp.where(same, hi, mid - 1)

  hi = jnp.broadcast_to(jnp.maximum(state.count - 1, 0), t_idx.shape).astype(jnp.int32)
  lo, _ = jax.lax.fori_loop(0, int(state.capacity).bit_length(), body, (t_idx, hi))
  return lo
