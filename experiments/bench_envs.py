"""Environment throughput: batched pure-JAX games vs a plain-Python loop.

JAX side: ``jit(scan(vmap(step + render_symbols + codec.encode)))`` with random
actions; a finished attempt restarts from its saved initial state (what a trial
does), so level generation is timed separately (``reset``). Python side: the
reference implementations in ``envs_jax.reference`` playing the same rules one
game at a time (step + render_text), restarting the same way.
"""

from __future__ import annotations

import random
import time
import jax
import jax.numpy as jnp
import numpy as np

import envs_jax
from envs_jax.reference.minesweeper import PyMineSweeper
from envs_jax.reference.sokoban import PySokoban
from envs_jax.text import ByteTokenizer, TextCodec

BATCHES = (1, 64, 1024, 8192)
STEPS_PER_CALL = 50


def _tokenizer():
  """SmolLM2's tokenizer when the model package is installed, else bytes."""
  try:
    from lamer_jax.models import loading, tokenizer
    return tokenizer.tokenizer_from_gguf(loading.smollm2_gguf_path()), "smollm2"
  except (FileNotFoundError, ImportError):
    return ByteTokenizer(), "bytes"


def _jax_steps_per_sec(env, codec, batch: int, min_seconds: float) -> float:
  params = env.default_params

  @jax.jit
  def play(init, key):
    def one(carry, k):
      state, checksum = carry
      actions = jax.random.randint(k, (batch,), 0, env.num_actions)
      state, ts = jax.vmap(env.step, in_axes=(0, 0, None))(state, actions, params)
      buf = jax.vmap(codec.encode)(jax.vmap(env.render_symbols, in_axes=(0, None))(
          state, params))
      state = jax.tree.map(
          lambda i, s: jnp.where(ts.done.reshape((-1,) + (1,) * (s.ndim - 1)), i, s),
          init, state)
      return (state, checksum + buf.length.sum() + ts.reward.sum()), None

    (_, checksum), _ = jax.lax.scan(one, (init, jnp.float32(0)),
                                    jax.random.split(key, STEPS_PER_CALL))
    return checksum

  init, _ = jax.jit(lambda k: jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(k, batch), params))(jax.random.key(0))
  jax.block_until_ready(play(init, jax.random.key(0)))
  calls, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < min_seconds or calls < 2:
    jax.block_until_ready(play(init, jax.random.key(calls)))
    calls += 1
  return batch * STEPS_PER_CALL * calls / (time.perf_counter() - t0)


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
  calls, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < min_seconds or calls < 2:
    jax.block_until_ready(reset(jax.random.key(calls + 1)))
    calls += 1
  return batch * calls / (time.perf_counter() - t0)


def _py_steps_per_sec(name: str, min_seconds: float) -> float:
  rng = random.Random(0)
  if name == "sokoban":
    game = PySokoban().reset(0)
    walls, targets, boxes = game.grids()
    player = tuple(game.player)
    restart = lambda: PySokoban.from_state(walls, targets, boxes, player)
    n_actions = 84
  else:
    game = PyMineSweeper()
    game.reset(0)
    mines = [row[:] for row in game.mines]
    revealed = [row[:] for row in game.revealed]

    def restart():
      g = PyMineSweeper()
      g.from_state(mines, revealed)
      return g

    n_actions = 36
  steps, t0 = 0, time.perf_counter()
  while True:
    for _ in range(1000):
      _, done, _ = game.step(rng.randrange(n_actions))
      game.render_text()
      steps += 1
      if done:
        game = restart()
    if time.perf_counter() - t0 >= min_seconds:
      return steps / (time.perf_counter() - t0)


def _py_resets_per_sec(name: str, min_seconds: float) -> float:
  make = (lambda s: PySokoban().reset(s)) if name == "sokoban" else (
      lambda s: PyMineSweeper().reset(s))
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < min_seconds:
    make(n)
    n += 1
  return n / (time.perf_counter() - t0)


def run(batches=BATCHES, min_seconds: float = 2.0, envs=("sokoban", "minesweeper")
        ) -> str:
  """Runs the benchmark and returns its markdown section."""
  tok, tok_name = _tokenizer()
  lines = [
      f"Device: {jax.devices()[0].device_kind} ({jax.device_count()} device), "
      f"jax {jax.__version__}; tokenizer: {tok_name}. One JAX step = one turn "
      "(a Sokoban turn is up to 3 moves) + render + encode to tokens; Python = "
      "step + render_text of the reference implementation.", "",
      "| env | batch | JAX steps/s | Python steps/s | JAX / Python |",
      "|---|---:|---:|---:|---:|"]
  resets = ["", "| env | batch | JAX resets/s | Python resets/s | JAX / Python |",
            "|---|---:|---:|---:|---:|"]
  for name in envs:
    env = envs_jax.make(name)
    codec = TextCodec.for_env(tok, env, action_terminator="</action>")
    py = _py_steps_per_sec(name, min_seconds)
    py_reset = _py_resets_per_sec(name, min_seconds)
    for b in batches:
      js = _jax_steps_per_sec(env, codec, b, min_seconds)
      lines.append(f"| {name} | {b} | {js:,.0f} | {py:,.0f} | {js / py:,.1f}x |")
      jr = _jax_resets_per_sec(env, b, min_seconds)
      resets.append(f"| {name} | {b} | {jr:,.0f} | {py_reset:,.0f} | "
                    f"{jr / py_reset:,.1f}x |")
  return "\n".join(lines + resets) + "\n"
