"""The games, one module each; build them by name with ``envs_jax.make``.

* ``sokoban``: push boxes onto targets; levels generated on device by reverse
  play, solvable by construction.
* ``minesweeper``: LaMer's MineSweeper (safe random first click, cascades).
* ``guess``: guess the hidden number, the fast meta-learning test.
* ``rps``: Rock-Paper-Scissors against a hidden, biased opponent (a game with
  chance: every step draws the opponent's move from the step's key).

The modules are imported lazily by the registry, so that ``import envs_jax``
stays cheap.
"""
