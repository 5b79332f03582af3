"""The trial loop: B tasks x G trials x N attempts x T turns, inside jit.

A trial is N attempts at the same task, each restarting from the task's saved
initial state; it stops at its first success (later attempts are masked).
:func:`play_trials` is the one loop over attempts and turns, shared by every
policy: it steps the games (a PRNG key per step, contract v2), keeps the
trial's bookkeeping, skips turns that no row plays, and calls the policy's
three hooks (start an attempt, act in a turn, end an attempt). Two policies
use it: the language model (:func:`rollout`: prompts, actions, reflections,
memory) and the uniform random baseline (``experiments.random_baseline``).

PRNG streams of attempt k's key ``akey``: ``fold_in(akey, t)`` the action of
turn t, ``fold_in(akey, T)`` the reflection, ``fold_in(akey, T + 1 + t)`` the
thinking of turn t, and ``fold_in(fold_in(akey, ENV_STREAM), t)`` split over
rows, the games' own chance in turn t.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from envs_jax.core import Environment
from lamer_jax import sharding
from lamer_jax.agent import acting, memory as memory_lib
from lamer_jax.agent import layout as layout_lib
from lamer_jax.agent.context import (Context, Span, const, empty_context, feed,
                                     feed_pieces, generated_span, piece_mask)
from lamer_jax.agent.layout import ContextLayout
from lamer_jax.models import llama, sampling

NO_LOSS = -1              # token_turn_ids value of slots that carry no loss
ENV_STREAM = 1 << 30      # fold_in constant of the games' key stream
TRAIN_SEEDS = 1 << 16        # training tasks use seeds [0, 2^16) (LaMer)
EVAL_SEED_OFFSET = 1 << 16   # held-out tasks use seeds from 2^16 on


# ---- tasks ---------------------------------------------------------------------

def task_key(seed: jax.Array) -> jax.Array:
  """The level-generation key of task ``seed`` (same seed, same level)."""
  return jax.random.fold_in(jax.random.key(0), seed)


def task_seeds(key: jax.Array, num_tasks: int) -> jax.Array:
  """Training task seeds, uniform in [0, 2^16)."""
  return jax.random.randint(key, (num_tasks,), 0, TRAIN_SEEDS, jnp.int32)


def eval_seeds(num_tasks: int, offset: int = 0) -> jax.Array:
  """Held-out task seeds: a fixed set from 2^16 on."""
  return EVAL_SEED_OFFSET + offset + jnp.arange(num_tasks, dtype=jnp.int32)


# ---- one turn of the games ------------------------------------------------------

@struct.dataclass
class TurnRecord:
  """What one turn of R rows did to the games. [R] unless noted.

  Attributes:
    action: int32 chosen candidate.
    allowed: bool[R, A] the action mask the turn was played under.
    reward: float32 (the invalid-action penalty for unparsable actions; 0 on
      rows that did not play).
    valid: bool, the row played this turn.
    invalid: bool, the action was invalid (no effect, or no candidate).
    won: bool, this turn won the attempt.
    state_key: uint32 anchor-state id before the turn (GiGPO).
    played: bool, the action was a candidate and moved the game.
  """

  action: jax.Array
  allowed: jax.Array
  reward: jax.Array
  valid: jax.Array
  invalid: jax.Array
  won: jax.Array
  state_key: jax.Array
  played: jax.Array


def env_turn(env: Environment, env_params: Any, key: jax.Array, state: Any,
             active: jax.Array, action: jax.Array, parsed: jax.Array,
             allowed: jax.Array, invalid_penalty: float
             ) -> tuple[Any, jax.Array, TurnRecord]:
  """Steps R games with ``action`` (int32[R]) where ``active & parsed``.

  An action that names no allowed candidate (``parsed`` False: only the free
  action mode makes them) leaves the game as it was and costs
  ``invalid_penalty``. Returns (state, rows still playing, the record).
  """
  rows = active.shape[0]
  skey = jax.vmap(env.state_key)(state)
  new_state, ts = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
      jax.random.split(key, rows), state, action, env_params)
  moved = active & parsed
  state = jax.tree.map(lambda n, o: jnp.where(
      moved.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new_state, state)
  reward = jnp.where(parsed, ts.reward, invalid_penalty)
  record = TurnRecord(
      action=action, allowed=allowed, reward=jnp.where(active, reward, 0.0),
      valid=active, invalid=active & (ts.invalid | ~parsed), won=moved & ts.won,
      state_key=skey, played=moved)
  return state, active & ~(moved & ts.done), record


# ---- the loop ---------------------------------------------------------------------

class TrialPolicy(Protocol):
  """The hooks :func:`play_trials` calls. Carries are pytrees of [R, ...]."""

  def empty_memory(self, rows: int) -> Any:
    """What a trial carries across attempts, before its first attempt."""

  def start_attempt(self, memory: Any, attempt: jax.Array, attempt_on: jax.Array,
                    akey: jax.Array) -> tuple[Any, Any]:
    """(turn carry, attempt aux) at the start of attempt ``attempt`` on the
    rows ``attempt_on``; the aux reaches ``end_attempt`` unchanged."""

  def act(self, carry: Any, state: Any, allowed: jax.Array, active: jax.Array,
          akey: jax.Array, t: jax.Array) -> tuple[Any, jax.Array, jax.Array, Any]:
    """(carry, int32[R] action, bool[R] it is a candidate, turn output)."""

  def skipped_turn(self, output_shapes: Any) -> Any:
    """The turn output of a turn no row plays, from its shapes."""

  def end_attempt(self, carry: Any, aux: Any, memory: Any, attempt: jax.Array,
                  attempt_on: jax.Array, won: jax.Array, records: TurnRecord,
                  outputs: Any, akey: jax.Array) -> tuple[Any, Any]:
    """(memory, attempt output); ``records`` and ``outputs`` are [R, T, ...]."""


@struct.dataclass
class TurnCarry:
  policy: Any          # the policy's turn carry
  state: Any           # the games' states, [R, ...]
  active: jax.Array    # bool[R] rows still playing this attempt


@struct.dataclass
class TrialCarry:
  over: jax.Array      # bool[R] the trial is finished (solved or out of attempts)
  memory: Any          # the policy's memory across attempts


@struct.dataclass
class TrialResult:
  """[R, N, ...]: per attempt of every trial."""

  records: TurnRecord     # [R, N, T]
  won: jax.Array          # bool[R, N]
  attempt_valid: jax.Array  # bool[R, N] the attempt ran
  outputs: Any            # the policy's attempt outputs
  episodes: Any           # env.episode_outcomes of each attempt's final
                          # state, [R, N, ...] (None: one episode an attempt)


def play_trials(env: Environment, env_params: Any, init_state: Any,
                policy: TrialPolicy, attempt_keys: jax.Array, num_turns: int,
                invalid_penalty: float = 0.0,
                mesh: jax.sharding.Mesh | None = None) -> TrialResult:
  """Plays len(attempt_keys) attempts of up to ``num_turns`` turns from
  ``init_state`` (R games), with ``policy``.

  A turn no row plays (every attempt in the batch has ended: solved, lost or
  masked) is skipped at run time (``lax.cond``); its record is all holes,
  which is what playing it fully masked would record.
  """
  num_attempts = attempt_keys.shape[0]
  rows = jax.tree.leaves(init_state)[0].shape[0]

  def turn(carry: TurnCarry, t, akey):
    allowed = jax.vmap(env.action_mask, in_axes=(0, None))(carry.state, env_params)
    allowed = allowed & carry.active[:, None]
    pcarry, action, parsed, out = policy.act(carry.policy, carry.state, allowed,
                                             carry.active, akey, t)
    env_key = jax.random.fold_in(jax.random.fold_in(akey, ENV_STREAM), t)
    state, active, record = env_turn(env, env_params, env_key, carry.state,
                                     carry.active, action, parsed, allowed,
                                     invalid_penalty)
    return TurnCarry(policy=pcarry, state=state, active=active), (record, out)

  def attempt(carry: TrialCarry, inputs):
    # [sharding] keep what crosses attempts split by rows (no-op without mesh).
    carry = sharding.constrain_rows(carry, mesh)
    index, akey = inputs
    attempt_on = ~carry.over
    pcarry, aux = policy.start_attempt(carry.memory, index, attempt_on, akey)
    tc0 = TurnCarry(policy=pcarry, state=init_state, active=attempt_on)
    shapes = jax.eval_shape(lambda c: turn(c, 0, akey)[1], tc0)
    record_fill = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[0])

    def turn_or_skip(tc, t):
      return jax.lax.cond(jnp.any(tc.active), lambda c: turn(c, t, akey),
                          lambda c: (c, (record_fill, policy.skipped_turn(shapes[1]))),
                          tc)

    tc, (records, outs) = jax.lax.scan(turn_or_skip, tc0, jnp.arange(num_turns))
    records, outs = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (records, outs))
    won = jnp.any(records.won, axis=1)
    memory, aout = policy.end_attempt(tc.policy, aux, carry.memory, index,
                                      attempt_on, won, records, outs, akey)
    over = carry.over | won | (index >= num_attempts - 1)
    episodes = jax.vmap(env.episode_outcomes)(tc.state)
    return TrialCarry(over=over, memory=memory), (records, won, attempt_on, aout,
                                                  episodes)

  carry = TrialCarry(over=jnp.zeros((rows,), jnp.bool_),
                     memory=policy.empty_memory(rows))
  _, (records, won, valid, outs, episodes) = jax.lax.scan(
      attempt, carry, (jnp.arange(num_attempts), attempt_keys))
  move = lambda x: jnp.swapaxes(x, 0, 1)   # [N, R, ...] -> [R, N, ...]
  return TrialResult(records=jax.tree.map(move, records), won=move(won),
                     attempt_valid=move(valid), outputs=jax.tree.map(move, outs),
                     episodes=jax.tree.map(move, episodes))


# ---- the language-model policy ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Static sampling settings of a rollout (hashable). The batch's shape is
  the layout's ``TrialShape``."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  # Reward of a turn whose free-form action is not an allowed candidate (the
  # game does not move); only the "free" action mode produces such turns.
  invalid_penalty: float = -0.5

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
    loss_mask: bool[R, N, C] generated tokens (thinking, actions, reflections).
    logp_old: float32[R, N, C] behaviour log-probs of generated tokens.
    token_turn_ids: int32[R, N, C] turn t of a turn's generated tokens, T for
      reflection tokens, -1 elsewhere.
    actions: int32[R, N, T] chosen candidate per turn.
    action_allowed: bool[R, N, T, A] the action mask the turn was decoded under.
    rewards: float32[R, N, T]; turn_valid, invalid: bool[R, N, T].
    state_keys: uint32[R, N, T] anchor-state id before each turn (GiGPO).
    won, attempt_valid, reflected: bool[R, N].
    episodes: per-episode outcomes of each attempt (``Environment.
      episode_outcomes``: ``solved`` bool[R, N, K], ``steps`` int32[R, N, K]
      for a continuous trial), or None for one-episode attempts.
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
  episodes: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class LanguagePolicy:
  """The LLM as a :class:`TrialPolicy`: every attempt is one row of
  ``layout.context_len`` slots, assembled piece by piece in the order of
  ``layout.pieces()``."""

  params: Any
  mcfg: llama.ModelConfig
  layout: ContextLayout
  env: Environment
  env_params: Any
  samp: sampling.SamplingConfig
  init_obs: Any            # TokenBuffer [R, ...] of the initial states
  mesh: jax.sharding.Mesh | None = None

  @property
  def rows(self) -> int:
    return self.init_obs.ids.shape[0]

  def empty_memory(self, rows: int) -> memory_lib.Memory:
    return memory_lib.Memory.empty(self.layout, rows)

  def start_attempt(self, memory, attempt, attempt_on, akey):
    del akey
    ctx = empty_context(self.mcfg, self.rows, self.layout.context_len, self.mesh)
    tokens, mask = memory_lib.prefix_chunk(self.layout, memory, attempt, self.rows)
    ctx, prefix = feed(self.params, self.mcfg, ctx, tokens, mask & attempt_on[:, None])
    return ctx, prefix

  def _observe(self, state):
    return jax.vmap(lambda s: self.layout.codec.encode(
        self.env.render_symbols(s, self.env_params)))(state)

  def feed_turn_prompt(self, ctx: Context, state, active, t) -> tuple[Context, Span]:
    """Turn t's prompt (the previous turn's end, the observation of
    ``state``), fed on the ``active`` rows."""
    lay, rows = self.layout, self.rows
    obs = self._observe(state)
    return feed_pieces(self.params, self.mcfg, ctx, [
        (const(lay.turn_end, rows), piece_mask(len(lay.turn_end), active & (t > 0), rows)),
        (const(lay.turn_open, rows), piece_mask(len(lay.turn_open), active, rows)),
        (obs.ids, obs.mask & active[:, None]),
        (const(lay.turn_close, rows), piece_mask(len(lay.turn_close), active, rows))])

  def act(self, ctx: Context, state, allowed, active, akey, t):
    lay = self.layout
    ctx, prompt = self.feed_turn_prompt(ctx, state, active, t)
    n_turns = lay.num_turns
    ctx, spans, action, parsed = acting.act(
        self.params, self.mcfg, ctx, lay, jax.random.fold_in(akey, t),
        jax.random.fold_in(akey, n_turns + 1 + t), active, allowed, self.samp)
    spans[layout_lib.TURN_PROMPT] = prompt
    return ctx, action, parsed, self._in_order(spans, lay.turn_piece_lengths())

  def skipped_turn(self, output_shapes):
    return Span(**{
        f.name: jnp.full(getattr(output_shapes, f.name).shape,
                         self.layout.pad_id if f.name == "tokens" else 0,
                         getattr(output_shapes, f.name).dtype)
        for f in dataclasses.fields(Span)})

  @staticmethod
  def _in_order(spans: dict[str, Span], pieces) -> Span:
    for name, width in pieces:
      if spans[name].width != width:
        raise AssertionError(f"piece {name!r}: {spans[name].width} slots, the "
                             f"layout says {width}")
    return Span.concat([spans[name] for name, _ in pieces])

  def feed_reflect_prompt(self, ctx: Context, reflect) -> tuple[Context, Span]:
    """The reflection's prompt (the attempt's end, the initial observation),
    fed on the ``reflect`` rows."""
    lay, rows = self.layout, self.rows
    return feed_pieces(self.params, self.mcfg, ctx, [
        (const(lay.turn_end, rows), piece_mask(len(lay.turn_end), reflect, rows)),
        (const(lay.reflect_open, rows), piece_mask(len(lay.reflect_open), reflect, rows)),
        (self.init_obs.ids, self.init_obs.mask & reflect[:, None]),
        (const(lay.reflect_close, rows),
         piece_mask(len(lay.reflect_close), reflect, rows))])

  def write_reflection(self, ctx: Context, reflect, akey, max_new_tokens: int,
                       stop: bool = True) -> sampling.GenerateOutput:
    """Decodes the reflection after its prompt (``stop``: at end of turn)."""
    lay = self.layout
    return sampling.generate(
        self.params, self.mcfg, jax.random.fold_in(akey, lay.num_turns), ctx.cache,
        ctx.last_logits, ctx.next_pos, max_new_tokens=max_new_tokens,
        sampling=self.samp, stop_tokens=(lay.eos_id,) if stop else (),
        pad_id=lay.pad_id, active=reflect)

  def _reflect(self, ctx: Context, reflect, akey) -> dict[str, Span]:
    lay = self.layout
    ctx, prompt = self.feed_reflect_prompt(ctx, reflect)
    gen = self.write_reflection(ctx, reflect, akey, lay.reflection_tokens)
    _, text = generated_span(ctx, gen, reflect, lay.pad_id)
    return {layout_lib.REFLECT_PROMPT: prompt, layout_lib.REFLECTION: text}

  def end_attempt(self, ctx, prefix, memory, attempt, attempt_on, won, records,
                  outputs, akey):
    lay, rows = self.layout, self.rows
    # The reflection, after a failed attempt that is not the last.
    reflect = attempt_on & ~won & (attempt < lay.num_attempts - 1)
    turns = jax.tree.map(lambda x: x.reshape(rows, -1), outputs)     # [R, T*turn]
    pieces = [prefix, turns]
    reflection = None
    if lay.uses_reflection:
      spans = self._reflect(ctx, reflect, akey)
      pieces.append(self._in_order(spans, lay.reflection_piece_lengths()))
      reflection = spans[layout_lib.REFLECTION]
    memory = memory_lib.remember(
        lay, memory, attempt, reflect,
        None if reflection is None else reflection.tokens,
        None if reflection is None else reflection.real, records.action,
        records.played)
    row = Span.concat(pieces)
    slot_turn = jnp.asarray(lay.slot_turns())
    out = dict(tokens=row.tokens, positions=row.positions, token_mask=row.real,
               loss_mask=row.generated, logp_old=row.logp,
               token_turn_ids=jnp.where(row.generated, slot_turn[None], NO_LOSS),
               reflected=reflect)
    return memory, out


def rollout(params: llama.Params, key: jax.Array, env_params: Any, *,
            env: Environment, mcfg: llama.ModelConfig, layout: ContextLayout,
            cfg: RolloutConfig, task_seeds: jax.Array | None = None,
            mesh: jax.sharding.Mesh | None = None) -> Trajectory:
  """Plays ``layout.shape`` (B tasks x G trials x N attempts x T turns) with
  the language model. Pure and jittable.

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
  shape = layout.shape
  k_task, k_roll = jax.random.split(key)
  if task_seeds is None:
    keys = jax.random.split(k_task, shape.num_tasks)
  else:
    keys = jax.vmap(task_key)(task_seeds)
  task_keys = jnp.repeat(keys, shape.group_size, axis=0)
  init_state, _ = jax.vmap(env.reset, in_axes=(0, None))(task_keys, env_params)
  init_obs = jax.vmap(lambda s: layout.codec.encode(
      env.render_symbols(s, env_params)))(init_state)
  # [sharding] rows split over the mesh's data axes; the per-row state the
  # attempt and turn loops carry inherits this layout (no-op without a mesh).
  init_state, init_obs = sharding.constrain_rows((init_state, init_obs), mesh)
  policy = LanguagePolicy(params=params, mcfg=mcfg, layout=layout, env=env,
                          env_params=env_params, samp=cfg.sampling,
                          init_obs=init_obs, mesh=mesh)
  # One key per attempt: categorical sampling draws independent noise per row,
  # so the G trials of a task diverge even from identical contexts.
  result = play_trials(env, env_params, init_state, policy,
                       jax.random.split(k_roll, shape.num_attempts),
                       shape.num_turns, cfg.invalid_penalty, mesh)
  rec = result.records
  return Trajectory(actions=rec.action, action_allowed=rec.allowed,
                    rewards=rec.reward, turn_valid=rec.valid, invalid=rec.invalid,
                    state_keys=rec.state_key, won=result.won,
                    attempt_valid=result.attempt_valid, episodes=result.episodes,
                    **result.outputs)
