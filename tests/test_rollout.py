"""Tests for ``lamer_jax.agent.trial``: trajectory layout, trial logic and memory.

Two small rollouts of a random tiny model, each compiled once per module:

* ``guess``: 3 numbers, 3 attempts of one turn, ``history_only`` memory
  (2 tasks x 4 trials: wins and repeated guesses both happen);
* ``minesweeper``: 4x4 board, 3 attempts of 2 turns, ``reflection_only``
  memory with a 6-token reflection budget (2 tasks x 2 trials).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import envs_jax
from lamer_jax.agent.layout import GENERATED, TrialShape, build_layout
from lamer_jax.agent.trial import NO_LOSS, RolloutConfig, rollout
from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer

MCFG = llama.TINY_CONFIGS["tiny-llama"]
TOKENIZER = ByteTokenizer()
SETUPS = {
    "guess": dict(env=("guess", {"num_options": 3}), num_attempts=3,
                  num_turns=1, memory="history_only", reflection_tokens=4,
                  num_tasks=2, group_size=4),
    "minesweeper": dict(env=("minesweeper-4x4", {}), num_attempts=3,
                        num_turns=2, memory="reflection_only",
                        reflection_tokens=6, num_tasks=2, group_size=2),
}


class Run:
  """One compiled rollout and its trajectory (as numpy arrays)."""

  def __init__(self, name: str):
    spec = SETUPS[name]
    env_name, overrides = spec["env"]
    self.env = envs_jax.make(env_name, **overrides)
    self.shape = TrialShape(num_tasks=spec["num_tasks"],
                            group_size=spec["group_size"],
                            num_attempts=spec["num_attempts"],
                            num_turns=spec["num_turns"])
    self.layout = build_layout(
        TOKENIZER, self.env, self.shape, memory=spec["memory"],
        reflection_tokens=spec["reflection_tokens"])
    self.cfg = RolloutConfig()
    self.params = llama.init_params(MCFG, jax.random.key(0))
    self.fn = jax.jit(functools.partial(
        rollout, env=self.env, mcfg=MCFG, layout=self.layout, cfg=self.cfg))
    self.key = jax.random.key(7)
    self.traj_jax = self.fn(self.params, self.key, self.env.default_params)
    self.traj = jax.tree.map(np.asarray, self.traj_jax)

  def real_tokens(self, r: int, n: int) -> np.ndarray:
    """The real (unmasked) tokens of attempt ``n``'s row of trial ``r``."""
    return self.traj.tokens[r, n][self.traj.token_mask[r, n]]

  def text(self, r: int, n: int) -> str:
    return TOKENIZER.decode(self.real_tokens(r, n))

  def observation(self, r: int, n: int, t: int) -> np.ndarray:
    """The real tokens of the observation shown at turn ``t``."""
    lay = self.layout
    start = lay.turn_start(t) + len(lay.turn_end) + len(lay.turn_open)
    sl = slice(start, start + lay.obs_len)
    return self.traj.tokens[r, n, sl][self.traj.token_mask[r, n, sl]]


@functools.lru_cache(maxsize=None)
def _run(name: str) -> Run:
  """Each setup is compiled and rolled out once per session."""
  return Run(name)


@pytest.fixture(params=sorted(SETUPS))
def run(request) -> Run:
  return _run(request.param)


@pytest.fixture
def guess() -> Run:
  return _run("guess")


@pytest.fixture
def minesweeper() -> Run:
  return _run("minesweeper")


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
  """Whether ``needle`` occurs as a contiguous run in ``haystack``."""
  n = len(needle)
  return any(np.array_equal(haystack[i:i + n], needle)
             for i in range(len(haystack) - n + 1))


def test_shapes(run):
  tr, lay, shape = run.traj, run.layout, run.shape
  r, n, t = shape.num_rows, lay.num_attempts, lay.num_turns
  c, a = lay.context_len, len(run.env.action_strings)
  for name in ("tokens", "positions", "token_mask", "loss_mask", "logp_old",
               "token_turn_ids"):
    assert getattr(tr, name).shape == (r, n, c), name
  for name in ("actions", "rewards", "turn_valid", "invalid", "state_keys"):
    assert getattr(tr, name).shape == (r, n, t), name
  assert tr.action_allowed.shape == (r, n, t, a)
  for name in ("won", "attempt_valid", "reflected"):
    assert getattr(tr, name).shape == (r, n), name
  assert tr.tokens.dtype == np.int32 and tr.logp_old.dtype == np.float32


def test_positions_of_real_tokens_are_consecutive(run):
  tr = run.traj
  for r in range(run.shape.num_rows):
    for n in range(run.layout.num_attempts):
      real = tr.token_mask[r, n]
      # An attempt that did not run has no real token at all.
      assert real.any() == tr.attempt_valid[r, n]
      np.testing.assert_array_equal(tr.positions[r, n][real],
                                    np.arange(real.sum()))


def test_loss_mask_and_logp_old(run):
  tr = run.traj
  assert not (tr.loss_mask & ~tr.token_mask).any()
  assert (tr.logp_old[~tr.loss_mask] == 0).all()
  assert (tr.logp_old[tr.loss_mask] <= 0).all()
  # Every sampled turn has at least one free choice with a real log-prob.
  assert (tr.logp_old[tr.loss_mask] < 0).any()
  # Loss tokens are exactly the tokens that carry a turn or reflection id.
  np.testing.assert_array_equal(tr.loss_mask, tr.token_turn_ids != NO_LOSS)


def test_every_action_is_an_allowed_candidate(run):
  tr, lay = run.traj, run.layout
  codec = lay.codec
  for r in range(run.shape.num_rows):
    for n in range(lay.num_attempts):
      for t in range(lay.num_turns):
        if not tr.turn_valid[r, n, t]:
          assert not (tr.token_turn_ids[r, n] == t).any()
          continue
        a = tr.actions[r, n, t]
        assert tr.action_allowed[r, n, t, a]
        # The action tokens in the row are exactly the candidate's tokens.
        toks = tr.tokens[r, n][tr.token_turn_ids[r, n] == t]
        np.testing.assert_array_equal(
            toks, codec.action_tokens[a, :codec.action_lengths[a]])
  if run.env.name.startswith("minesweeper"):
    # The mask only allows unopened cells, so no click is ineffective.
    assert not tr.invalid.any()


def test_trials_stop_at_first_success(run):
  tr = run.traj
  assert tr.attempt_valid[:, 0].all()
  expected_next = tr.attempt_valid[:, :-1] & ~tr.won[:, :-1]
  np.testing.assert_array_equal(tr.attempt_valid[:, 1:], expected_next)
  assert not (tr.won & ~tr.attempt_valid).any()
  # Turns: only in attempts that ran; within an attempt, a prefix of turns.
  assert not (tr.turn_valid & ~tr.attempt_valid[..., None]).any()
  tv = tr.turn_valid.astype(np.int8)
  assert (np.diff(tv, axis=-1) <= 0).all()


def test_guess_trials_do_win_and_stop(guess):
  """The stop rule is exercised: some trial wins before its last attempt."""
  tr = guess.traj
  early = tr.won[:, :-1]
  assert early.any()
  r, n = np.argwhere(early)[0]
  assert not tr.attempt_valid[r, n + 1:].any()
  assert not tr.token_mask[r, n + 1:].any()


def test_reflections_only_after_failed_non_last_attempts(run):
  tr, lay = run.traj, run.layout
  last = np.arange(lay.num_attempts) == lay.num_attempts - 1
  np.testing.assert_array_equal(
      tr.reflected, tr.attempt_valid & ~tr.won & ~last[None, :])
  refl_tokens = (tr.token_turn_ids == lay.num_turns).sum(-1)
  if lay.uses_reflection:
    assert tr.reflected.any()
    assert (refl_tokens[tr.reflected] >= 1).all()
    assert (refl_tokens <= lay.reflection_tokens).all()
    assert (refl_tokens[~tr.reflected] == 0).all()
  else:
    assert (refl_tokens == 0).all()


def test_reflection_written_after_the_reflection_prompt(minesweeper):
  tr, lay = minesweeper.traj, minesweeper.layout
  for r, n in np.argwhere(tr.reflected):
    ids = tr.token_turn_ids[r, n]
    first = np.argmax(ids == lay.num_turns)
    assert first == lay.reflect_start + lay.reflect_prompt_len
    # The prompt right before it ends with the "<remark>" opener.
    close = tr.tokens[r, n, first - len(lay.reflect_close):first]
    np.testing.assert_array_equal(close, lay.reflect_close)


def test_reflection_memory_is_visible_in_the_next_attempt(minesweeper):
  tr, lay = minesweeper.traj, minesweeper.layout
  checked = 0
  for r in range(minesweeper.shape.num_rows):
    assert "Your reflection is:" not in minesweeper.text(r, 0)
    for n in range(1, lay.num_attempts):
      if not tr.attempt_valid[r, n]:
        continue
      row = minesweeper.real_tokens(r, n)
      for k in range(n):
        refl = tr.tokens[r, k][tr.token_turn_ids[r, k] == lay.num_turns]
        header = lay.memory_headers[k, :lay.memory_header_lengths[k]]
        assert _contains(row, np.concatenate([header, refl])), (r, n, k)
        checked += 1
      text = minesweeper.text(r, n)
      assert text.count("the task is NOT successfully completed. Your "
                        "reflection is: ") == n
  assert checked > 0


def test_history_memory_shows_previous_actions(guess):
  tr, lay, env = guess.traj, guess.layout, guess.env
  checked = 0
  for r in range(guess.shape.num_rows):
    assert "you took these actions" not in guess.text(r, 0)
    for n in range(1, lay.num_attempts):
      if not tr.attempt_valid[r, n]:
        continue
      text = guess.text(r, n)
      for k in range(n):
        action = env.action_strings[tr.actions[r, k, 0]]
        assert (f"On attempt #{k + 1}, you took these actions: {action}; "
                in text), text
        checked += 1
      assert text.count("you took these actions") == n
  assert checked > 0


def test_rows_of_a_group_start_from_the_same_state(run):
  g = run.shape.group_size
  tr = run.traj
  for r in range(run.shape.num_rows):
    first = run.observation(g * (r // g), 0, 0)
    assert len(first) > 0
    for n in range(run.layout.num_attempts):
      if tr.attempt_valid[r, n]:
        # Every attempt of every trial of the task restarts from its level.
        np.testing.assert_array_equal(run.observation(r, n, 0), first)


def test_guess_group_shares_its_secret(guess):
  """Every winning guess of a task group names the same number."""
  tr, g = guess.traj, guess.shape.group_size
  for b in range(guess.shape.num_tasks):
    rows = slice(b * g, (b + 1) * g)
    won_actions = tr.actions[rows, :, 0][tr.won[rows]]
    assert len(set(won_actions.tolist())) <= 1


def test_minesweeper_groups_differ_between_tasks(minesweeper):
  g = minesweeper.shape.group_size
  boards = {minesweeper.observation(b * g, 0, 0).tobytes()
            for b in range(minesweeper.shape.num_tasks)}
  assert len(boards) == minesweeper.shape.num_tasks


def test_deterministic_given_the_key(run):
  again = run.fn(run.params, run.key, run.env.default_params)
  for a, b in zip(jax.tree.leaves(run.traj_jax), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = run.fn(run.params, jax.random.key(8), run.env.default_params)
  assert not np.array_equal(np.asarray(other.tokens), run.traj.tokens)


# ---- the row's pieces (no rollout needed) ------------------------------------------

LAYOUTS = {
    **{name: (spec["env"], TrialShape(num_tasks=spec["num_tasks"],
                                      group_size=spec["group_size"],
                                      num_attempts=spec["num_attempts"],
                                      num_turns=spec["num_turns"]),
              dict(memory=spec["memory"], reflection_tokens=spec["reflection_tokens"]))
       for name, spec in SETUPS.items()},
    "think_free_both": (("minesweeper-4x4", {}),
                        TrialShape(num_tasks=1, group_size=2, num_attempts=2,
                                   num_turns=3),
                        dict(memory="history_and_reflection", reflection_tokens=5,
                             action_mode="free", think_tokens=4)),
    "think_constrained": (("guess", {"num_options": 3, "max_turns": 2}),
                          TrialShape(num_tasks=2, group_size=4, num_attempts=2,
                                     num_turns=2),
                          dict(memory="reflection_only", reflection_tokens=3,
                               think_tokens=5)),
    "single_attempt": (("guess", {}),
                       TrialShape(num_tasks=2, group_size=6, num_attempts=1,
                                  num_turns=1),
                       dict(memory="none")),
}


@functools.lru_cache(maxsize=None)
def _layout(name: str):
  (env_name, overrides), shape, kwargs = LAYOUTS[name]
  return build_layout(TOKENIZER, envs_jax.make(env_name, **overrides), shape,
                      **kwargs)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_pieces_tile_the_row(name):
  lay = _layout(name)
  assert lay.shape == LAYOUTS[name][1]
  pieces = lay.pieces()
  # Back to back from slot 0 to C: no gap, no overlap, nothing empty.
  end = 0
  for p in pieces:
    assert p.start == end and p.length > 0, p
    end = p.start + p.length
  assert end == lay.context_len
  # Prefix first, then every turn in order, then the reflection pieces.
  assert pieces[0].name == "prefix" and pieces[0].turn == -1
  assert pieces[0].length == lay.prefix_len
  turns = [p.turn for p in pieces[1:]]
  assert turns == sorted(turns)
  assert set(turns) == set(range(lay.num_turns + lay.uses_reflection))
  for t in range(lay.num_turns):
    turn = [p for p in pieces if p.turn == t]
    assert [p.name for p in turn] == [n for n, _ in lay.turn_piece_lengths()]
    assert turn[0].start == lay.turn_start(t)
    assert sum(p.length for p in turn) == lay.turn_len
    assert lay.piece("action", t).start == lay.action_start(t)
    assert lay.piece("action", t).length == lay.action_len
  refl = [p for p in pieces if p.turn == lay.num_turns]
  assert [p.name for p in refl] == (["reflect_prompt", "reflection"]
                                    if lay.uses_reflection else [])
  assert sum(p.length for p in refl) == lay.reflect_len
  if refl:
    assert refl[0].start == lay.reflect_start


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("train_reflection", [True, False])
def test_loss_slots_are_the_generated_pieces(name, train_reflection):
  lay = _layout(name)
  slots, constrained = lay.loss_slot_kinds(train_reflection)
  want = [p for p in lay.pieces() if p.name in GENERATED
          and (train_reflection or p.name != "reflection")]
  assert want and all(p.generated for p in want)
  np.testing.assert_array_equal(
      slots, np.concatenate([np.arange(p.start, p.start + p.length) for p in want]))
  np.testing.assert_array_equal(constrained, np.concatenate([
      np.full(p.length, p.name == "action" and lay.action_mode == "constrained")
      for p in want]))
  assert slots.dtype == np.int32 and constrained.dtype == np.bool_
  # Every generated piece follows a prompt piece: slot - 1 is never generated.
  generated = np.zeros(lay.context_len, bool)
  for p in lay.pieces():
    generated[p.start:p.start + p.length] = p.generated
  assert not generated[0]
  starts = np.array([p.start for p in want])
  assert not generated[starts - 1].any()
  # Nothing else is generated (the thinking tail and the prompts are fed).
  if train_reflection:
    np.testing.assert_array_equal(np.nonzero(generated)[0], slots)


def test_rollout_loss_mask_lies_in_the_loss_slots(run):
  """The rollout's generated tokens are exactly in the layout's loss slots."""
  slots, _ = run.layout.loss_slot_kinds(True)
  outside = np.ones(run.layout.context_len, bool)
  outside[slots] = False
  assert not run.traj.loss_mask[..., outside].any()
  assert run.traj.loss_mask[..., slots].any()
  assert run.layout.shape == run.shape
