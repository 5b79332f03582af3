"""A plain-Python Rock-Paper-Scissors match with the rules of ``envs_jax.games.rps``.

The opponent's moves are an input (``reset(opponent_moves)``), not drawn here:
the JAX game draws them from its step keys, which plain Python cannot
reproduce, so the differential test feeds the reference the moves the JAX
game drew. Ints only.
"""

from __future__ import annotations

from typing import Sequence

MOVES = ("rock", "paper", "scissors")


class PyRockPaperScissors:
  """One match at a time: ``max_turns`` rounds, a strict majority of wins wins.

  Moves are 0 rock, 1 paper, 2 scissors (the action index).
  """

  def __init__(self, max_turns: int = 5, reward_win: float = 1.0):
    self.max_turns = max_turns
    self.reward_win = reward_win
    self.wins_needed = max_turns // 2 + 1
    self.opponent_moves: list[int] = []
    self.rounds = 0
    self.wins = self.losses = self.draws = 0
    self.last: tuple[int, int] | None = None
    self.done = False
    self.won = False

  def reset(self, opponent_moves: Sequence[int]) -> str:
    """Starts a match whose opponent plays ``opponent_moves`` in order.

    Returns:
      The observation text.
    """
    self.opponent_moves = [int(m) for m in opponent_moves]
    self.rounds = 0
    self.wins = self.losses = self.draws = 0
    self.last = None
    self.done = self.won = False
    return self.render_text()

  def step(self, action: int) -> tuple[float, bool, bool]:
    """Plays ``action`` against the opponent's next move; (reward, done, won).

    A finished match is left unchanged: (0.0, True, won).
    """
    if self.done:
      return 0.0, True, self.won
    mine = min(max(int(action), 0), 2)
    theirs = self.opponent_moves[self.rounds]
    self.rounds += 1
    self.last = (mine, theirs)
    if mine == theirs:
      self.draws += 1
    elif (mine, theirs) in ((0, 2), (1, 0), (2, 1)):
      self.wins += 1
    else:
      self.losses += 1
    if self.wins >= self.wins_needed:
      self.done = self.won = True
      return self.reward_win, True, True
    rounds_left = self.max_turns - self.rounds
    if self.wins + rounds_left < self.wins_needed:
      self.done = True
    return 0.0, self.done, False

  def render_text(self) -> str:
    if self.last is None:
      last = "none"
    else:
      mine, theirs = self.last
      if mine == theirs:
        result = "a draw"
      elif (mine, theirs) in ((0, 2), (1, 0), (2, 1)):
        result = "you won"
      else:
        result = "you lost"
      last = (f"you played {MOVES[mine]}, the opponent played {MOVES[theirs]}: "
              f"{result}")
    return (f"Rounds played: {self.rounds} of {self.max_turns}\n"
            f"Last round: {last}\n"
            f"Score: wins {self.wins}, losses {self.losses}, draws {self.draws}\n")
