"""A ``transformers`` fast tokenizer rebuilt from a GGUF file's metadata.

A GGUF carries no ``tokenizer.json``: llama.cpp stores the vocabulary, the BPE
merges, per-token types, special-token ids and the chat template as metadata
under ``tokenizer.*`` keys. This module turns a byte-level BPE vocabulary
(``tokenizer.ggml.model == "gpt2"``, e.g. SmolLM2) back into a
``tokenizers.Tokenizer`` and wraps it, with its chat template, in a
``transformers.PreTrainedTokenizerFast``. Neither torch nor network is needed.

``ByteTokenizer`` is a tokenizer without a vocabulary file (UTF-8 bytes plus a
few special tokens) for tiny from-scratch models and fast tests.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import gguf
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors
import transformers

# llama.cpp token types (``tokenizer.ggml.token_type``).
_CONTROL = 3
_USER_DEFINED = 4

# Pre-tokenizer names (``tokenizer.ggml.pre``) whose llama.cpp regex list is the
# GPT-2 regex, optionally preceded by a split of every digit into its own piece.
_GPT2_PRE = frozenset({"default", "gpt2", "mpt", "olmo"})
_DIGITS_THEN_GPT2_PRE = frozenset({"smollm", "starcoder", "refact", "codeshell"})


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
  """A metadata value as a Python scalar, string or list (``default`` if absent)."""
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
  """The ``tokenizers`` equivalent of llama.cpp's pre-tokenizer ``pre``."""
  # No prefix space: llama.cpp's BPE never prepends one, and neither do the HF
  # tokenizers these files were converted from.
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _GPT2_PRE:
    return byte_level
  if pre in _DIGITS_THEN_GPT2_PRE:
    # llama.cpp isolates each digit before the GPT-2 regex (as did the original
    # SmolLM2 tokenizer.json). It only matters for text such as "  1", where a
    # digit follows several spaces.
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level])
  raise ValueError(
      f"GGUF pre-tokenizer {pre!r} is not supported; supported: "
      f"{sorted(_GPT2_PRE | _DIGITS_THEN_GPT2_PRE)}")


def tokenizer_from_gguf(
    reader_or_path: gguf.GGUFReader | str | os.PathLike,
) -> transformers.PreTrainedTokenizerFast:
  """Builds the fast tokenizer described by a GGUF file's metadata.

  Args:
    reader_or_path: an open ``gguf.GGUFReader`` or the path of a ``.gguf`` file.

  Returns:
    A ``transformers.PreTrainedTokenizerFast``: byte-level BPE from
    ``tokenizer.ggml.tokens`` and ``.merges``, control tokens (type 3) as special
    tokens, bos/eos/unk/pad from the ``*_token_id`` keys, and the chat template
    from ``tokenizer.chat_template``; BOS is prepended by ``encode`` only if
    ``tokenizer.ggml.add_bos_token`` says so. ``len(tokenizer)`` equals the
    number of tokens in the file.

  Raises:
    ValueError: the file holds no tokenizer, or one that is not byte-level BPE.
  """
  reader = (reader_or_path if isinstance(reader_or_path, gguf.GGUFReader)
            else gguf.GGUFReader(os.fspath(reader_or_path)))
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"only byte-level BPE GGUF tokenizers (tokenizer.ggml.model "
                     f"'gpt2') are supported, this file has {kind!r}")
  tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
  merges: list[str] = _field(reader, "tokenizer.ggml.merges", [])
  token_types: list[int] = _field(reader, "tokenizer.ggml.token_type",
                                  [1] * len(tokens))
  pre = _field(reader, "tokenizer.ggml.pre", "default")

  vocab = {token: index for index, token in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise ValueError("GGUF vocabulary holds duplicate tokens")
  bpe = models.BPE(vocab=vocab,
                   merges=[tuple(merge.split(" ", 1)) for merge in merges],
                   fuse_unk=False)
  backend = tokenizers.Tokenizer(bpe)
  backend.pre_tokenizer = _pre_tokenizer(pre)
  backend.decoder = decoders.ByteLevel()
  # Control tokens (<|im_start|>, ...) must be matched whole in raw text, and
  # user-defined ones too (llama.cpp does so), the latter without being special.
  backend.add_special_tokens([
      tokenizers.AddedToken(tok, special=True, normalized=False)
      for tok, typ in zip(tokens, token_types) if typ == _CONTROL])
  backend.add_tokens([
      tokenizers.AddedToken(tok, special=False, normalized=False)
      for tok, typ in zip(tokens, token_types) if typ == _USER_DEFINED])

  def token_for(key: str) -> str | None:
    index = _field(reader, f"tokenizer.ggml.{key}")
    return None if index is None else tokens[int(index)]

  bos = token_for("bos_token_id")
  if _field(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None:
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, vocab[bos])])

  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend,
      bos_token=bos,
      eos_token=token_for("eos_token_id"),
      unk_token=token_for("unknown_token_id"),
      pad_token=token_for("padding_token_id"),
      chat_template=_field(reader, "tokenizer.chat_template"),
      name_or_path=_field(reader, "general.name", "gguf"),
  )


class ByteTokenizer:
  """UTF-8 bytes as tokens 0..255, plus ``<pad>`` 256, ``<|im_start|>`` 257 and
  ``<|im_end|>`` 258 (259 ids, matching the tiny model configs).

  Implements the small part of the ``transformers`` tokenizer interface that
  lamer-jax uses: ``encode``, ``decode``, ``apply_chat_template``, ``len()`` and
  the special-token ids.
  """

  pad_token_id = 256
  bos_token_id = 257
  eos_token_id = 258
  _specials = {256: "<pad>", 257: "<|im_start|>", 258: "<|im_end|>"}

  def __len__(self) -> int:
    return 259

  @property
  def vocab_size(self) -> int:
    return 259

  @property
  def name_or_path(self) -> str:
    return "byte"

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    del add_special_tokens  # no implicit specials, like the chat models we use
    out: list[int] = []
    inv = {v: k for k, v in self._specials.items()}
    i = 0
    while i < len(text):
      for tok, tid in inv.items():
        if text.startswith(tok, i):
          out.append(tid)
          i += len(tok)
          break
      else:
        out.extend(text[i].encode("utf-8"))
        i += 1
    return out

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    data = bytearray()
    parts: list[str] = []
    for t in ids:
      t = int(t)
      if t < 256:
        data.append(t)
        continue
      parts.append(data.decode("utf-8", errors="replace"))
      data = bytearray()
      if not skip_special_tokens:
        parts.append(self._specials[t])
    parts.append(data.decode("utf-8", errors="replace"))
    return "".join(parts)

  def apply_chat_template(self, messages: Sequence[dict[str, str]],
                          add_generation_prompt: bool = False,
                          tokenize: bool = True, **unused: Any):
    """ChatML: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message."""
    del unused
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                   for m in messages)
    if add_generation_prompt:
      text += "<|im_start|>assistant\n"
    return self.encode(text) if tokenize else text
