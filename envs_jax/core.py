"""The environment contract shared by every game, and the wrappers built on it.

A game is a frozen dataclass (its *static* configuration: board size, number of
boxes, ...) whose methods are pure functions of pytrees, so ``jax.jit`` can take
the game itself as a static argument and ``jax.vmap`` can batch its state:

    env = envs_jax.make("sokoban")
    params = env.default_params                 # pytree: task-distribution knobs
    state, ts = env.reset(key, params)          # level generation happens here
    state, ts = env.step(state, action, params) # action: int32 into env.action_strings

Games know nothing of tokenizers: they render to *symbols*, indices into the static
tuple ``env.symbols``; ``envs_jax.text`` turns symbols into token ids.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
from flax import struct

State = TypeVar("State")
Params = TypeVar("Params")

API_VERSION = 1  # bumped whenever reset/step/render signatures change


@struct.dataclass
class TimeStep:
  """What one ``reset`` or ``step`` reports.

  Attributes:
    reward: float32 reward of this step (0 after ``reset``).
    done: bool, the attempt is over (terminated, or truncated by the step limit).
    won: bool, the attempt ended in success.
    truncated: bool, the attempt was cut by the step limit (not a real terminal
      state: value bootstrapping may treat it differently from ``done``).
    invalid: bool, the action had no effect (illegal or ineffective move).
    steps: int32 number of steps taken in this attempt, after this step.
  """

  reward: jax.Array
  done: jax.Array
  won: jax.Array
  truncated: jax.Array
  invalid: jax.Array
  steps: jax.Array

  @classmethod
  def first(cls) -> "TimeStep":
    false = jnp.zeros((), jnp.bool_)
    return cls(reward=jnp.zeros((), jnp.float32), done=false, won=false,
               truncated=false, invalid=false, steps=jnp.zeros((), jnp.int32))


class Environment(abc.ABC, Generic[State, Params]):
  """A pure-JAX text game. Subclasses are frozen dataclasses (hashable, static).

  Subclasses define the class attributes / properties below and the abstract
  methods. Everything that runs under ``jit`` takes and returns pytrees only.
  """

  name: str = "environment"

  # ---- static description ------------------------------------------------
  @property
  @abc.abstractmethod
  def symbols(self) -> tuple[str, ...]:
    """The strings a rendering is made of; ``render_symbols`` indexes them."""

  @property
  @abc.abstractmethod
  def action_strings(self) -> tuple[str, ...]:
    """Candidate actions as text, in the order of the int32 action index."""

  @property
  @abc.abstractmethod
  def instructions(self) -> str:
    """The game's rules, written for the system prompt of an LLM agent."""

  @property
  @abc.abstractmethod
  def max_symbols(self) -> int:
    """Static length S of ``render_symbols`` (the rendering is padded with -1)."""

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...] | None:
    """Optional: per position of ``render_symbols``, the symbol ids it can hold.

    ``max_symbols`` tuples (padding, -1, is always allowed). The text codec
    then sizes its token buffer by the longest possible rendering (a row
    label in the label slot, a cell in a cell slot) instead of ``max_symbols``
    times the longest symbol, which keeps every observation, and so every
    context, several times shorter. None: any symbol may appear anywhere.
    """
    return None

  @property
  def num_actions(self) -> int:
    return len(self.action_strings)

  @property
  @abc.abstractmethod
  def default_params(self) -> Params:
    """The default task-distribution parameters (a pytree of arrays)."""

  # ---- dynamics ------------------------------------------------------------
  @abc.abstractmethod
  def reset(self, key: jax.Array, params: Params) -> tuple[State, TimeStep]:
    """Samples a new task (level) and returns its initial state."""

  @abc.abstractmethod
  def step(self, state: State, action: jax.Array,
           params: Params) -> tuple[State, TimeStep]:
    """Applies one action. Stepping a finished attempt leaves it unchanged."""

  # ---- views -----------------------------------------------------------------
  @abc.abstractmethod
  def render_symbols(self, state: State, params: Params) -> jax.Array:
    """int32[S] symbol ids of the observation text, padded with -1."""

  @abc.abstractmethod
  def render_text(self, state: State, params: Params) -> str:
    """The observation as a string (host side, for logs and tests).

    Written independently of ``render_symbols`` so that tests can check one
    against the other.
    """

  @abc.abstractmethod
  def action_mask(self, state: State, params: Params) -> jax.Array:
    """bool[A]: which candidate actions are legal in ``state``."""

  @abc.abstractmethod
  def state_key(self, state: State) -> jax.Array:
    """uint32 hash of the observable state (GiGPO's anchor-state id)."""

  # ---- helpers shared by all games --------------------------------------------
  def symbols_to_text(self, symbol_ids) -> str:
    """Host-side join of a symbol-id array (ignores the -1 padding)."""
    return "".join(self.symbols[int(i)] for i in jax.device_get(symbol_ids)
                   if int(i) >= 0)

  def replace(self, **changes) -> "Environment":
    return dataclasses.replace(self, **changes)


def hash_arrays(*arrays: jax.Array) -> jax.Array:
  """A uint32 FNV-1a-style hash of integer arrays, jittable and vmappable."""
  h = jnp.uint32(2166136261)
  for a in arrays:
    flat = jnp.ravel(a).astype(jnp.uint32)

    def mix(h, x):
      return (h ^ x) * jnp.uint32(16777619), None

    h, _ = jax.lax.scan(mix, h, flat)
  return h


# ---------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VmapEnv:
  """Batched views of an environment: every method maps over a leading axis.

  ``params`` may be batched (one task distribution per row) or shared; pass
  ``params_batched=True`` for the former.
  """

  env: Environment
  params_batched: bool = False

  def _axes(self, n_state_args: int):
    p = 0 if self.params_batched else None
    return (0,) * n_state_args + (p,)

  def reset(self, keys: jax.Array, params):
    return jax.vmap(self.env.reset, in_axes=self._axes(1))(keys, params)

  def step(self, states, actions: jax.Array, params):
    return jax.vmap(self.env.step, in_axes=self._axes(2))(states, actions, params)

  def render_symbols(self, states, params):
    return jax.vmap(self.env.render_symbols, in_axes=self._axes(1))(states, params)

  def action_mask(self, states, params):
    return jax.vmap(self.env.action_mask, in_axes=self._axes(1))(states, params)

  def state_key(self, states):
    return jax.vmap(self.env.state_key)(states)


@struct.dataclass
class AutoResetState(Generic[State]):
  inner: Any
  key: jax.Array


@dataclasses.dataclass(frozen=True)
class AutoReset:
  """Starts a fresh task (new level) whenever an attempt ends.

  The returned TimeStep is the one of the finishing step (its reward, done, won),
  while the returned state is already the new task's initial state.
  """

  env: Environment

  def reset(self, key: jax.Array, params):
    key, sub = jax.random.split(key)
    inner, ts = self.env.reset(sub, params)
    return AutoResetState(inner=inner, key=key), ts

  def step(self, state: AutoResetState, action: jax.Array, params):
    inner, ts = self.env.step(state.inner, action, params)
    key, sub = jax.random.split(state.key)
    fresh, _ = self.env.reset(sub, params)
    inner = jax.tree.map(lambda f, s: jnp.where(ts.done, f, s), fresh, inner)
    key = jnp.where(ts.done, key, state.key)
    return AutoResetState(inner=inner, key=key), ts


@struct.dataclass
class TrialState(Generic[State]):
  """A trial: N attempts at one task, each restarting from ``initial``."""

  initial: Any        # the task's initial state, saved at reset
  current: Any        # the state of the running attempt
  attempt: jax.Array  # int32 index of the running attempt, 0..N-1
  solved: jax.Array   # bool, some attempt succeeded (the trial stops there)
  over: jax.Array     # bool, the trial is finished (solved or out of attempts)


@struct.dataclass
class TrialStep:
  """A TimeStep plus the trial bookkeeping of the step that produced it."""

  timestep: TimeStep
  attempt: jax.Array        # int32 attempt the step belonged to
  attempt_over: jax.Array   # bool, this step ended its attempt
  trial_over: jax.Array     # bool, this step ended the trial


@dataclasses.dataclass(frozen=True)
class Trial:
  """Runs up to ``num_attempts`` attempts at the same task.

  After an attempt ends without success, the next attempt starts from the
  saved initial state (states are immutable pytrees, so no ``restart`` method
  is needed). The trial stops at the first success. Steps taken after the
  trial is over are no-ops.
  """

  env: Environment
  num_attempts: int = 3

  def reset(self, key: jax.Array, params):
    initial, ts = self.env.reset(key, params)
    false = jnp.zeros((), jnp.bool_)
    state = TrialState(initial=initial, current=initial,
                       attempt=jnp.zeros((), jnp.int32), solved=false, over=false)
    return state, TrialStep(timestep=ts, attempt=state.attempt,
                            attempt_over=false, trial_over=false)

  def step(self, state: TrialState, action: jax.Array, params):
    nxt, ts = self.env.step(state.current, action, params)
    live = ~state.over
    attempt_over = live & ts.done
    solved = state.solved | (attempt_over & ts.won)
    last = state.attempt + 1 >= self.num_attempts
    trial_over = attempt_over & (ts.won | last)
    restart = attempt_over & ~trial_over
    current = jax.tree.map(
        lambda init, n, old: jnp.where(restart, init, jnp.where(live, n, old)),
        state.initial, nxt, state.current)
    new = TrialState(
        initial=state.initial, current=current,
        attempt=state.attempt + restart.astype(jnp.int32),
        solved=solved, over=state.over | trial_over)
    ts = jax.tree.map(lambda x: jnp.where(live, x, jnp.zeros_like(x)), ts)
    return new, TrialStep(timestep=ts, attempt=state.attempt,
                          attempt_over=attempt_over, trial_over=trial_over)
