"""WebShop in pure JAX: find and buy the product an instruction asks for.

See REFERENCES.md, "WebShop (the reward and the pages)". The catalog is
static (``envs_jax.webshop_catalog``: a seeded procedural catalog of
``num_products`` products, or a WebShop product JSON file); ``reset`` draws
a *goal* from a target product: 1-3 of its attributes, one value of each of
its option groups and a price bound (the next multiple of ten dollars above
its price, plus 0, 10 or 20), and the instruction spells it::

    i need eye shadow that is long lasting and vegan, with color: plum, and
    price lower than 30.00 dollars

Pages (WebShop's, as text joined with `` [SEP] ``; every page starts with
``WebShop [SEP] Instruction: [SEP] <instruction>``):

* search: the numbered query suggestions (see the design note below);
* results: ``Back to Search``, ``Page p (Total results: n)``, ``< Prev`` /
  ``Next >`` where they exist, and up to 10 results (``item k``, the first
  6 title words, the price) of at most 50, ranked by BM25 over the products'
  title and attribute words (ties by catalog order; see the catalog module);
* item: ``Back to Search``, ``< Prev`` (to the results), the title, the
  price, every option group with its values, the values selected so far,
  ``Description``, ``Features``, ``Buy Now``;
* description / features: the product's description (24 words) or its
  feature bullets, with ``Back to Search`` and ``< Prev`` (to the item);
* done, after ``Buy Now``: ``Thank you for shopping with us!`` and the score.

Actions (one static table for every task, ``action_strings``):
``search[1]`` .. ``search[3]``, ``click[back to search]``, ``click[next
>]``, ``click[< prev]``, ``click[item 1]`` .. ``click[item 10]``,
``click[description]``, ``click[features]``, ``click[buy now]``, then
``click[<value>]`` for every option value of the catalog (101 in the
generated one: 120 actions). The action mask admits exactly what the page
shows: the suggestions on the search page, the buttons and results shown,
the values of the product on the item page (re-clicking the selected value
is allowed and changes nothing); nothing once the attempt is over. An
action outside the mask changes nothing, uses its turn and is ``invalid``.
Clicking a value selects it in the first of the product's groups that holds
it (a later click in that group replaces it); opening a product clears the
selection; ``< Prev`` from a sub-page keeps it.

Design note: queries from a static action table. WebShop's agent types
``search[free text]``; here the action strings are one tuple for all tasks,
tokenized once, so a query cannot be free text. The search page therefore
shows three *suggestions* built from the instruction's words, and
``search[k]`` runs suggestion k:

1. the instruction's keywords: the product type, the attributes and the
   option values;
2. the product type and the attributes;
3. the product type alone.

(each without repeated words, at most 12). This keeps the observation
self-explanatory (the LLM reads the queries it can run, next to the
instruction) and the action table small and task-independent, and the three
levels of specificity keep the choice meaningful: a narrower query brings
products of the right type that lack an attribute, a wider one ranks
products with the attributes first. Results are clicked by their rank on the
page (``click[item k]``), not by product id, which would need one action per
product; option values are a global table of strings, masked by the
product shown, as WebShop's radio buttons are clicked by value. As the
suggestions depend only on the goal, ``reset`` runs their three searches
once (``WebShopState.found``) and ``search[k]`` looks its results up: a
step then never scores the catalog (which, computed in every step's
branches under ``vmap``, cost most of a step).

``oracle_action`` is a scripted policy that reads the goal (search the
keywords, open a result that can score 1, select the goal's values, buy):
the ceiling, 100% success on held-out goals (``experiments.webshop_baselines``).

Reward (WebShop's formula, REFERENCES.md): the purchase scores ``r_type *
(attribute hits + option hits + [price <= bound]) / (attributes + options
+ 1)``, in [0, 1]. ``r_type`` is 1, lowered to 0.5 when neither the query
(the product type) matches, nor two levels of ``product_category``, nor
more than 20% of the target title's type words; 0.1 when under 10% of them
match, 0 when none does. Exact matching replaces WebShop's fuzzy one: the
title's "type words" are its distinct words outside a small stopword list
(WebShop keeps spaCy's nouns), an attribute hits when it is one of the
product's attributes or a word-run of its title, bullets or description
(WebShop: fuzzy ratio > 85 or a substring), an option hits when its value
is among the selected ones (WebShop: fuzzy > 85). ``won`` when the score is
exactly 1. ``reward_mode="success"`` (default, LaMer's): reward
``reward_scale`` (10) on a purchase scoring 1, else 0; ``"score"``: the
score itself. ``max_turns`` 12: an attempt that has not bought by then is
``truncated``.

Symbols: the vocabulary words (each with its leading space), attribute
phrases, option values, group names, prices (`` $23`` and ``.45``), price
bounds, page labels, scores and the fixed pieces (1570 for the generated
catalog). A rendering is the instruction (fixed positions) followed by the
page's *body*; pages share the body's positions, each at the offset that
adds least to the longest symbol each position can hold (``_layout``), and
every position allows only what the catalog can put there (title word j:
the words some title has at j), so ``symbol_slots`` sizes the token buffer
close to the longest page: 650 SmolLM2 tokens for the generated catalog
(the longest observation met in play, a full results page, is ~370). The
slots include a never-rendered empty symbol, which keeps
``envs_jax.text.TextCodec`` on its general (gather) encoder: its slot fast
path unrolls one select per allowed symbol and does not compile in
reasonable time for a vocabulary this size.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs_jax import webshop_catalog as wc
from envs_jax.core import Environment, TimeStep, hash_arrays

NUM_SUGGESTIONS = 3
QUERY_WORDS = 12
PER_PAGE = 10
MAX_RESULTS = 50
GOAL_ATTRIBUTES = 3
REWARD_MODES = ("success", "score")
SEARCH, RESULTS, ITEM, DESCRIPTION, FEATURES, DONE = range(6)
PAGES = ("search", "results", "item", "description", "features", "done")

_PIECES = (
    "WebShop [SEP] Instruction: [SEP]", " i need", " that is", " and", ", with",
    ", and price lower than", " [SEP] Search", " [SEP] Back to Search", " [SEP] < Prev",
    " [SEP] Next >", " [SEP]", " [SEP] Price:", " [SEP] Selected:", " none", ",",
    " [SEP] Description [SEP] Features [SEP] Buy Now",
    " [SEP] Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP]", "")
(HEADER, I_NEED, THAT_IS, AND, WITH, PRICE_UPTO, SEARCH_HEAD, BACK, PREV, NEXT, SEP,
 PRICE_HEAD, SELECTED, NONE, COMMA, ITEM_TAIL, THANKS, EMPTY) = range(len(_PIECES))

_FIXED_ACTIONS = (tuple(f"search[{k + 1}]" for k in range(NUM_SUGGESTIONS))
                  + ("click[back to search]", "click[next >]", "click[< prev]")
                  + tuple(f"click[item {k + 1}]" for k in range(PER_PAGE))
                  + ("click[description]", "click[features]", "click[buy now]"))
A_BACK = NUM_SUGGESTIONS
A_NEXT, A_PREV = A_BACK + 1, A_BACK + 2
A_ITEM = A_BACK + 3
A_DESCRIPTION = A_ITEM + PER_PAGE
A_FEATURES, A_BUY = A_DESCRIPTION + 1, A_DESCRIPTION + 2
A_VALUE = A_BUY + 1


@struct.dataclass
class WebShopParams:
  """Task-distribution knobs.

  Attributes:
    goal_range: int32[2], targets are drawn uniformly from products [lo, hi)
      (clipped to the catalog). LaMer's split: goals 0-499 test, 500+ train.
  """

  goal_range: jax.Array


@struct.dataclass
class WebShopState:
  """One attempt's state.

  Attributes:
    target: int32, the goal's product.
    goal_attrs: int32[GA] attribute phrase ids of the goal (in the product's
      order, -1 padded).
    goal_values: int32[G] per option group of the target the wanted value
      (-1: no such group).
    bound: int32 price bound, dollars.
    page: int32, one of SEARCH .. DONE.
    results: int32[50] product ids of the last search (-1 padded).
    num_results: int32.
    result_page: int32, the results page shown (0-based).
    item: int32, the product opened (-1 none).
    selected: int32[G] per option group of ``item`` the selected value (-1).
    steps: int32 turns taken.
    bought: bool.
    score: float32, the purchase's score (0 before).
    score_pct: int32, the score in hundredths (rounded half up), as shown.
    won: bool, bought with score 1.
    found: int32[3, 50] the search results of each suggestion (-1 padded),
      computed once by ``reset``: a suggestion depends only on the goal, so
      ``step`` looks its results up instead of scoring the catalog.
    found_count: int32[3] their counts of products with a positive score.
  """

  target: jax.Array
  goal_attrs: jax.Array
  goal_values: jax.Array
  bound: jax.Array
  page: jax.Array
  results: jax.Array
  num_results: jax.Array
  result_page: jax.Array
  item: jax.Array
  selected: jax.Array
  steps: jax.Array
  bought: jax.Array
  score: jax.Array
  score_pct: jax.Array
  won: jax.Array
  found: jax.Array
  found_count: jax.Array


@dataclasses.dataclass(frozen=True)
class _Tables:
  """The symbol table of one catalog, with the id offsets of its parts."""

  symbols: tuple
  word: int
  phrase: int
  value: int
  group: int
  dollar: int
  cent: int
  bound: int
  bound_min: int
  num_bounds: int
  item_label: int
  page_label: int
  total: int
  suggestion: int
  score: int

  @staticmethod
  @functools.lru_cache(maxsize=8)
  def build(catalog: wc.Catalog) -> "_Tables":
    syms = list(_PIECES)

    def part(strings):
      start = len(syms)
      syms.extend(strings)
      return start

    max_dollars = int(catalog.price.max()) // 100
    bounds = range(10, (max_dollars // 10 + 3) * 10 + 1, 10)
    pages = -(-MAX_RESULTS // PER_PAGE)
    return _Tables(
        word=part(" " + w for w in catalog.words),
        phrase=part(" " + p for p in catalog.phrases),
        value=part(" " + v for v in catalog.values),
        group=part(f" {g}:" for g in catalog.groups),
        dollar=part(f" ${d}" for d in range(max_dollars + 1)),
        cent=part(f".{c:02d}" for c in range(100)),
        bound=part(f" {b}.00 dollars" for b in bounds), bound_min=10,
        num_bounds=len(bounds),
        item_label=part(f" [SEP] item {k + 1} [SEP]" for k in range(PER_PAGE)),
        page_label=part(f" [SEP] Page {p + 1}" for p in range(pages)),
        total=part(f" (Total results: {t})" for t in range(MAX_RESULTS + 1)),
        suggestion=part(f" [SEP] search[{k + 1}]:" for k in range(NUM_SUGGESTIONS)),
        score=part(f" {s // 100}.{s % 100:02d}" for s in range(101)),
        symbols=tuple(syms))


class _Row:
  """A rendering under construction: pieces of symbol ids, each with the
  static set of symbols its positions may hold (for ``symbol_slots``)."""

  def __init__(self):
    self.values: list[jax.Array] = []
    self.slots: list[tuple[int, ...]] = []

  def add(self, values, allowed) -> None:
    values = jnp.atleast_1d(jnp.asarray(values, jnp.int32))
    self.values.append(values)
    # A position no product fills holds only padding: the empty symbol.
    self.slots.extend(tuple(sorted({int(a) for a in column})) or (EMPTY,)
                      for column in allowed)

  def fixed(self, symbol: int, show=True) -> None:
    self.add(jnp.where(show, symbol, -1), [(symbol,)])

  def ids(self, ids, offset: int, allowed) -> None:
    """Symbols ``offset + ids`` (-1 where ids < 0). ``allowed``: the ids the
    positions can hold, one set for all, or a numpy array whose last axis
    runs over the positions (column j: the ids of position j, -1 ignored)."""
    ids = jnp.asarray(ids, jnp.int32)
    n = int(np.prod(ids.shape)) if ids.ndim else 1
    if isinstance(allowed, np.ndarray):
      columns = allowed.reshape(-1, allowed.shape[-1])[:, :n].T
    else:
      columns = [list(allowed)] * n
    self.add(jnp.where(ids >= 0, offset + ids, -1),
             [[offset + int(a) for a in col if a >= 0] for col in columns])

  def array(self, length: int) -> jax.Array:
    out = jnp.concatenate(self.values)
    return jnp.pad(out, (0, length - out.shape[0]), constant_values=-1)


@dataclasses.dataclass(frozen=True)
class WebShop(Environment):
  """WebShop over a static catalog (see the module docstring).

  Attributes:
    name: registry name.
    max_turns: turns per attempt (LaMer: 12).
    num_products: size of the generated catalog.
    seed: the generated catalog's seed.
    catalog: ``"generated"``, ``"sample"`` (the packaged 15-product sample)
      or the path of a WebShop product JSON file.
    reward_mode: ``"success"`` (``reward_scale`` when the score is 1, else 0)
      or ``"score"`` (the score).
    reward_scale: the success reward (LaMer: 10).
  """

  name: str = "webshop"
  max_turns: int = 12
  num_products: int = 2000
  seed: int = 0
  catalog: str = "generated"
  reward_mode: str = "success"
  reward_scale: float = 10.0

  def __post_init__(self):
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
    if self.reward_mode not in REWARD_MODES:
      raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got "
                       f"{self.reward_mode!r}")
    if self.num_products < 1:
      raise ValueError(f"num_products must be >= 1, got {self.num_products}")

  # ---- static description ------------------------------------------------
  @property
  def cat(self) -> wc.Catalog:
    """The catalog arrays (built once per configuration)."""
    return wc.catalog_for(self.catalog, self.num_products, self.seed)

  @property
  def _t(self) -> _Tables:
    return _Tables.build(self.cat)

  @property
  def symbols(self) -> tuple[str, ...]:
    return self._t.symbols

  @property
  def action_strings(self) -> tuple[str, ...]:
    return _action_strings(self.cat)

  @property
  def max_symbols(self) -> int:
    return len(self.symbol_slots)

  @property
  def symbol_slots(self) -> tuple[tuple[int, ...], ...]:
    return _layout(self)[2]

  @property
  def instructions(self) -> str:
    win = (f"Reward: {self.reward_scale:g} when the product you buy fully matches the "
           "instruction (score 1.0), 0 otherwise." if self.reward_mode == "success" else
           "Reward: the score of the product you buy, from 0.0 to 1.0.")
    return (
        "You are shopping on WebShop. The instruction names the product you need: its "
        "type, attributes, options and a price limit. Find it and buy it.\n"
        "Pages: the search page lists numbered query suggestions, built from the "
        "instruction: 'search[k]' runs suggestion k. The results page shows up to 10 "
        "products ('click[item k]' opens the k-th) with 'click[next >]' and "
        "'click[< prev]' between pages. A product page shows its title, price and "
        "options: 'click[<value>]' selects an option value (e.g. 'click[red]'), "
        "'click[description]' and 'click[features]' show more, 'click[< prev]' goes "
        "back, 'click[buy now]' buys it and ends the episode. 'click[back to search]' "
        "returns to the search page.\n"
        "The score of a purchase is the share of the instruction's attributes, options "
        "and price limit that the product meets (lowered if it is the wrong kind of "
        f"product). {win} You have {self.max_turns} actions; only actions shown on the "
        "page are valid.\nEach turn, answer with one action, e.g. 'search[1]' or "
        "'click[item 2]'.")

  @property
  def default_params(self) -> WebShopParams:
    return WebShopParams(goal_range=jnp.asarray([0, self.cat.num_products], jnp.int32))

  @property
  def num_values(self) -> int:
    return len(self.cat.values)

  # ---- goals, search, score --------------------------------------------------
  def reset(self, key: jax.Array, params: WebShopParams):
    """Draws a goal: a target in ``params.goal_range``, 1-3 of its attributes
    (uniform count, uniform subset), a uniform value per option group, a
    price bound; the attempt starts on the search page."""
    c = self.cat
    k_t, k_n, k_sub, k_val, k_b = jax.random.split(key, 5)
    lo = jnp.clip(params.goal_range[0], 0, c.num_products - 1)
    hi = jnp.clip(params.goal_range[1], lo + 1, c.num_products)
    target = jax.random.randint(k_t, (), lo, hi)
    attrs = jnp.asarray(c.attrs)[target]
    has = attrs >= 0
    ga = min(GOAL_ATTRIBUTES, c.attrs.shape[1])
    most = jnp.minimum(jnp.sum(has), ga)
    count = jnp.where(most > 0, 1 + jnp.floor(jax.random.uniform(k_n) * most).astype(
        jnp.int32), 0)
    count = jnp.minimum(count, most)
    prio = jnp.where(has, jax.random.uniform(k_sub, attrs.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(prio))
    keep = has & (rank < count)
    pos = jnp.where(keep, jnp.cumsum(keep) - 1, ga)
    goal_attrs = jnp.full((ga,), -1, jnp.int32).at[pos].set(attrs, mode="drop")
    vals = jnp.asarray(c.values_of)[target]                     # [G, V]
    nv = jnp.sum(vals >= 0, axis=1)
    pick = jnp.floor(jax.random.uniform(k_val, nv.shape) * nv).astype(jnp.int32)
    pick = jnp.minimum(pick, jnp.maximum(nv - 1, 0))
    goal_values = jnp.where(nv > 0, jnp.take_along_axis(vals, pick[:, None], 1)[:, 0], -1)
    price = jnp.asarray(c.price)[target]
    bound = (price // 1000 + 1 + jax.random.randint(k_b, (), 0, 3)) * 10
    g = c.groups_of.shape[1]
    state = WebShopState(
        target=target.astype(jnp.int32), goal_attrs=goal_attrs,
        goal_values=goal_values.astype(jnp.int32), bound=bound.astype(jnp.int32),
        page=jnp.int32(SEARCH), results=jnp.full((MAX_RESULTS,), -1, jnp.int32),
        num_results=jnp.int32(0), result_page=jnp.int32(0), item=jnp.int32(-1),
        selected=jnp.full((g,), -1, jnp.int32), steps=jnp.int32(0),
        bought=jnp.bool_(False), score=jnp.float32(0.0), score_pct=jnp.int32(0),
        won=jnp.bool_(False), found=jnp.full((NUM_SUGGESTIONS, MAX_RESULTS), -1, jnp.int32),
        found_count=jnp.zeros((NUM_SUGGESTIONS,), jnp.int32))
    found, found_count = jax.vmap(self.search)(self.suggestions(state))
    return state.replace(found=found, found_count=found_count), TimeStep.first()

  def suggestions(self, state: WebShopState) -> jax.Array:
    """int32[3, 12] word ids of the query suggestions (-1 padded)."""
    c = self.cat
    query = jnp.asarray(c.query_words)[jnp.asarray(c.query)[state.target]]
    attr_words = jnp.where(state.goal_attrs[:, None] >= 0,
                           jnp.asarray(c.phrase_words)[jnp.maximum(state.goal_attrs, 0)],
                           -1).reshape(-1)
    value_words = jnp.where(state.goal_values[:, None] >= 0,
                            jnp.asarray(c.value_words)[jnp.maximum(state.goal_values, 0)],
                            -1).reshape(-1)
    rows = [jnp.concatenate([query, attr_words, value_words]),
            jnp.concatenate([query, attr_words]), query]
    return jnp.stack([_distinct(r, QUERY_WORDS) for r in rows])

  def search(self, word_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """BM25 top 50 of a query (int32[L] word ids, -1 padded, a set):
    (int32[50] product ids ranked, -1 padded; int32 count of products with a
    positive score)."""
    c = self.cat
    v = len(c.words)
    has = jnp.zeros((v + 1,), jnp.bool_).at[jnp.where(word_ids >= 0, word_ids, v)].set(True)
    has = has.at[v].set(False)
    docs = jnp.asarray(c.doc_words)
    scores = jnp.sum(jnp.where(has[jnp.where(docs >= 0, docs, v)],
                               jnp.asarray(c.doc_weight), 0), axis=1)
    k = min(MAX_RESULTS, c.num_products)
    top, idx = jax.lax.top_k(scores, k)
    idx = jnp.where(top > 0, idx, -1).astype(jnp.int32)
    idx = jnp.pad(idx, (0, MAX_RESULTS - k), constant_values=-1)
    return idx, jnp.sum(top > 0).astype(jnp.int32)

  def purchase_score(self, state: WebShopState, item: jax.Array, selected: jax.Array):
    """(float32 score, bool score == 1, int32 hundredths) of buying ``item``
    with the values ``selected`` (int32[G], -1 none) for ``state``'s goal."""
    c = self.cat
    t, p = state.target, item
    query_match = jnp.asarray(c.query)[p] == jnp.asarray(c.query)[t]
    lv_t, lv_p = jnp.asarray(c.levels_of)[t], jnp.asarray(c.levels_of)[p]
    common = jnp.sum((lv_t >= 0) & jnp.any(lv_t[:, None] == lv_p[None, :], axis=1))
    title_t, title_p = jnp.asarray(c.title)[t], jnp.asarray(c.title)[p]
    key_t = jnp.asarray(c.title_key)[t]
    desired = jnp.sum(key_t)
    inter = jnp.sum(key_t & jnp.any((title_t[:, None] == title_p[None, :])
                                    & (title_p[None, :] >= 0), axis=1))
    titled = desired > 0
    match = query_match | (common >= 2) | (titled & (5 * inter > desired))
    r10 = jnp.where(match, 10, 5)
    r10 = jnp.where(titled & (10 * inter < desired), 1, r10)
    r10 = jnp.where(titled & (inter == 0), 0, r10)
    ga = state.goal_attrs
    attr_hits = jnp.sum((ga >= 0) & jnp.asarray(c.attr_hit)[p, jnp.maximum(ga, 0)])
    gv = state.goal_values
    opt_hits = jnp.sum((gv >= 0) & jnp.any(gv[:, None] == selected[None, :], axis=1))
    price_ok = jnp.asarray(c.price)[p] <= state.bound * 100
    hits = attr_hits + opt_hits + price_ok.astype(jnp.int32)
    total = jnp.sum(ga >= 0) + jnp.sum(gv >= 0) + 1
    score = (r10 * hits).astype(jnp.float32) / (10 * total).astype(jnp.float32)
    num = r10 * hits * 10
    pct = (2 * num + total) // (2 * total)
    return score, (r10 == 10) & (hits == total), pct.astype(jnp.int32)

  # ---- dynamics ------------------------------------------------------------
  def done(self, state: WebShopState) -> jax.Array:
    return state.bought | (state.steps >= self.max_turns)

  def _offered(self, item: jax.Array) -> jax.Array:
    """bool[O]: the option values product ``item`` offers (none for -1)."""
    o = self.num_values
    vals = jnp.asarray(self.cat.values_of)[jnp.maximum(item, 0)].reshape(-1)
    vals = jnp.where((vals >= 0) & (item >= 0), vals, o)
    return jnp.zeros((o + 1,), jnp.bool_).at[vals].set(True)[:o]

  def action_mask(self, state: WebShopState, params: WebShopParams) -> jax.Array:
    """bool[A]: what the page shows (see the module docstring)."""
    del params
    page = state.page
    live = ~self.done(state)
    sugg = jnp.any(self.suggestions(state) >= 0, axis=1)
    on_results = page == RESULTS
    on_item = page == ITEM
    on_sub = (page == DESCRIPTION) | (page == FEATURES)
    shown = state.result_page * PER_PAGE + jnp.arange(PER_PAGE) < state.num_results
    more = (state.result_page + 1) * PER_PAGE < state.num_results
    fixed = jnp.concatenate([
        (page == SEARCH) & sugg,
        jnp.stack([on_results | on_item | on_sub, on_results & more,
                   (on_results & (state.result_page > 0)) | on_item | on_sub]),
        on_results & shown,
        jnp.stack([on_item, on_item, on_item])])
    mask = jnp.concatenate([fixed, on_item & self._offered(state.item)])
    return mask & live

  def step(self, key: jax.Array, state: WebShopState, action: jax.Array,
           params: WebShopParams):
    """Applies one action (index into ``action_strings``); deterministic, the
    key is ignored. An action outside the mask changes nothing, uses its turn
    and is ``invalid``; a finished attempt is returned unchanged."""
    del key
    state = jax.tree.map(jnp.asarray, state)
    a = jnp.asarray(action, jnp.int32)
    live = ~self.done(state)
    n = self.num_actions
    legal = live & (a >= 0) & (a < n) & self.action_mask(state, params)[jnp.clip(a, 0, n - 1)]
    s = state
    # search[k]
    k = jnp.clip(a, 0, NUM_SUGGESTIONS - 1)
    results, count = s.found[k], s.found_count[k]
    searched = s.replace(page=jnp.int32(RESULTS), results=results, num_results=count,
                         result_page=jnp.int32(0), item=jnp.int32(-1),
                         selected=jnp.full_like(s.selected, -1))
    back = s.replace(page=jnp.int32(SEARCH), item=jnp.int32(-1),
                     selected=jnp.full_like(s.selected, -1))
    nxt = s.replace(result_page=s.result_page + 1)
    prev = jax.tree.map(
        lambda r, i, x: jnp.where(s.page == RESULTS, r, jnp.where(s.page == ITEM, i, x)),
        s.replace(result_page=s.result_page - 1),
        s.replace(page=jnp.int32(RESULTS), item=jnp.int32(-1),
                  selected=jnp.full_like(s.selected, -1)),
        s.replace(page=jnp.int32(ITEM)))
    slot = jnp.clip(s.result_page * PER_PAGE + a - A_ITEM, 0, MAX_RESULTS - 1)
    opened = s.replace(page=jnp.int32(ITEM), item=s.results[slot],
                       selected=jnp.full_like(s.selected, -1))
    described = s.replace(page=jnp.int32(DESCRIPTION))
    featured = s.replace(page=jnp.int32(FEATURES))
    score, won, pct = self.purchase_score(s, jnp.maximum(s.item, 0), s.selected)
    bought = s.replace(page=jnp.int32(DONE), bought=jnp.bool_(True), score=score,
                       score_pct=pct, won=won)
    value = jnp.clip(a - A_VALUE, 0, max(self.num_values - 1, 0))
    in_group = jnp.any(jnp.asarray(self.cat.values_of)[jnp.maximum(s.item, 0)] == value,
                       axis=1)
    group = jnp.argmax(in_group)
    chosen = s.replace(selected=s.selected.at[group].set(value))
    branches = [searched, back, nxt, prev, opened, described, featured, bought, chosen]
    which = jnp.select(
        [a < A_BACK, a == A_BACK, a == A_NEXT, a == A_PREV, a < A_DESCRIPTION,
         a == A_DESCRIPTION, a == A_FEATURES, a == A_BUY], jnp.arange(8), 8)
    new = jax.tree.map(lambda *xs: jnp.stack(xs)[which], *branches)
    new = jax.tree.map(lambda x, y: jnp.where(legal, x, y), new, s)
    new = new.replace(steps=s.steps + live.astype(jnp.int32))
    purchase = legal & (a == A_BUY)
    if self.reward_mode == "success":
      reward = jnp.where(purchase & new.won, self.reward_scale, 0.0)
    else:
      reward = jnp.where(purchase, new.score, 0.0)
    done = self.done(new)
    ts = TimeStep(reward=reward.astype(jnp.float32), done=done, won=new.won,
                  truncated=done & ~new.bought, invalid=live & ~legal, steps=new.steps)
    return new, ts

  # ---- a scripted policy ------------------------------------------------------
  def oracle_action(self, state: WebShopState) -> jax.Array:
    """int32 action of the scripted oracle (jittable, vmappable).

    It runs the first suggestion (the instruction's keywords), opens the
    first shown result that would score 1 once the goal's option values are
    selected (judged with the goal, hence "oracle"; if none is shown it turns
    the page while at least 5 turns are left, else opens the best-scoring
    shown result), selects the goal's values the product offers, one per
    turn, and buys. From a sub-page it goes back. Every action it returns is
    allowed on a live attempt.
    """
    s, gv = state, state.goal_values

    def potential(product):
      offered = self._offered(product)
      wanted = jnp.where((gv >= 0) & offered[jnp.maximum(gv, 0)], gv, -1)
      score, full, _ = self.purchase_score(s, product, wanted)
      return score, full

    slots = s.result_page * PER_PAGE + jnp.arange(PER_PAGE)
    shown = slots < s.num_results
    products = jnp.maximum(s.results[jnp.minimum(slots, MAX_RESULTS - 1)], 0)
    scores, full = jax.vmap(potential)(products)
    full &= shown
    more = (s.result_page + 1) * PER_PAGE < s.num_results
    pick = jnp.where(jnp.any(full), jnp.argmax(full),
                     jnp.argmax(jnp.where(shown, scores, -1.0)))
    turn_page = ~jnp.any(full) & more & (s.steps < self.max_turns - 5)
    on_results = jnp.where(turn_page, A_NEXT, A_ITEM + pick)
    offered = self._offered(s.item)
    missing = (gv >= 0) & offered[jnp.maximum(gv, 0)] & ~jnp.any(
        gv[:, None] == s.selected[None, :], axis=1)
    on_item = jnp.where(jnp.any(missing), A_VALUE + gv[jnp.argmax(missing)], A_BUY)
    return jnp.select([s.page == SEARCH, s.page == RESULTS, s.page == ITEM],
                      [0, on_results, on_item], A_PREV).astype(jnp.int32)

  # ---- views -----------------------------------------------------------------
  def _parts(self, state: WebShopState) -> tuple[_Row, list[_Row]]:
    """The instruction's row and every page's row (with their slots)."""
    c, t = self.cat, self._t
    # Suggestion k holds words of the tables it is built from, and at most as
    # many as they have.
    vocab = lambda *tables: sorted({int(w) for x in tables for w in x.reshape(-1) if w >= 0})
    ga_words = min(GOAL_ATTRIBUTES, c.attrs.shape[1]) * c.phrase_words.shape[1]
    gv_words = c.groups_of.shape[1] * c.value_words.shape[1]
    lqw = c.query_words.shape[1]
    sugg_shape = ((vocab(c.query_words, c.phrase_words, c.value_words),
                   min(QUERY_WORDS, lqw + ga_words + gv_words)),
                  (vocab(c.query_words, c.phrase_words), min(QUERY_WORDS, lqw + ga_words)),
                  (vocab(c.query_words), min(QUERY_WORDS, lqw)))
    prefix = _Row()
    prefix.fixed(HEADER)
    prefix.fixed(I_NEED)
    query = jnp.asarray(c.query_words)[jnp.asarray(c.query)[state.target]]
    prefix.ids(query, t.word, c.query_words)
    ga = state.goal_attrs
    prefix.fixed(THAT_IS, ga[0] >= 0)
    for k in range(ga.shape[0]):
      if k:
        prefix.fixed(AND, ga[k] >= 0)
      prefix.ids(ga[k], t.phrase, c.attrs[:, k:].reshape(-1, 1))
    gv = state.goal_values
    groups_t = jnp.asarray(c.groups_of)[state.target]
    prefix.fixed(WITH, jnp.any(gv >= 0))
    for g in range(gv.shape[0]):
      if g:
        prefix.fixed(AND, gv[g] >= 0)
      prefix.ids(jnp.where(gv[g] >= 0, groups_t[g], -1), t.group, c.groups_of[:, g:g + 1])
      prefix.ids(gv[g], t.value, c.values_of[:, g].reshape(-1, 1))
    prefix.fixed(PRICE_UPTO)
    prefix.ids((state.bound - t.bound_min) // 10, t.bound, range(t.num_bounds))

    dollars = sorted(set((c.price // 100).tolist()))
    cents_seen = sorted(set((c.price % 100).tolist()))

    def price(row, cents, show=True):
      row.ids(jnp.where(show, cents // 100, -1), t.dollar, dollars)
      row.ids(jnp.where(show, cents % 100, -1), t.cent, cents_seen)

    pages = []
    # search
    row = _Row()
    row.fixed(SEARCH_HEAD)
    sugg = self.suggestions(state)
    for k in range(NUM_SUGGESTIONS):
      row.fixed(t.suggestion + k, jnp.any(sugg[k] >= 0))
      allowed, length = sugg_shape[k]
      row.ids(sugg[k, :length], t.word, allowed)
    pages.append(row)
    # results
    row = _Row()
    row.fixed(BACK)
    row.ids(state.result_page, t.page_label, range(-(-MAX_RESULTS // PER_PAGE)))
    row.ids(state.num_results, t.total, range(MAX_RESULTS + 1))
    row.fixed(PREV, state.result_page > 0)
    row.fixed(NEXT, (state.result_page + 1) * PER_PAGE < state.num_results)
    show_words = min(wc.RESULT_TITLE_WORDS, c.title.shape[1])
    for k in range(PER_PAGE):
      slot = state.result_page * PER_PAGE + k
      shown = slot < state.num_results
      prod = jnp.maximum(state.results[jnp.minimum(slot, MAX_RESULTS - 1)], 0)
      row.ids(jnp.where(shown, k, -1), t.item_label, (k,))
      row.ids(jnp.where(shown, jnp.asarray(c.title)[prod, :show_words], -1), t.word,
              c.title[:, :show_words])
      row.fixed(SEP, shown)
      price(row, jnp.asarray(c.price)[prod], shown)
    pages.append(row)
    # item
    item = jnp.maximum(state.item, 0)
    row = _Row()
    row.fixed(BACK)
    row.fixed(PREV)
    row.fixed(SEP)
    row.ids(jnp.asarray(c.title)[item], t.word, c.title)
    row.fixed(PRICE_HEAD)
    price(row, jnp.asarray(c.price)[item])
    groups_i = jnp.asarray(c.groups_of)[item]
    values_i = jnp.asarray(c.values_of)[item]
    for g in range(values_i.shape[0]):
      row.fixed(SEP, groups_i[g] >= 0)
      row.ids(groups_i[g], t.group, c.groups_of[:, g:g + 1])
      for v in range(values_i.shape[1]):
        row.fixed(SEP, values_i[g, v] >= 0)
        row.ids(values_i[g, v], t.value, c.values_of[:, g, v:v + 1])
    row.fixed(SELECTED)
    sel = state.selected
    for g in range(sel.shape[0]):
      if g:
        row.fixed(COMMA, (sel[g] >= 0) & jnp.any(sel[:g] >= 0))
      row.ids(sel[g], t.value, c.values_of[:, g].reshape(-1, 1))
    row.fixed(NONE, jnp.all(sel < 0))
    row.fixed(ITEM_TAIL)
    pages.append(row)
    # description
    row = _Row()
    row.fixed(BACK)
    row.fixed(PREV)
    row.fixed(SEP)
    row.ids(jnp.asarray(c.description)[item], t.word, c.description)
    pages.append(row)
    # features
    row = _Row()
    row.fixed(BACK)
    row.fixed(PREV)
    bullets = jnp.asarray(c.bullets)[item]
    for b in range(bullets.shape[0]):
      row.fixed(SEP, bullets[b, 0] >= 0)
      row.ids(bullets[b], t.word, c.bullets[:, b])
    pages.append(row)
    # done
    row = _Row()
    row.fixed(THANKS)
    row.ids(state.score_pct, t.score, range(101))
    pages.append(row)

    return prefix, pages

  def render_symbols(self, state: WebShopState, params: WebShopParams) -> jax.Array:
    """int32[S]: the instruction, then the page, at its offset in the body
    (see ``_layout``)."""
    del params
    prefix, pages = self._parts(state)
    offsets, body, _ = _layout(self)
    bodies = jnp.stack([jnp.pad(jnp.concatenate(r.values), (o, body - o - len(r.slots)),
                                constant_values=-1) for r, o in zip(pages, offsets)])
    return jnp.concatenate([jnp.concatenate(prefix.values),
                            bodies[state.page]]).astype(jnp.int32)

  def render_text(self, state: WebShopState, params: WebShopParams) -> str:
    """Host-side rendering from the state arrays and the catalog's strings."""
    del params
    s = jax.device_get(state)
    c = self.cat
    w = lambda row: "".join(" " + c.words[int(x)] for x in row if x >= 0)
    money = lambda cents: f" ${int(cents) // 100}.{int(cents) % 100:02d}"
    target = int(s.target)
    text = "WebShop [SEP] Instruction: [SEP] i need" + w(c.query_words[c.query[target]])
    attrs = [c.phrases[int(a)] for a in s.goal_attrs if a >= 0]
    if attrs:
      text += " that is " + " and ".join(attrs)
    opts = [f"{c.groups[int(c.groups_of[target, g])]}: {c.values[int(v)]}"
            for g, v in enumerate(s.goal_values) if v >= 0]
    if opts:
      text += ", with " + " and ".join(opts)
    text += f", and price lower than {int(s.bound)}.00 dollars"
    page = int(s.page)
    if page == SEARCH:
      text += " [SEP] Search"
      for k, row in enumerate(np.asarray(self.suggestions(state))):
        if (row >= 0).any():
          text += f" [SEP] search[{k + 1}]:" + w(row)
    elif page == RESULTS:
      n, rp = int(s.num_results), int(s.result_page)
      text += f" [SEP] Back to Search [SEP] Page {rp + 1} (Total results: {n})"
      if rp > 0:
        text += " [SEP] < Prev"
      if (rp + 1) * PER_PAGE < n:
        text += " [SEP] Next >"
      for k in range(PER_PAGE):
        if rp * PER_PAGE + k < n:
          p = int(s.results[rp * PER_PAGE + k])
          text += (f" [SEP] item {k + 1} [SEP]" + w(c.title[p, :wc.RESULT_TITLE_WORDS])
                   + " [SEP]" + money(c.price[p]))
    elif page == DONE:
      text += (" [SEP] Thank you for shopping with us! [SEP] Your score (min 0.0, max "
               f"1.0) [SEP] {int(s.score_pct) // 100}.{int(s.score_pct) % 100:02d}")
    else:
      p = int(s.item)
      text += " [SEP] Back to Search [SEP] < Prev"
      if page == ITEM:
        text += " [SEP]" + w(c.title[p]) + " [SEP] Price:" + money(c.price[p])
        for g, gid in enumerate(c.groups_of[p]):
          if gid >= 0:
            text += f" [SEP] {c.groups[gid]}:" + "".join(
                f" [SEP] {c.values[int(v)]}" for v in c.values_of[p, g] if v >= 0)
        chosen = [c.values[int(v)] for v in s.selected if v >= 0]
        text += " [SEP] Selected: " + (", ".join(chosen) if chosen else "none")
        text += " [SEP] Description [SEP] Features [SEP] Buy Now"
      elif page == DESCRIPTION:
        text += " [SEP]" + w(c.description[p])
      else:
        text += "".join(" [SEP]" + w(b) for b in c.bullets[p] if b[0] >= 0)
    return text

  def state_key(self, state: WebShopState) -> jax.Array:
    """uint32 hash of the observation."""
    return hash_arrays(self.render_symbols(state, None))

  def goal_of(self, state: WebShopState) -> dict:
    """Host side: the goal as strings (target index, attributes, {group:
    value}, price bound in dollars), the reference's ``reset`` input."""
    s = jax.device_get(state)
    c = self.cat
    t = int(s.target)
    return dict(target=t, attributes=[c.phrases[int(a)] for a in s.goal_attrs if a >= 0],
                options={c.groups[int(c.groups_of[t, g])]: c.values[int(v)]
                         for g, v in enumerate(s.goal_values) if v >= 0},
                price_bound=int(s.bound))


def _distinct(ids: jax.Array, length: int) -> jax.Array:
  """The first ``length`` distinct non-negative entries of ``ids``, in order,
  -1 padded."""
  earlier = jnp.tril(ids[:, None] == ids[None, :], k=-1)
  keep = (ids >= 0) & ~jnp.any(earlier, axis=1)
  pos = jnp.where(keep, jnp.cumsum(keep) - 1, length)
  return jnp.full((length,), -1, jnp.int32).at[pos].set(ids, mode="drop")


@functools.lru_cache(maxsize=8)
def _action_strings(catalog: wc.Catalog) -> tuple[str, ...]:
  values = tuple(f"click[{v}]" for v in catalog.values)
  clash = sorted(set(values) & set(_FIXED_ACTIONS))
  if clash:
    raise ValueError(f"option values {clash} collide with WebShop's own buttons")
  return _FIXED_ACTIONS + values


@functools.lru_cache(maxsize=16)
def _layout(env: WebShop) -> tuple[tuple[int, ...], int, tuple[tuple[int, ...], ...]]:
  """(per page its offset in the body, the body's length, the symbol slots).

  Pages share the body's positions, so a position's slot is the union of
  what the pages hold there, and the token buffer is sized by the longest
  symbol of each union. The longest page (results) starts the body; every
  other page goes at the offset where it adds the fewest characters (a
  tokenizer-free proxy of tokens) to the unions' longest symbols.
  """
  out = []

  def trace(state):
    prefix, pages = env._parts(state)
    out.append((prefix.slots, [r.slots for r in pages]))
    return jnp.concatenate(prefix.values)

  state, _ = jax.eval_shape(env.reset, jax.random.key(0), env.default_params)
  jax.eval_shape(trace, state)
  prefix, pages = out[0]
  chars = np.asarray([len(x) for x in env.symbols])
  cost = lambda slot: int(chars[list(slot)].max())
  body = max(len(p) for p in pages)
  union: list[set] = [set() for _ in range(body)]
  width = np.zeros(body, np.int64)
  offsets = [0] * len(pages)
  order = sorted(range(len(pages)), key=lambda i: -sum(cost(x) for x in pages[i]))
  for i in order:
    page = np.asarray([cost(x) for x in pages[i]], np.int64)
    spans = range(body - len(page) + 1)
    extra = [int(np.maximum(width[o:o + len(page)], page).sum() - width[o:o + len(page)].sum())
             for o in spans]
    o = int(np.argmin(extra))
    offsets[i] = o
    width[o:o + len(page)] = np.maximum(width[o:o + len(page)], page)
    for j, slot in enumerate(pages[i]):
      union[o + j].update(slot)
  # The never-rendered empty symbol in the first slot keeps the text codec
  # off its slot fast path (``envs_jax.text._SlotLayout`` gives up on
  # zero-token symbols): that path unrolls one select per symbol a position
  # may hold, which does not compile in reasonable time for ~1500 symbols.
  # The general encoder still sizes its buffer by these slots.
  slots = ([tuple(sorted(set(prefix[0]) | {EMPTY}))] + list(prefix[1:])
           + [tuple(sorted(u)) or (0,) for u in union])
  return tuple(offsets), body, tuple(slots)
