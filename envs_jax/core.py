"""The environment contract shared by every game (version 2).

A game is a frozen dataclass (its *static* configuration: board size, number of
boxes, ...) whose methods are pure functions of pytrees, so ``jax.jit`` can take
the game itself as a static argument and ``jax.vmap`` can batch its state:

    env = envs_jax.make("sokoban")
    params = env.default_params          # pytree: task-distribution knobs
    state, ts = env.reset(key, params)   # the task (level) is drawn here
    state, ts = env.step(key, state, action, params)
    # action: int32 index into env.action_strings; key: this step's chance

``step`` takes a PRNG key first, as in gymnax: a game with chance (a
Rock-Paper-Scissors opponent) draws its fresh randomness from that key, so an
attempt restarted from the saved initial state replays differently under new
keys and identically under the same keys. Deterministic games ignore the key.
Everything about the task (the level, the hidden opponent) is drawn in
``reset`` from its key and lives in the state.

Games know nothing of tokenizers: they render to *symbols*, indices into the static
tuple ``env.symbols``; ``envs_jax.text`` turns symbols into token ids. Batching
is ``jax.vmap`` of the methods; the trial loop (attempts restarted from the
initial state) lives in ``lamer_jax.agent``.

Version history: 1, ``step(state, action, params)``; 2, ``step(key, state,
action, params)`` and ``max_turns`` part of the contract.
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

API_VERSION = 2  # bumped whenever reset/step/render signatures change


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

  Required attributes (dataclass fields in every game):
    name: the registry name.
    max_turns: int, the attempt's turn limit: an attempt is over (``done``)
      after at most this many ``step`` calls. The trial loop sizes its turn
      budget by it; a game may end an attempt earlier.
  """

  name: str = "environment"
  max_turns: int

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
  def step(self, key: jax.Array, state: State, action: jax.Array,
           params: Params) -> tuple[State, TimeStep]:
    """Applies one action. Stepping a finished attempt leaves it unchanged.

    Args:
      key: PRNG key of this step's chance events (deterministic games ignore
        it). Replaying an attempt with the same keys repeats it exactly.
      state: the attempt's state.
      action: int32 index into ``action_strings``.
      params: the task-distribution parameters.
    """

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

  def episode_outcomes(self, state: State) -> Any:
    """Per-episode outcomes of an attempt that holds several episodes.

    None for a game whose attempt is one episode (the default);
    ``envs_jax.continuous.Continuous`` returns ``{"solved": bool[K],
    "steps": int32[K]}``. The trial loop records it from each attempt's
    final state.
    """
    del state
    return None

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
