"""Symbols -> tokens: the bridge between games and tokenizers.

Games render to symbol ids (indices into ``env.symbols``). ``TextCodec`` tokenizes
every symbol and every candidate action once, on the host, into padded arrays;
inside ``jit``, ``codec.encode`` gathers the tokens of a rendering and compacts
them into a fixed-size ``TokenBuffer``. Because every symbol is tokenized on its
own, the token sequence of a rendering is the concatenation of the symbols'
token sequences (not necessarily the tokenizer's own segmentation of the whole
string, but it decodes to exactly the same text), which is what makes a static,
jittable encoder possible.

``ByteTokenizer`` is a tokenizer without a vocabulary file (UTF-8 bytes plus a
few special tokens) for tiny from-scratch models and fast tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class TokenBuffer:
  """A fixed-capacity token sequence: ``ids[:length]`` are real, the rest pad.

  Attributes:
    ids: int32[..., L] token ids, padded with the codec's pad id.
    length: int32[...] number of real tokens.
  """

  ids: jax.Array
  length: jax.Array

  @property
  def capacity(self) -> int:
    return self.ids.shape[-1]

  @property
  def mask(self) -> jax.Array:
    """bool[..., L]: True on real tokens."""
    return jnp.arange(self.capacity) < self.length[..., None]


def concat(a: TokenBuffer, b: TokenBuffer, pad_id: int,
           capacity: int | None = None) -> TokenBuffer:
  """Concatenates two unbatched buffers, compacting b right after a's tokens.

  The result has ``capacity`` (default ``a.capacity + b.capacity``) slots; tokens
  that do not fit are dropped and ``length`` is clipped to the capacity.
  """
  cap = a.capacity + b.capacity if capacity is None else capacity
  if a.capacity >= cap:
    a_ids = a.ids[:cap]
  else:
    a_ids = jnp.pad(a.ids, (0, cap - a.capacity), constant_values=pad_id)
  out = jnp.where(jnp.arange(cap) < a.length, a_ids, pad_id)
  pos = jnp.where(b.mask, a.length + jnp.arange(b.capacity), cap)
  out = out.at[pos].set(b.ids, mode="drop")
  return TokenBuffer(ids=out, length=jnp.minimum(a.length + b.length, cap))


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


def _tokenize(tokenizer, text: str) -> list[int]:
  return list(tokenizer.encode(text, add_special_tokens=False))


def _pad_table(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  width = max(1, max((len(r) for r in rows), default=1))
  table = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    table[i, :len(r)] = r
  return table, np.asarray([len(r) for r in rows], np.int32)


def _capacity(lengths: np.ndarray, max_symbols: int,
              slots: Sequence[Sequence[int]] | None) -> int:
  """Most tokens any rendering can take: per position, the longest symbol
  that position can hold (any symbol when ``slots`` is None)."""
  if slots is None:
    return max_symbols * int(lengths.max(initial=1))
  if len(slots) != max_symbols:
    raise ValueError(f"symbol_slots has {len(slots)} positions, renderings have "
                     f"max_symbols={max_symbols}")
  total = 0
  for pos, ids in enumerate(slots):
    bad = [i for i in ids if not 0 <= i < len(lengths)]
    if not ids or bad:
      raise ValueError(f"symbol_slots[{pos}] = {tuple(ids)} must name symbol ids "
                       f"in [0, {len(lengths)})")
    total += int(max(lengths[i] for i in ids))
  return max(1, total)


def pad_id_of(tokenizer) -> int:
  """The tokenizer's pad id, falling back to eos (decoder-only chat models)."""
  for attr in ("pad_token_id", "eos_token_id"):
    tid = getattr(tokenizer, attr, None)
    if tid is not None:
      return int(tid)
  raise ValueError("the tokenizer defines neither a pad nor an eos token id")


@dataclasses.dataclass(frozen=True, eq=False)
class TextCodec:
  """Pre-tokenized symbols and candidate actions for one (env, tokenizer) pair.

  Attributes:
    symbol_tokens: int32[num_symbols, Ls] token ids of every symbol (padded).
    symbol_lengths: int32[num_symbols].
    action_tokens: int32[A, La] token ids of every candidate action, each
      followed by ``action_terminator`` so that no candidate is a token-prefix
      of another (constrained decoding needs a prefix-free table).
    action_lengths: int32[A].
    pad_id: the padding token id.
    max_symbols: S, length of the symbol renderings this codec encodes.
    tokenizer: the tokenizer (host side only: ``decode``).
    max_tokens: L, capacity of ``encode``'s buffer: the longest rendering's
      token count, bounded per position by ``symbol_slots`` when given.
  """

  symbol_tokens: np.ndarray
  symbol_lengths: np.ndarray
  action_tokens: np.ndarray
  action_lengths: np.ndarray
  pad_id: int
  max_symbols: int
  tokenizer: Any
  symbols: tuple[str, ...]
  action_strings: tuple[str, ...]
  action_terminator: str = ""
  max_tokens: int = 0

  @classmethod
  def from_tokenizer(cls, tokenizer, symbols: Sequence[str],
                     action_strings: Sequence[str], max_symbols: int,
                     action_terminator: str = "",
                     symbol_slots: Sequence[Sequence[int]] | None = None
                     ) -> "TextCodec":
    """Tokenizes every symbol and candidate action (host side, once).

    Args:
      tokenizer: a ``transformers``-style tokenizer (or ``ByteTokenizer``).
      symbols: the strings renderings are made of.
      action_strings: the candidate actions.
      max_symbols: S, the length of a rendering.
      action_terminator: appended to every candidate action.
      symbol_slots: optional, per rendering position the symbol ids it can
        hold (``Environment.symbol_slots``): sizes the token buffer tightly.

    Raises:
      ValueError: a symbol does not survive encode -> decode (the tokenizer
        adds or drops characters, e.g. a SentencePiece prefix space), the
        candidate table is not prefix-free, or ``symbol_slots`` does not
        match ``max_symbols`` / ``symbols``.
    """
    sym_rows = []
    for s in symbols:
      ids = _tokenize(tokenizer, s)
      if tokenizer.decode(ids) != s:
        raise ValueError(
            f"symbol {s!r} does not round-trip through the tokenizer "
            f"({tokenizer.decode(ids)!r}); use a byte-level BPE tokenizer "
            "(LLaMA-3/SmolLM2/Qwen) or the ByteTokenizer")
      sym_rows.append(ids)
    act_rows = [_tokenize(tokenizer, a + action_terminator) for a in action_strings]
    pad = pad_id_of(tokenizer)
    sym_t, sym_l = _pad_table(sym_rows, pad)
    act_t, act_l = _pad_table(act_rows, pad)
    check_prefix_free(act_t, act_l, action_strings)
    return cls(symbol_tokens=sym_t, symbol_lengths=sym_l, action_tokens=act_t,
               action_lengths=act_l, pad_id=pad, max_symbols=int(max_symbols),
               tokenizer=tokenizer, symbols=tuple(symbols),
               action_strings=tuple(action_strings),
               action_terminator=action_terminator,
               max_tokens=_capacity(sym_l, int(max_symbols), symbol_slots))

  @classmethod
  def for_env(cls, tokenizer, env, action_terminator: str = "") -> "TextCodec":
    """The codec of ``env``'s symbols and candidate actions."""
    return cls.from_tokenizer(tokenizer, env.symbols, env.action_strings,
                              env.max_symbols, action_terminator,
                              symbol_slots=env.symbol_slots)

  @property
  def num_actions(self) -> int:
    return self.action_tokens.shape[0]

  def encode(self, symbol_ids: jax.Array) -> TokenBuffer:
    """int32[S] symbol ids (-1 padded) -> TokenBuffer of capacity max_tokens.

    Jittable; vmap it for batches.
    """
    width = self.symbol_tokens.shape[1]
    cap = self.max_tokens
    valid = symbol_ids >= 0
    safe = jnp.where(valid, symbol_ids, 0)
    lens = jnp.where(valid, jnp.asarray(self.symbol_lengths)[safe], 0)  # [S]
    ends = jnp.cumsum(lens)                                             # [S]
    total = ends[-1]
    # Gather, not scatter (much faster on CPU): output slot j takes token
    # j - start of the symbol whose span [start, end) holds j.
    slot = jnp.arange(cap)
    src = jnp.searchsorted(ends, slot, side="right")                    # [cap]
    src = jnp.minimum(src, symbol_ids.shape[0] - 1)
    offset = slot - (ends[src] - lens[src])
    toks = jnp.asarray(self.symbol_tokens)[safe[src], jnp.clip(offset, 0, width - 1)]
    ids = jnp.where(slot < total, toks, self.pad_id).astype(jnp.int32)
    return TokenBuffer(ids=ids, length=total.astype(jnp.int32))

  def decode(self, buffer: TokenBuffer) -> str:
    """Host side: the text of an (unbatched) buffer."""
    ids = np.asarray(jax.device_get(buffer.ids))
    n = int(jax.device_get(buffer.length))
    return self.tokenizer.decode([int(t) for t in ids[:n]])

  def action_text(self, index: int) -> str:
    return self.action_strings[int(index)]


def check_prefix_free(table_tokens: np.ndarray, table_lengths: np.ndarray,
                      names: Sequence[str] | None = None) -> None:
  """Raises ValueError if some candidate's tokens are a prefix of another's.

  Constrained decoding stops when the chosen candidate is complete; a candidate
  that is a prefix of another would make that moment ambiguous.
  """
  table_tokens = np.asarray(table_tokens)
  table_lengths = np.asarray(table_lengths)
  if table_tokens.ndim != 2 or table_lengths.shape != table_tokens.shape[:1]:
    raise ValueError(f"expected a table [A, La] and lengths [A], got "
                     f"{table_tokens.shape} and {table_lengths.shape}")
  if np.any(table_lengths > table_tokens.shape[1]):
    raise ValueError(f"candidate lengths must be <= {table_tokens.shape[1]}, got "
                     f"{table_lengths.tolist()}")
  seqs = [tuple(int(t) for t in row[:n]) for row, n in zip(table_tokens, table_lengths)]
  if any(len(s) == 0 for s in seqs):
    raise ValueError("a candidate action tokenizes to zero tokens (lengths must be >= 1)")
  prefixes: dict[tuple[int, ...], int] = {}
  for i, s in enumerate(seqs):
    for k in range(1, len(s)):
      prefixes.setdefault(s[:k], i)
  for i, s in enumerate(seqs):
    if s in prefixes:
      j = prefixes[s]
      a = names[i] if names is not None else i
      b = names[j] if names is not None else j
      raise ValueError(
          f"candidate action {a!r} is a token-prefix of {b!r}; append a "
          "terminator (e.g. '</action>' or '\\n') to every candidate")
  if len(set(seqs)) != len(seqs):
    raise ValueError("two candidate actions have identical tokens (each is a prefix of the other)")
