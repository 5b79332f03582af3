"""Tests for envs_jax.games.playground (LittleZoo's Playground-Text) and its
Python reference."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.games import playground as pg
from envs_jax.games.playground import Playground
from envs_jax.reference import playground as ref
from envs_jax.reference.playground import PyPlayground
from envs_jax.text import TextCodec, check_prefix_free
from lamer_jax.models.tokenizer import ByteTokenizer

ENV = Playground()
LZ = Playground(release_mode="littlezoo")
# Random play in drop mode: 15 steps for every goal, so that episodes live
# long enough to grow chains and win more often. LittleZoo mode plays with
# the default horizons (truncation at 3 / 6 / 10 / 15).
LONG = Playground(horizons=(15, 15, 15, 15))
PARAMS = ENV.default_params
KEY = jax.random.key(0)     # the game is deterministic: its steps ignore the key
# Random play draws every task class often (the default is 80% impossible).
MIXED = PARAMS.replace(goal_probs=jnp.asarray([0.25, 0.25, 0.15, 0.15, 0.2]))
# Tolerance of the frequency tests, in standard errors: each test makes at
# most ~150 comparisons, and P(|N(0, 1)| > 4.5) = 6.8e-6, so a correct game
# fails one with probability below 1e-3 (a union bound), while the biases
# looked for (a class or a kind never drawn, a wrong weight) are tens of
# standard errors wide.
Z = 4.5

BATCH, TURNS = 256, 16      # random play: tasks, steps per episode
DRAWS = 8192                # resets per draw of the task distribution (one shape: one compile)

_step = jax.jit(ENV.step)
_lz_step = jax.jit(LZ.step)
_scene = jax.jit(ENV.state_from_scene)
_mask = {env: jax.jit(env.action_mask) for env in (ENV, LZ)}
_achieved = jax.jit(ENV.achieved_goals)   # the same in both modes


@functools.lru_cache(maxsize=None)
def _vreset(env: Playground):
  return jax.jit(jax.vmap(env.reset, in_axes=(0, None)))


def _views(env, s):
  return (env.render_symbols(s, PARAMS), env.action_mask(s, PARAMS),
          env.achieved_goals(s), env.state_key(s))


@functools.partial(jax.jit, static_argnums=0)
def _play(env, task_key, action_key):
  """BATCH random episodes of TURNS steps, with their views.

  Actions: 90% a legal action (Grasp and releases favoured, so that objects
  get picked up and meet), 10% any action (mostly illegal ones).

  Returns:
    (initial states [B], initial views, int32[B, T] actions, states [B, T],
    TimeSteps [B, T], views [B, T]).
  """
  initial, _ = jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(task_key, BATCH), MIXED)
  n = len(env.names)
  bias = jnp.zeros(env.num_actions).at[0].set(1.5).at[n + 1:].set(1.0)

  def one(carry, k):
    s, mask = carry
    k_legal, k_mix, k_any = jax.random.split(k, 3)
    a = jax.random.categorical(k_legal, jnp.where(mask, bias, -jnp.inf))
    wild = jax.random.randint(k_any, (), 0, env.num_actions)
    a = jnp.where(jnp.any(mask) & (jax.random.uniform(k_mix) < 0.9), a, wild)
    s, ts = env.step(KEY, s, a.astype(jnp.int32), MIXED)
    views = _views(env, s)
    return (s, views[1]), (a, s, ts, views)

  def episode(s, k):
    carry = (s, env.action_mask(s, MIXED))
    return jax.lax.scan(one, carry, jax.random.split(k, TURNS))[1]

  actions, states, steps, views = jax.vmap(episode)(
      initial, jax.random.split(action_key, BATCH))
  return initial, jax.vmap(lambda s: _views(env, s))(initial), actions, states, steps, views


@functools.lru_cache(maxsize=None)
def _played(env: Playground, seed: int):
  return jax.device_get(_play(env, jax.random.key(seed), jax.random.key(seed + 1)))


def _index(tree, *i):
  return jax.tree.map(lambda x: x[i], tree)


def kind(name: str) -> int:
  return pg.KINDS.index(name)


def goal(text: str) -> int:
  return pg.GOAL_STRINGS.index(text)


def scene(kinds, goal_text, env=ENV):
  return _scene(jnp.asarray([kind(k) for k in kinds], jnp.int32), goal(goal_text))


def play(state, actions, env=ENV):
  """Steps ``state`` through action strings: the (state, TimeStep) pairs."""
  step = _step if env is ENV else _lz_step
  out = []
  for a in actions:
    state, ts = step(KEY, state, jnp.int32(env.action_strings.index(a)), PARAMS)
    out.append((state, ts))
  return out


def text(state, env=ENV) -> str:
  return env.render_text(state, PARAMS)


def legal(state, env=ENV) -> list[str]:
  mask = np.asarray(_mask[env](state, PARAMS))
  return [env.action_strings[i] for i in np.flatnonzero(mask)]


def achieved(state, env=ENV) -> set[str]:
  del env
  got = np.asarray(_achieved(state))
  return {pg.GOAL_STRINGS[i] for i in np.flatnonzero(got)}


def obs(goal_text, seen, under="nothing", held=()):
  return (f"Goal: {goal_text}\nYou see: {seen}\nYou are standing on: {under}\n"
          f"Inventory ({len(held)}/2): {', '.join(held) or 'empty'}\n")


# ---- static description ---------------------------------------------------


def test_static_description():
  assert ENV.name == "playground" and ENV.max_turns == 15 and ENV.split == "train"
  assert pg.KINDS == tuple(ref.ALL_KINDS) and len(pg.KINDS) == 37
  assert [pg.KINDS[k] for k in ENV.kinds] == ref.TRAIN_KINDS
  assert [pg.KINDS[k] for k in Playground(split="heldout").kinds] == (
      ref.HELD_OUT_KINDS + ["water"])
  assert len(pg.NAMES) == 64 and "carrot seed" in pg.NAMES and "baby lion" in pg.NAMES
  assert pg.GOAL_STRINGS == tuple(ref.goal_strings()) and ENV.num_goals == 86
  assert pg.GOAL_STRINGS[:2] == ("Grasp door", "Grasp chair")
  assert pg.GOAL_STRINGS[37] == "Grow door" and pg.GOAL_STRINGS[-1] == "Grow any living thing"
  assert "Grasp any animal" in pg.GOAL_STRINGS and "Grow any furniture" not in pg.GOAL_STRINGS
  for split, size in (("train", 88), ("test", 130), ("heldout", 46)):
    env = Playground(split=split)
    assert list(env.action_strings) == ref.action_strings(split)
    assert env.num_actions == size and env.max_symbols == len(env.symbol_slots) == 24
    # Prefix-free with the framework's terminator (the codec checks it) ...
    codec = TextCodec.for_env(ByteTokenizer(), env, action_terminator="</action>")
    check_prefix_free(codec.action_tokens, codec.action_lengths, env.action_strings)
    # ... though not as raw strings: "Go to carrot" starts "Go to carrot seed".
    with pytest.raises(ValueError, match="prefix"):
      TextCodec.for_env(ByteTokenizer(), env)
  assert ENV.action_strings[:3] == ("Grasp", "Go to door", "Go to chair")
  assert ENV.action_strings[-1] == "Release all" and "Go to carrot seed" in ENV.action_strings
  assert "Go to lamp" not in ENV.action_strings        # a held-out kind
  assert list(ENV.goal_horizons[:3]) == [3, 3, 3]
  assert ENV.goal_horizons[goal("Grow carrot")] == 6
  assert ENV.goal_horizons[goal("Grow cow")] == 10
  assert ENV.goal_horizons[goal("Grow lion")] == 15
  assert ENV.goal_horizons[goal("Grow chair")] == ENV.goal_horizons[goal("Grow water")] == 10
  assert ENV.goal_horizons[goal("Grow any animal")] == 10
  assert [ref.horizon(g) for g in pg.GOAL_STRINGS] == ENV.goal_horizons.tolist()
  assert "Release all" in ENV.instructions and "only when" in LZ.instructions
  for bad, match in ((dict(split="val"), "split"), (dict(release_mode="x"), "release_mode"),
                     (dict(max_turns=0), "max_turns"), (dict(horizons=(3, 6)), "horizons")):
    with pytest.raises(ValueError, match=match):
      Playground(**bad)
  assert Playground(horizons=[3, 6, 10, 15]) == ENV       # a list from a config is fine
  np.testing.assert_allclose(np.asarray(PARAMS.goal_probs),
                             np.asarray(pg.MAGELLAN_TRAIN_COUNTS) / 24992, rtol=1e-6)


def test_first_observation_and_example():
  state = scene(["water", "carrot", "chair", "cow"], "Grow carrot")
  assert text(state) == obs("Grow carrot", "water, carrot seed, chair, baby cow")
  # The mask in table order (kind order: furniture, plants, animals, water).
  assert legal(state) == ["Go to chair", "Go to carrot seed", "Go to baby cow", "Go to water"]
  steps = play(state, ["Go to water", "Grasp", "Go to carrot seed"])
  # The module docstring's example.
  assert text(steps[-1][0]) == obs("Grow carrot", "carrot seed, chair, baby cow",
                                   "carrot seed", ["water"])
  assert text(steps[0][0]) == obs("Grow carrot", "water, carrot seed, chair, baby cow",
                                  "water")
  assert legal(steps[0][0]) == ["Grasp", "Go to chair", "Go to carrot seed",
                                "Go to baby cow"]


# ---- growth chains by hand ------------------------------------------------


@pytest.mark.parametrize("env", [ENV, LZ], ids=["drop", "littlezoo"])
def test_water_grows_a_plant(env):
  state = scene(["water", "carrot", "chair", "cow"], "Grow carrot", env)
  steps = play(state, ["Go to water", "Grasp", "Go to carrot seed", "Release water"], env)
  for _, ts in steps[:3]:
    assert float(ts.reward) == 0.0 and not bool(ts.done) and not bool(ts.invalid)
  final, ts = steps[-1]
  assert float(ts.reward) == 1.0 and bool(ts.done) and bool(ts.won)
  assert not bool(ts.truncated) and int(ts.steps) == 4
  # The water is used up; the carrot grew and is named so.
  assert text(final, env) == obs("Grow carrot", "carrot, chair, baby cow", "carrot")
  assert {"Grow carrot", "Grow any plant", "Grow any living thing"} == achieved(final, env)
  # Stepping a finished episode changes nothing.
  (again, ts2), = play(final, ["Grasp"], env)
  jax.tree.map(np.testing.assert_array_equal, final, again)
  assert float(ts2.reward) == 0.0 and bool(ts2.done) and not bool(ts2.invalid)


@pytest.mark.parametrize("env", [ENV, LZ], ids=["drop", "littlezoo"])
def test_a_seed_brought_to_water_grows_too(env):
  state = scene(["water", "carrot", "chair", "cow"], "Grow carrot", env)
  *_, (final, ts) = play(state, ["Go to carrot seed", "Grasp", "Go to water",
                                 "Release carrot seed"], env)
  assert bool(ts.won) and int(ts.steps) == 4
  assert text(final, env) == obs("Grow carrot", "carrot, chair, baby cow", "carrot")


@pytest.mark.parametrize("env", [ENV, LZ], ids=["drop", "littlezoo"])
def test_herbivore_eats_a_grown_plant_and_carnivore_a_grown_herbivore(env):
  state = scene(["lion", "water", "carrot", "cow"], "Grow lion", env)
  plan = ["Go to water", "Grasp", "Go to carrot seed", "Release water",     # carrot grows
          "Grasp", "Go to baby cow", "Release carrot",                       # cow eats it
          "Grasp", "Go to baby lion", "Release cow"]                          # lion eats the cow
  steps = play(state, plan, env)
  assert [float(ts.reward) for _, ts in steps] == [0.0] * 9 + [1.0]
  assert [bool(ts.invalid) for _, ts in steps] == [False] * 10
  assert achieved(steps[3][0], env) == {"Grow carrot", "Grow any plant", "Grow any living thing"}
  assert text(steps[6][0], env) == obs("Grow lion", "baby lion, cow", "cow")
  assert achieved(steps[6][0], env) == {"Grow cow", "Grow any herbivore", "Grow any animal",
                                        "Grow any living thing"}
  assert text(steps[7][0], env) == obs("Grow lion", "baby lion", held=["cow"])
  assert achieved(steps[7][0], env) == {"Grasp cow", "Grasp any herbivore", "Grasp any animal",
                                        "Grasp any living thing"}
  final, ts = steps[-1]
  assert text(final, env) == obs("Grow lion", "lion", "lion")
  assert bool(ts.won) and int(ts.steps) == 10 and not bool(ts.truncated)
  assert "Grow lion" in achieved(final, env) and "Grow any carnivore" in achieved(final, env)
  # Growth is an event: the cow's Grow goal held only on its step.
  assert "Grow cow" not in achieved(steps[7][0], env)
  # Used-up objects are gone: no carrot, no cow, nothing to go to but the lion.
  assert legal(final, env) == ["Grasp"]


@pytest.mark.parametrize("env", [ENV, LZ], ids=["drop", "littlezoo"])
def test_what_does_not_grow(env):
  # A seed without water, a baby cow with a seed (not grown yet), water on a
  # chair: nothing grows. Held objects never meet what they are carried to.
  state = scene(["carrot", "cow", "chair", "water"], "Grow cow", env)
  steps = play(state, ["Go to carrot seed", "Grasp", "Go to baby cow", "Release carrot seed"],
               env)
  final, ts = steps[-1]
  assert not any(bool(t.grew.any()) for t, _ in steps)
  if env is ENV:
    assert not bool(ts.invalid)
    assert text(final, env) == obs("Grow cow", "carrot seed, baby cow, chair, water",
                                   "carrot seed, baby cow")
    assert legal(final, env) == ["Grasp", "Go to chair", "Go to water"]
  else:   # LittleZoo keeps holding what it cannot release
    assert bool(ts.invalid) and int(ts.steps) == 4
    assert text(final, env) == obs("Grow cow", "baby cow, chair, water", "baby cow",
                                   ["carrot seed"])
    assert legal(final, env) == ["Grasp", "Go to chair", "Go to water", "Release carrot seed"]
  state = scene(["water", "chair", "door", "sofa"], "Grow chair", env)
  steps = play(state, ["Go to water", "Grasp", "Go to chair", "Release water"], env)
  assert not any(bool(t.grew.any()) for t, _ in steps)
  assert bool(steps[-1][1].invalid) == (env is LZ)


def test_a_drop_can_grow_a_chain_in_one_step():
  # Water and a seed released together onto a baby cow: the seed grows and
  # the cow eats it, in the same step (drop mode only).
  state = scene(["water", "carrot", "cow", "lion"], "Grow cow")
  steps = play(state, ["Go to water", "Grasp", "Go to carrot seed", "Grasp",
                       "Go to baby cow", "Release all"])
  final, ts = steps[-1]
  assert text(steps[4][0]) == obs("Grow cow", "baby cow, baby lion", "baby cow",
                                  ["water", "carrot seed"])
  assert bool(ts.won) and int(ts.steps) == 6
  assert {"Grow carrot", "Grow cow"} <= achieved(final)      # the carrot grew, then was eaten
  assert text(final) == obs("Grow cow", "cow, baby lion", "cow")
  assert ref.solve(["water", "carrot", "cow", "lion"], "Grow cow", 10) == 6
  assert ref.solve(["water", "carrot", "cow", "lion"], "Grow lion", 15) == 9
  # LittleZoo never releases both: its optimum is 7.
  assert "Release all" not in legal(play(scene(["water", "carrot", "cow", "lion"], "Grow cow",
                                               LZ), ["Go to water", "Grasp",
                                                     "Go to carrot seed", "Grasp"], LZ)[-1][0],
                                      LZ)
  assert ref.solve(["water", "carrot", "cow", "lion"], "Grow cow", 10, "littlezoo") == 7


def test_grasp_holds_two_and_picks_in_listing_order():
  state = scene(["chair", "door", "sofa", "bed"], "Grow chair")
  steps = play(state, ["Go to chair", "Grasp", "Go to door", "Grasp", "Go to sofa"])
  assert text(steps[3][0]) == obs("Grow chair", "sofa, bed", held=["chair", "door"])
  assert "Grasp" not in legal(steps[-1][0])                 # both hands full
  assert legal(steps[-1][0]) == ["Go to bed", "Release door", "Release chair", "Release all"]
  # Drop both on the sofa, then pick up two of the three that lie there.
  state = scene(["chair", "door", "sofa", "bed"], "Grow chair")
  steps = play(state, ["Go to chair", "Grasp", "Go to door", "Grasp", "Go to sofa",
                       "Release all", "Grasp"])
  assert text(steps[5][0]) == obs("Grow chair", "chair, door, sofa, bed", "chair, door, sofa")
  assert text(steps[6][0]) == obs("Grow chair", "sofa, bed", "sofa", ["chair", "door"])
  # Go to names the first such object not under the agent.
  state = scene(["chair", "sofa", "chair", "bed"], "Grow chair")
  (s1, _), (s2, _) = play(state, ["Go to chair", "Go to chair"])
  assert int(s1.agent) == 0 and int(s2.agent) == 2


def test_an_illegal_action_uses_its_turn_and_changes_nothing():
  state = scene(["water", "carrot", "chair", "cow"], "Grasp chair")
  for action in ["Grasp", "Release water", "Release all", "Go to lion"]:
    (after, ts), = play(state, [action])
    assert bool(ts.invalid) and int(ts.steps) == 1 and not bool(ts.done)
    assert text(after) == text(state)
  for bad in (-1, ENV.num_actions, 10_000):
    after, ts = _step(KEY, state, jnp.int32(bad), PARAMS)
    assert bool(ts.invalid) and text(after) == text(state)


# ---- horizons and goals -----------------------------------------------------


@pytest.mark.parametrize("goal_text,horizon", [
    ("Grasp chair", 3), ("Grasp lion", 3), ("Grow carrot", 6), ("Grow cow", 10),
    ("Grow lion", 15), ("Grow chair", 10), ("Grow water", 10), ("Grow any plant", 6),
    ("Grow any animal", 10), ("Grasp any living thing", 3)])
def test_horizons_by_goal_type(goal_text, horizon):
  # Walking between two pieces of furniture never achieves these goals.
  state = scene(["sofa", "bed", "desk", "door"], goal_text)
  steps = play(state, ["Go to sofa", "Go to bed"] * 8)
  dones = [bool(ts.done) for _, ts in steps]
  assert dones == [False] * (horizon - 1) + [True] * (16 - horizon + 1)
  _, ts = steps[horizon - 1]
  assert bool(ts.truncated) and not bool(ts.won) and int(ts.steps) == horizon
  assert all(int(ts.steps) == horizon for _, ts in steps[horizon:])
  # The horizon follows the goal of ``with_goal`` and is cut to max_turns.
  assert int(ENV.horizon(ENV.with_goal(state, goal("Grow lion")))) == 15
  assert int(Playground(max_turns=4).horizon(state)) == min(horizon, 4)


def test_a_success_on_the_last_step_is_won_not_truncated():
  state = scene(["lion", "water", "carrot", "cow"], "Grasp cow")
  steps = play(state, ["Go to water", "Go to baby cow", "Grasp"])
  _, ts = steps[-1]
  assert bool(ts.won) and bool(ts.done) and not bool(ts.truncated) and int(ts.steps) == 3


def test_goal_is_the_first_symbol_and_can_be_swapped():
  state = scene(["water", "carrot", "chair", "cow"], "Grow carrot")
  state = play(state, ["Go to water", "Grasp"])[-1][0]
  symbols = ENV.render_symbols(state, PARAMS)
  assert int(symbols[0]) == int(state.goal) == goal("Grow carrot")
  other = ENV.with_goal(state, goal("Grasp water"))
  swapped = symbols.at[0].set(goal("Grasp water"))
  np.testing.assert_array_equal(swapped, ENV.render_symbols(other, PARAMS))
  assert ENV.symbols_to_text(swapped) == text(other)
  assert text(other).startswith("Goal: Grasp water\n")
  # Relabeled, the held water already achieves the new goal; the next
  # step pays it.
  assert bool(ENV.achieved_goals(state)[goal("Grasp water")])
  (_, ts), = play(other, ["Go to chair"])
  assert bool(ts.won) and float(ts.reward) == 1.0


# ---- random play against the reference ------------------------------------


@pytest.mark.parametrize("env", [LONG, LZ], ids=["drop", "littlezoo"])
def test_matches_python_reference_on_random_play(env):
  initial, init_views, actions, states, steps, views = _played(env, 1)
  counts = dict(won=0, truncated=0, invalid=0, grew=0, chains=0, two_held=0)
  for b in range(BATCH):
    py = PyPlayground(release_mode=env.release_mode, horizons=env.horizons)
    t0 = py.reset([pg.KINDS[k] for k in initial.kind[b]], pg.GOAL_STRINGS[initial.goal[b]])
    assert text(_index(initial, b), env) == t0 == env.symbols_to_text(init_views[0][b])
    assert init_views[1][b].tolist() == py.legal()
    assert not init_views[2][b].any()
    for t in range(TURNS):
      expected = py.step(env.action_strings[int(actions[b, t])])
      ts, s = _index(steps, b, t), _index(states, b, t)
      got = (float(ts.reward), bool(ts.done), bool(ts.won), bool(ts.truncated),
             bool(ts.invalid))
      assert got == expected, (b, t)
      assert int(ts.steps) == py.steps
      observation = text(s, env)
      assert observation == py.render_text(), (b, t)
      assert env.symbols_to_text(views[0][b, t]) == observation
      assert views[1][b, t].tolist() == py.legal(), (b, t)
      assert views[2][b, t].tolist() == py.achieved(), (b, t)
      counts["invalid"] += expected[4]
      counts["grew"] += len(py.grew)
      counts["chains"] += len(py.grew) > 1
      counts["two_held"] += len(py._held()) == 2
    counts["won"] += py.won
    counts["truncated"] += py.done and not py.won
  # Random play covers what the rules are about (seeds 1, 2: drop mode wins
  # 55 episodes with 156 growths, 24 of them in chains; LittleZoo mode 12
  # and 74, without chains).
  assert counts["truncated"] > 100 and counts["invalid"] > 100 and counts["two_held"] > 100
  if env is LONG:
    assert counts["won"] > 25 and counts["grew"] > 80 and counts["chains"] > 5
  else:
    assert counts["won"] > 4 and counts["grew"] > 30 and counts["chains"] == 0


def test_renderings_follow_the_symbol_slots():
  _, init_views, _, _, _, views = _played(LONG, 1)
  symbols = np.concatenate([init_views[0], views[0].reshape(-1, ENV.max_symbols)])
  for p, allowed in enumerate(ENV.symbol_slots):
    seen = set(np.unique(symbols[:, p]).tolist()) - {-1}
    assert seen <= set(allowed), (p, seen - set(allowed))
  # Every position but the separators and later entries of a list is set.
  always = [0, 1, 2, 9, 10, 11, 18, 19, 20, 23]
  assert (symbols[:, always] >= 0).all()
  assert (symbols[:, 0] < ENV.num_goals).all()
  # The codec sizes its buffer by the slots: every rendering fits, decodes to
  # its text, and some come close to filling it.
  codec = TextCodec.for_env(ByteTokenizer(), ENV, action_terminator="</action>")
  for row in symbols[::17]:
    ids = [int(t) for i in row if i >= 0
           for t in codec.symbol_tokens[i, :codec.symbol_lengths[i]]]
    assert len(ids) <= codec.max_tokens
    assert codec.tokenizer.decode(ids) == ENV.symbols_to_text(row)
  lengths = np.where(symbols >= 0, codec.symbol_lengths[np.maximum(symbols, 0)], 0)
  assert lengths.sum(1).max() <= codec.max_tokens
  # The widest: the longest goal, four long names seen, stood on and held
  # at once cannot all happen together, so the bound is loose by the
  # standing-on line; the goal and the first two lines are tight.
  assert lengths.sum(1).max() >= 0.5 * codec.max_tokens


def test_state_key_hashes_the_observation():
  _, init_views, _, _, _, views = _played(LONG, 1)
  symbols = np.concatenate([init_views[0], views[0].reshape(-1, ENV.max_symbols)])
  keys = np.concatenate([init_views[3], views[3].reshape(-1)])
  assert keys.dtype == np.uint32
  by_obs: dict[bytes, set[int]] = {}
  for row, k in zip(symbols, keys):
    by_obs.setdefault(row.tobytes(), set()).add(int(k))
  assert all(len(k) == 1 for k in by_obs.values())
  assert len({next(iter(k)) for k in by_obs.values()}) == len(by_obs) > 1000


# ---- the task distribution ------------------------------------------------


def _draw(env, seed, params=None, n=DRAWS):
  """The first ``n`` of DRAWS resets (every call the same shape)."""
  states, ts = _vreset(env)(jax.random.split(jax.random.key(seed), DRAWS),
                            env.default_params if params is None else params)
  return jax.tree.map(lambda x: x[:n], jax.device_get((states, ts)))


def _classes(states) -> np.ndarray:
  names = [pg.KINDS[k] for k in range(pg.NUM_KINDS)]
  return np.asarray([pg.TASK_CLASSES.index(ref.task_class([names[k] for k in kinds],
                                                           pg.GOAL_STRINGS[g]))
                     for kinds, g in zip(states.kind, states.goal)])


def _close(counts, probs, n):
  probs = np.asarray(probs, np.float64)
  sd = np.sqrt(np.maximum(probs * (1 - probs), 1e-12) / n)
  return np.abs(counts / n - probs) < Z * sd + 1e-9


def test_held_out_kinds_and_train_kinds_stay_apart():
  n = DRAWS
  held = ~pg.IS_TRAIN_KIND
  water = pg.KIND_CATEGORY == pg.SUPPLY
  train, _ = _draw(ENV, 20)
  assert pg.IS_TRAIN_KIND[train.kind].all()
  assert pg.IS_TRAIN_KIND[train.goal % 37].all() and (train.goal < 74).all()
  heldout, _ = _draw(Playground(split="heldout"), 21)
  assert (held | water)[heldout.kind].all() and (held | water)[heldout.goal % 37].all()
  assert held[heldout.kind].any(1).mean() > 0.9
  # MAGELLAN's test: the goal names a held-out kind; it is one of the
  # objects, the only held-out one, in a uniform slot; the rest train.
  test, _ = _draw(Playground(split="test"), 22)
  target = test.goal % 37
  assert held[target].all()
  assert (held[test.kind].sum(1) == 1).all()
  slot = np.argmax(test.kind == target[:, None], axis=1)
  assert (test.kind[np.arange(n), slot] == target).all()
  assert _close(np.bincount(slot, minlength=4), [0.25] * 4, n).all()
  assert len(set(target.tolist())) == 12


def test_task_classes_follow_the_goal_probabilities():
  # Default training distribution (MAGELLAN's goal set): 80% impossible.
  n = DRAWS
  states, ts = _draw(ENV, 30)
  cls = _classes(states)
  assert _close(np.bincount(cls, minlength=5), np.asarray(PARAMS.goal_probs), n).all()
  assert not ts.done.any() and (ts.reward == 0).all()
  assert (states.agent == pg.START).all() and not states.held.any()
  # Any probabilities; a class the split cannot draw is left out.
  probs = np.asarray([0.1, 0.2, 0.3, 0.15, 0.25], np.float32)
  cls = _classes(_draw(ENV, 31, PARAMS.replace(goal_probs=jnp.asarray(probs)))[0])
  assert _close(np.bincount(cls, minlength=5), probs, n).all()
  only = PARAMS.replace(goal_probs=jnp.asarray([0.0, 0.0, 0.0, 0.0, 1.0]))
  assert (_classes(_draw(ENV, 32, only, n=512)[0]) == 4).all()
  # The test split's default: every (scene, goal) tuple equally likely.
  test = Playground(split="test")
  cls = _classes(_draw(test, 33)[0])
  assert _close(np.bincount(cls, minlength=5), test.natural_goal_probs, n).all()
  assert abs(test.natural_goal_probs[1] - 0.5) < 1e-6   # its object is always there


@functools.lru_cache(maxsize=None)
def _train_task_marginals():
  """By brute force over every training (scene, goal) tuple: per task class,
  the distribution of (verb, goal category) and of the target's copies."""
  kinds = np.flatnonzero(pg.IS_TRAIN_KIND)
  scenes = np.asarray(list(itertools.product(kinds, repeat=4)), np.int32)     # 25^4
  cats = pg.KIND_CATEGORY[scenes]
  has = np.stack([(cats == c).any(1) for c in range(5)], 1)
  joint = np.zeros((5, 2, 5), np.int64)      # class, verb, goal category
  copies = np.zeros((5, 5), np.int64)       # class, target copies
  for o in kinds:
    count = (scenes == o).sum(1)
    present = count > 0
    cat = pg.KIND_CATEGORY[o]
    need = {pg.PLANT: [pg.SUPPLY], pg.HERBIVORE: [pg.SUPPLY, pg.PLANT],
            pg.CARNIVORE: [pg.SUPPLY, pg.PLANT, pg.HERBIVORE]}.get(int(cat))
    grow_ok = present & (np.all(has[:, need], 1) if need else False)
    for verb, label in ((0, np.where(present, 1, 0)),
                        (1, np.where(grow_ok, 1 + cat, 0))):
      for c in range(5):
        m = label == c
        joint[c, verb, cat] += m.sum()
        copies[c] += np.bincount(count[m], minlength=5)
  return joint, copies


def test_tasks_are_uniform_within_their_class():
  joint, copies = _train_task_marginals()
  np.testing.assert_array_equal(joint.sum((1, 2)), Playground()._table.total)
  probs = np.full(5, 0.2, np.float32)
  states, _ = _draw(ENV, 40, PARAMS.replace(goal_probs=jnp.asarray(probs)))
  cls = _classes(states)
  target = states.goal % 37
  verb = states.goal // 37
  cat = pg.KIND_CATEGORY[target]
  count = (states.kind == target[:, None]).sum(1)
  for c in range(5):
    m = cls == c
    got = np.bincount(verb[m] * 5 + cat[m], minlength=10)
    expected = (joint[c] / joint[c].sum()).reshape(-1)
    assert _close(got, expected, m.sum()).all(), (c, got, expected * m.sum())
    got = np.bincount(count[m], minlength=5)
    assert _close(got, copies[c] / copies[c].sum(), m.sum()).all(), (c, got)
    # Within a category, every goal kind equally often.
    for k in set(cat[m].tolist()):
      kinds = target[m & (cat == k)]
      size = len(set(kinds.tolist()))
      assert size == (1 if k == pg.SUPPLY else 6)
      assert _close(np.unique(kinds, return_counts=True)[1], [1 / size] * size,
                    len(kinds)).all()


def test_possible_tasks_are_solvable_and_impossible_ones_are_not():
  # LittleZoo's optimal lengths: 2 / 4 / 7 / 10 (release_mode "littlezoo",
  # where nothing stacks); impossible tasks cannot be solved at all.
  probs = jnp.asarray([0.3, 0.1, 0.2, 0.2, 0.2])
  states, _ = _draw(ENV, 50, PARAMS.replace(goal_probs=probs), n=60)   # LZ draws alike
  optimal = {1: 2, 2: 4, 3: 7, 4: 10}
  for kinds, g, c in zip(states.kind, states.goal, _classes(states)):
    names = [pg.KINDS[k] for k in kinds]
    length = ref.solve(names, pg.GOAL_STRINGS[g], 15, "littlezoo")
    assert length == optimal.get(int(c)), (names, pg.GOAL_STRINGS[g], length)
    assert c == 0 or length <= LZ.goal_horizons[g]


def test_reset_is_deterministic_and_step_compiles_once():
  a, _ = _draw(ENV, 60)
  b, _ = _draw(ENV, 60)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  c, _ = _draw(ENV, 61, n=64)
  assert len({k.tobytes() for k in c.kind}) > 60
  state = scene(["water", "carrot", "chair", "cow"], "Grow carrot")
  play(state, ["Go to water", "Grasp", "Go to carrot seed", "Release water"])
  # The step ignores its key.
  one = _step(jax.random.key(1), state, jnp.int32(1), PARAMS)
  two = _step(jax.random.key(2), state, jnp.int32(1), PARAMS)
  jax.tree.map(np.testing.assert_array_equal, one, two)
  assert _step._cache_size() == 1


def test_registered_splits():
  import envs_jax
  assert envs_jax.make("playground") == Playground()
  assert envs_jax.make("playground-test").split == "test"
  assert envs_jax.make("playground-heldout").split == "heldout"
