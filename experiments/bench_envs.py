"""Environment throughput: batched pure-JAX games vs a plain-Python loop.

Two measurements per game, each in steps per second:

* **turn**: what a rollout needs from the environment every turn. JAX:
  ``jit(scan(vmap(step + render_symbols + codec.encode)))``; the token ids of
  every step are materialized (the scan carries the latest ``TokenBuffer``,
  whose ids are summed at the end, and every step's lengths are summed), so no
  part of the encoding can be optimised away. Python: the reference
  implementation's ``step`` + ``render_text`` (text only: the Python side is
  not charged for tokenizing, so the JAX side does strictly more work).
* **step only**: the same loops without rendering and encoding.

Both sides play uniformly random actions and restart a finished attempt from
its saved initial state (what a trial does); level generation is timed
separately (``reset``). JAX draws the actions from a counter-based integer
hash (a few operations per action) rather than ``jax.random`` (threefry costs
about as much as a MineSweeper step on CPU and is no part of an environment);
Python uses ``random.Random.randrange``, about 2% of its step. Each JAX step
also gets its own PRNG key (contract v2); the deterministic games ignore it, so
XLA drops the key derivation from the compiled loop. Python restarts
by a shallow copy of the initial game plus a copy of what ``step`` mutates,
the cheapest faithful restart (JAX selects the saved initial state).

ORBIT's games (``ORBIT``: rps, minesweeper-orbit, hangman, wordle,
blackjack, maze, mastermind) have references that take the task's hidden
content or chance as an input (the opponent's moves, the mine scores, the
deck, the word, the code, the maze) instead of generating it. Their Python
game is built from one fixed task, drawn once from the JAX ``reset`` and
converted to Python ints and lists; the Python side's level generation is
not what is compared, and the Python reset rate of these games is reported
as "-" (no Python level generator). RPS's opponent draws a move every round
from the task's hidden distribution (from the step key in JAX); its Python
chance is pre-drawn: ``RPS_MATCHES`` matches of moves, drawn once with
``random.Random`` from that distribution, and every restart takes the next
one. RPS is also the one game whose JAX step uses its key
(``jax.random.choice``), so its loop keeps the key derivation. Each ORBIT
game is also timed inside a continuous trial
(``envs_jax.continuous.Continuous(game, episodes=CONTINUOUS_EPISODES)``) at
the largest batch, next to the bare game, to show the wrapper's cost.

WebShop (``webshop``, 2000 generated products, 120 actions) plays uniformly
random *allowed* actions on both sides: uniform over its whole action table,
an attempt would hardly leave the search page (3 of 120 actions are allowed
there) and both sides would mostly time invalid moves. JAX picks the
allowed action of rank ``hash % count`` from the action mask (computed every
step, as a rollout does); Python draws ``Random.choice`` of the reference's
``legal_actions()`` and plays its string (the reference takes action strings),
so each side pays for its own mask. Like ORBIT's games its Python game plays
one fixed goal drawn from the JAX reset (``reset(goal)``; no Python goal
generator); its search runs the reference's own BM25 over the catalog.

Every rate is the best of ``WINDOWS`` timing windows, on both sides, so that
a moment of contention from other processes does not decide a ratio. XLA may
spread one computation over several cores; the table reports how many the
JAX turn used (process CPU time / wall time), Python uses one.
"""

from __future__ import annotations

import copy
import functools
import os
import random
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

import envs_jax
from envs_jax.continuous import Continuous
from envs_jax.reference.blackjack import PyBlackjack
from envs_jax.reference.hangman import PyHangman
from envs_jax.reference.mastermind import PyMastermind
from envs_jax.reference.maze import PyMaze
from envs_jax.reference.minesweeper import PyMineSweeper
from envs_jax.reference.rps import PyRockPaperScissors
from envs_jax.reference.sokoban import PySokoban
from envs_jax.reference.webshop import PyWebShop
from envs_jax.reference.wordle import PyWordle
from envs_jax.text import TextCodec
from lamer_jax.models.tokenizer import ByteTokenizer

BATCHES = (1, 64, 1024, 8192)
STEPS_PER_CALL = 50
WINDOWS = 3
DEFAULT_ENVS = ("sokoban", "minesweeper")
ORBIT = ("rps", "minesweeper-orbit", "hangman", "wordle", "blackjack", "maze",
         "mastermind")
# Games whose reference generates its own levels (a Python reset to time).
PY_GENERATORS = ("sokoban", "minesweeper")
# Games played with uniformly random allowed actions (see the docstring).
MASKED = ("webshop",)
SUPPORTED = DEFAULT_ENVS + ORBIT + MASKED
# Names that stand for several games (``expand_envs``).
GROUPS = {"orbit": ORBIT, "all": SUPPORTED}
CONTINUOUS_EPISODES = 3
RPS_MATCHES = 4096   # pre-drawn opponent matches (Python RPS), reused in turn


def expand_envs(names: Sequence[str]) -> tuple[str, ...]:
  """Env names with the groups ("orbit", "all") expanded, in order, deduplicated.

  Raises:
    ValueError: a name that is neither a supported game nor a group.
  """
  out: list[str] = []
  for name in names:
    name = name.strip()
    for game in GROUPS.get(name, (name,)):
      if game not in SUPPORTED:
        raise ValueError(f"bench_envs has no Python reference adapter for "
                         f"{game!r}; supported: {', '.join(SUPPORTED)} "
                         f"(groups: {', '.join(GROUPS)})")
      if game not in out:
        out.append(game)
  return tuple(out)


def _tokenizer():
  """SmolLM2's tokenizer when the model package is installed, else bytes."""
  try:
    from lamer_jax.models import loading, tokenizer
    return tokenizer.tokenizer_from_gguf(loading.smollm2_gguf_path()), "smollm2"
  except (FileNotFoundError, ImportError):
    return ByteTokenizer(), "bytes"


def random_actions(call: jax.Array, step: jax.Array, batch: int,
                   num_actions: int) -> jax.Array:
  """int32[batch] actions, uniform up to a modulo bias below 1e-7.

  A murmur3-style finalizer of (call, step, row): cheap, stateless and well
  mixed, which is all a benchmark's action source needs.
  """
  x = (jnp.arange(batch, dtype=jnp.uint32) * jnp.uint32(0x9E3779B1)
       + jnp.asarray(step, jnp.uint32) * jnp.uint32(0x85EBCA77)
       + jnp.asarray(call, jnp.uint32) * jnp.uint32(0xC2B2AE3D))
  x ^= x >> 16
  x *= jnp.uint32(0x7FEB352D)
  x ^= x >> 15
  x *= jnp.uint32(0x846CA68B)
  x ^= x >> 16
  return (x % jnp.uint32(num_actions)).astype(jnp.int32)


def _best_rate(run, min_seconds: float) -> tuple[float, float]:
  """(best units per second over WINDOWS windows, cores used in that window).

  ``run()`` does some work and returns how many units it did; a window calls
  it for at least ``min_seconds`` and at least twice.
  """
  best = (0.0, 0.0)
  for _ in range(WINDOWS):
    units, calls = 0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < min_seconds or calls < 2:
      units += run()
      calls += 1
    wall = time.perf_counter() - t0
    best = max(best, (units / wall, (time.process_time() - c0) / wall))
  return best


def masked_actions(call: jax.Array, step: jax.Array, allowed: jax.Array) -> jax.Array:
  """int32[batch] actions, uniform among each row's allowed ones (bool[batch,
  A]; a row with none gets action 0): the allowed action of rank
  ``hash % count``."""
  batch = allowed.shape[0]
  count = allowed.sum(axis=1)
  rank = random_actions(call, step, batch, 1 << 30) % jnp.maximum(count, 1)
  return jnp.argmax(jnp.cumsum(allowed, axis=1) > rank[:, None], axis=1).astype(
      jnp.int32) * (count > 0)


def _jax_play(env, codec, batch: int, upto: str):
  """jitted (initial states, call index) -> checksum of STEPS_PER_CALL steps.

  ``upto``: "step" (step only), "render" (+ ``render_symbols``, the symbol
  ids materialized) or "encode" (+ ``codec.encode``, the token ids
  materialized): a full turn.
  """
  params = env.default_params
  masked = env.name in MASKED
  mask = jax.vmap(env.action_mask, in_axes=(0, None))
  step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
  symbols = jax.vmap(env.render_symbols, in_axes=(0, None))
  encode = jax.vmap(codec.encode)
  width = {"step": 1, "render": env.max_symbols, "encode": codec.max_tokens}[upto]

  @jax.jit
  def play(init, call):
    def one(carry, t):
      state, ids, checksum = carry
      actions = (masked_actions(call, t, mask(state, params)) if masked
                 else random_actions(call, t, batch, env.num_actions))
      keys = jax.random.split(
          jax.random.fold_in(jax.random.fold_in(jax.random.key(0), call), t), batch)
      state, ts = step(keys, state, actions, params)
      checksum = checksum + ts.reward.sum()
      if upto == "render":
        ids = symbols(state, params)
      elif upto == "encode":
        buf = encode(symbols(state, params))
        ids, checksum = buf.ids, checksum + buf.length.sum()
      restart = lambda i, s: jnp.where(
          ts.done.reshape((-1,) + (1,) * (s.ndim - 1)), i, s)
      return (jax.tree.map(restart, init, state), ids, checksum), None

    ids = jnp.zeros((batch, width), jnp.int32)
    (_, ids, checksum), _ = jax.lax.scan(
        one, (init, ids, jnp.float32(0)), jnp.arange(STEPS_PER_CALL))
    return checksum + ids.sum()

  return play


def _jax_steps_per_sec(env, codec, batch: int, min_seconds: float,
                       upto: str) -> tuple[float, float]:
  """(steps per second, cores used)."""
  params = env.default_params
  init, _ = jax.jit(lambda k: jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(k, batch), params))(jax.random.key(0))
  play = _jax_play(env, codec, batch, upto)
  jax.block_until_ready(play(init, 0))
  calls = [0]

  def run():
    calls[0] += 1
    jax.block_until_ready(play(init, calls[0]))
    return batch * STEPS_PER_CALL

  return _best_rate(run, min_seconds)


def _jax_resets_per_sec(env, batch: int, min_seconds: float) -> float:
  params = env.default_params
  def checksum(k):
    # Reduce every leaf of the new states so that no part of level
    # generation can be optimised away.
    states, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k, batch),
                                                       params)
    return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(states))

  reset = jax.jit(checksum)
  jax.block_until_ready(reset(jax.random.key(0)))
  calls = [0]

  def run():
    calls[0] += 1
    jax.block_until_ready(reset(jax.random.key(calls[0])))
    return batch

  return _best_rate(run, min_seconds)[0]


@functools.lru_cache(maxsize=None)
def _jax_task(name: str) -> Any:
  """(env, initial state, params) of one task of ``name``: the JAX reset at
  key 0, the state and params fetched to the host (numpy)."""
  env = envs_jax.make(name)
  state, _ = jax.jit(env.reset)(jax.random.key(0), env.default_params)
  return env, jax.device_get(state), jax.device_get(env.default_params)


def _py_game(name: str) -> tuple[Any, Callable[[], Any], int]:
  """(initial game, restart function, number of actions).

  ``restart()`` returns a fresh attempt at the initial game: a shallow copy
  plus a copy of what the reference's ``step`` mutates in place (everything
  else it only rebinds). Every reference's ``step`` returns
  ``(reward, done, ...)``, so the loop reads ``done`` at index 1.
  """
  if name == "sokoban":
    initial = PySokoban().reset(0)

    def restart():
      # step mutates only the box set and rebinds scalars and the player.
      game = copy.copy(initial)
      game.boxes = set(initial.boxes)
      return game

    return initial, restart, len(initial.action_strings)
  if name == "minesweeper":
    initial = PyMineSweeper()
    initial.reset(0)

    def restart():
      # step mutates only the rows of revealed and rebinds scalars.
      game = copy.copy(initial)
      game.revealed = [row[:] for row in initial.revealed]
      return game

    return initial, restart, initial.height * initial.width
  if name == "webshop":
    env, task, _ = _jax_task(name)
    initial = PyWebShop(env.cat.products, env.max_turns, env.reward_mode,
                        env.reward_scale)
    initial.reset(env.goal_of(task))

    def restart():
      # step mutates only the selected options (a dict) and rebinds the rest.
      game = copy.copy(initial)
      game.selected = dict(initial.selected)
      return game

    if len(initial.actions) != env.num_actions:
      raise AssertionError(f"webshop: the reference has {len(initial.actions)} "
                           f"actions, the JAX game {env.num_actions}")
    return initial, restart, env.num_actions
  if name not in ORBIT:
    raise ValueError(f"no Python reference adapter for {name!r}")

  env, task, params = _jax_task(name)
  win = float(params.reward_win) if hasattr(params, "reward_win") else None
  if name == "rps":
    initial = PyRockPaperScissors(env.max_turns, win)
    initial.reset([])
    # The opponent's chance, pre-drawn from the task's hidden distribution.
    rng = random.Random(0)
    probs = [float(x) for x in task.probs]
    matches = [rng.choices(range(3), weights=probs, k=env.max_turns)
               for _ in range(RPS_MATCHES)]
    count = [0]

    def restart():
      # step rebinds scalars and ``last`` only; each match gets the next
      # pre-drawn moves.
      game = copy.copy(initial)
      count[0] += 1
      game.opponent_moves = matches[count[0] % RPS_MATCHES]
      return game

    n_actions = 3
  elif name == "minesweeper-orbit":
    initial = PyMineSweeper(
        env.height, env.width, env.num_mines, env.max_turns,
        float(params.reward_invalid), float(params.reward_reveal),
        float(params.reward_cascade), float(params.reward_win),
        float(params.reward_mine), first_click=env.first_click,
        safe_zone=env.safe_zone)
    initial.reset_unplaced(task.mine_scores.tolist())

    def restart():
      # step mutates only the rows of revealed and rebinds the rest (the
      # first click's placement rebinds mines, counts and revealed).
      game = copy.copy(initial)
      game.revealed = [row[:] for row in initial.revealed]
      return game

    n_actions = initial.height * initial.width
  elif name == "hangman":
    initial = PyHangman(env.words, env.max_turns, win)
    initial.reset(env.words[int(task.word)])

    def restart():
      # step appends to guessed and tried; the rest are scalars.
      game = copy.copy(initial)
      game.guessed = list(initial.guessed)
      game.tried = list(initial.tried)
      return game

    n_actions = 26 + len(initial.words)
  elif name == "wordle":
    initial = PyWordle(env.words, env.max_turns, win)
    initial.reset(env.words[int(task.answer)])

    def restart():
      # step appends to rows; the rest are scalars.
      game = copy.copy(initial)
      game.rows = list(initial.rows)
      return game

    n_actions = len(initial.words)
  elif name == "blackjack":
    initial = PyBlackjack(env.max_turns, win)
    initial.reset(task.deck.tolist())

    def restart():
      # step appends to drawn and hand; deck, dealer and slots are read only.
      game = copy.copy(initial)
      game.drawn = list(initial.drawn)
      game.hand = list(initial.hand)
      return game

    n_actions = 49   # 48 hit slots + stand
  elif name == "maze":
    initial = PyMaze(env.max_turns, win)
    initial.reset(task.walls.tolist(), tuple(int(x) for x in task.position),
                  tuple(int(x) for x in task.goal))

    def restart():
      # step rebinds the position, the last move and scalars; walls are read only.
      return copy.copy(initial)

    n_actions = 4
  else:  # mastermind
    initial = PyMastermind(env.max_turns, env.code_length, env.num_digits, win)
    initial.reset(task.code.tolist())

    def restart():
      # step appends to history; won is rebound.
      game = copy.copy(initial)
      game.history = list(initial.history)
      return game

    n_actions = len(initial.codes)
  if n_actions != env.num_actions:
    raise AssertionError(f"{name}: the reference has {n_actions} actions, the "
                         f"JAX game {env.num_actions}")
  return initial, restart, n_actions


def _py_steps_per_sec(name: str, min_seconds: float, render: bool) -> float:
  rng = random.Random(0)
  _, restart, n_actions = _py_game(name)
  game = restart()
  # WebShop's reference plays action strings, drawn among the allowed ones.
  draw = ((lambda: rng.choice(game.legal_actions())) if name in MASKED
          else (lambda: rng.randrange(n_actions)))

  def run():
    nonlocal game
    for _ in range(1000):
      done = game.step(draw())[1]
      if render:
        game.render_text()
      if done:
        game = restart()
    return 1000

  return _best_rate(run, min_seconds)[0]


def _py_resets_per_sec(name: str, min_seconds: float) -> float | None:
  """Level generations per second; None for a reference without a generator."""
  if name not in PY_GENERATORS:
    return None
  make = (lambda s: PySokoban().reset(s)) if name == "sokoban" else (
      lambda s: PyMineSweeper().reset(s))
  seed = 0

  def run():
    nonlocal seed
    seed += 1
    make(seed)
    return 1

  return _best_rate(run, min_seconds)[0]


def _rate(x: float | None) -> str:
  return "-" if x is None else f"{x:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
  return "-" if a is None or b is None else f"{a / b:,.1f}x"


def run(batches=BATCHES, min_seconds: float = 1.0, envs=DEFAULT_ENVS) -> str:
  """Runs the benchmark and returns its markdown section body.

  Args:
    batches: JAX batch sizes.
    min_seconds: minimum length of each timing window.
    envs: game names (``SUPPORTED``) and groups (``GROUPS``: "orbit", "all").
  """
  envs = expand_envs(envs)
  tok, tok_name = _tokenizer()
  load_before = os.getloadavg()
  lines = [
      f"Device: {jax.devices()[0].device_kind} ({jax.device_count()} device), "
      f"jax {jax.__version__}; tokenizer: {tok_name}. **Turn**: JAX = step + "
      "`render_symbols` + `TextCodec.encode` to token ids (every step's ids "
      "materialized), Python = step + `render_text` of the plain-Python "
      "reference (no tokenization: the JAX side does strictly more). **Step "
      "only**: without rendering and encoding. A Sokoban step is a turn of up "
      "to 3 moves. Random actions; a finished attempt restarts from its saved "
      "initial state on both sides; every rate is the best of "
      f"{WINDOWS} windows of {min_seconds:g} s (see `experiments/bench_envs.py`). "
      "XLA may spread one computation over several cores: *JAX cores* is the "
      "process CPU time over the wall time of the JAX turn (Python: 1).", "",
      "| env | batch | JAX turns/s | Python turns/s | JAX / Python | JAX cores "
      "| JAX steps/s, step only | Python steps/s, step only | JAX / Python |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  orbit = [name for name in envs if name in ORBIT]
  if orbit:
    lines[0] += (
        " ORBIT's games: the Python game plays one fixed task drawn from the "
        "JAX reset (its reference takes the task as an input; the JAX side "
        "plays a different task per row); RPS's Python opponent plays "
        f"{RPS_MATCHES} matches of moves pre-drawn from that task's "
        "distribution, JAX draws every move from its step key.")
  masked = [name for name in envs if name in MASKED]
  if masked:
    lines[0] += (
        f" {', '.join(masked)}: uniformly random *allowed* actions on both sides "
        "(JAX: from the action mask, computed every step; Python: a choice among "
        "the reference's legal action strings), one fixed goal on the Python "
        "side, drawn from the JAX reset.")
  resets = ["", "| env | batch | JAX resets/s | Python resets/s | JAX / Python |",
            "|---|---:|---:|---:|---:|"]
  if orbit or masked:
    resets[0:0] = ["", "Python resets/s is \"-\" for the games whose "
                   "reference has no level generator (it takes the task as an "
                   "input)."]
  parts = ["", f"Where a turn's time goes, at batch {max(batches)}: wall ns per "
           "turn of step only, step + `render_symbols`, and the whole turn "
           "(+ `encode`); the differences are what rendering and encoding "
           "add. *Python, ns* is the reference's whole turn.", "",
           "| env | step ns | + render ns | + encode ns | turn ns | Python, ns "
           "| turn ns for 100x |", "|---|---:|---:|---:|---:|---:|---:|"]
  k = CONTINUOUS_EPISODES
  continuous = [
      "", f"ORBIT's games inside a continuous trial "
      f"(`Continuous(game, episodes={k})`: {k} episodes of one task in one "
      f"attempt; its rendering is twice the game's plus 4 symbols), at batch "
      f"{max(batches)}, next to the bare game: the wrapper's cost per turn.", "",
      "| env | batch | JAX turns/s, bare | JAX turns/s, continuous | continuous "
      "/ bare | JAX steps/s step only, bare | JAX steps/s step only, "
      "continuous | continuous / bare |",
      "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name in envs:
    env = envs_jax.make(name)
    codec = TextCodec.for_env(tok, env, action_terminator="</action>")
    py_turn = _py_steps_per_sec(name, min_seconds, render=True)
    py_step = _py_steps_per_sec(name, min_seconds, render=False)
    py_reset = _py_resets_per_sec(name, min_seconds)
    for b in batches:
      turn, cores = _jax_steps_per_sec(env, codec, b, min_seconds, upto="encode")
      step, _ = _jax_steps_per_sec(env, codec, b, min_seconds, upto="step")
      if b == max(batches):
        rendered, _ = _jax_steps_per_sec(env, codec, b, min_seconds, upto="render")
        ns = lambda rate: 1e9 / rate
        parts.append(
            f"| {name} | {ns(step):.0f} | {ns(rendered) - ns(step):.0f} | "
            f"{ns(turn) - ns(rendered):.0f} | {ns(turn):.0f} | {ns(py_turn):,.0f} "
            f"| {ns(py_turn) / 100:.0f} |")
        if name in ORBIT:
          wrapped = Continuous(env, episodes=k)
          wcodec = TextCodec.for_env(tok, wrapped, action_terminator="</action>")
          wturn, _ = _jax_steps_per_sec(wrapped, wcodec, b, min_seconds,
                                        upto="encode")
          wstep, _ = _jax_steps_per_sec(wrapped, wcodec, b, min_seconds,
                                        upto="step")
          continuous.append(
              f"| {wrapped.name} | {b} | {turn:,.0f} | {wturn:,.0f} | "
              f"{wturn / turn:.2f}x | {step:,.0f} | {wstep:,.0f} | "
              f"{wstep / step:.2f}x |")
      lines.append(
          f"| {name} | {b} | {turn:,.0f} | {py_turn:,.0f} | {turn / py_turn:,.1f}x "
          f"| {cores:.2f} | {step:,.0f} | {py_step:,.0f} | {step / py_step:,.1f}x |")
      jr = _jax_resets_per_sec(env, b, min_seconds)
      resets.append(f"| {name} | {b} | {jr:,.0f} | {_rate(py_reset)} | "
                    f"{_ratio(jr, py_reset)} |")
  load_after = os.getloadavg()
  notes = ["", f"Load average (1 min) before / after: {load_before[0]:.2f} / "
           f"{load_after[0]:.2f} (both sides run back to back in one process; "
           "other jobs may share the machine)."]
  return "\n".join(lines + resets + parts + (continuous if orbit else [])
                   + notes) + "\n"
