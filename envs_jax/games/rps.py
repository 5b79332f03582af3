"""Rock-Paper-Scissors against a biased opponent: a game with chance.

ORBIT's training game (see REFERENCES.md, "ORBIT's game suite"). A *task* is a
hidden opponent distribution over (rock, paper, scissors), drawn in ``reset``:
one dominant move, chosen uniformly, gets probability
``p = dominant_floor + (1 - dominant_floor) * Beta(a, b)`` (0.4 + 0.6 Beta(2, 2)
by default) and the remaining ``1 - p`` is split between the two other moves by
a Dirichlet(1, 1) draw. Every ``step`` draws the opponent's move afresh from
that distribution with the step's key: replaying an attempt from the saved
initial state with new keys meets new opponent moves, with the same keys the
same ones. What carries over between attempts is the distribution, which is
what an agent with memory can learn to exploit (play what beats the dominant
move: a win rate of p per round instead of 1/3).

An attempt is a match of ``max_turns`` rounds (5); it is won with a strict
majority of wins, ``max_turns // 2 + 1`` (3 of 5), draws counting as no win.
The match ends as soon as it is decided: won on the round that reaches that
many wins, lost on the round after which that many wins can no longer be
reached in the rounds left, so an attempt lasts 3 to 5 rounds. Ending early
changes no outcome (a decided match stays decided) and spends no turns of a
trial's budget on rounds that cannot matter. Reward ``reward_win`` (1.0) on the
round that wins the match, 0 otherwise. A match that runs its 5 rounds ends as
a real terminal state (``truncated`` stays False): the rounds are the game.

The concentrations are static integers, so both task draws are exact order
statistics of uniforms (``beta_from_uniforms``), all from one
``jax.random.uniform`` call: ``jax.random.beta`` and ``dirichlet`` go through a
rejection-sampled gamma whose compilation takes seconds, several times the rest
of the game, and every further threefry call adds compile time too.

The observation names the rounds played, the last round's moves and result and
the running score, e.g.::

    Rounds played: 2 of 5
    Last round: you played rock, the opponent played paper: you lost
    Score: wins 1, losses 1, draws 0
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax.core import Environment, TimeStep, hash_arrays

# The move order is the action order: rock 0, paper 1, scissors 2. Move m beats
# move (m - 1) % 3, so (agent - opponent) % 3 is 0 on a draw, 1 on a win and 2
# on a loss.
MOVES = ("rock", "paper", "scissors")
# Index into the score vector (wins, losses, draws) of (agent - opponent) % 3.
_SCORE_SLOT = np.array([2, 0, 1], np.int32)
_RESULTS = ("a draw", "you won", "you lost")


def round_result(agent: int, opponent: int) -> str:
  """The result text of one round, from the agent's side."""
  return _RESULTS[(agent - opponent) % 3]


def last_round_text(agent: int, opponent: int) -> str:
  """The 'Last round' text of moves ``agent`` and ``opponent`` (-1: none)."""
  if agent < 0:
    return "none"
  return (f"you played {MOVES[agent]}, the opponent played {MOVES[opponent]}: "
          f"{round_result(agent, opponent)}")


@struct.dataclass
class RPSParams:
  """Task-distribution knobs (the concentrations are static: see the game).

  Attributes:
    reward_win: float32, reward of the round that wins the match.
    dominant_floor: float32 in [0, 1], the dominant move's least probability.
  """

  reward_win: jax.Array
  dominant_floor: jax.Array


@struct.dataclass
class RPSState:
  """One match.

  Attributes:
    probs: float32[3], the opponent's hidden move distribution (the task).
    rounds: int32 rounds played in this attempt.
    score: int32[3], rounds won, lost and drawn by the agent.
    last_agent: int32 the agent's move of the last round (-1 before any).
    last_opponent: int32 the opponent's move of the last round (-1 before any).
    done: bool, the match is decided.
    won: bool, the agent won the match.
  """

  probs: jax.Array
  rounds: jax.Array
  score: jax.Array
  last_agent: jax.Array
  last_opponent: jax.Array
  done: jax.Array
  won: jax.Array


def beta_from_uniforms(uniforms: jax.Array, a: int) -> jax.Array:
  """A Beta(a, b) draw from float32[a + b - 1] iid U(0, 1) (integers a, b >= 1).

  The a-th smallest of a + b - 1 iid uniforms is Beta(a, b) distributed.
  """
  return jnp.sort(uniforms)[a - 1]


@dataclasses.dataclass(frozen=True)
class RockPaperScissors(Environment):
  """A match of ``max_turns`` rounds against a biased random opponent.

  Attributes:
    name: registry name.
    max_turns: rounds per match (5); a strict majority of wins wins it.
    dominant_beta: integers (a, b) of the Beta(a, b) that places the dominant
      move's probability above ``RPSParams.dominant_floor``.
    rest_dirichlet: integer concentrations of the Dirichlet split of the
      rest between the moves after the dominant one, in move order
      (dominant + 1, dominant + 2) mod 3.
  """

  name: str = "rps"
  max_turns: int = 5
  dominant_beta: tuple[int, int] = (2, 2)
  rest_dirichlet: tuple[int, int] = (1, 1)

  def __post_init__(self):
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
    for field in ("dominant_beta", "rest_dirichlet"):
      value = tuple(getattr(self, field))   # a list from a config stays hashable
      if (len(value) != 2 or
          not all(isinstance(x, int) and x >= 1 for x in value)):
        raise ValueError(f"{field} must be two integers >= 1, got {value}")
      object.__setattr__(self, field, value)

  @property
  def wins_needed(self) -> int:
    """Wins that decide the match: a strict majority of ``max_turns``."""
    return self.max_turns // 2 + 1

  # ---- static description ------------------------------------------------
  # Symbols: the numbers 0..max_turns first (a number's id is its value), then
  # the fixed pieces, "none", and one symbol per (agent, opponent) round.
  @property
  def _pieces(self) -> tuple[str, ...]:
    return ("Rounds played: ", f" of {self.max_turns}\n", "Last round: ", "\n",
            "Score: wins ", ", losses ", ", draws ", "none")

  @property
  def symbols(self) -> tuple[str, ...]:
    numbers = tuple(str(i) for i in range(self.max_turns + 1))
    rounds = tuple(last_round_text(a, o) for a in range(3) for o in range(3))
    return numbers + self._pieces + rounds

  def _piece_id(self, piece: str) -> int:
    return self.max_turns + 1 + self._pieces.index(piece)

  @property
  def action_strings(self) -> tuple[str, ...]:
    return MOVES

  @property
  def max_symbols(self) -> int:
    return len(self.symbol_slots)

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    """The 13 positions of ``render_symbols``.

    They size the codec's token buffer tightly. The last-round symbols differ
    by tens of tokens, more than the codec's slot fast path inserts, so an
    RPS rendering takes its general encoder (the same tokens, see
    ``envs_jax.text``).
    """
    number = tuple(range(self.max_turns + 1))
    p = self._piece_id
    last = (p("none"),) + tuple(range(p("none") + 1, p("none") + 10))
    return ((p("Rounds played: "),), number, (p(f" of {self.max_turns}\n"),),
            (p("Last round: "),), last, (p("\n"),),
            (p("Score: wins "),), number, (p(", losses "),), number,
            (p(", draws "),), number, (p("\n"),))

  @property
  def instructions(self) -> str:
    n, k = self.max_turns, self.wins_needed
    return (
        f"You are playing Rock-Paper-Scissors: a match of {n} rounds against "
        "the same opponent.\n"
        "Each round you and the opponent each pick a move: rock, paper or "
        "scissors. Rock beats scissors, scissors beats paper, paper beats "
        "rock; the same move twice is a draw.\n"
        "The opponent does not react to your moves: each round it picks at "
        "random, but with a fixed preference for some moves that stays the "
        "same in every match against it. Watch its moves to find out which "
        "one it favours, and play what beats it.\n"
        f"You win the match with {k} round wins. The match ends as soon as "
        f"you have {k} wins, or as soon as {k} wins are out of reach, and "
        f"after {n} rounds at the latest. Reward: 1 for winning the match, "
        "0 otherwise.\n"
        "Each turn, answer with your move: rock, paper or scissors.")

  @property
  def default_params(self) -> RPSParams:
    f = lambda x: jnp.asarray(x, jnp.float32)
    return RPSParams(reward_win=f(1.0), dominant_floor=f(0.4))

  # ---- dynamics ------------------------------------------------------------
  def opponent_distribution(self, key: jax.Array, params: RPSParams):
    """Draws a task: (dominant move int32, float32[3] move probabilities)."""
    a, b = self.dominant_beta
    c, d = self.rest_dirichlet
    u = jax.random.uniform(key, (a + b + c + d - 1,))
    # u[0] picks the move: floor(3u) of a 23-bit uniform is uniform on
    # {0, 1, 2} up to a relative bias below 1e-6.
    dominant = jnp.minimum(jnp.floor(3.0 * u[0]).astype(jnp.int32), 2)
    floor = params.dominant_floor
    p = floor + (1.0 - floor) * beta_from_uniforms(u[1:a + b], a)
    # A two-part Dirichlet(c, d) split: the first share is Beta(c, d).
    first = (1.0 - p) * beta_from_uniforms(u[a + b:], c)
    # Entry i of [p, first, rest] is move (dominant + i) % 3.
    probs = jnp.roll(jnp.stack([p, first, 1.0 - p - first]), dominant)
    return dominant, probs.astype(jnp.float32)

  def reset(self, key: jax.Array, params: RPSParams):
    """Draws the opponent's hidden distribution; no round played yet."""
    _, probs = self.opponent_distribution(key, params)
    none = jnp.full((), -1, jnp.int32)
    false = jnp.zeros((), jnp.bool_)
    state = RPSState(probs=probs, rounds=jnp.zeros((), jnp.int32),
                     score=jnp.zeros((3,), jnp.int32), last_agent=none,
                     last_opponent=none, done=false, won=false)
    return state, TimeStep.first()

  def step(self, key: jax.Array, state: RPSState, action: jax.Array,
           params: RPSParams):
    """Plays one round: the opponent's move is drawn from ``key``.

    Out-of-range actions are clipped to a move. Stepping a finished match
    returns it unchanged, reward 0.
    """
    live = ~state.done
    agent = jnp.clip(jnp.asarray(action, jnp.int32), 0, 2)
    opponent = jax.random.choice(key, 3, p=state.probs).astype(jnp.int32)
    slot = jnp.asarray(_SCORE_SLOT)[(agent - opponent) % 3]
    score = state.score + (live & (jnp.arange(3) == slot)).astype(jnp.int32)
    rounds = state.rounds + live.astype(jnp.int32)
    won = live & (score[0] >= self.wins_needed)
    out_of_reach = score[0] + (self.max_turns - rounds) < self.wins_needed
    done = state.done | won | (live & out_of_reach)
    new = RPSState(
        probs=state.probs, rounds=rounds, score=score,
        last_agent=jnp.where(live, agent, state.last_agent),
        last_opponent=jnp.where(live, opponent, state.last_opponent),
        done=done, won=state.won | won)
    false = jnp.zeros((), jnp.bool_)
    ts = TimeStep(reward=jnp.where(won, params.reward_win, 0.0).astype(jnp.float32),
                  done=done, won=new.won, truncated=false, invalid=false,
                  steps=rounds)
    return new, ts

  # ---- views -----------------------------------------------------------------
  def render_symbols(self, state: RPSState, params: RPSParams) -> jax.Array:
    """int32[13]: the three lines of the observation (never padded)."""
    del params
    p = self._piece_id
    played = state.last_agent >= 0
    last = jnp.where(played, p("none") + 1 + 3 * state.last_agent
                     + state.last_opponent, p("none"))
    c = lambda i: jnp.asarray(i, jnp.int32)
    return jnp.stack([
        c(p("Rounds played: ")), state.rounds, c(p(f" of {self.max_turns}\n")),
        c(p("Last round: ")), last, c(p("\n")),
        c(p("Score: wins ")), state.score[0], c(p(", losses ")), state.score[1],
        c(p(", draws ")), state.score[2], c(p("\n"))]).astype(jnp.int32)

  def render_text(self, state: RPSState, params: RPSParams) -> str:
    """Host-side rendering from the state arrays."""
    del params
    s = jax.device_get(state)
    wins, losses, draws = (int(x) for x in s.score)
    last = last_round_text(int(s.last_agent), int(s.last_opponent))
    return (f"Rounds played: {int(s.rounds)} of {self.max_turns}\n"
            f"Last round: {last}\n"
            f"Score: wins {wins}, losses {losses}, draws {draws}\n")

  def action_mask(self, state: RPSState, params: RPSParams) -> jax.Array:
    """bool[3], all True: every move is always allowed."""
    del state, params
    return jnp.ones((3,), jnp.bool_)

  def state_key(self, state: RPSState) -> jax.Array:
    """uint32 hash of what the observation shows (not the hidden probs)."""
    return hash_arrays(state.rounds, state.score, state.last_agent,
                       state.last_opponent)
