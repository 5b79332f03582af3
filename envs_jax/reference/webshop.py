"""A plain-Python WebShop with the rules of ``envs_jax.games.webshop``.

It reads the catalog as product dicts (``Catalog.products``: the canonical
form of ``envs_jax.webshop_catalog.normalize_product``) and none of the
game's arrays; the goal is an input (``reset(goal)``, a dict with the target
index, attribute phrases, ``{group: value}`` options and the price bound in
dollars), because the JAX game draws it from its reset key. Actions are the
candidate strings themselves (``step("click[buy now]")``). Search builds its
own BM25 index; the score is WebShop's formula with exact matching.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

SUGGESTIONS, QUERY_WORDS, PER_PAGE, MAX_RESULTS = 3, 12, 10, 50
TITLE_WORDS, RESULT_WORDS, DESCRIPTION_WORDS, BULLETS, BULLET_WORDS = 16, 6, 24, 5, 8
K1, B, SCALE = 0.9, 0.4, 1000
STOPWORDS = set("a an the and or for with of in on to by from at is are that this it as be "
                "its your you our per".split())
FIXED = ([f"search[{k}]" for k in range(1, SUGGESTIONS + 1)]
         + ["click[back to search]", "click[next >]", "click[< prev]"]
         + [f"click[item {k}]" for k in range(1, PER_PAGE + 1)]
         + ["click[description]", "click[features]", "click[buy now]"])


def tokens(text: str) -> list[str]:
  return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def cents(pricing: str) -> int:
  dollars, _, frac = pricing.lstrip("$").partition(".")
  return int(dollars) * 100 + int(frac or 0)


def money(c: int) -> str:
  return "$%d.%02d" % (c // 100, c % 100)


def levels(product: dict) -> set[str]:
  return {" ".join(x.lower().split()) for x in product["product_category"].split("\u203a")
          if x.strip()}


def title_words(product: dict) -> list[str]:
  return tokens(product["name"])[:TITLE_WORDS]


def attribute_hit(product: dict, phrase: str) -> bool:
  """The phrase is an attribute of the product or a run of words of its title,
  a bullet or its description (the whole texts)."""
  if phrase in product["attributes"]:
    return True
  needle = " " + " ".join(tokens(phrase)) + " "
  texts = [product["name"], product["full_description"]] + list(product["small_description"])
  return any(needle in " " + " ".join(tokens(t)) + " " for t in texts)


def score(products: Sequence[dict], goal: dict, bought: int, selected: Sequence[str]) -> float:
  """WebShop's score of buying product ``bought`` with option values
  ``selected`` for ``goal``."""
  want, got = products[goal["target"]], products[bought]
  query_match = " ".join(tokens(want["query"])) == " ".join(tokens(got["query"]))
  category_match = len(levels(want) & levels(got)) >= 2
  desired = {w for w in title_words(want) if w not in STOPWORDS}
  have = set(title_words(got))
  title_score = len(desired & have) / len(desired) if desired else 0.2
  r_type = 1.0
  if not (query_match or category_match or title_score > 0.2):
    r_type = 0.5
  if title_score < 0.1:
    r_type = 0.1
  if title_score == 0.0:
    r_type = 0.0
  attrs = sum(attribute_hit(got, a) for a in goal["attributes"])
  opts = sum(v in selected for v in goal["options"].values())
  price = cents(got["pricing"]) <= goal["price_bound"] * 100
  total = len(goal["attributes"]) + len(goal["options"]) + 1
  return r_type * (attrs + opts + price) / total


class PyWebShop:
  """One attempt at a time, over a list of product dicts."""

  def __init__(self, products: Sequence[dict], max_turns: int = 12,
               reward_mode: str = "success", reward_scale: float = 10.0):
    self.products = list(products)
    self.max_turns = max_turns
    self.reward_mode = reward_mode
    self.reward_scale = reward_scale
    values: list[str] = []
    for p in self.products:
      for vals in p["customization_options"].values():
        values += [v for v in vals if v not in values]
    self.actions = FIXED + [f"click[{v}]" for v in values]
    self._index()

  def _index(self) -> None:
    docs = [title_words(p) + [w for a in p["attributes"] for w in tokens(a)]
            for p in self.products]
    n = len(docs)
    avg = sum(map(len, docs)) / n
    df: dict[str, int] = {}
    for d in docs:
      for w in set(d):
        df[w] = df.get(w, 0) + 1
    self.weights = []
    for d in docs:
      k = K1 * (1.0 - B + B * len(d) / avg)
      self.weights.append({
          w: int(round(SCALE * math.log(1.0 + (n - df[w] + 0.5) / (df[w] + 0.5))
                       * d.count(w) / (d.count(w) + k))) for w in set(d)})

  def search(self, query: Sequence[str]) -> list[int]:
    """Product indices ranked by BM25 (positive scores, ties by index), at most 50."""
    q = set(query)
    scored = [(sum(wt.get(w, 0) for w in q), i) for i, wt in enumerate(self.weights)]
    ranked = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))
    return [i for _, i in ranked[:MAX_RESULTS]]

  # ---- the attempt ----------------------------------------------------------
  def reset(self, goal: dict) -> str:
    self.goal = goal
    self.page = "search"
    self.results: list[int] = []
    self.result_page = 0
    self.item: int | None = None
    self.selected: dict[str, str] = {}
    self.steps = 0
    self.bought = False
    self.score = 0.0
    return self.render_text()

  @property
  def done(self) -> bool:
    return self.bought or self.steps >= self.max_turns

  def suggestions(self) -> list[list[str]]:
    target = self.products[self.goal["target"]]
    kind = tokens(target["query"])
    attrs = [w for a in self.goal["attributes"] for w in tokens(a)]
    opts = [w for v in self.goal["options"].values() for w in tokens(v)]
    out = []
    for words in (kind + attrs + opts, kind + attrs, kind):
      seen: list[str] = []
      for w in words:
        if w not in seen:
          seen.append(w)
      out.append(seen[:QUERY_WORDS])
    return out

  def instruction(self) -> str:
    target = self.products[self.goal["target"]]
    text = "i need " + " ".join(tokens(target["query"]))
    if self.goal["attributes"]:
      text += " that is " + " and ".join(self.goal["attributes"])
    if self.goal["options"]:
      text += ", with " + " and ".join(f"{g}: {v}" for g, v in self.goal["options"].items())
    return text + f", and price lower than {self.goal['price_bound']}.00 dollars"

  def _shown(self) -> list[int]:
    start = self.result_page * PER_PAGE
    return self.results[start:start + PER_PAGE]

  def render_text(self) -> str:
    parts = ["WebShop", "Instruction:", self.instruction()]
    if self.page == "search":
      parts.append("Search")
      parts += [f"search[{k + 1}]: " + " ".join(q)
                for k, q in enumerate(self.suggestions()) if q]
    elif self.page == "results":
      parts += ["Back to Search",
                f"Page {self.result_page + 1} (Total results: {len(self.results)})"]
      if self.result_page > 0:
        parts.append("< Prev")
      if (self.result_page + 1) * PER_PAGE < len(self.results):
        parts.append("Next >")
      for k, i in enumerate(self._shown()):
        p = self.products[i]
        parts += [f"item {k + 1}", " ".join(title_words(p)[:RESULT_WORDS]),
                  money(cents(p["pricing"]))]
    elif self.page == "done":
      parts += ["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)",
                "%.2f" % (math.floor(self.score * 100 + 0.5 + 1e-9) / 100)]
    else:
      p = self.products[self.item]
      parts += ["Back to Search", "< Prev"]
      if self.page == "item":
        parts += [" ".join(title_words(p)), "Price: " + money(cents(p["pricing"]))]
        for group, values in p["customization_options"].items():
          parts += [f"{group}:"] + list(values)
        chosen = [self.selected[g] for g in p["customization_options"] if g in self.selected]
        parts += ["Selected: " + (", ".join(chosen) or "none"), "Description", "Features",
                  "Buy Now"]
      elif self.page == "description":
        parts.append(" ".join(tokens(p["full_description"])[:DESCRIPTION_WORDS]))
      else:
        bullets = [tokens(b)[:BULLET_WORDS] for b in p["small_description"][:BULLETS]]
        parts += [" ".join(b) for b in bullets if b]
    return " [SEP] ".join(parts)

  def legal_actions(self) -> list[str]:
    if self.done:
      return []
    if self.page == "search":
      return [f"search[{k + 1}]" for k, q in enumerate(self.suggestions()) if q]
    out = ["click[back to search]"]
    if self.page == "results":
      if (self.result_page + 1) * PER_PAGE < len(self.results):
        out.append("click[next >]")
      if self.result_page > 0:
        out.append("click[< prev]")
      out += [f"click[item {k + 1}]" for k in range(len(self._shown()))]
    elif self.page == "item":
      out += ["click[< prev]", "click[description]", "click[features]", "click[buy now]"]
      values = self.products[self.item]["customization_options"].values()
      out += [f"click[{v}]" for vals in values for v in vals]
    else:
      out.append("click[< prev]")
    return out

  def legal(self) -> list[bool]:
    ok = set(self.legal_actions())
    return [a in ok for a in self.actions]

  def step(self, action: str) -> tuple[float, bool, bool, bool, bool]:
    """Plays a candidate string: (reward, done, won, truncated, invalid)."""
    if self.done:
      return 0.0, True, self.won, not self.bought, False
    legal = action in self.legal_actions()
    reward = 0.0
    if legal:
      reward = self._apply(action)
    self.steps += 1
    return reward, self.done, self.won, self.done and not self.bought, not legal

  @property
  def won(self) -> bool:
    return self.bought and abs(self.score - 1.0) < 1e-9

  def _apply(self, action: str) -> float:
    if action.startswith("search["):
      self.results = self.search(self.suggestions()[int(action[7:-1]) - 1])
      self.page, self.result_page, self.item, self.selected = "results", 0, None, {}
    elif action == "click[back to search]":
      self.page, self.item, self.selected = "search", None, {}
    elif action == "click[next >]":
      self.result_page += 1
    elif action == "click[< prev]":
      if self.page == "results":
        self.result_page -= 1
      elif self.page == "item":
        self.page, self.item, self.selected = "results", None, {}
      else:
        self.page = "item"
    elif action.startswith("click[item "):
      self.item = self._shown()[int(action[11:-1]) - 1]
      self.page, self.selected = "item", {}
    elif action == "click[description]":
      self.page = "description"
    elif action == "click[features]":
      self.page = "features"
    elif action == "click[buy now]":
      self.bought, self.page = True, "done"
      self.score = score(self.products, self.goal, self.item, list(self.selected.values()))
      if self.reward_mode == "score":
        return self.score
      return self.reward_scale if self.won else 0.0
    else:
      value = action[6:-1]
      for group, values in self.products[self.item]["customization_options"].items():
        if value in values:
          self.selected[group] = value
          break
    return 0.0
