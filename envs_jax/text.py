"""Symbols -> tokens: the bridge between games and tokenizers.

Games render to symbol ids (indices into ``env.symbols``). ``TextCodec`` tokenizes
every symbol and every candidate action once, on the host, into padded arrays;
inside ``jit``, ``codec.encode`` gathers the tokens of a rendering and compacts
them into a fixed-size ``TokenBuffer``. Because every symbol is tokenized on its
own, the token sequence of a rendering is the concatenation of the symbols'
token sequences (not necessarily the tokenizer's own segmentation of the whole
string, but it decodes to exactly the same text), which is what makes a static,
jittable encoder possible.

When the game declares ``symbol_slots`` (which symbols each rendering position
can hold), most of a rendering's token layout is known before it is drawn, and
``encode`` takes a fast path built from static slices (see ``_SlotLayout``);
renderings that do not follow the slots fall back to the general algorithm, so
the result never depends on the path taken.

Tokenizers are the model's business (``lamer_jax.models.tokenizer``, with the
byte-level ``ByteTokenizer`` of the tiny models); this module only calls
``encode`` / ``decode`` on whatever tokenizer it is given.
"""

from __future__ import annotations

import dataclasses
import functools
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
    symbol_slots: the ``symbol_slots`` the codec was built with (or None);
      they enable ``encode``'s fast path.
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
  symbol_slots: tuple[tuple[int, ...], ...] | None = None

  @classmethod
  def from_tokenizer(cls, tokenizer, symbols: Sequence[str],
                     action_strings: Sequence[str], max_symbols: int,
                     action_terminator: str = "",
                     symbol_slots: Sequence[Sequence[int]] | None = None
                     ) -> "TextCodec":
    """Tokenizes every symbol and candidate action (host side, once).

    Args:
      tokenizer: a ``transformers``-style tokenizer (or ``lamer_jax.models.tokenizer.ByteTokenizer``).
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
               max_tokens=_capacity(sym_l, int(max_symbols), symbol_slots),
               symbol_slots=(None if symbol_slots is None else
                             tuple(tuple(int(i) for i in ids) for ids in symbol_slots)))

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

    Jittable; vmap it for batches. With ``symbol_slots``, a batch whose
    renderings all follow the slots takes the fast path of ``_SlotLayout``;
    any other batch (or a codec without slots) takes ``encode_general``. Both
    give the same tokens.
    """
    if self._slot_encoder is None or jnp.shape(symbol_ids) != (len(self.symbol_slots),):
      return self.encode_general(symbol_ids)
    ids, length = self._slot_encoder(symbol_ids)
    return TokenBuffer(ids=ids, length=length)

  def encode_general(self, symbol_ids: jax.Array) -> TokenBuffer:
    """The general encoder: any symbol at any position, -1 anywhere.

    It compiles in about a second for any vocabulary, where the slot fast
    path can take tens of seconds (27 s for Playground on a 2-core CPU, and
    it is no faster there at run time): code that encodes inside a large
    compiled step it does not run per token (the SAC update) calls this.
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

  @functools.cached_property
  def _slot_encoder(self):
    """The (ids, length) encoder of ``encode``'s fast path, or None.

    A batch takes one path as a whole, chosen at run time: under ``vmap`` a
    per-rendering ``lax.cond`` would turn into a select that runs both paths,
    so the function has its own vmap rule (``custom_vmap``), which sees the
    whole batch and switches once. Called without vmap it is a batch of one.
    """
    if self.symbol_slots is None:
      return None
    layout = _SlotLayout.build(self.symbol_tokens, self.symbol_lengths,
                               self.symbol_slots, self.pad_id)
    if layout is None or layout.capacity != self.max_tokens:
      return None

    def batched(symbol_ids):
      """[B, S] -> ([B, L], [B]); one path for the whole batch."""
      branch = jnp.max(layout.branch(symbol_ids))
      general = branch == len(layout.extra_buckets)
      # The base is the output of its own conditional: an input of the
      # insertion step, not fused into (and recomputed by) each read of it.
      base = jax.lax.cond(
          general, lambda x: jnp.zeros((x.shape[0], layout.capacity), jnp.int32),
          layout.base, symbol_ids)

      def any_rendering(symbol_ids, base):
        del base
        buf = jax.vmap(self.encode_general)(symbol_ids)
        return buf.ids, buf.length

      branches = [functools.partial(layout.assemble, num_extra=k)
                  for k in layout.extra_buckets] + [any_rendering]
      return jax.lax.switch(branch, branches, symbol_ids, base)

    @jax.custom_batching.custom_vmap
    def encode(symbol_ids):
      ids, length = batched(symbol_ids[None])
      return ids[0], length[0]

    @encode.def_vmap
    def encode_vmap(axis_size, in_batched, symbol_ids):
      del axis_size
      if not in_batched[0]:
        return encode(symbol_ids), (False, False)
      return batched(symbol_ids), (True, True)

    return encode

  def decode(self, buffer: TokenBuffer) -> str:
    """Host side: the text of an (unbatched) buffer."""
    ids = np.asarray(jax.device_get(buffer.ids))
    n = int(jax.device_get(buffer.length))
    return self.tokenizer.decode([int(t) for t in ids[:n]])

  def action_text(self, index: int) -> str:
    return self.action_strings[int(index)]


# Numbers of extra tokens (see ``_SlotLayout``) the fast path is compiled
# for; a batch needing more takes the general path.
_EXTRA_BUCKETS = (0, 1, 2, 4)


class _SlotLayout:
  """The static token layout of renderings that follow ``symbol_slots``.

  Position p holds a symbol of its slot, whose token count lies in
  [lo_p, hi_p]. The *base* of a rendering is every position cut to its first
  lo_p tokens: its layout is static (position p starts at lo_0 + ... +
  lo_{p-1}), so every base token is a constant (a position with a single
  possible symbol) or a lookup of one known position's symbol. The remaining
  *extra* tokens (of positions whose symbol is longer than lo_p) are inserted
  into the base: the k-th extra token overall lands at output index
  ``after_p + k`` (``after_p``: the base index right after p's base tokens),
  and every base token moves right by the number of extra tokens inserted
  before it. Renderings carry no or few extra tokens (a Sokoban box on a
  target, "√", is two SmolLM2 tokens where every other cell is one), so a
  batch needs one of a few static insertion counts (``extra_buckets``).

  The methods take whole batches, int32[B, S], and avoid gathers, which
  XLA runs slowly on CPU (and transposes when the indices are static):
  symbols are looked up by comparing with the few that slots allow and by bit
  tests, the base is a concatenation of column slices, and insertions are
  shifted selects.
  """

  def __init__(self, tokens: np.ndarray, lengths: np.ndarray,
               slots: Sequence[Sequence[int]], pad_id: int):
    tokens = np.asarray(tokens, np.int32)
    lengths = np.asarray(lengths, np.int32)
    num_symbols = tokens.shape[0]
    lo = np.array([min(lengths[i] for i in ids) for ids in slots], np.int32)
    hi = np.array([max(lengths[i] for i in ids) for ids in slots], np.int32)
    start = np.concatenate([[0], np.cumsum(lo)[:-1]]).astype(np.int32)
    self.tokens, self.pad_id = tokens, int(pad_id)
    self.num_positions = len(slots)
    self.capacity = int(hi.sum())
    self.base_length = int(lo.sum())
    # Bit masks over symbol ids, one row per position and 32 ids per word:
    # the slot's symbols, and bit b of each symbol's extra token count
    # (length - lo_p).
    self.words = -(-num_symbols // 32)

    def mask(pred):
      out = np.zeros((len(slots), self.words), np.uint32)
      for p, ids in enumerate(slots):
        for i in set(ids):
          if pred(p, i):
            out[p, i // 32] |= np.uint32(1 << (i % 32))
      return out

    self.allowed = mask(lambda p, i: True)
    self.extra_bits = [mask(lambda p, i, b=b: (lengths[i] - lo[p]) >> b & 1)
                       for b in range(int(np.max(hi - lo)).bit_length())]
    # The base as few pieces (a concatenation of many small pieces is slow):
    # runs of one-token positions are columns of ``first`` (each position's
    # first token), longer positions are constants or per-token lookups.
    self.single = np.array([len(set(ids)) == 1 for ids in slots])
    self.const_first = np.array([tokens[ids[0], 0] for ids in slots], np.int32)
    self.var_symbols = sorted({i for p, ids in enumerate(slots)
                               if not self.single[p] for i in ids})
    pieces: list[tuple] = []
    for p, ids in enumerate(slots):
      if lo[p] == 1 and pieces and pieces[-1][0] == "run" and pieces[-1][2] == p:
        pieces[-1] = ("run", pieces[-1][1], p + 1)
      elif lo[p] == 1:
        pieces.append(("run", p, p + 1))
      elif self.single[p]:
        toks = tokens[ids[0], :lo[p]]
        if pieces and pieces[-1][0] == "const":
          pieces[-1] = ("const", np.concatenate([pieces[-1][1], toks]))
        else:
          pieces.append(("const", toks))
      else:
        pieces.append(("symbol", p, int(lo[p])))
    self.pieces = tuple(pieces)
    # Extra tokens: per position, its base length and the base index right
    # after its base tokens.
    self.lo = lo
    self.after = (start + lo).astype(np.int32)
    self.can_grow = bool(np.any(hi > lo))
    max_extra = int((hi - lo).sum())
    self.extra_buckets = tuple(sorted({min(k, max_extra) for k in _EXTRA_BUCKETS}))

  @classmethod
  def build(cls, tokens, lengths, slots, pad_id) -> "_SlotLayout | None":
    """The layout, or None when some slot symbol has no tokens (insertion
    points are distinct only when every position has a base token)."""
    lengths = np.asarray(lengths)
    if any(lengths[i] < 1 for ids in slots for i in ids):
      return None
    return cls(tokens, lengths, slots, pad_id)

  def _test(self, masks: np.ndarray, symbol_ids: jax.Array) -> jax.Array:
    """bool[B, S]: bit ``symbol_ids`` of each position's mask (False when
    out of range)."""
    ids = symbol_ids.astype(jnp.uint32)  # -1 becomes huge: the shift gives 0
    if self.words == 1:
      return (jnp.asarray(masks[:, 0]) >> ids) & 1 == 1
    word = ids >> 5
    bits = jnp.zeros(ids.shape, jnp.uint32)
    for w in range(self.words):
      bits = jnp.where(word == w, jnp.asarray(masks[:, w]), bits)
    return (bits >> (ids & 31)) & 1 == 1

  def _extra(self, symbol_ids: jax.Array) -> jax.Array:
    """int32[B, S]: the extra token count of each position's symbol."""
    out = jnp.zeros(symbol_ids.shape, jnp.int32)
    for b, m in enumerate(self.extra_bits):
      out += self._test(m, symbol_ids).astype(jnp.int32) << b
    return out

  def branch(self, symbol_ids: jax.Array) -> jax.Array:
    """int32[B]: per rendering, the index into ``extra_buckets`` of the
    smallest count that fits its extra tokens, or ``len(extra_buckets)`` when
    it does not follow the slots (padding, a symbol outside its slot, or more
    extra tokens than the largest bucket)."""
    ok = jnp.all(self._test(self.allowed, symbol_ids), axis=1)
    extra = jnp.sum(self._extra(symbol_ids), axis=1)
    index = sum((extra > k).astype(jnp.int32) for k in self.extra_buckets)
    return jnp.where(ok, index, len(self.extra_buckets)).astype(jnp.int32)

  def _lookup(self, symbol_ids: jax.Array, k: int) -> jax.Array:
    """Token k of the (slot-following, variable) symbols ``symbol_ids``."""
    width = self.tokens.shape[1]
    out = jnp.zeros(symbol_ids.shape, jnp.int32)
    for i in self.var_symbols:
      out = jnp.where(symbol_ids == i, int(self.tokens[i, min(k, width - 1)]), out)
    return out

  def base(self, symbol_ids: jax.Array) -> jax.Array:
    """int32[B, capacity]: the base tokens (see the class docstring), then
    padding."""
    batch = symbol_ids.shape[0]
    first = jnp.where(self.single, self.const_first, self._lookup(symbol_ids, 0))
    parts = []
    for piece in self.pieces:
      if piece[0] == "run":
        parts.append(first[:, piece[1]:piece[2]])
      elif piece[0] == "const":
        parts.append(jnp.broadcast_to(jnp.asarray(piece[1]), (batch, len(piece[1]))))
      else:
        _, p, n = piece
        parts.append(jnp.stack([self._lookup(symbol_ids[:, p], k) for k in range(n)],
                               axis=1))
    parts.append(jnp.full((batch, self.capacity - self.base_length), self.pad_id,
                          jnp.int32))
    return jnp.concatenate(parts, axis=1)

  def assemble(self, symbol_ids: jax.Array, base: jax.Array, num_extra: int):
    """(int32[B, capacity] ids, int32[B] lengths) of renderings that follow
    the slots with at most ``num_extra`` (static) extra tokens each, given
    their ``base``."""
    batch, num_positions = symbol_ids.shape
    cap, n = self.capacity, self.base_length
    if num_extra == 0 or not self.can_grow:
      return base, jnp.full((batch,), n, jnp.int32)
    width = self.tokens.shape[1]
    flat = jnp.asarray(self.tokens.reshape(-1))
    extra = self._extra(symbol_ids)                               # [B, S]
    num = jnp.sum(extra, axis=1)
    # Positions holding extra tokens, as bit masks of 32 positions per word;
    # the insertions take them in order, lowest set bit first.
    bit = np.uint32(1) << (np.arange(num_positions) % 32).astype(np.uint32)
    has = jnp.where(extra > 0, jnp.asarray(bit), jnp.uint32(0))
    words = [jnp.sum(has[:, w:w + 32], axis=1, dtype=jnp.uint32)
             for w in range(0, num_positions, 32)]
    used = jnp.zeros((batch,), jnp.int32)
    slot = jnp.arange(cap)[None, :]
    before = jnp.zeros((batch, cap), jnp.int32)
    inserts = []
    for k in range(num_extra):
      # The k-th extra token: token lo + used of the first position left.
      pos = jnp.full((batch,), num_positions - 1, jnp.int32)
      for w in reversed(range(len(words))):
        lowest = words[w] & (~words[w] + jnp.uint32(1))
        trailing = jax.lax.population_count(lowest - jnp.uint32(1)).astype(jnp.int32)
        pos = jnp.where(words[w] != 0, 32 * w + trailing, pos)
      at_pos = lambda x: jnp.take_along_axis(x, pos[:, None], axis=1)[:, 0]
      # One gather per rendering: cheap, unlike gathers over all positions.
      tok = flat[at_pos(symbol_ids) * width + jnp.asarray(self.lo)[pos] + used]
      live = k < num
      at = jnp.where(live, jnp.asarray(self.after)[pos] + k, cap)
      inserts.append((at, tok))
      before += (at[:, None] < slot).astype(jnp.int32)
      used = used + 1
      done = used >= at_pos(extra)
      used = jnp.where(done, 0, used)
      cleared = jnp.zeros((batch,), jnp.bool_)
      for w in range(len(words)):
        clear = done & ~cleared & (words[w] != 0)
        cleared |= words[w] != 0
        words[w] = jnp.where(clear, words[w] & (words[w] - jnp.uint32(1)), words[w])
    # Base token b lands at b + (extra tokens inserted before it).
    padded = jnp.concatenate(
        [jnp.full((batch, num_extra), self.pad_id, jnp.int32), base], axis=1)
    ids = base
    for d in range(1, num_extra + 1):
      ids = jnp.where(before == d, padded[:, num_extra - d:num_extra - d + cap], ids)
    for at, tok in inserts:
      ids = jnp.where(slot == at[:, None], tok[:, None], ids)
    # Past the last token the base's padding arrives: no mask needed.
    return ids.astype(jnp.int32), (n + num).astype(jnp.int32)


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
