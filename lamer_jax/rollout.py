"""Trials with reflection, rolled out inside one jitted function.

Shapes: B tasks x G trials per task = R rows (task-major: row r plays task
r // G), N attempts per trial, T turns per attempt, C slots per attempt's row.

A trial is N attempts at the same task, each restarting from the task's saved
initial state; it stops at its first success (later attempts are masked). After
a failed attempt that is not the last, the model writes a reflection; the next
attempt's prompt carries the memory (``reflection_only``, ``history_only``,
``history_and_reflection``; ``none`` gives independent attempts, the
single-episode baselines' evaluation). Within an attempt the context only
grows (the KV cache is reused); each new attempt re-prefills its prefix.

Each attempt yields one training row of C token slots laid out as described in
``lamer_jax.prompts``; the row records exactly what the model saw (tokens,
RoPE positions, which slots are real), so the loss can recompute log-probs with
one teacher-forced forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.core import Environment
from lamer_jax import sharding
from lamer_jax.models import llama, sampling
from lamer_jax.prompts import ContextLayout

NO_LOSS = -1  # token_turn_ids value of slots that carry no loss


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Static settings of a rollout (hashable)."""

  num_tasks: int = 2            # B
  group_size: int = 2           # G trials per task
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  # Reward of a turn whose free-form action is not an allowed candidate (the
  # game does not move); only the "free" action mode produces such turns.
  invalid_penalty: float = -0.5

  @property
  def num_rows(self) -> int:
    return self.num_tasks * self.group_size

  @property
  def sampling(self) -> sampling.SamplingConfig:
    return sampling.SamplingConfig(temperature=self.temperature, top_k=self.top_k,
                                   top_p=self.top_p)


@struct.dataclass
class Trajectory:
  """Everything a rollout produced. Leading axes [R, N] unless noted.

  Attributes:
    tokens, positions: int32[R, N, C] the attempt's row and its RoPE positions.
    token_mask: bool[R, N, C] real slots (False for holes and padding).
    loss_mask: bool[R, N, C] generated tokens (actions, reflections).
    logp_old: float32[R, N, C] behaviour log-probs of generated tokens.
    token_turn_ids: int32[R, N, C] turn t of action tokens, T for reflection
      tokens, -1 elsewhere.
    actions: int32[R, N, T] chosen candidate per turn.
    action_allowed: bool[R, N, T, A] the action mask the turn was decoded under.
    rewards: float32[R, N, T]; turn_valid, invalid: bool[R, N, T].
    state_keys: uint32[R, N, T] anchor-state id before each turn (GiGPO).
    won, attempt_valid, reflected: bool[R, N].
  """

  tokens: jax.Array
  positions: jax.Array
  token_mask: jax.Array
  loss_mask: jax.Array
  logp_old: jax.Array
  token_turn_ids: jax.Array
  actions: jax.Array
  action_allowed: jax.Array
  rewards: jax.Array
  turn_valid: jax.Array
  invalid: jax.Array
  state_keys: jax.Array
  won: jax.Array
  attempt_valid: jax.Array
  reflected: jax.Array


@struct.dataclass
class _Ctx:
  cache: llama.KVCache
  last_logits: jax.Array   # [R, V]
  next_pos: jax.Array      # [R]


def task_key(seed: jax.Array) -> jax.Array:
  """The level-generation key of task ``seed`` (same seed, same level)."""
  return jax.random.fold_in(jax.random.key(0), seed)


def _const(piece, rows: int) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(piece, jnp.int32), (rows, len(piece)))


def _feed(params, mcfg, ctx: _Ctx, tokens, mask):
  """Writes a chunk [R, L] into the cache. Returns (ctx, positions [R, L])."""
  csum = jnp.cumsum(mask.astype(jnp.int32), axis=1)
  positions = ctx.next_pos[:, None] + csum - 1
  positions = jnp.where(mask, positions, 0)
  _, hidden, cache = llama.forward(params, mcfg, tokens, positions, ctx.cache, mask,
                                   compute_logits=False)
  length = tokens.shape[1]
  last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)
  h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  logits = llama.lm_head(params, mcfg, h_last)
  any_real = jnp.any(mask, axis=1)
  ctx = _Ctx(cache=cache,
             last_logits=jnp.where(any_real[:, None], logits, ctx.last_logits),
             next_pos=ctx.next_pos + csum[:, -1])
  return ctx, positions


def _think(params, mcfg, ctx: _Ctx, layout: ContextLayout, key, active, samp):
  """Free thinking tokens after "<think>", up to ``layout.think_tokens``.

  Returns (ctx, the span's (tokens, positions, real, generated, log-probs),
  bool[R] whether the row closed its thinking with "</think>").
  """
  gen = sampling.generate(
      params, mcfg, key, ctx.cache, ctx.last_logits, ctx.next_pos,
      max_new_tokens=layout.think_tokens, sampling=samp,
      stop_tokens=(layout.eos_id,), stop_sequence=layout.think_stop,
      pad_id=layout.pad_id, active=active)
  return _generated_span(ctx, gen, active, layout.pad_id) + (
      gen.stopped & active & ~_ends_with(gen, layout.eos_id),)


def _ends_with(gen: sampling.GenerateOutput, token: int) -> jax.Array:
  """bool[R]: the row's last generated token is ``token``."""
  last = jnp.take_along_axis(gen.tokens, jnp.maximum(gen.lengths - 1, 0)[:, None],
                             axis=1)[:, 0]
  return (gen.lengths > 0) & (last == token)


def _generated_span(ctx: _Ctx, gen: sampling.GenerateOutput, active, pad_id):
  mask = gen.mask & active[:, None]
  tokens = jnp.where(mask, gen.tokens, pad_id)
  span = (tokens, _span_positions(ctx.next_pos, mask), mask, mask,
          jnp.where(mask, gen.logprobs, 0.0))
  ctx = _Ctx(cache=gen.cache, last_logits=gen.last_logits,
             next_pos=gen.next_positions)
  return ctx, span


def _free_action(params, mcfg, ctx: _Ctx, layout: ContextLayout, key, active,
                 allowed, samp):
  """The "free" action mode: the model writes up to ``action_len`` tokens
  after "<action>" (stopping at "</action>" or end of turn), and the span is
  parsed by exact token match against the candidate table (actions followed
  by "</action>", tokenized canonically).

  Returns (ctx, span, int32[R] matched candidate (0 if none), bool[R] the
  span is an allowed candidate).
  """
  codec = layout.codec
  gen = sampling.generate(
      params, mcfg, key, ctx.cache, ctx.last_logits, ctx.next_pos,
      max_new_tokens=layout.action_len, sampling=samp,
      stop_tokens=(layout.eos_id,), stop_sequence=layout.action_stop,
      pad_id=layout.pad_id, active=active)
  ctx, span = _generated_span(ctx, gen, active, layout.pad_id)
  index, parsed = sampling.match_action(
      span[0], span[2], jnp.asarray(codec.action_tokens),
      jnp.asarray(codec.action_lengths), allowed)
  return ctx, span, index, parsed


def _span_positions(next_pos, mask):
  """RoPE positions of a generated span whose real tokens form a prefix."""
  return jnp.where(mask, next_pos[:, None] + jnp.cumsum(mask, axis=1) - 1, 0)


def _piece_mask(length: int, on, rows: int):
  return jnp.broadcast_to(jnp.asarray(on)[..., None], (rows, length))


def _store(buf, slot, on, value):
  """buf[:, slot] = value on rows where ``on``. buf: [R, M, ...]; on: bool[R]."""
  old = buf[:, slot]
  on = on.reshape((-1,) + (1,) * (old.ndim - 1))
  return buf.at[:, slot].set(jnp.where(on, value, old))


def _memory_chunk(layout: ContextLayout, attempt, memory_refl, memory_refl_mask,
                  memory_hist, memory_hist_mask, memory_valid, rows: int):
  """Tokens and mask of the prefix: system, memory entries, system close."""
  parts, masks = [_const(layout.prefix_open, rows)], [
      jnp.ones((rows, len(layout.prefix_open)), jnp.bool_)]
  steps = jnp.arange(layout.memory_headers.shape[1])
  hsteps = jnp.arange(layout.history_headers.shape[1])
  for k in range(layout.num_attempts - 1):
    on = memory_valid[:, k] & (k < attempt)  # [R]
    if layout.uses_reflection:
      parts.append(_const(layout.memory_headers[k], rows))
      masks.append(on[:, None] & (steps < layout.memory_header_lengths[k])[None])
      parts.append(memory_refl[:, k])
      masks.append(memory_refl_mask[:, k] & on[:, None])
    if layout.uses_history:
      parts.append(_const(layout.history_headers[k], rows))
      masks.append(on[:, None] & (hsteps < layout.history_header_lengths[k])[None])
      parts.append(memory_hist[:, k])
      masks.append(memory_hist_mask[:, k] & on[:, None])
    if layout.memory_entry_len:
      parts.append(_const(layout.memory_sep, rows))
      masks.append(_piece_mask(len(layout.memory_sep), on, rows))
  parts.append(_const(layout.prefix_close, rows))
  masks.append(jnp.ones((rows, len(layout.prefix_close)), jnp.bool_))
  return jnp.concatenate(parts, axis=1), jnp.concatenate(masks, axis=1)


def rollout(params: llama.Params, key: jax.Array, env_params: Any, *,
            env: Environment, mcfg: llama.ModelConfig, layout: ContextLayout,
            cfg: RolloutConfig, task_seeds: jax.Array | None = None,
            mesh: jax.sharding.Mesh | None = None) -> Trajectory:
  """Plays B tasks x G trials x N attempts x T turns. Pure and jittable.

  ``env``, ``mcfg``, ``layout`` and ``cfg`` are static (close over them or mark
  them static). Every row of a task group starts from the same level; the
  sampling noise differs per row.

  Args:
    params: model parameters.
    key: PRNG key for sampling (and for the tasks when ``task_seeds`` is None).
    env_params: the environment's parameters.
    task_seeds: optional int32[B]: task b is the level generated from seed
      ``task_seeds[b]``, so train and held-out task sets can be disjoint.
    mesh: optional device mesh (``lamer_jax.sharding``): the R rows are split
      over its ("data", "fsdp") axes. None: no sharding constraint at all.
  """
  rows, n_att, n_turns = cfg.num_rows, layout.num_attempts, layout.num_turns
  codec = layout.codec
  table_t = jnp.asarray(codec.action_tokens)
  table_l = jnp.asarray(codec.action_lengths)
  disp_t = jnp.asarray(layout.display_tokens)
  disp_l = jnp.asarray(layout.display_lengths)
  ldisp = disp_t.shape[1]
  r_len = layout.reflection_tokens
  n_mem = max(1, n_att - 1)
  samp = cfg.sampling
  vocab = mcfg.vocab_size

  k_task, k_roll = jax.random.split(key)
  if task_seeds is None:
    keys = jax.random.split(k_task, cfg.num_tasks)
  else:
    keys = jax.vmap(task_key)(task_seeds)
  task_keys = jnp.repeat(keys, cfg.group_size, axis=0)
  init_state, _ = jax.vmap(env.reset, in_axes=(0, None))(task_keys, env_params)
  render = jax.vmap(lambda s: codec.encode(env.render_symbols(s, env_params)))
  init_obs = render(init_state)
  # [sharding] rows split over the mesh's data axes; the per-row state the
  # attempt and turn loops carry inherits this layout (no-op without a mesh).
  init_state, init_obs = sharding.constrain_rows((init_state, init_obs), mesh)

  def attempt_fn(carry, inputs):
    # [sharding] keep the memory carried across attempts split by rows.
    carry = sharding.constrain_rows(carry, mesh)
    over, mem_r, mem_rm, mem_h, mem_hm, mem_v = carry
    attempt, akey = inputs
    attempt_on = ~over                                           # [R]
    cache = llama.init_cache(mcfg, rows, layout.context_len)
    cache = sharding.constrain_kv_cache(cache, mesh)  # [sharding] no-op w/o mesh
    ctx = _Ctx(cache=cache,
               last_logits=jnp.zeros((rows, vocab), jnp.float32),
               next_pos=jnp.zeros((rows,), jnp.int32))
    p_tok, p_mask = _memory_chunk(layout, attempt, mem_r, mem_rm, mem_h, mem_hm,
                                  mem_v, rows)
    p_mask = p_mask & attempt_on[:, None]
    ctx, p_pos = _feed(params, mcfg, ctx, p_tok, p_mask)

    def play_turn(tc, t):
      ctx, state, active = tc
      obs = render(state)
      chunk = jnp.concatenate([_const(layout.turn_end, rows),
                               _const(layout.turn_open, rows), obs.ids,
                               _const(layout.turn_close, rows)], axis=1)
      cmask = jnp.concatenate([
          _piece_mask(len(layout.turn_end), active & (t > 0), rows),
          _piece_mask(len(layout.turn_open), active, rows),
          obs.mask & active[:, None],
          _piece_mask(len(layout.turn_close), active, rows)], axis=1)
      ctx, c_pos = _feed(params, mcfg, ctx, chunk, cmask)
      # Spans of the turn's row, in order: (tokens, positions, real, generated,
      # behaviour log-probs).
      spans = [(chunk, c_pos, cmask, jnp.zeros_like(cmask),
                jnp.zeros(cmask.shape, jnp.float32))]
      # Keys: fold_in(akey, t) for the action (as without thinking),
      # n_turns for the reflection, n_turns + 1 + t for thinking.
      k_act = jax.random.fold_in(akey, t)
      k_think = jax.random.fold_in(akey, n_turns + 1 + t)
      if layout.thinks:
        ctx, span, closed = _think(params, mcfg, ctx, layout, k_think, active, samp)
        spans.append(span)
        # "</think>" unless the model wrote it, then "\n<action>".
        tail = jnp.concatenate([_const(layout.think_close, rows),
                                _const(layout.action_open, rows)], axis=1)
        tmask = jnp.concatenate([
            _piece_mask(len(layout.think_close), active & ~closed, rows),
            _piece_mask(len(layout.action_open), active, rows)], axis=1)
        ctx, t_pos = _feed(params, mcfg, ctx, tail, tmask)
        spans.append((tail, t_pos, tmask, jnp.zeros_like(tmask),
                      jnp.zeros(tmask.shape, jnp.float32)))
      allowed = jax.vmap(env.action_mask, in_axes=(0, None))(state, env_params)
      allowed = allowed & active[:, None]
      if layout.action_mode == "free":
        ctx, span, index, parsed = _free_action(params, mcfg, ctx, layout, k_act,
                                                active, allowed, samp)
      else:
        out = sampling.decode_action(
            params, mcfg, k_act, ctx.cache, ctx.last_logits, ctx.next_pos,
            table_t, table_l, allowed, samp, layout.pad_id)
        span = (out.tokens, _span_positions(ctx.next_pos, out.mask), out.mask,
                out.mask, out.token_logprobs)
        ctx = _Ctx(cache=out.cache, last_logits=out.last_logits,
                   next_pos=out.next_positions)
        index, parsed = out.index, active
      spans.append(span)
      skey = jax.vmap(env.state_key)(state)
      new_state, ts = jax.vmap(env.step, in_axes=(0, 0, None))(state, index,
                                                               env_params)
      # A free-form action that names no allowed candidate leaves the game
      # as it was, costs cfg.invalid_penalty and counts as an invalid action.
      moved = active & parsed
      state = jax.tree.map(lambda n, o: jnp.where(
          moved.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new_state, state)
      reward = jnp.where(parsed, ts.reward, cfg.invalid_penalty)
      record = dict(
          tokens=jnp.concatenate([s[0] for s in spans], axis=1),
          positions=jnp.concatenate([s[1] for s in spans], axis=1),
          token_mask=jnp.concatenate([s[2] for s in spans], axis=1),
          loss_mask=jnp.concatenate([s[3] for s in spans], axis=1),
          logp_old=jnp.concatenate([s[4] for s in spans], axis=1),
          action=index, allowed=allowed,
          reward=jnp.where(active, reward, 0.0), valid=active,
          invalid=active & (ts.invalid | ~parsed), won=moved & ts.won,
          state_key=skey, parsed=moved)
      active = active & ~(moved & ts.done)
      return (ctx, state, active), record

    tc0 = (ctx, init_state, attempt_on)
    record_shapes = jax.eval_shape(lambda c: play_turn(c, 0)[1], tc0)

    def turn_fn(tc, t):
      # A turn no row plays (every attempt in the batch has ended: solved,
      # lost, or masked) is skipped at run time; its record is all holes,
      # which is what playing it fully masked would record.
      def skip(tc):
        return tc, {k: jnp.full(s.shape, layout.pad_id if k == "tokens" else 0,
                                s.dtype) for k, s in record_shapes.items()}
      return jax.lax.cond(jnp.any(tc[2]), lambda c: play_turn(c, t), skip, tc)

    (ctx, _, _), rec = jax.lax.scan(turn_fn, tc0, jnp.arange(n_turns))
    rec = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rec)   # [R, T, ...]
    won = jnp.any(rec["won"], axis=1)
    turn_ids = jnp.where(rec["loss_mask"], jnp.arange(n_turns)[None, :, None],
                         NO_LOSS)

    def flat(x):
      return x.reshape(rows, -1)

    row = dict(tokens=[p_tok, flat(rec["tokens"])],
               positions=[p_pos, flat(rec["positions"])],
               token_mask=[p_mask, flat(rec["token_mask"])],
               loss_mask=[jnp.zeros_like(p_mask), flat(rec["loss_mask"])],
               logp_old=[jnp.zeros(p_mask.shape, jnp.float32), flat(rec["logp_old"])],
               token_turn_ids=[jnp.full(p_mask.shape, NO_LOSS, jnp.int32),
                               flat(turn_ids)])

    # The reflection, after a failed attempt that is not the last.
    reflect = attempt_on & ~won & (attempt < n_att - 1)
    slot = jnp.clip(attempt, 0, n_mem - 1)  # memory entry this attempt fills
    if layout.uses_reflection:
      chunk = jnp.concatenate([_const(layout.turn_end, rows),
                               _const(layout.reflect_open, rows), init_obs.ids,
                               _const(layout.reflect_close, rows)], axis=1)
      cmask = jnp.concatenate([
          _piece_mask(len(layout.turn_end), reflect, rows),
          _piece_mask(len(layout.reflect_open), reflect, rows),
          init_obs.mask & reflect[:, None],
          _piece_mask(len(layout.reflect_close), reflect, rows)], axis=1)
      ctx, c_pos = _feed(params, mcfg, ctx, chunk, cmask)
      gen = sampling.generate(
          params, mcfg, jax.random.fold_in(akey, n_turns), ctx.cache,
          ctx.last_logits, ctx.next_pos, max_new_tokens=r_len, sampling=samp,
          stop_tokens=(layout.eos_id,), pad_id=layout.pad_id, active=reflect)
      # Rows that write no reflection generate nothing (masked again below
      # for clarity).
      g_mask = gen.mask & reflect[:, None]
      g_tok = jnp.where(g_mask, gen.tokens, layout.pad_id)
      g_lp = jnp.where(g_mask, gen.logprobs, 0.0)
      g_pos = _span_positions(ctx.next_pos, g_mask)
      row["tokens"] += [chunk, g_tok]
      row["positions"] += [c_pos, g_pos]
      row["token_mask"] += [cmask, g_mask]
      row["loss_mask"] += [jnp.zeros_like(cmask), g_mask]
      row["logp_old"] += [jnp.zeros(cmask.shape, jnp.float32), g_lp]
      row["token_turn_ids"] += [jnp.full(cmask.shape, NO_LOSS, jnp.int32),
                                jnp.where(g_mask, n_turns, NO_LOSS)]
      mem_r = _store(mem_r, slot, reflect, g_tok)
      mem_rm = _store(mem_rm, slot, reflect, g_mask)
    if layout.uses_history:
      # "{action}; " for every turn whose action was played, each in a
      # fixed-width slot (an unparsable free-form action shows nothing).
      d_tok = disp_t[rec["action"]].reshape(rows, -1)                # [R, T*Ld]
      d_mask = ((jnp.arange(ldisp)[None, None, :] < disp_l[rec["action"]][..., None])
                & rec["parsed"][..., None]).reshape(rows, -1)
      mem_h = _store(mem_h, slot, reflect, d_tok)
      mem_hm = _store(mem_hm, slot, reflect, d_mask)
    mem_v = _store(mem_v, slot, reflect, reflect)

    row = {k: jnp.concatenate(v, axis=1) for k, v in row.items()}
    out = dict(row, actions=rec["action"], action_allowed=rec["allowed"],
               rewards=rec["reward"], turn_valid=rec["valid"],
               invalid=rec["invalid"], state_keys=rec["state_key"], won=won,
               attempt_valid=attempt_on, reflected=reflect)
    over = over | won | (attempt >= n_att - 1)
    return (over, mem_r, mem_rm, mem_h, mem_hm, mem_v), out

  carry = (jnp.zeros((rows,), jnp.bool_),
           jnp.full((rows, n_mem, r_len), layout.pad_id, jnp.int32),
           jnp.zeros((rows, n_mem, r_len), jnp.bool_),
           jnp.full((rows, n_mem, n_turns * ldisp), layout.pad_id, jnp.int32),
           jnp.zeros((rows, n_mem, n_turns * ldisp), jnp.bool_),
           jnp.zeros((rows, n_mem), jnp.bool_))
  # One key per attempt: categorical sampling draws independent noise per row,
  # so the G trials of a task diverge even from identical contexts.
  akeys = jax.random.split(k_roll, n_att)
  _, outs = jax.lax.scan(attempt_fn, carry, (jnp.arange(n_att), akeys))
  outs = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), outs)  # [R, N, ...]
  return Trajectory(**outs)
