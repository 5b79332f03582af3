"""Tests for the replay ring (lamer_jax.replay) and hindsight relabeling
(lamer_jax.her), against a plain numpy model of the buffer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamer_jax import her, replay

S, A, G = 5, 4, 6                   # symbols, candidates, goals of the synthetic steps


def make_steps(rng: np.random.Generator, num_envs: int, k: int, start: int,
               p_end: float = 0.3, p_goal: float = 0.3) -> dict[str, np.ndarray]:
  """k synthetic steps per env; each field's values identify the step
  (``action`` = its global step number ``start + j``)."""
  shape = (num_envs, k)
  end = rng.random(shape) < p_end
  terminal = end & (rng.random(shape) < 0.5)
  goal = rng.integers(0, G, shape).astype(np.int32)
  obs = rng.integers(G, 50, shape + (S,)).astype(np.int32)
  obs[..., 0] = goal
  next_obs = rng.integers(G, 50, shape + (S,)).astype(np.int32)
  next_obs[..., 0] = goal
  achieved = rng.random(shape + (G,)) < p_goal
  return {"obs": obs, "mask": rng.random(shape + (A,)) < 0.7,
          "action": np.broadcast_to(start + np.arange(k, dtype=np.int32), shape).copy(),
          "reward": terminal.astype(np.float32), "terminal": terminal,
          "truncated": end & ~terminal, "goal": goal, "achieved": achieved,
          "next_obs": next_obs, "next_mask": rng.random(shape + (A,)) < 0.7}


def to_transition(d: dict[str, np.ndarray]) -> replay.Transition:
  return replay.Transition(**{f: jnp.asarray(v) for f, v in d.items()})


class NpRing:
  """The reference: per env, a Python list of (step dict, episode id), newest last,
  trimmed to ``capacity``."""

  def __init__(self, num_envs: int, capacity: int):
    self.capacity = capacity
    self.rows = [[] for _ in range(num_envs)]
    self.next_ep = [0] * num_envs

  def add(self, d: dict[str, np.ndarray]):
    for i, row in enumerate(self.rows):
      for j in range(d["action"].shape[1]):
        row.append(({f: v[i, j] for f, v in d.items()}, self.next_ep[i]))
        if d["terminal"][i, j] or d["truncated"][i, j]:
          self.next_ep[i] += 1
      del row[:-self.capacity]

  def last(self, i: int, t: int) -> int:
    ep = self.rows[i][t][1]
    return max(u for u, (_, e) in enumerate(self.rows[i]) if e == ep)


_add = jax.jit(replay.add)
_gather = jax.jit(replay.gather)
_last = jax.jit(replay.episode_last)
_ids = jax.jit(replay.episode_ids)


def _filled(num_envs=3, capacity=7, k=3, adds=5, seed=0, **kw):
  rng = np.random.default_rng(seed)
  state = replay.init(replay.Transition.example(S, A, G), num_envs, capacity)
  ref = NpRing(num_envs, capacity)
  for a in range(adds):
    d = make_steps(rng, num_envs, k, a * k, **kw)
    state = _add(state, to_transition(d))
    ref.add(d)
  return state, ref


def test_add_gather_matches_numpy_through_wraparound():
  num_envs, capacity, k = 3, 7, 3
  rng = np.random.default_rng(1)
  state = replay.init(replay.Transition.example(S, A, G), num_envs, capacity)
  ref = NpRing(num_envs, capacity)
  offsets = jnp.asarray([-2, -1, 0, 1, 2, 3], jnp.int32)
  for a in range(6):                         # 18 steps per env: wraps twice and a half
    d = make_steps(rng, num_envs, k, a * k)
    state = _add(state, to_transition(d))
    ref.add(d)
    count = len(ref.rows[0])
    assert int(state.count) == count == min((a + 1) * k, capacity)
    env_idx, t_idx = (jnp.asarray(x.ravel(), jnp.int32)
                      for x in np.meshgrid(np.arange(num_envs), np.arange(count),
                                           indexing="ij"))
    got, valid = _gather(state, env_idx, t_idx, None)
    assert bool(valid.all())
    ids, last = np.asarray(_ids(state, env_idx, t_idx)), np.asarray(_last(state, env_idx,
                                                                          t_idx))
    win, win_valid = _gather(state, env_idx, t_idx, offsets)
    for b, (i, t) in enumerate(zip(np.asarray(env_idx), np.asarray(t_idx))):
      step, ep = ref.rows[i][t]
      for f, v in step.items():
        np.testing.assert_array_equal(np.asarray(getattr(got, f)[b]), v, err_msg=f)
      assert ids[b] == ep
      assert last[b] == ref.last(i, t)
      for o_i, o in enumerate(np.asarray(offsets)):
        u = t + o
        expect = 0 <= u < count and ref.rows[i][u][1] == ep
        assert bool(win_valid[b, o_i]) == expect, (i, t, o)
        if expect:
          assert int(win.action[b, o_i]) == ref.rows[i][u][0]["action"]
    # The oldest stored step is the (total - capacity)-th one: the ring dropped the rest.
    assert int(got.action[0]) == max((a + 1) * k - capacity, 0)


def test_episode_ids_follow_done_across_adds():
  # One env, k = 1 step per add: the episode id increments after each done step.
  state = replay.init({"x": jnp.zeros((), jnp.int32)}, 1, 8)
  done = [0, 1, 0, 0, 1, 1, 0]
  for j, d in enumerate(done):
    state = _add(state, {"x": jnp.full((1, 1), j, jnp.int32)}, jnp.asarray([[d]], bool))
  ids = np.asarray(_ids(state, jnp.zeros(7, jnp.int32), jnp.arange(7, dtype=jnp.int32)))
  np.testing.assert_array_equal(ids, [0, 0, 1, 1, 1, 2, 3])
  np.testing.assert_array_equal(
      np.asarray(_last(state, jnp.zeros(7, jnp.int32), jnp.arange(7, dtype=jnp.int32))),
      [1, 1, 4, 4, 4, 5, 6])     # the running episode's last stored step is the newest
  assert int(state.next_episode[0]) == 3


def test_sample_indices_uniform_over_stored_steps():
  # 1000 minibatches of 21 (a minibatch may not exceed the buffer's 3 x 7 steps).
  sample = jax.jit(jax.vmap(lambda s, k: replay.sample_indices(s, k, 21), (None, 0)))
  for adds in (1, 5):                        # part-full (count 3) and full (count 7)
    state, ref = _filled(adds=adds)
    count = len(ref.rows[0])
    env_idx, t_idx = sample(state, jax.random.split(jax.random.key(adds), 1000))
    env_idx, t_idx = np.asarray(env_idx).ravel(), np.asarray(t_idx).ravel()
    assert env_idx.min() >= 0 and env_idx.max() < 3
    assert t_idx.min() >= 0 and t_idx.max() < count
    hist = np.bincount(env_idx * count + t_idx, minlength=3 * count)
    expected = 21000 / (3 * count)
    assert np.all(np.abs(hist - expected) < 5 * np.sqrt(expected)), hist


def test_bad_inputs_raise():
  example = replay.Transition.example(S, A, G)
  with pytest.raises(ValueError, match="capacity"):
    replay.init(example, 2, 0)
  state = replay.init(example, 2, 4)
  d = to_transition(make_steps(np.random.default_rng(0), 2, 5, 0))
  with pytest.raises(ValueError, match="smaller than one batch"):
    replay.add(state, d)
  with pytest.raises(ValueError, match="smaller than one batch"):
    replay.sample_indices(state, jax.random.key(0), 9)
  d3 = to_transition(make_steps(np.random.default_rng(0), 3, 2, 0))
  with pytest.raises(ValueError, match="expected"):
    replay.add(state, d3)
  assert not bool(replay.can_sample(state))
  assert bool(replay.can_sample(replay.add(state, to_transition(
      make_steps(np.random.default_rng(0), 2, 2, 0))), 4))


# ---- HER ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("strategy", "ratio", "window"))
def _her(state, key, strategy, ratio, window=None):
  k_s, k_h = jax.random.split(key)
  env_idx, t_idx = replay.sample_indices(state, k_s, min(512, state.num_envs
                                                          * state.capacity))
  offsets = None if window is None else jnp.arange(window)
  batch, valid = replay.gather(state, env_idx, t_idx, offsets)
  new, info = her.hindsight(k_h, state, env_idx, t_idx, batch, strategy, ratio)
  return env_idx, t_idx, batch, new, valid, info


def _np(tree):
  return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("strategy", her.STRATEGIES)
def test_her_ratio_one_relabels_every_transition_that_can_be(strategy):
  # Long episodes (p_end 0.1) so that "future" has room to differ from "final".
  state, ref = _filled(16, 32, 4, 10, p_end=0.1, p_goal=0.2, seed=3)
  env_idx, t_idx, old, new, _, info = _np(_her(state, jax.random.key(4), strategy, 1.0))
  spread = set()
  for b, (i, t) in enumerate(zip(env_idx, t_idx)):
    last = ref.last(i, t)
    src = info["source"][b]
    if strategy == "final":
      assert src == last
    else:
      assert t <= src <= last
      spread.add((int(src - t), int(last - t)))
    ach_src = ref.rows[i][src][0]["achieved"]
    assert info["relabeled"][b] == ach_src.any()
    if not info["relabeled"][b]:
      for f in old.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(new, f)[b], getattr(old, f)[b])
      continue
    g = info["goal"][b]
    assert ach_src[g]
    ach_t = ref.rows[i][t][0]["achieved"]
    # Reward 1 exactly where the new goal is achieved after the step; success terminal.
    assert new.reward[b] == float(ach_t[g]) and new.terminal[b] == ach_t[g]
    assert new.goal[b] == g and new.obs[b, 0] == g and new.next_obs[b, 0] == g
    np.testing.assert_array_equal(new.obs[b, 1:], old.obs[b, 1:])
    np.testing.assert_array_equal(new.next_obs[b, 1:], old.next_obs[b, 1:])
    for f in ("mask", "action", "truncated", "achieved", "next_mask"):
      np.testing.assert_array_equal(getattr(new, f)[b], getattr(old, f)[b])
  assert info["relabeled"].sum() > 100
  if strategy == "future":   # sources at t, inside, and at the last stored step occur
    assert any(s == 0 < e for s, e in spread) and any(0 < s == e for s, e in spread)
    assert any(0 < s < e for s, e in spread)


def test_her_goal_uniform_among_achieved():
  # Every step achieves goals {1, 4}: "final" draws each about half the time.
  rng = np.random.default_rng(0)
  state = replay.init(replay.Transition.example(S, A, G), 64, 8)
  d = make_steps(rng, 64, 8, 0)
  d["achieved"][:] = False
  d["achieved"][..., [1, 4]] = True
  state = _add(state, to_transition(d))
  _, _, _, _, _, info = _np(_her(state, jax.random.key(1), "final", 1.0))
  assert info["relabeled"].all()
  assert set(np.unique(info["goal"])) == {1, 4}
  assert abs((info["goal"] == 1).mean() - 0.5) < 0.1


def test_her_ratio_zero_changes_nothing_and_ratio_half_about_half():
  state, _ = _filled(16, 32, 4, 10, seed=5)
  for strategy in her.STRATEGIES:
    _, _, old, new, _, info = _np(_her(state, jax.random.key(6), strategy, 0.0))
    assert not info["relabeled"].any()
    jax.tree.map(np.testing.assert_array_equal, new, old)
  # The same key: the same steps, sources, goals and coins; only the threshold moves.
  half = _np(_her(state, jax.random.key(7), "final", 0.5))[-1]["relabeled"]
  can = _np(_her(state, jax.random.key(7), "final", 1.0))[-1]["relabeled"]
  assert abs(half[can].mean() - 0.5) < 0.1
  assert not half[~can].any()


def test_her_relabels_whole_windows():
  state, _ = _filled(16, 32, 4, 10, seed=8, p_goal=0.4)
  _, _, old, new, valid, info = _np(_her(state, jax.random.key(9), "future", 1.0, 3))
  rows = np.flatnonzero(info["relabeled"])
  assert len(rows) > 50
  for b in rows:
    g = info["goal"][b]
    np.testing.assert_array_equal(new.goal[b], [g] * 3)
    np.testing.assert_array_equal(new.obs[b, :, 0], [g] * 3)
    np.testing.assert_array_equal(new.next_obs[b, :, 0], [g] * 3)
    np.testing.assert_array_equal(new.reward[b], old.achieved[b, :, g].astype(np.float32))
    np.testing.assert_array_equal(new.terminal[b], old.achieved[b, :, g])
  assert valid[:, 0].all()


def test_her_bad_inputs_raise():
  state, _ = _filled(adds=1)
  env_idx, t_idx = replay.sample_indices(state, jax.random.key(0), 4)
  batch, _ = replay.gather(state, env_idx, t_idx)
  for ratio in (-0.1, 1.5):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
      her.hindsight(jax.random.key(0), state, env_idx, t_idx, batch, "future", ratio)
  with pytest.raises(ValueError, match="'final', 'future'"):
    her.hindsight(jax.random.key(0), state, env_idx, t_idx, batch, "episode", 0.5)


def test_her_on_playground_matches_the_env_under_the_new_goal():
  """Real Playground steps: a relabeled transition is the one the env produces when
  the same state pursues the new goal (its observation, reward and success)."""
  from envs_jax.games.playground import Playground
  env = Playground(horizons=(15, 15, 15, 15))
  params = env.default_params.replace(goal_probs=jnp.asarray([0.0, 0.4, 0.3, 0.2, 0.1]))
  num_envs, turns = 8, 12

  @jax.jit
  def play(key):
    k_reset, k_act = jax.random.split(key)
    s0, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, num_envs),
                                                    params)

    def turn(s, k):
      mask = jax.vmap(env.action_mask, in_axes=(0, None))(s, params)
      a = jax.random.categorical(k, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)
      s1, ts = jax.vmap(env.step, in_axes=(None, 0, 0, None))(k, s, a, params)
      tr = jax.vmap(replay.transition_from_step, in_axes=(None, None, 0, 0, 0, 0))(
          env, params, s, a, s1, ts)
      # Start a new episode where this one ended (a fresh task).
      fresh, _ = jax.vmap(env.reset, in_axes=(0, None))(
          jax.random.split(k, num_envs), params)
      nxt = jax.tree.map(lambda f, x: jnp.where(
          ts.done.reshape((-1,) + (1,) * (x.ndim - 1)), f, x), fresh, s1)
      return nxt, (tr, s)

    _, (trs, states) = jax.lax.scan(turn, s0, jax.random.split(k_act, turns))
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (trs, states))  # [E, T, ...]

  trs, states = play(jax.random.key(0))
  state = replay.add(replay.init(jax.tree.map(lambda x: x[0, 0], trs), num_envs, turns), trs)
  env_idx, t_idx, _, new, _, info = _np(_her(state, jax.random.key(1), "future", 1.0))
  states = _np(states)
  step = jax.jit(env.step)
  checked = wins = 0
  for b in np.flatnonzero(info["relabeled"])[:40]:
    i, t, g = env_idx[b], t_idx[b], info["goal"][b]   # the buffer was never full: t = turn
    s = jax.tree.map(lambda x, i=i, t=t: x[i, t], states)
    sg = env.with_goal(s, g).replace(steps=jnp.zeros((), jnp.int32))   # live under g
    np.testing.assert_array_equal(new.obs[b], np.asarray(env.render_symbols(sg, params)))
    s1, ts = step(jax.random.key(0), sg, jnp.asarray(new.action[b]), params)
    assert new.reward[b] == float(ts.reward) and new.terminal[b] == bool(ts.won)
    np.testing.assert_array_equal(new.next_obs[b, 1:],
                                  np.asarray(env.render_symbols(s1, params))[1:])
    checked += 1
    wins += int(ts.won)
  assert checked >= 20 and wins > 0
