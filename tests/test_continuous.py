"""Tests for envs_jax.continuous (ORBIT's continuous trials) and its metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax.continuous import Continuous
from lamer_jax import evaluation
from lamer_jax.agent.trial import play_trials
from experiments.random_baseline import RandomPolicy

K = 3
RPS = Continuous(envs_jax.make("rps"), episodes=K)
GUESS = Continuous(envs_jax.make("guess", num_options=4, max_turns=2), episodes=K)
BATCH = 64


def _random_play(env, seed=0, turns=None):
  """BATCH random trials of ``turns`` (default max_turns + 2) steps: states
  [B, T+1] (the reset state first), TimeSteps [B, T] and actions [B, T]."""
  turns = env.max_turns + 2 if turns is None else turns
  params = env.default_params

  @jax.jit
  def play(key):
    k_task, k_step, k_act = jax.random.split(key, 3)
    init, _ = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(k_task, BATCH), params)

    def one(s, xs):
      key, akey = xs
      mask = env.action_mask(s, params)
      action = jax.random.categorical(akey, jnp.where(mask, 0.0, -jnp.inf))
      s, ts = env.step(key, s, action, params)
      return s, (s, ts, action)

    def trial(s0, keys, akeys):
      _, (states, steps, actions) = jax.lax.scan(one, s0, (keys, akeys))
      states = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), s0, states)
      return states, steps, actions

    keys = jax.random.split(k_step, BATCH * turns).reshape(BATCH, turns)
    akeys = jax.random.split(k_act, BATCH * turns).reshape(BATCH, turns)
    return jax.vmap(trial)(init, keys, akeys)

  return jax.device_get(play(jax.random.key(seed)))


RPS_PLAY = _random_play(RPS)
GUESS_PLAY = _random_play(GUESS)


def _at(tree, *i):
  return jax.tree.map(lambda x: x[i], tree)


def test_shape_and_names():
  assert RPS.max_turns == K * 5 and RPS.name == "rps-x3"
  assert RPS.action_strings == envs_jax.make("rps").action_strings
  assert len(RPS.symbol_slots) == RPS.max_symbols == 2 * 13 + 4
  assert "[Episode k] New episode begins." in RPS.instructions


@pytest.mark.parametrize("bad, match", [
    (dict(episodes=0), "episodes must be an integer >= 1"),
    (dict(episodes=2.0), "episodes must be an integer >= 1"),
    (dict(game="rps"), "wraps an envs_jax Environment"),
    (dict(game=RPS), "cannot wrap a Continuous"),
])
def test_bad_arguments(bad, match):
  args = dict(game=envs_jax.make("rps"), episodes=2) | bad
  with pytest.raises(ValueError, match=match):
    Continuous(**args)


@pytest.mark.parametrize("env, play", [(RPS, RPS_PLAY), (GUESS, GUESS_PLAY)],
                         ids=["rps", "guess"])
def test_episodes_replay_the_task_and_count(env, play):
  states, steps, _ = play
  game = env.game
  for b in range(BATCH):
    init = _at(states, b, 0)
    episode_turns, episode, turn_in_episode = [], 0, 0
    for t in range(steps.reward.shape[1]):
      before, after, ts = _at(states, b, t), _at(states, b, t + 1), _at(steps, b, t)
      if bool(before.done):
        # A finished trial stays as it is.
        assert not bool(ts.reward) and bool(ts.done)
        assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
        continue
      turn_in_episode += 1
      ended = int(after.episode) == episode + 1
      # Reward 1 exactly on the turn that solves an episode.
      assert float(ts.reward) == float(ended and bool(after.solved[episode]))
      if ended:
        episode_turns.append(turn_in_episode)
        assert int(after.steps[episode]) == turn_in_episode <= game.max_turns
        if not bool(after.done):
          # The next episode restarts from the task's initial state.
          assert jax.tree.all(jax.tree.map(np.array_equal, after.game, init.game))
          assert bool(after.fresh)
        episode, turn_in_episode = episode + 1, 0
      else:
        assert not bool(after.fresh)
      assert int(after.turns) == int(ts.steps) == sum(episode_turns) + turn_in_episode
      assert bool(ts.won) == bool(np.any(after.solved))
      assert bool(ts.done) == (episode == K)
    # Within the cap, every trial plays exactly K episodes.
    assert episode == K, (b, episode_turns)
    final = _at(states, b, -1)
    assert float(steps.reward[b].sum()) == float(final.solved.sum())


def test_hidden_task_is_the_same_in_every_episode():
  states = RPS_PLAY[0]
  probs = states.game.probs          # [B, T+1, 3]
  assert np.array_equal(probs, np.broadcast_to(probs[:, :1], probs.shape))


@pytest.mark.parametrize("env, play", [(RPS, RPS_PLAY), (GUESS, GUESS_PLAY)],
                         ids=["rps", "guess"])
def test_render_text_matches_symbols(env, play):
  states = play[0]
  params = env.default_params
  render = jax.jit(jax.vmap(env.render_symbols, in_axes=(0, None)))
  for t in range(0, states.turns.shape[1], 3):
    st = _at(states, slice(0, 16), t)
    symbols = jax.device_get(render(st, params))
    for b in range(16):
      assert (env.symbols_to_text(symbols[b])
              == env.render_text(_at(st, b), params))


def test_rendering_of_an_episode_boundary():
  env, params = GUESS, GUESS.default_params
  state, _ = env.reset(jax.random.key(3), params)
  text = env.render_text(state, params)
  assert text.startswith("[Episode 1] New episode begins.\n")
  first = env.game.render_text(state.game, params)
  assert text.endswith(first)
  wrong = (int(state.game.secret) + 1) % 4
  for _ in range(env.game.max_turns):    # two wrong guesses end episode 1
    state, ts = env.step(jax.random.key(0), state, jnp.int32(wrong), params)
  assert int(state.episode) == 1 and not bool(ts.done)
  text = env.render_text(state, params)
  assert "Result: not solved.\n[Episode 2] New episode begins.\n" in text
  assert text.endswith(first)        # the same task again
  state, ts = env.step(jax.random.key(0), state, state.game.secret, params)
  assert float(ts.reward) == 1.0
  text = env.render_text(state, params)
  assert "Result: solved.\n[Episode 3] New episode begins.\n" in text
  codes = env.symbols_to_text(env.render_symbols(state, params))
  assert codes == text


def test_trial_loop_records_episode_outcomes_and_metrics():
  env, params = RPS, RPS.default_params
  rows = 32
  init, _ = jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(jax.random.key(1), rows), params)
  result = jax.jit(lambda k: play_trials(
      env, params, init, RandomPolicy(env.max_turns), jax.random.split(k, 1),
      env.max_turns))(jax.random.key(2))
  solved = np.asarray(result.episodes["solved"])        # [R, 1, K]
  steps = np.asarray(result.episodes["steps"])
  assert solved.shape == steps.shape == (rows, 1, K)
  rewards = np.asarray(jnp.where(result.records.valid, result.records.reward, 0))
  np.testing.assert_array_equal(rewards.sum((1, 2)), solved.sum((1, 2)))
  np.testing.assert_array_equal(result.records.valid.sum((1, 2)), steps.sum((1, 2)))
  assert np.all((steps >= 3) & (steps <= 5))            # an RPS match: 3-5 rounds
  m = evaluation.episode_metrics(result.episodes["solved"], result.episodes["steps"],
                                 result.attempt_valid)
  for k in range(K):
    assert float(m[f"episode_success/episode_{k + 1}"]) == pytest.approx(
        solved[:, 0, k].mean())
    assert float(m[f"episode_steps/episode_{k + 1}"]) == pytest.approx(
        steps[:, 0, k].mean())
  assert float(m["regret/mean"]) == pytest.approx((K - solved.sum((1, 2))).mean())
  assert float(m["episode_improvement"]) == pytest.approx(
      solved[:, 0, -1].mean() - solved[:, 0, 0].mean())
  assert float(m["episode_success/any"]) == pytest.approx(solved.any((1, 2)).mean())


def test_episode_metrics_skip_attempts_that_did_not_run():
  solved = jnp.array([[[True, False], [True, True]]])       # [1, 2, 2]
  steps = jnp.array([[[2, 5], [1, 1]]], jnp.int32)
  valid = jnp.array([[True, False]])
  m = evaluation.episode_metrics(solved, steps, valid)
  assert float(m["episode_success/episode_2"]) == 0.0
  assert float(m["episode_steps/episode_2"]) == 5.0
  assert float(m["regret/mean"]) == 1.0
