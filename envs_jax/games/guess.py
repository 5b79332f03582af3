"""Guess the hidden number: the smallest game where memory across attempts pays.

A task hides a number in ``1..num_options``. Each attempt the agent names one
number per turn; the observation never reveals the secret, only which numbers
this attempt has already tried ("Tried: 2 3"). A correct guess wins (+1, done);
a wrong one costs ``reward_wrong`` and, after ``max_turns`` turns, ends the
attempt. With one turn per attempt, a single attempt can do no better than
chance (pass@1 = 1 / num_options), while an agent that remembers its earlier
attempts (``history_only`` memory, or a reflection) never repeats a failed
guess, so pass@k rises to min(1, k / num_options). That gap is exactly what
cross-episode meta-RL has to learn, which makes this game the fast learning
test of the framework (tiny model, byte-level tokenizer, seconds per step).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays


@struct.dataclass
class GuessParams:
  """Attributes: reward_win, reward_wrong (float32)."""

  reward_win: jax.Array
  reward_wrong: jax.Array


@struct.dataclass
class GuessState:
  """Attributes: secret int32 (0-based), tried bool[K], turns int32, done, won."""

  secret: jax.Array
  tried: jax.Array
  turns: jax.Array
  done: jax.Array
  won: jax.Array


@dataclasses.dataclass(frozen=True)
class GuessNumber(Environment):
  """Hidden number in 1..num_options; ``max_turns`` guesses per attempt."""

  name: str = "guess"
  num_options: int = 3
  max_turns: int = 1

  def __post_init__(self):
    if not 2 <= self.num_options <= 9:
      raise ValueError(f"num_options must be in [2, 9], got {self.num_options}")
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")

  @property
  def symbols(self) -> tuple[str, ...]:
    return tuple(str(i + 1) for i in range(self.num_options)) + (
        "Tried:", " ", "\n", " nothing")

  @property
  def action_strings(self) -> tuple[str, ...]:
    return tuple(str(i + 1) for i in range(self.num_options))

  @property
  def max_symbols(self) -> int:
    return 3 + 2 * self.num_options

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """Per position of ``render_symbols``: "Tried:", then " nothing" or the
    first pair's space, then numbers and spaces alternating, each of them
    possibly the closing newline (and -1 padding after it)."""
    k = self.num_options
    numbers = tuple(range(k))
    tried_id, space_id, newline_id, nothing_id = k, k + 1, k + 2, k + 3
    slots = [(tried_id,), (nothing_id, space_id)]
    for p in range(2, self.max_symbols):
      slots.append(numbers + (newline_id,) if p % 2 == 0 else (space_id, newline_id))
    return tuple(slots)

  @property
  def instructions(self) -> str:
    return (f"Guess the hidden number between 1 and {self.num_options}. "
            "A right guess wins.")

  @property
  def default_params(self) -> GuessParams:
    return GuessParams(reward_win=jnp.float32(1.0), reward_wrong=jnp.float32(0.0))

  def reset(self, key, params):
    del params
    secret = jax.random.randint(key, (), 0, self.num_options, jnp.int32)
    false = jnp.zeros((), jnp.bool_)
    state = GuessState(secret=secret, tried=jnp.zeros((self.num_options,), jnp.bool_),
                       turns=jnp.zeros((), jnp.int32), done=false, won=false)
    return state, TimeStep.first()

  def step(self, key, state, action, params):
    del key  # deterministic
    live = ~state.done
    action = jnp.clip(action, 0, self.num_options - 1)
    won = live & (action == state.secret)
    turns = state.turns + live.astype(jnp.int32)
    truncated = live & ~won & (turns >= self.max_turns)
    done = state.done | won | truncated
    reward = jnp.where(won, params.reward_win,
                       jnp.where(live, params.reward_wrong, 0.0)).astype(jnp.float32)
    invalid = live & state.tried[action]
    tried = state.tried.at[action].set(state.tried[action] | live)
    new = GuessState(secret=state.secret, tried=tried, turns=turns, done=done,
                     won=state.won | won)
    return new, TimeStep(reward=reward, done=done, won=new.won, truncated=truncated,
                         invalid=invalid, steps=turns)

  def render_symbols(self, state, params):
    del params
    k = self.num_options
    tried_id, space_id, newline_id, nothing_id = k, k + 1, k + 2, k + 3
    # "Tried:" then " i" for every tried number (or " nothing"), then "\n".
    pairs = jnp.stack([jnp.full((k,), space_id), jnp.arange(k)], axis=1)
    pairs = jnp.where(state.tried[:, None], pairs, -1).reshape(-1)
    # Compact the tried pairs to the front, keeping their order.
    order = jnp.argsort(pairs < 0, stable=True)
    body = pairs[order]
    nothing = jnp.where(jnp.any(state.tried), -1, nothing_id)
    out = jnp.concatenate([jnp.array([tried_id]), nothing[None], body,
                           jnp.array([newline_id])]).astype(jnp.int32)
    order = jnp.argsort(out < 0, stable=True)
    return out[order]

  def render_text(self, state, params):
    del params
    tried = np.asarray(jax.device_get(state.tried))
    listed = "".join(f" {i + 1}" for i in range(self.num_options) if tried[i])
    return "Tried:" + (listed or " nothing") + "\n"

  def action_mask(self, state, params):
    del params
    return jnp.ones((self.num_options,), jnp.bool_)

  def state_key(self, state):
    return hash_arrays(state.tried, state.turns)
