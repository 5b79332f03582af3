"""The games, one module each; build them by name with ``envs_jax.make``.

* ``sokoban``: push boxes onto targets; levels generated on device by reverse
  play, solvable by construction.
* ``minesweeper``: LaMer's MineSweeper (safe random first click, cascades).
* ``guess``: guess the hidden number, the fast meta-learning test.
* ``rps``: Rock-Paper-Scissors against a hidden, biased opponent (a game with
  chance: every step draws the opponent's move from the step's key).

ORBIT's suite (played in continuous trials, ``envs_jax.continuous``): ``rps``,
``minesweeper-orbit`` (reveal-only 5x5, 5 mines placed after the agent's first
click outside its 3x3), ``hangman`` (3-letter words), ``wordle`` (5-letter
words), ``blackjack`` (a fixed deck whose slots the player picks) for training;
``maze`` (6x6-7x7, goal the farthest cell) and ``mastermind`` (3 distinct
digits of 6) held out. The word lists ship in ``envs_jax/data`` (made by
``scripts/make_wordlists.py``).

SAC-GLAM's world: ``playground`` (LittleZoo's Playground-Text: grasp and grow
goals over furniture, plants, herbivores and carnivores, with the goals a
state achieves for hindsight relabeling; ``playground-test`` and
``playground-heldout`` hold out kinds).

WebShop: ``webshop`` (find and buy the product an instruction asks for,
over a generated 2000-product catalog, WebShop's reward; ``webshop-small``
has 200 products, ``webshop-sample`` the packaged product-JSON sample).

The modules are imported lazily by the registry, so that ``import envs_jax``
stays cheap.
"""
