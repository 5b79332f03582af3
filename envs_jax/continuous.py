"""ORBIT's continuous trial: K episodes of the same task in one context.

``Continuous(game, episodes=K)`` is itself a game (contract v2), so the trial
loop, the layouts and the update of ``lamer_jax`` run it unchanged: one
*attempt* of the wrapper is ORBIT's whole trial. Its first observation starts
episode 1; when an episode ends (the game is done: solved, lost or out of its
``max_turns``) the same task starts again from its saved initial state, so the
word, the code, the maze, the deck or the opponent's hidden distribution stay
the same while the game's own chance (an opponent's fresh draws) comes from
new step keys. Nothing stops at a success: the trial is over after K episodes.

* Reward: ``success_reward`` (1.0) on the turn that solves an episode, 0 on
  every other turn; the game's own rewards are not used (ORBIT: reward 1 per
  successful episode). A trial's return is the number of solved episodes, so
  trajectory-level GRPO (gamma_step = 1) scores each trial by it.
* Turn budget: ``max_turns = K * game.max_turns`` (ORBIT's cap, turns per
  episode x K). Every episode ends within its game's ``max_turns`` (enforced
  here too), so K episodes always fit in the cap and the two stopping rules
  agree; ORBIT's transcript may start more than K episodes when episodes end
  early, which this wrapper does not (the metrics are those of episodes
  1..K, and the in-context regret ``K * J* - sum_e G(e)`` needs exactly K).
* ``won`` (the contract's "ended in success") is True once any episode was
  solved: the attempt-level pass@1 of a continuous trial is "solved at least
  once". Per-episode outcomes come from :meth:`episode_outcomes`.

The observation of an ordinary turn is the game's. On the first turn of an
episode it is the last observation of the episode that just ended (what its
final move did: the last Wordle feedback, the last round's moves), that
episode's result, then the header and the new episode's first observation::

    <final observation of episode k - 1>
    Result: not solved.
    [Episode k] New episode begins.
    <first observation of episode k>

(episode 1 starts with the header alone). The rendering is the game's
``max_symbols`` twice plus four symbols, padded with -1 on the turns that
show less; with the game's ``symbol_slots`` the codec sizes it tightly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays

RESULT_TEXT = ("Result: not solved.\n", "Result: solved.\n")
HEADER_OPEN, HEADER_CLOSE = "[Episode ", "] New episode begins.\n"


@struct.dataclass
class ContinuousState:
  """One continuous trial.

  Attributes:
    game: the current episode's game state.
    initial: the task's initial game state (every episode restarts from it).
    last: the final game state of the episode that ended last (rendered on
      the next episode's first turn).
    episode: int32, 0-based index of the current episode (K once over).
    turns: int32 turns played in the whole trial.
    fresh: bool, the current episode has not been stepped yet.
    solved: bool[K], episode k was solved.
    steps: int32[K], turns episode k took (0 for episodes not started).
    done: bool, all K episodes are over.
  """

  game: Any
  initial: Any
  last: Any
  episode: jax.Array
  turns: jax.Array
  fresh: jax.Array
  solved: jax.Array
  steps: jax.Array
  done: jax.Array


def _select(pred: jax.Array, a: Any, b: Any) -> Any:
  """``a`` where the scalar ``pred`` holds, else ``b`` (leaf by leaf)."""
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


@dataclasses.dataclass(frozen=True)
class Continuous(Environment):
  """K episodes of ``game``'s task in one attempt (see the module docstring).

  Attributes:
    game: the wrapped game.
    episodes: K, episodes per trial (>= 1; 1 is the single-episode baseline
      on the same machinery).
    success_reward: reward of the turn that solves an episode.
    name: ``<game>-x<K>`` unless given.
    max_turns: ``K * game.max_turns`` (derived, not an argument).
  """

  game: Environment
  episodes: int = 3
  success_reward: float = 1.0
  name: str = ""
  max_turns: int = dataclasses.field(init=False, default=0)

  def __post_init__(self):
    if not isinstance(self.game, Environment):
      raise ValueError(f"Continuous wraps an envs_jax Environment, got "
                       f"{type(self.game).__name__}")
    if isinstance(self.game, Continuous):
      raise ValueError("Continuous cannot wrap a Continuous game; set episodes "
                       "on the outer one")
    if not isinstance(self.episodes, int) or self.episodes < 1:
      raise ValueError(f"episodes must be an integer >= 1, got {self.episodes!r}")
    turns = getattr(self.game, "max_turns", None)
    if not isinstance(turns, int) or turns < 1:
      raise ValueError(f"{self.game.name} needs an integer max_turns >= 1 to be "
                       f"played in continuous episodes, got {turns!r}")
    object.__setattr__(self, "max_turns", self.episodes * turns)
    if not self.name:
      object.__setattr__(self, "name", f"{self.game.name}-x{self.episodes}")

  # ---- static description ------------------------------------------------
  # Symbol ids: the game's first (unchanged), then the two results, the
  # header's two pieces and the episode numbers 1..K.
  @property
  def _base(self) -> int:
    return len(self.game.symbols)

  @property
  def symbols(self) -> tuple[str, ...]:
    numbers = tuple(str(k + 1) for k in range(self.episodes))
    return self.game.symbols + RESULT_TEXT + (HEADER_OPEN, HEADER_CLOSE) + numbers

  @property
  def action_strings(self) -> tuple[str, ...]:
    return self.game.action_strings

  @property
  def max_symbols(self) -> int:
    return 2 * self.game.max_symbols + 4

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """The game's slots (any of its symbols at each position when it declares
    none) around the four wrapper positions, so the header's long pieces
    never size the game's positions."""
    b = self._base
    inner = self.game.symbol_slots
    if inner is None:
      inner = (tuple(range(b)),) * self.game.max_symbols
    numbers = tuple(range(b + 4, b + 4 + self.episodes))
    return (tuple(inner) + ((b, b + 1), (b + 2,), numbers, (b + 3,))
            + tuple(inner))

  @property
  def instructions(self) -> str:
    k = self.episodes
    return (
        f"{self.game.instructions}\n\n"
        f"You play {k} episodes of this game in a row, all on the same hidden "
        "task: everything the game keeps hidden from you is the same in every "
        "episode. Each episode starts with \"[Episode k] New episode "
        "begins.\", after the result of the one before. You earn 1 for every "
        "episode you solve, so use what the earlier episodes showed you to "
        "solve the later ones faster and more surely.")

  @property
  def default_params(self) -> Any:
    return self.game.default_params

  # ---- dynamics ------------------------------------------------------------
  def reset(self, key: jax.Array, params: Any) -> tuple[ContinuousState, TimeStep]:
    """Draws the task (the game's reset) and starts episode 1."""
    game, _ = self.game.reset(key, params)
    k = self.episodes
    state = ContinuousState(
        game=game, initial=game, last=game, episode=jnp.zeros((), jnp.int32),
        turns=jnp.zeros((), jnp.int32), fresh=jnp.ones((), jnp.bool_),
        solved=jnp.zeros((k,), jnp.bool_), steps=jnp.zeros((k,), jnp.int32),
        done=jnp.zeros((), jnp.bool_))
    return state, TimeStep.first()

  def step(self, key: jax.Array, state: ContinuousState, action: jax.Array,
           params: Any) -> tuple[ContinuousState, TimeStep]:
    """One turn of the current episode; an episode's end restarts the task."""
    live = ~state.done
    game, ts = self.game.step(key, state.game, action, params)
    ended = live & (ts.done | (ts.steps >= self.game.max_turns))
    solved_now = ended & ts.won
    k = state.episode
    here = (jnp.arange(self.episodes) == k) & live
    solved = state.solved | (here & solved_now)
    steps = jnp.where(here, ts.steps, state.steps)
    episode = k + ended.astype(jnp.int32)
    done = state.done | (ended & (episode >= self.episodes))
    restart = ended & ~done
    new = ContinuousState(
        game=_select(live, _select(restart, state.initial, game), state.game),
        initial=state.initial,
        last=_select(ended, game, state.last),
        episode=episode,
        turns=state.turns + live.astype(jnp.int32),
        fresh=jnp.where(live, restart, state.fresh),
        solved=solved, steps=steps, done=done)
    ts = TimeStep(
        reward=jnp.where(solved_now, self.success_reward, 0.0).astype(jnp.float32),
        done=done, won=jnp.any(solved), truncated=jnp.zeros((), jnp.bool_),
        invalid=live & ts.invalid, steps=new.turns)
    return new, ts

  def episode_outcomes(self, state: ContinuousState) -> dict[str, jax.Array]:
    """Per-episode outcomes: ``solved`` bool[K] and ``steps`` int32[K]."""
    return {"solved": state.solved, "steps": state.steps}

  # ---- views -----------------------------------------------------------------
  def render_symbols(self, state: ContinuousState, params: Any) -> jax.Array:
    """int32[2S + 4]: [last episode's end + result] [header] [observation]."""
    b, s = self._base, self.game.max_symbols
    pad = lambda n: jnp.full((n,), -1, jnp.int32)
    # The episode whose end is shown: the one before the current (or the
    # last one, once the trial is over).
    shown = jnp.minimum(state.episode, self.episodes) - 1
    ended = (state.fresh | state.done) & (shown >= 0)
    result = b + jnp.take(state.solved, jnp.maximum(shown, 0)).astype(jnp.int32)
    previous = jnp.where(ended, self.game.render_symbols(state.last, params),
                         pad(s))
    header = state.fresh & ~state.done
    head = jnp.where(header, jnp.stack([
        jnp.asarray(b + 2, jnp.int32), b + 4 + state.episode,
        jnp.asarray(b + 3, jnp.int32)]), pad(3))
    current = jnp.where(state.done, pad(s),
                        self.game.render_symbols(state.game, params))
    return jnp.concatenate([previous, jnp.where(ended, result, -1)[None], head,
                            current]).astype(jnp.int32)

  def render_text(self, state: ContinuousState, params: Any) -> str:
    """Host-side rendering, built from the game's ``render_text``."""
    s = jax.device_get(state)
    episode, done = int(s.episode), bool(s.done)
    fresh = bool(s.fresh)
    text = ""
    shown = min(episode, self.episodes) - 1
    if (fresh or done) and shown >= 0:
      text += self.game.render_text(s.last, params)
      text += RESULT_TEXT[int(bool(s.solved[shown]))]
    if fresh and not done:
      text += f"{HEADER_OPEN}{episode + 1}{HEADER_CLOSE}"
    if not done:
      text += self.game.render_text(s.game, params)
    return text

  def action_mask(self, state: ContinuousState, params: Any) -> jax.Array:
    return self.game.action_mask(state.game, params)

  def state_key(self, state: ContinuousState) -> jax.Array:
    """The game's anchor id, told apart by episode (GiGPO)."""
    return hash_arrays(self.game.state_key(state.game), state.episode)
