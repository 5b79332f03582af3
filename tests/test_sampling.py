"""Tests for lamer_jax.models.sampling against cache-free full forward passes."""

from __future__ import annotations

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs_jax.text import check_prefix_free
from lamer_jax.models import llama
from lamer_jax.models import sampling as smp

_SCALE = 0.5  # large random weights: peaked, non-uniform next-token distributions
_TERM = 3     # terminator token appended to every candidate action


@functools.lru_cache(maxsize=None)
def _model(name: str, seed: int = 0):
  cfg = llama.TINY_CONFIGS[name]
  return cfg, llama.init_params(cfg, jax.random.PRNGKey(seed), scale=_SCALE)


_REF_LEN = 24  # every teacher-forced reference runs at this length: one compile


@functools.partial(jax.jit, static_argnames=("cfg",))
def _full_logits(params, cfg, tokens, token_mask):
  """Cache-free causal forward: float32[R, L, V]."""
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  logits, _, _ = llama.forward(params, cfg, tokens, positions, None, token_mask)
  return logits


def _teacher_forced(params, cfg, rows: list[list[int]]) -> np.ndarray:
  """Full-forward logits of right-padded rows: np.float32[R, _REF_LEN, V].

  Rows are padded to a multiple of 8 and to _REF_LEN tokens, so most calls
  reuse one compiled program; padding after a row cannot change its logits.
  """
  num = -(-len(rows) // 8) * 8
  tokens = np.zeros((num, _REF_LEN), np.int32)
  mask = np.zeros((num, _REF_LEN), bool)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
    mask[i, :len(row)] = True
  logits = _full_logits(params, cfg, jnp.asarray(tokens), jnp.asarray(mask))
  return np.asarray(logits)[:len(rows)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _naive_greedy(params, cfg, prompts: list[list[int]], steps: int):
  """Greedy decoding of each row alone, re-running the whole sequence every
  step (no cache, no padding inside a row): list of [steps] token lists."""
  seqs = [list(p) for p in prompts]
  for _ in range(steps):
    logits = _teacher_forced(params, cfg, seqs)
    for seq, row in zip(seqs, logits):
      seq.append(int(np.argmax(row[len(seq) - 1])))
  return [seq[len(p):] for seq, p in zip(seqs, prompts)]


def _prompts(seed: int, lengths: list[int], vocab: int) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(4, vocab, size=n).tolist() for n in lengths]


def _right_pad(rows: list[list[int]], length: int):
  tokens = np.zeros((len(rows), length), np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
    mask[i, :len(row)] = True
  return jnp.asarray(tokens), jnp.asarray(mask)


_PAD_LEN = 8   # prompts are right-padded to this many tokens
_MAX_LEN = 40  # cache slots; tests share these shapes to share compilations


def _prefill(params, cfg, rows):
  tokens, mask = _right_pad(rows, _PAD_LEN)
  cache = llama.init_cache(cfg, len(rows), _MAX_LEN)
  return smp.prefill(params, cfg, tokens, mask, smp.positions_from_mask(mask), cache)


# ----------------------------------------------------------------------------
# Free generation.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_greedy_matches_naive_loop_per_row(name):
  cfg, params = _model(name)
  prompts = _prompts(1, [7, 3, 5], cfg.vocab_size)  # right padding of 0, 4, 2
  cache, last_logits, next_pos = _prefill(params, cfg, prompts)
  np.testing.assert_array_equal(next_pos, [7, 3, 5])
  out = smp.generate(params, cfg, jax.random.PRNGKey(0), cache, last_logits,
                     next_pos, max_new_tokens=8, sampling=smp.GREEDY)
  for i, expected in enumerate(_naive_greedy(params, cfg, prompts, 8)):
    np.testing.assert_array_equal(out.tokens[i], expected)
  assert bool(out.mask.all())
  np.testing.assert_array_equal(out.lengths, [8, 8, 8])
  np.testing.assert_array_equal(out.logprobs, 0.0)  # point mass
  np.testing.assert_array_equal(out.next_positions, [15, 11, 13])
  assert int(out.cache.index) == _PAD_LEN + 8


def test_stop_tokens_mask_and_clean_cache_for_continuation():
  cfg, params = _model("tiny-llama")
  prompts = _prompts(2, [6, 2, 4], cfg.vocab_size)
  steps = 8
  free = _naive_greedy(params, cfg, prompts, steps)
  stop = (free[0][2], free[2][0])
  expected_len = []
  for seq in free:
    hits = [t for t, tok in enumerate(seq) if tok in stop]
    expected_len.append(hits[0] + 1 if hits else steps)
  assert expected_len[0] <= 3 and expected_len[2] == 1  # stops really happen

  cache, last_logits, next_pos = _prefill(params, cfg, prompts)
  out = smp.generate(params, cfg, jax.random.PRNGKey(0), cache, last_logits,
                     next_pos, max_new_tokens=steps, sampling=smp.GREEDY,
                     stop_tokens=stop, pad_id=0)
  np.testing.assert_array_equal(out.lengths, expected_len)
  np.testing.assert_array_equal(
      out.mask, np.arange(steps)[None, :] < np.asarray(expected_len)[:, None])
  for i, seq in enumerate(free):
    n = expected_len[i]
    np.testing.assert_array_equal(out.tokens[i, :n], seq[:n])
    np.testing.assert_array_equal(out.tokens[i, n:], 0)
  np.testing.assert_array_equal(
      out.next_positions, [len(p) + n for p, n in zip(prompts, expected_len)])

  # Continue the same cache with a right-padded chunk and more decoding: must
  # equal greedy decoding of each row's real tokens alone, so the stopped
  # rows' padding slots were invisible and positions advanced only for real
  # tokens.
  chunk = _prompts(3, [1, 3, 2], cfg.vocab_size)
  chunk_tokens, chunk_mask = _right_pad(chunk, 3)
  positions = smp.positions_from_mask(chunk_mask, out.next_positions)
  cache, last_logits, next_pos = smp.prefill(params, cfg, chunk_tokens, chunk_mask,
                                             positions, out.cache)
  more = smp.generate(params, cfg, jax.random.PRNGKey(1), cache, last_logits,
                      next_pos, max_new_tokens=5, sampling=smp.GREEDY)
  contexts = [p + free[i][:expected_len[i]] + chunk[i] for i, p in enumerate(prompts)]
  for i, expected in enumerate(_naive_greedy(params, cfg, contexts, 5)):
    np.testing.assert_array_equal(more.tokens[i], expected)


def test_sampled_logprobs_equal_full_forward_log_softmax():
  temperature = 1.0
  cfg, params = _model("tiny-qwen2")
  prompts = _prompts(4, [5, 2, 8], cfg.vocab_size)
  cache, last_logits, next_pos = _prefill(params, cfg, prompts)
  out = smp.generate(params, cfg, jax.random.PRNGKey(7), cache, last_logits,
                     next_pos, max_new_tokens=10,
                     sampling=smp.SamplingConfig(temperature=temperature))
  rows = [p + np.asarray(out.tokens[i]).tolist() for i, p in enumerate(prompts)]
  logits = _teacher_forced(params, cfg, rows)
  for i, prompt in enumerate(prompts):
    n = len(prompt)
    logp = _log_softmax(logits[i, n - 1:n + 9] / temperature)
    expected = np.take_along_axis(logp, np.asarray(out.tokens[i])[:, None],
                                  axis=-1)[:, 0]
    np.testing.assert_allclose(out.logprobs[i], expected, atol=1e-4)
  # Different keys give different samples (the sampler is not secretly greedy).
  cache, last_logits, next_pos = _prefill(params, cfg, prompts)
  other = smp.generate(params, cfg, jax.random.PRNGKey(8), cache, last_logits,
                       next_pos, max_new_tokens=10,
                       sampling=smp.SamplingConfig(temperature=temperature))
  assert not np.array_equal(out.tokens, other.tokens)


def test_generate_does_not_recompile_for_new_values():
  cfg, params = _model("tiny-llama")
  kwargs = dict(max_new_tokens=4, sampling=smp.SamplingConfig(temperature=0.9),
                stop_tokens=(5,))

  def run(seed):
    p = llama.init_params(cfg, jax.random.PRNGKey(seed), scale=_SCALE)
    prompts = _prompts(seed, [4, 2, 7], cfg.vocab_size)
    cache, last_logits, next_pos = _prefill(p, cfg, prompts)
    return smp.generate(p, cfg, jax.random.PRNGKey(seed), cache, last_logits,
                        next_pos, **kwargs)

  run(10)
  sizes = (smp.prefill._cache_size(), smp.generate._cache_size())
  out = run(11)
  assert (smp.prefill._cache_size(), smp.generate._cache_size()) == sizes
  assert out.tokens.shape == (3, 4)


# ----------------------------------------------------------------------------
# Token filters.
# ----------------------------------------------------------------------------


_sampling_logprobs = jax.jit(smp.sampling_logprobs, static_argnames=("sampling",))


def _softmax(x: np.ndarray) -> np.ndarray:
  return np.exp(_log_softmax(x))


def test_top_k_top_p_and_greedy_respect_allowed_set():
  rng = np.random.default_rng(0)
  logits = (3.0 * rng.standard_normal((6, 40))).astype(np.float32)
  allowed = rng.random((6, 40)) < 0.4
  allowed[:, 0] = True
  masked = np.where(allowed, logits, -np.inf)

  top_k = np.asarray(_sampling_logprobs(logits, smp.SamplingConfig(top_k=4), allowed))
  for row in range(6):
    expected = np.zeros(40, bool)
    expected[np.argsort(-masked[row])[:min(4, allowed[row].sum())]] = True
    np.testing.assert_array_equal(np.isfinite(top_k[row]), expected)

  top_p = np.asarray(_sampling_logprobs(logits, smp.SamplingConfig(top_p=0.6), allowed))
  for row in range(6):
    probs = _softmax(masked[row])
    kept = np.isfinite(top_p[row])
    assert kept.sum() >= 1 and not np.any(kept & ~allowed[row])
    assert probs[kept].sum() >= 0.6 - 1e-6
    assert probs[kept].sum() - probs[kept].min() < 0.6  # minimal nucleus
    assert probs[kept].min() >= probs[~kept].max(initial=0.0)
    np.testing.assert_allclose(np.exp(top_p[row][kept]).sum(), 1.0, rtol=1e-5)

  both = smp.SamplingConfig(temperature=1.5, top_k=3, top_p=0.8)
  support = np.isfinite(np.asarray(_sampling_logprobs(logits, both, allowed)))
  keys = jax.random.split(jax.random.PRNGKey(0), 300)
  sample = jax.jit(jax.vmap(lambda k: smp.sample_token(k, logits, both, allowed)))
  tokens, lps = map(np.asarray, sample(keys))
  assert np.all(support[np.arange(6)[None, :], tokens])
  assert np.all(np.isfinite(lps))
  assert len(np.unique(tokens[:, 0])) > 1

  greedy_tok, greedy_lp = smp.sample_token(keys[0], logits, smp.GREEDY, allowed)
  np.testing.assert_array_equal(greedy_tok, np.argmax(masked, axis=1))
  np.testing.assert_array_equal(greedy_lp, 0.0)


def test_sampling_config_validates():
  with pytest.raises(ValueError):
    smp.SamplingConfig(temperature=-1.0)
  with pytest.raises(ValueError):
    smp.SamplingConfig(top_p=0.0)
  with pytest.raises(ValueError):
    smp.SamplingConfig(top_k=-2)


# ----------------------------------------------------------------------------
# Constrained action decoding and candidate scoring.
# ----------------------------------------------------------------------------

# Candidates share prefixes (10 11 ..., 10 12 ...) and differ in length; the
# terminator makes "10 11" and "10 11 13" prefix-free.
_CANDIDATES = [[10, 11], [10, 12], [10, 11, 13], [20], [21, 22, 23, 24]]


def _table():
  rows = [c + [_TERM] for c in _CANDIDATES]
  la = max(map(len, rows))
  tokens = np.zeros((len(rows), la), np.int32)
  for a, row in enumerate(rows):
    tokens[a, :len(row)] = row
  lengths = np.array([len(r) for r in rows], np.int32)
  check_prefix_free(tokens, lengths)
  return tokens, lengths


def _action_masks(batch: int) -> np.ndarray:
  patterns = np.array([[1, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1],
                       [1, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0], [0, 1, 1, 1, 0]], bool)
  return patterns[np.arange(batch) % len(patterns)]


_BATCH = 32
_ACTION_SAMPLING = smp.SamplingConfig(temperature=1.5)
_action_token_logprobs = jax.jit(smp.action_token_logprobs,
                                 static_argnames=("temperature",))
_PROMPT_LEN = 5


def _decode(params, cfg, prompts, action_mask, key, sampling):
  table_tokens, table_lengths = _table()
  cache, last_logits, next_pos = _prefill(params, cfg, prompts)
  out = smp.decode_action(params, cfg, key, cache, last_logits, next_pos,
                          jnp.asarray(table_tokens), jnp.asarray(table_lengths),
                          jnp.asarray(action_mask), sampling)
  return out, next_pos


def test_decode_action_yields_valid_allowed_candidates():
  cfg, params = _model("tiny-qwen2")
  table_tokens, table_lengths = _table()
  la = table_tokens.shape[1]
  action_mask = _action_masks(_BATCH)
  prompt_lengths = [1 + i % _PROMPT_LEN for i in range(_BATCH)]
  chosen = np.zeros(len(_CANDIDATES), int)
  for seed in range(6):
    prompts = _prompts(100 + seed, prompt_lengths, cfg.vocab_size)
    out, next_pos = _decode(params, cfg, prompts, action_mask,
                            jax.random.PRNGKey(seed), _ACTION_SAMPLING)
    index = np.asarray(out.index)
    n = np.asarray(out.mask).sum(1)
    for b in range(_BATCH):
      if not action_mask[b].any():
        assert n[b] == 0 and float(out.logprob[b]) == 0.0
        assert int(out.next_positions[b]) == int(next_pos[b])
        continue
      a = index[b]
      assert action_mask[b, a], (b, a)
      assert n[b] == table_lengths[a]
      np.testing.assert_array_equal(out.tokens[b, :n[b]], table_tokens[a, :n[b]])
      np.testing.assert_array_equal(out.tokens[b, n[b]:], 0)
      np.testing.assert_array_equal(out.mask[b], np.arange(la) < n[b])
      assert int(out.next_positions[b]) == int(next_pos[b]) + n[b]
      chosen[a] += 1
    np.testing.assert_allclose(out.logprob, np.asarray(out.token_logprobs).sum(1))
    assert np.all(np.asarray(out.token_logprobs) <= 0.0)
    assert int(out.cache.index) == _PAD_LEN + la
  assert np.all(chosen > 0), chosen  # every candidate gets sampled somewhere


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_decode_action_on_the_table_vocabulary_equals_the_full_projection(
    name, temperature):
  cfg, params = _model(name)
  table_tokens, table_lengths = _table()
  vocab = smp.action_vocab(table_tokens, table_lengths)
  np.testing.assert_array_equal(vocab, sorted({t for c in _CANDIDATES for t in c}
                                              | {_TERM}))
  action_mask = _action_masks(_BATCH)
  prompts = _prompts(500, [1 + i % _PROMPT_LEN for i in range(_BATCH)], cfg.vocab_size)
  sampling = smp.SamplingConfig(temperature=temperature)
  outs = []
  for subset in (None, jnp.asarray(vocab)):
    cache, last_logits, next_pos = _prefill(params, cfg, prompts)
    outs.append(smp.decode_action(
        params, cfg, jax.random.PRNGKey(7), cache, last_logits, next_pos,
        jnp.asarray(table_tokens), jnp.asarray(table_lengths),
        jnp.asarray(action_mask), sampling, vocab_subset=subset))
  full, sub = outs
  for field in ("index", "tokens", "mask", "next_positions"):
    np.testing.assert_array_equal(getattr(sub, field), getattr(full, field), field)
  np.testing.assert_allclose(sub.token_logprobs, full.token_logprobs, atol=1e-5)
  np.testing.assert_allclose(sub.last_logits, full.last_logits, atol=1e-4)
  np.testing.assert_allclose(sub.cache.k, full.cache.k, atol=1e-5)
  assert len(set(np.asarray(full.index)[action_mask.any(1)].tolist())) > 1


def _candidate_logprobs(params, cfg, prompt, action_mask, temperature):
  """Constrained log pi(a) of every candidate via teacher-forced logits: [A]."""
  table_tokens, table_lengths = _table()
  la = table_tokens.shape[1]
  rows = [prompt + table_tokens[a, :table_lengths[a]].tolist()
          for a in range(len(_CANDIDATES))]
  logits = _teacher_forced(params, cfg, rows)
  n = len(prompt)
  token_mask = np.arange(la)[None, :] < table_lengths[:, None]
  lp = _action_token_logprobs(
      jnp.asarray(logits[:, n - 1:n - 1 + la]), jnp.asarray(table_tokens),
      jnp.asarray(token_mask), jnp.asarray(table_tokens), jnp.asarray(table_lengths),
      jnp.asarray(np.broadcast_to(action_mask, (len(_CANDIDATES), len(action_mask)))),
      temperature)
  return np.asarray(lp).sum(1)


def test_recomputed_action_logprobs_match_sampling_time():
  temperature = _ACTION_SAMPLING.temperature
  cfg, params = _model("tiny-qwen2")
  table_tokens, table_lengths = _table()
  la = table_tokens.shape[1]
  action_mask = _action_masks(_BATCH)
  prompts = _prompts(200, [1 + i % _PROMPT_LEN for i in range(_BATCH)],
                     cfg.vocab_size)
  out, _ = _decode(params, cfg, prompts, action_mask, jax.random.PRNGKey(3),
                   _ACTION_SAMPLING)
  tokens = np.asarray(out.tokens)
  rows = [p + tokens[b].tolist() for b, p in enumerate(prompts)]
  full = _teacher_forced(params, cfg, rows)
  logits = np.stack([full[b, len(p) - 1:len(p) - 1 + la]
                     for b, p in enumerate(prompts)])
  recomputed = _action_token_logprobs(
      jnp.asarray(logits), out.tokens, out.mask, jnp.asarray(table_tokens),
      jnp.asarray(table_lengths), jnp.asarray(action_mask), temperature)
  np.testing.assert_allclose(recomputed, out.token_logprobs, atol=1e-5)
  # The loss differentiates through it: gradients must be finite everywhere,
  # also for padding steps and rows without an allowed candidate.
  grad = jax.grad(lambda x: _action_token_logprobs(
      x, out.tokens, out.mask, jnp.asarray(table_tokens), jnp.asarray(table_lengths),
      jnp.asarray(action_mask), temperature).sum())(jnp.asarray(logits))
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(out.mask)], 0.0)

  # The constrained policy is a distribution over allowed candidates, and the
  # sampled candidate's log-prob is its entry.
  for b in range(8):
    if not action_mask[b].any():
      continue
    cand = _candidate_logprobs(params, cfg, prompts[b], action_mask[b], temperature)
    np.testing.assert_allclose(np.exp(cand).sum(), 1.0, atol=1e-5)
    assert np.all(np.exp(cand[~action_mask[b]]) == 0.0)
    np.testing.assert_allclose(cand[int(out.index[b])], out.logprob[b], atol=1e-5)


def test_decode_action_frequencies_follow_candidate_probabilities():
  cfg, params = _model("tiny-qwen2")
  action_mask = np.ones((_BATCH, len(_CANDIDATES)), bool)
  action_mask[:, 3] = False
  prompt = _prompts(300, [_PROMPT_LEN], cfg.vocab_size)[0]
  counts = np.zeros(len(_CANDIDATES))
  for seed in range(16):
    out, _ = _decode(params, cfg, [prompt] * _BATCH, action_mask,
                     jax.random.PRNGKey(seed), _ACTION_SAMPLING)
    counts += np.bincount(np.asarray(out.index), minlength=len(_CANDIDATES))
  probs = np.exp(_candidate_logprobs(params, cfg, prompt, action_mask[0],
                                     _ACTION_SAMPLING.temperature))
  freqs = counts / counts.sum()
  assert counts[3] == 0
  assert 0.5 * np.abs(freqs - probs).sum() < 0.06, (freqs, probs)


@pytest.mark.parametrize("chunk", [None, 2])
def test_score_candidates_equals_teacher_forced_sums(chunk):
  cfg, params = _model("tiny-llama")
  table_tokens, table_lengths = _table()
  la = table_tokens.shape[1]
  prompts = _prompts(400, [5, 2, 4], cfg.vocab_size)
  cache, last_logits, next_pos = _prefill(params, cfg, prompts)
  scores = smp.score_candidates(params, cfg, cache, last_logits, next_pos,
                                jnp.asarray(table_tokens), jnp.asarray(table_lengths),
                                candidate_chunk=chunk)
  assert scores.shape == (3, len(_CANDIDATES))
  for b, prompt in enumerate(prompts):
    n = len(prompt)
    rows = [prompt + table_tokens[a, :table_lengths[a]].tolist()
            for a in range(len(_CANDIDATES))]
    logp = _log_softmax(_teacher_forced(params, cfg, rows))
    for a in range(len(_CANDIDATES)):
      expected = sum(logp[a, n - 1 + j, table_tokens[a, j]]
                     for j in range(table_lengths[a]))
      np.testing.assert_allclose(scores[b, a], expected, atol=1e-4, rtol=1e-5)
  # The prompt cache was only read: decoding from it still works.
  assert int(cache.index) == _PAD_LEN


def test_check_prefix_free_rejects_prefixes_and_duplicates():
  with pytest.raises(ValueError, match="prefix"):
    check_prefix_free([[1, 2, 0], [1, 2, 3]], [2, 3])
  with pytest.raises(ValueError, match="prefix"):
    check_prefix_free([[4, 5], [4, 5]], [2, 2])
  with pytest.raises(ValueError, match="lengths"):
    check_prefix_free([[4, 5]], [3])
  check_prefix_free([[1, 2, 0], [1, 3, 4]], [2, 3])


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(st.lists(st.lists(st.integers(4, 9), min_size=1, max_size=4),
                           min_size=1, max_size=6, unique_by=tuple))
def test_terminated_candidates_are_prefix_free(candidates):
  rows = [c + [_TERM] for c in candidates]
  tokens = np.zeros((len(rows), 5), np.int32)
  for a, row in enumerate(rows):
    tokens[a, :len(row)] = row
  lengths = np.array([len(r) for r in rows])
  check_prefix_free(tokens, lengths)
  if len(rows) > 1:  # dropping the terminators breaks it whenever one is a prefix
    bare = [tuple(c) for c in candidates]
    has_prefix = any(x != y and y[:len(x)] == x for x in bare for y in bare)
    if has_prefix:
      with pytest.raises(ValueError):
        check_prefix_free(tokens, lengths - 1)
