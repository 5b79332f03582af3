"""Tests for envs_jax.games.webshop (WebShop in JAX), its catalog module and
its Python reference."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs_jax
from envs_jax import webshop_catalog as wc
from envs_jax.games import webshop as W
from envs_jax.games.webshop import WebShop
from envs_jax.reference import webshop as ref
from envs_jax.reference.webshop import PyWebShop
from envs_jax.text import TextCodec
from lamer_jax.models.tokenizer import ByteTokenizer

ENV = envs_jax.make("webshop")                 # 2000 generated products
SMALL = envs_jax.make("webshop-small")         # 200
SAMPLE = envs_jax.make("webshop-sample")       # the packaged JSON sample
KEY = jax.random.key(0)                        # the game ignores its step keys


def _index(tree, *i):
  return jax.tree.map(lambda x: x[i], tree)


@functools.lru_cache(maxsize=None)
def _resets(env, n, seed):
  return jax.device_get(jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(
      jax.random.split(jax.random.key(seed), n), env.default_params))[0]


# ---- the catalog ------------------------------------------------------------------


def test_generated_catalog_shape_and_vocabulary():
  c = ENV.cat
  assert c.num_products == 2000 and len(c.products) == 2000
  assert 300 <= len(c.words) <= 2000          # a manageable static symbol table
  assert len(ENV.symbols) < 2500 and ENV.num_actions == len(ENV.action_strings)
  assert len({p["asin"] for p in c.products}) == 2000
  assert {p["category"] for p in c.products} == {"beauty", "electronics", "fashion", "food",
                                                 "furniture"}
  assert (c.price > 0).all() and (c.attrs[:, :3] >= 0).all()
  # Deterministic in the seed, different across seeds.
  assert wc.generate_products(50, 0) == wc.generate_products(50, 0)
  assert wc.generate_products(50, 0) != wc.generate_products(50, 1)


def test_loader_round_trips_the_sample(tmp_path):
  products = wc.load_products(wc.SAMPLE)
  assert 10 <= len(products) <= 20
  cat = wc.Catalog.build(products)
  for i, p in enumerate(products):
    got = cat.decode_product(i)
    assert got["asin"] == p["asin"] and got["category"] == p["category"]
    assert got["name"] == " ".join(wc.words(p["name"])[:wc.TITLE_WORDS])
    assert got["pricing"] == p["pricing"]
    assert got["attributes"] == p["attributes"]
    assert got["customization_options"] == p["customization_options"]
    assert got["query"] == " ".join(wc.words(p["query"]))
    assert got["full_description"] == " ".join(wc.words(p["full_description"])[
        :wc.DESCRIPTION_WORDS])
  assert cat.decode_product(1)["pricing"] == "$18.50"       # "$18.50 - $29.00": the lowest
  assert cat.decode_product(11)["pricing"] == "$15.25"      # a number
  assert cat.decode_product(0)["customization_options"] == {
      "color": ["ruby red", "nude beige", "berry"]}
  # Written back as JSON and read again: the same arrays.
  path = tmp_path / "again.json"
  path.write_text(json.dumps([cat.decode_product(i) for i in range(len(products))]))
  again = wc.Catalog.build(wc.load_products(path))
  for field in ("title", "price", "query", "levels_of", "attrs", "groups_of", "values_of",
                "bullets", "description", "title_key", "doc_words", "doc_weight"):
    np.testing.assert_array_equal(getattr(again, field), getattr(cat, field), err_msg=field)
  assert again.words == cat.words and again.values == cat.values


@pytest.mark.parametrize("change,field", [
    (lambda p: p.pop("pricing"), "pricing"),
    (lambda p: p.update(pricing="call us"), "pricing"),
    (lambda p: p.update(name=42), "name"),
    (lambda p: p.update(customization_options={"color": "red"}), "customization_options"),
    (lambda p: p.update(customization_options=[1, 2]), "customization_options"),
    (lambda p: p.update(attributes=["ok", 3]), "attributes"),
    (lambda p: p.update(small_description=7), "small_description"),
])
def test_a_malformed_product_names_product_and_field(tmp_path, change, field):
  data = wc.load_products(wc.SAMPLE)
  change(data[3])
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(data))
  with pytest.raises(ValueError) as err:
    wc.load_products(path)
  msg = str(err.value)
  assert "asin 'B07SAMPLE04', index 3" in msg and f"field {field!r}"[:-1] in msg


def test_malformed_files_and_duplicates(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not JSON"):
    wc.load_products(path)
  path.write_text("{}")
  with pytest.raises(ValueError, match="list of products"):
    wc.load_products(path)
  path.write_text(json.dumps([{"name": "a thing", "pricing": "$1"}]))
  with pytest.raises(ValueError, match=r"index 0\): field 'asin'"):
    wc.load_products(path)
  data = wc.load_products(wc.SAMPLE)[:2]
  data[1]["asin"] = data[0]["asin"]
  path.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="index 1.*'asin'.*repeats"):
    wc.load_products(path)


# ---- search ------------------------------------------------------------------------


def test_the_target_ranks_top_10_for_its_own_title():
  c = ENV.cat
  search = jax.jit(jax.vmap(ENV.search))
  results, _ = jax.device_get(search(jnp.asarray(c.title)))
  top10 = (results[:, :W.PER_PAGE] == np.arange(c.num_products)[:, None]).any(1)
  assert top10.mean() >= 0.95, top10.mean()


def test_search_matches_the_reference_bm25():
  py = PyWebShop(SMALL.cat.products)
  rng = np.random.default_rng(0)
  queries = np.full((64, 8), -1, np.int32)
  for q in queries:
    k = rng.integers(1, 8)
    q[:k] = rng.choice(len(SMALL.cat.words), k, replace=False)
  results, counts = jax.device_get(jax.jit(jax.vmap(SMALL.search))(jnp.asarray(queries)))
  for q, r, n in zip(queries, results, counts):
    expected = py.search([SMALL.cat.words[w] for w in q if w >= 0])
    assert r[r >= 0].tolist() == expected and min(int(n), 50) == len(expected)


# ---- the reward ----------------------------------------------------------------------


def test_reward_matches_the_python_formula():
  env, n = SMALL, 768
  c = env.cat
  states = _resets(env, n, 1)
  rng = np.random.default_rng(1)
  items, selected = [], np.full((n, c.groups_of.shape[1]), -1, np.int32)
  same_type = {q: np.flatnonzero(c.query == q) for q in set(c.query.tolist())}
  for b in range(n):
    t = int(states.target[b])
    u = rng.random()
    item = (t if u < 0.3 else int(rng.choice(same_type[c.query[t]])) if u < 0.7
            else int(rng.integers(c.num_products)))
    items.append(item)
    for g in range(c.groups_of.shape[1]):
      vals = c.values_of[item, g][c.values_of[item, g] >= 0]
      if len(vals) and rng.random() < 0.8:
        want = states.goal_values[b]
        hit = [v for v in vals if v in want]
        selected[b, g] = hit[0] if hit and rng.random() < 0.7 else rng.choice(vals)
  score, won, pct = jax.device_get(jax.jit(jax.vmap(env.purchase_score))(
      states, jnp.asarray(items), jnp.asarray(selected)))
  seen = set()
  for b in range(n):
    goal = env.goal_of(_index(states, b))
    chosen = [c.values[v] for v in selected[b] if v >= 0]
    expected = ref.score(c.products, goal, items[b], chosen)
    assert abs(float(score[b]) - expected) < 1e-6, (b, goal, items[b], chosen)
    assert bool(won[b]) == (expected == 1.0)
    assert int(pct[b]) == int(np.floor(expected * 100 + 0.5 + 1e-9))
    assert 0.0 <= expected <= 1.0
    seen.add(round(expected, 3))
  # Every r_type level and many partial scores occur.
  assert {0.0, 1.0} <= seen and len(seen) > 15
  assert 0.1 < won.mean() < 0.6


# ---- random play against the reference -----------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _play(env, batch, turns, task_key, action_key):
  """Random play: 90% a legal action (searches, buys and option clicks
  favoured), 10% any action."""
  params = env.default_params
  initial, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(task_key, batch),
                                                      params)
  bias = (jnp.zeros(env.num_actions).at[:W.NUM_SUGGESTIONS].set(1.0)
          .at[W.A_BUY].set(0.5).at[W.A_VALUE:].set(0.7))

  def one(s, k):
    k_a, k_mix, k_any = jax.random.split(k, 3)
    mask = env.action_mask(s, params)
    a = jax.random.categorical(k_a, jnp.where(mask, bias, -jnp.inf))
    wild = jax.random.randint(k_any, (), 0, env.num_actions)
    a = jnp.where(jnp.any(mask) & (jax.random.uniform(k_mix) < 0.9), a, wild)
    s, ts = env.step(KEY, s, a.astype(jnp.int32), params)
    return s, (a, s, ts, env.render_symbols(s, params), env.action_mask(s, params))

  def episode(s, k):
    return jax.lax.scan(one, s, jax.random.split(k, turns))[1]

  views = jax.vmap(lambda s: (env.render_symbols(s, params), env.action_mask(s, params)))(
      initial)
  return initial, views, jax.vmap(episode)(initial, jax.random.split(action_key, batch))


@functools.lru_cache(maxsize=None)
def _played(env, batch, seed):
  return jax.device_get(_play(env, batch, env.max_turns + 2, jax.random.key(seed),
                              jax.random.key(seed + 100)))


@pytest.mark.parametrize("env,batch", [(SMALL, 256), (SAMPLE, 64)],
                         ids=["generated", "sample"])
def test_random_play_matches_the_reference(env, batch):
  initial, (sym0, mask0), (actions, states, steps, symbols, masks) = _played(env, batch, 2)
  py = PyWebShop(env.cat.products, max_turns=env.max_turns)
  assert py.actions == list(env.action_strings)
  counts = dict(bought=0, won=0, truncated=0, invalid=0, item=0, sub=0, next=0)
  for b in range(batch):
    start = py.reset(env.goal_of(_index(initial, b)))
    assert env.symbols_to_text(sym0[b]) == start == env.render_text(_index(initial, b), None)
    assert mask0[b].tolist() == py.legal()
    for t in range(actions.shape[1]):
      action = env.action_strings[int(actions[b, t])]
      expected = py.step(action)
      ts = _index(steps, b, t)
      got = (float(ts.reward), bool(ts.done), bool(ts.won), bool(ts.truncated),
             bool(ts.invalid))
      assert got == expected, (b, t, action)
      assert int(ts.steps) == py.steps
      text = env.symbols_to_text(symbols[b, t])
      assert text == py.render_text(), (b, t, action)
      assert masks[b, t].tolist() == py.legal(), (b, t, action)
      counts["invalid"] += expected[4]
      counts["item"] += py.page == "item"
      counts["sub"] += py.page in ("description", "features")
      counts["next"] += action == "click[next >]" and not expected[4]
    counts["bought"] += py.bought
    counts["won"] += py.won
    counts["truncated"] += py.done and not py.bought
  assert all(v > 0 for v in counts.values()), counts
  assert counts["bought"] > batch // 10 and counts["truncated"] > batch // 10


def test_renderings_follow_the_slots_and_encode():
  initial, (sym0, _), (_, states, _, symbols, masks) = _played(SMALL, 256, 2)
  rows = np.concatenate([sym0, symbols.reshape(-1, SMALL.max_symbols)])
  for p, allowed in enumerate(SMALL.symbol_slots):
    seen = set(np.unique(rows[:, p]).tolist()) - {-1}
    assert seen <= set(allowed), (p, seen - set(allowed))
  # Masks agree with the pages: nothing once over; the search page offers
  # searches only; an item page offers the product's values.
  pages = states.page.reshape(-1)
  flat = masks.reshape(-1, SMALL.num_actions)
  over = (states.bought | (states.steps >= SMALL.max_turns)).reshape(-1)
  assert not flat[over].any()
  live = ~over
  on = lambda page: live & (pages == page)
  assert not flat[on(W.SEARCH)][:, W.NUM_SUGGESTIONS:].any()
  assert flat[on(W.ITEM)][:, W.A_BUY].all() and flat[on(W.ITEM)][:, W.A_VALUE:].any(1).all()
  assert not flat[on(W.RESULTS)][:, W.A_DESCRIPTION:].any()
  # The codec's buffer (sized by the slots) holds every rendering.
  codec = TextCodec.for_env(ByteTokenizer(), SMALL, action_terminator="</action>")
  lengths = np.where(rows >= 0, codec.symbol_lengths[np.maximum(rows, 0)], 0).sum(1)
  assert lengths.max() <= codec.max_tokens
  buf = jax.jit(jax.vmap(codec.encode))(jnp.asarray(rows[:64]))
  for i in (0, 5, 17, 63):
    assert codec.decode(_index(buf, i)) == SMALL.symbols_to_text(rows[i])


def test_state_key_hashes_the_observation():
  _, (sym0, _), (_, states, _, symbols, _) = _played(SMALL, 256, 2)
  keys = jax.device_get(jax.jit(jax.vmap(SMALL.state_key))(
      jax.tree.map(lambda x: x[:32].reshape(-1, *x.shape[2:]), states)))
  rows = symbols[:32].reshape(-1, SMALL.max_symbols)
  by_obs: dict[bytes, set] = {}
  for row, k in zip(rows, keys):
    by_obs.setdefault(row.tobytes(), set()).add(int(k))
  assert all(len(k) == 1 for k in by_obs.values()) and len(by_obs) > 100


# ---- episodes --------------------------------------------------------------------


def _at(env, seed=0):
  return jax.tree.map(lambda x: x[0], _resets(env, 1, seed))


def test_invalid_actions_truncation_and_finished_attempts():
  env, params = SMALL, SMALL.default_params
  step = jax.jit(env.step)
  state = _at(env)
  text = env.render_text(state, params)
  for a in (W.A_BUY, W.A_ITEM, W.A_VALUE, -1, env.num_actions):
    after, ts = step(KEY, state, jnp.int32(a), params)
    assert bool(ts.invalid) and int(ts.steps) == 1 and not bool(ts.done)
    assert env.render_text(after, params) == text
  s = state
  for t in range(env.max_turns):
    s, ts = step(KEY, s, jnp.int32(W.A_BACK if t % 2 else 0), params)
  assert bool(ts.done) and bool(ts.truncated) and not bool(ts.won)
  assert ts.done.dtype == jnp.bool_ and ts.reward.dtype == jnp.float32
  assert not env.action_mask(s, params).any()
  again, ts2 = step(KEY, s, jnp.int32(0), params)
  jax.tree.map(np.testing.assert_array_equal, again, s)
  assert float(ts2.reward) == 0.0 and not bool(ts2.invalid)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _success(env, n, key):
  """(oracle won, random won, oracle scores, oracle made an invalid move) of
  n goals."""
  params = env.default_params
  initial, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, n), params)

  def episode(s, k):
    def one(carry, kk):
      so, sr = carry
      so, ts = env.step(kk, so, env.oracle_action(so), params)
      mask = env.action_mask(sr, params)
      sr, _ = env.step(kk, sr, jax.random.categorical(
          kk, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32), params)
      return (so, sr), ts.invalid
    (so, sr), invalid = jax.lax.scan(one, (s, s), jax.random.split(k, env.max_turns))
    return so.won, sr.won, so.score, jnp.any(invalid)

  return jax.vmap(episode)(initial, jax.random.split(jax.random.fold_in(key, 1), n))


def test_oracle_succeeds_and_random_play_does_not():
  oracle, random, scores, invalid = jax.device_get(_success(ENV, 256, jax.random.key(7)))
  print(f"webshop, 256 goals: oracle success {oracle.mean():.3f} (mean score "
        f"{scores.mean():.3f}), random success {random.mean():.3f}")
  assert oracle.mean() >= 0.9 and not invalid.any()
  assert random.mean() < 0.1


def test_jit_and_vmap_over_1024_sessions():
  params = ENV.default_params

  @jax.jit
  def run(key):
    states, _ = jax.vmap(ENV.reset, in_axes=(0, None))(jax.random.split(key, 1024), params)
    for a in (1, W.A_ITEM + 2, W.A_BUY):
      states, ts = jax.vmap(ENV.step, in_axes=(None, 0, None, None))(
          KEY, states, jnp.int32(a), params)
    return states, ts, jax.vmap(ENV.render_symbols, in_axes=(0, None))(states, params)

  states, ts, symbols = jax.device_get(run(jax.random.key(3)))
  assert symbols.shape == (1024, ENV.max_symbols) and ts.done.shape == (1024,)
  assert states.bought.all() and ts.done.all() and not ts.invalid.any()
  # Bought without choosing options: partial scores, rewarded only at 1.
  assert (states.page == W.DONE).all() and (states.score > 0).mean() > 0.5
  np.testing.assert_array_equal(ts.reward, np.where(ts.won, 10.0, 0.0))
  np.testing.assert_array_equal(ts.won, states.score == 1.0)


def test_reward_modes():
  score_env = SAMPLE.replace(reward_mode="score")
  params = SAMPLE.default_params
  state = _at(SAMPLE, 3)
  outcomes = []
  for env in (SAMPLE, score_env):
    s = state
    for a in (0, W.A_ITEM, W.A_BUY):
      s, ts = env.step(KEY, s, jnp.int32(a), params)
    outcomes.append((float(ts.reward), float(s.score), bool(ts.won)))
  (r_success, score, won), (r_score, score2, _) = outcomes
  assert score == score2 and r_score == pytest.approx(score)
  assert r_success == (10.0 if won else 0.0)
  with pytest.raises(ValueError, match="reward_mode"):
    WebShop(reward_mode="money")


def test_goal_range_and_registration():
  params = SMALL.default_params.replace(goal_range=jnp.asarray([10, 20], jnp.int32))
  states, _ = jax.vmap(SMALL.reset, in_axes=(0, None))(
      jax.random.split(jax.random.key(4), 64), params)
  assert ((states.target >= 10) & (states.target < 20)).all()
  assert envs_jax.make("webshop") == WebShop()
  assert envs_jax.make("webshop-small").num_products == 200
  assert "search[1]" in ENV.instructions and ENV.max_turns == 12


def test_baselines_script_oracle_on_held_out_goals():
  """The oracle through the shared trial loop (experiments.webshop_baselines):
  every held-out goal bought at score 1 in its first attempt, no invalid move."""
  from experiments import webshop_baselines as wb
  env = SAMPLE.replace(reward_mode="score")
  oracle = wb.play(env, wb.OraclePolicy(env, env.max_turns), 32, 2, KEY)
  assert (oracle["pass@1"], oracle["score/mean"], oracle["invalid_rate"]) == (1.0, 1.0, 0.0)
  assert oracle["attempts/mean"] == 1.0 and oracle["return/mean"] == 1.0
  assert 3 <= oracle["turns/mean"] <= 6      # search, open, 0-3 options, buy
