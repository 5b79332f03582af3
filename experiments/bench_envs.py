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

Every rate is the best of ``WINDOWS`` timing windows, on both sides, so that
a moment of contention from other processes does not decide a ratio. XLA may
spread one computation over several cores; the table reports how many the
JAX turn used (process CPU time / wall time), Python uses one.
"""

from __future__ import annotations

import copy
import os
import random
import time

import jax
import jax.numpy as jnp

import envs_jax
from envs_jax.reference.minesweeper import PyMineSweeper
from envs_jax.reference.sokoban import PySokoban
from envs_jax.text import TextCodec
from lamer_jax.models.tokenizer import ByteTokenizer

BATCHES = (1, 64, 1024, 8192)
STEPS_PER_CALL = 50
WINDOWS = 3


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


def _jax_play(env, codec, batch: int, upto: str):
  """jitted (initial states, call index) -> checksum of STEPS_PER_CALL steps.

  ``upto``: "step" (step only), "render" (+ ``render_symbols``, the symbol
  ids materialized) or "encode" (+ ``codec.encode``, the token ids
  materialized): a full turn.
  """
  params = env.default_params
  step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
  symbols = jax.vmap(env.render_symbols, in_axes=(0, None))
  encode = jax.vmap(codec.encode)
  width = {"step": 1, "render": env.max_symbols, "encode": codec.max_tokens}[upto]

  @jax.jit
  def play(init, call):
    def one(carry, t):
      state, ids, checksum = carry
      actions = random_actions(call, t, batch, env.num_actions)
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


def _py_game(name: str):
  """(initial game, restart function, number of actions)."""
  if name == "sokoban":
    initial = PySokoban().reset(0)

    def restart():
      # step mutates only the box set and rebinds scalars and the player.
      game = copy.copy(initial)
      game.boxes = set(initial.boxes)
      return game

    return initial, restart, len(initial.action_strings)
  initial = PyMineSweeper()
  initial.reset(0)

  def restart():
    # step mutates only the rows of revealed and rebinds scalars.
    game = copy.copy(initial)
    game.revealed = [row[:] for row in initial.revealed]
    return game

  return initial, restart, initial.height * initial.width


def _py_steps_per_sec(name: str, min_seconds: float, render: bool) -> float:
  rng = random.Random(0)
  _, restart, n_actions = _py_game(name)
  game = restart()

  def run():
    nonlocal game
    for _ in range(1000):
      _, done, _ = game.step(rng.randrange(n_actions))
      if render:
        game.render_text()
      if done:
        game = restart()
    return 1000

  return _best_rate(run, min_seconds)[0]


def _py_resets_per_sec(name: str, min_seconds: float) -> float:
  make = (lambda s: PySokoban().reset(s)) if name == "sokoban" else (
      lambda s: PyMineSweeper().reset(s))
  seed = 0

  def run():
    nonlocal seed
    seed += 1
    make(seed)
    return 1

  return _best_rate(run, min_seconds)[0]


def run(batches=BATCHES, min_seconds: float = 1.0, envs=("sokoban", "minesweeper")
        ) -> str:
  """Runs the benchmark and returns its markdown section body."""
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
  resets = ["", "| env | batch | JAX resets/s | Python resets/s | JAX / Python |",
            "|---|---:|---:|---:|---:|"]
  parts = ["", f"Where a turn's time goes, at batch {max(batches)}: wall ns per "
           "turn of step only, step + `render_symbols`, and the whole turn "
           "(+ `encode`); the differences are what rendering and encoding "
           "add. *Python, ns* is the reference's whole turn.", "",
           "| env | step ns | + render ns | + encode ns | turn ns | Python, ns "
           "| turn ns for 100x |", "|---|---:|---:|---:|---:|---:|---:|"]
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
      lines.append(
          f"| {name} | {b} | {turn:,.0f} | {py_turn:,.0f} | {turn / py_turn:,.1f}x "
          f"| {cores:.2f} | {step:,.0f} | {py_step:,.0f} | {step / py_step:,.1f}x |")
      jr = _jax_resets_per_sec(env, b, min_seconds)
      resets.append(f"| {name} | {b} | {jr:,.0f} | {py_reset:,.0f} | "
                    f"{jr / py_reset:,.1f}x |")
  load_after = os.getloadavg()
  notes = ["", f"Load average (1 min) before / after: {load_before[0]:.2f} / "
           f"{load_after[0]:.2f} (both sides run back to back in one process; "
           "other jobs may share the machine)."]
  return "\n".join(lines + resets + parts + notes) + "\n"
