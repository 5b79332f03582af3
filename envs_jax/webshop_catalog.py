"""WebShop's product catalog as static arrays: a procedural generator, a JSON
loader, and the BM25 index the JAX game searches with.

Products are dicts in WebShop's product schema (``asin``, ``name``,
``category``, ``product_category``, ``query``, ``small_description``,
``full_description``, ``pricing``, ``customization_options``,
``attributes``); ``load_products`` reads and checks a JSON file of them,
``generate_products`` draws a seeded catalog of such dicts, and
``Catalog.build`` turns either into integer arrays (``Catalog``) that the
game (``envs_jax.games.webshop``) gathers from inside ``jit``. The plain-Python
reference (``envs_jax.reference.webshop``) reads the same dicts and none of
the arrays.

Text is reduced to lowercase *words*: ``words(text)`` keeps the runs of
``a-z0-9`` (with an inner apostrophe: ``men's``), so ``"Long-Lasting Eye
Shadow, 12 Colors"`` reads ``long lasting eye shadow 12 colors``. Titles are
cut to ``TITLE_WORDS`` words, descriptions to ``DESCRIPTION_WORDS`` (as
shown; attribute matching reads the whole text), bullets to ``BULLETS`` of
``BULLET_WORDS`` words. Option values and attribute phrases keep their
strings (``"rose gold"``, ``"long lasting"``): they are shown and clicked as
wholes.

The generator (``generate_products``): five WebShop categories (beauty,
electronics, fashion, food, furniture), each with 3-4 subcategories of
product types (``eye shadow``, ``power bank``, ``yoga pants``, ...), a brand
list, modifier words, an attribute pool and option groups (color, size,
scent, flavor, style, length, capacity). A product draws its category, type,
brand, 0-2 modifiers, 3-5 attributes (one may go into the title), a subset
of 2-5 values of each option group of its type, a price in its type's range,
bullets (most of its attributes, each with a tail word) and a one-sentence
description. About 450 words in all.

BM25 (Lucene's, as pyserini's index that WebShop searches): a product's
document is its title words followed by the words of its attributes; a query
is a *set* of words; term weight ``idf(w) * tf / (tf + k1 (1 - b + b dl /
avgdl))`` with ``idf(w) = ln(1 + (N - df + 0.5) / (df + 0.5))``, k1 = 0.9,
b = 0.4. Weights are rounded to integers (x ``BM25_SCALE``) per (document,
distinct word) at build time, so a query's score is an exact integer sum
(``doc_words`` / ``doc_weight``) and ties break by product index, the same
on device and in the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import math
import os
import random
import re
from typing import Any, Sequence

import numpy as np

# ---- limits -------------------------------------------------------------------

TITLE_WORDS = 16            # words of a title kept (shown on the item page, matched)
RESULT_TITLE_WORDS = 6      # title words shown per search result
DESCRIPTION_WORDS = 24      # description words shown on its page
BULLETS = 5                 # feature bullets kept
BULLET_WORDS = 8            # words per bullet
MAX_ATTRIBUTES = 8          # attributes kept per product
MAX_GROUPS = 3              # option groups per product
MAX_VALUES = 8              # values per option group
MAX_DOLLARS = 999           # prices below $1000
BM25_K1, BM25_B, BM25_SCALE = 0.9, 0.4, 1000

STOPWORDS = frozenset(
    "a an the and or for with of in on to by from at is are that this it as be "
    "its your you our per".split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_PRICE = re.compile(r"\$?\s*(\d+(?:\.\d+)?)")


def words(text: str) -> list[str]:
  """Lowercase words of ``text`` (runs of a-z0-9, an inner apostrophe kept)."""
  return _WORD.findall(text.lower())


# ---- the generator's vocabulary ----------------------------------------------------

# Option groups: name -> values.
_GROUP_VALUES = {
    "beauty color": ("red", "pink", "nude", "coral", "berry", "plum", "brown", "black"),
    "beauty size": ("0.5 ounce", "1 ounce", "1.7 ounce", "3.4 ounce", "8 ounce", "16 ounce"),
    "scent": ("lavender", "coconut", "rose", "citrus", "vanilla", "unscented", "mint"),
    "tech color": ("black", "white", "silver", "blue", "gray", "rose gold", "red", "green"),
    "ports": ("4 port", "7 port", "10 port"),
    "phone model": ("iphone 14", "iphone 15", "galaxy s23", "pixel 8", "galaxy a54"),
    "length": ("3 feet", "6 feet", "10 feet", "15 feet"),
    "capacity": ("10000mah", "20000mah", "26800mah"),
    "mount size": ("up to 55 inch", "up to 75 inch", "up to 85 inch"),
    "wear color": ("black", "white", "navy", "gray", "red", "green", "khaki", "beige",
                   "blue", "pink"),
    "wear size": ("small", "medium", "large", "x-large", "xx-large"),
    "shoe size": ("us 6", "us 7", "us 8", "us 9", "us 10", "us 11"),
    "snack flavor": ("chocolate", "vanilla", "sea salt", "barbecue", "original",
                     "honey roasted", "strawberry", "peanut"),
    "drink flavor": ("original", "lemon", "mint", "peach", "berry", "dark roast",
                     "medium roast"),
    "spread flavor": ("creamy", "crunchy", "original", "garlic", "basil"),
    "pack": ("pack of 6", "pack of 12", "pack of 24"),
    "weight": ("8 ounce", "12 ounce", "16 ounce", "2 pound"),
    "count": ("20 count", "50 count", "100 count"),
    "volume": ("500 ml", "1 liter", "2 liter"),
    "wood color": ("white", "black", "brown", "walnut", "oak", "gray", "espresso"),
    "tiers": ("3 tier", "4 tier", "5 tier"),
    "bed size": ("twin", "full", "queen", "king"),
    "desk size": ("40 inch", "47 inch", "55 inch"),
    "set": ("set of 2", "set of 4", "1 piece"),
}
# The group name each option group shows (several groups share one name).
_GROUP_NAME = {
    "beauty color": "color", "beauty size": "size", "scent": "scent",
    "tech color": "color", "ports": "style", "phone model": "style", "length": "length",
    "capacity": "capacity", "mount size": "size", "wear color": "color",
    "wear size": "size", "shoe size": "size", "snack flavor": "flavor",
    "drink flavor": "flavor", "spread flavor": "flavor", "pack": "size",
    "weight": "size", "count": "size", "volume": "size", "wood color": "color",
    "tiers": "size", "bed size": "size", "desk size": "size", "set": "style",
}


@dataclasses.dataclass(frozen=True)
class _Category:
  name: str                     # WebShop's category
  department: str               # first level of product_category
  subcategories: dict           # subcategory -> {type phrase: (groups, low, high, suffix)}
  brands: tuple
  modifiers: tuple
  attributes: tuple
  tails: tuple                  # bullet endings


_CATEGORIES = (
    _Category(
        "beauty", "beauty & personal care",
        {"makeup": {"eye shadow": (("beauty color",), 5, 40, ""),
                    "lipstick": (("beauty color",), 4, 30, ""),
                    "foundation": (("beauty color", "beauty size"), 8, 45, ""),
                    "mascara": (("beauty color",), 5, 25, ""),
                    "nail polish": (("beauty color", "beauty size"), 3, 20, "")},
         "skin care": {"face moisturizer": (("beauty size",), 8, 60, ""),
                       "eye cream": (("beauty size",), 10, 70, ""),
                       "face serum": (("beauty size",), 10, 80, ""),
                       "sunscreen": (("beauty size", "scent"), 6, 35, "")},
         "hair care": {"shampoo": (("scent", "beauty size"), 5, 40, ""),
                       "hair conditioner": (("scent", "beauty size"), 5, 40, ""),
                       "hair oil": (("scent",), 6, 45, "")}},
        ("glowup", "puresilk", "lumina", "velvetine", "dermaleaf", "aurelia", "bellacasa",
         "nuvia", "skinroot", "rosaline", "mirabel", "kaiya"),
        ("matte", "shimmer", "hydrating", "nourishing", "lightweight", "gentle", "organic",
         "professional", "daily", "ultra", "soft", "radiant"),
        ("long lasting", "cruelty free", "paraben free", "sulfate free", "fragrance free",
         "natural ingredients", "travel size", "easy to apply", "dry skin", "sensitive skin",
         "hyaluronic acid", "vitamin c", "tea tree", "anti aging", "waterproof", "vegan",
         "oil free", "highly pigmented"),
        ("formula", "finish", "for all skin types", "for everyday use", "care")),
    _Category(
        "electronics", "electronics",
        {"headphones": {"wireless earbuds": (("tech color",), 15, 120, ""),
                        "bluetooth speaker": (("tech color",), 20, 150, ""),
                        "over ear headphones": (("tech color",), 20, 180, "")},
         "computer accessories": {"usb hub": (("ports",), 10, 50, ""),
                                  "wireless mouse": (("tech color",), 8, 60, ""),
                                  "laptop stand": (("tech color",), 15, 70, ""),
                                  "mechanical keyboard": (("tech color",), 30, 160, "")},
         "cell phones & accessories": {
             "phone case": (("phone model", "tech color"), 6, 40, ""),
             "charging cable": (("length", "tech color"), 5, 25, ""),
             "power bank": (("capacity", "tech color"), 15, 80, ""),
             "screen protector": (("phone model",), 5, 20, "")},
         "television & video": {"hdmi cable": (("length",), 5, 30, ""),
                                "tv wall mount": (("mount size",), 20, 120, "")}},
        ("voltix", "sonara", "zentek", "amperon", "pixelon", "corelink", "novabeam", "tronix",
         "quanta", "auravox", "helix", "lumatek"),
        ("portable", "wireless", "smart", "premium", "compact", "slim", "rechargeable",
         "universal", "pro", "mini", "advanced", "durable"),
        ("fast charging", "noise cancelling", "high definition", "easy to install",
         "long battery life", "water resistant", "plug and play", "heavy duty",
         "wireless charging", "usb c", "hands free", "high speed", "compact design",
         "ergonomic design", "low latency"),
        ("technology", "support", "for home and office", "included", "design")),
    _Category(
        "fashion", "clothing, shoes & jewelry",
        {"men": {"t shirt": (("wear color", "wear size"), 8, 35, "for men"),
                 "dress shirt": (("wear color", "wear size"), 15, 60, "for men"),
                 "jeans": (("wear color", "wear size"), 20, 80, "for men"),
                 "hoodie": (("wear color", "wear size"), 18, 70, "for men"),
                 "running shoes": (("wear color", "shoe size"), 30, 140, "for men")},
         "women": {"summer dress": (("wear color", "wear size"), 15, 70, "for women"),
                   "yoga pants": (("wear color", "wear size"), 12, 50, "for women"),
                   "blouse": (("wear color", "wear size"), 12, 55, "for women"),
                   "sandals": (("wear color", "shoe size"), 15, 80, "for women"),
                   "cardigan": (("wear color", "wear size"), 20, 75, "for women")},
         "accessories": {"baseball cap": (("wear color",), 8, 30, ""),
                         "leather belt": (("wear color", "wear size"), 10, 45, ""),
                         "wallet": (("wear color",), 10, 60, "")}},
        ("urbanloft", "northpeak", "silkroad", "denimco", "stridex", "lunavera", "oakwear",
         "bluehaven", "kestrel", "marlowe", "vantage", "solstice"),
        ("classic", "casual", "vintage", "athletic", "stretch", "lightweight", "soft", "cozy",
         "stylish", "everyday", "premium", "loose"),
        ("machine wash", "slim fit", "relaxed fit", "button closure", "long sleeve",
         "short sleeve", "high waist", "elastic waistband", "moisture wicking", "non slip",
         "rubber sole", "quick dry", "cotton blend", "pull on", "lace up",
         "breathable fabric"),
        ("material", "for all seasons", "design", "comfort", "style")),
    _Category(
        "food", "grocery & gourmet food",
        {"snacks": {"protein bars": (("snack flavor", "pack"), 10, 45, ""),
                    "potato chips": (("snack flavor", "pack"), 5, 30, ""),
                    "mixed nuts": (("snack flavor", "weight"), 8, 40, ""),
                    "granola": (("snack flavor", "weight"), 5, 25, "")},
         "beverages": {"green tea": (("drink flavor", "count"), 4, 25, ""),
                       "coffee beans": (("drink flavor", "weight"), 8, 45, ""),
                       "sparkling water": (("drink flavor", "pack"), 6, 30, "")},
         "pantry staples": {"olive oil": (("volume",), 8, 50, ""),
                            "pasta sauce": (("spread flavor", "pack"), 4, 30, ""),
                            "honey": (("weight",), 6, 40, ""),
                            "peanut butter": (("spread flavor", "weight"), 4, 25, "")}},
        ("harvestly", "goldfield", "tastebud", "orchardia", "sunmeadow", "purebite",
         "kettleworks", "nutrivale", "greenacre", "mapleton", "savora", "crispin"),
        ("roasted", "natural", "gourmet", "fresh", "classic", "healthy", "premium", "artisan",
         "bulk", "light", "rich", "savory"),
        ("gluten free", "non gmo", "sugar free", "low carb", "high protein", "keto friendly",
         "usda organic", "dairy free", "individually wrapped", "ready to eat",
         "kosher certified", "no artificial flavors", "low sodium", "plant based",
         "caffeine free", "whole grain"),
        ("recipe", "taste", "for snacking", "quality", "ingredients")),
    _Category(
        "furniture", "home & kitchen",
        {"living room furniture": {"coffee table": (("wood color",), 40, 200, ""),
                                   "sofa": (("wood color",), 150, 600, ""),
                                   "bookshelf": (("wood color", "tiers"), 30, 180, ""),
                                   "tv stand": (("wood color",), 50, 250, ""),
                                   "accent chair": (("wood color",), 60, 300, "")},
         "bedroom furniture": {"nightstand": (("wood color", "set"), 30, 150, ""),
                               "bed frame": (("bed size",), 80, 400, ""),
                               "dresser": (("wood color",), 80, 350, "")},
         "home office furniture": {"office chair": (("wood color",), 50, 300, ""),
                                   "computer desk": (("wood color", "desk size"), 50, 280, "")},
         "kitchen & dining furniture": {"dining chair": (("wood color", "set"), 40, 250, ""),
                                        "bar stool": (("wood color", "set"), 40, 200, "")}},
        ("oakhaven", "nordhem", "casaluxe", "woodcraft", "loftline", "homestead",
         "brightnest", "arborly", "maplecrest", "urbanest", "timberly", "cozyden"),
        ("modern", "rustic", "industrial", "farmhouse", "minimalist", "contemporary",
         "scandinavian", "sturdy", "elegant", "compact", "classic", "wooden"),
        ("easy assembly", "solid wood", "space saving", "storage space", "mid century",
         "metal frame", "living room", "high gloss", "easy clean", "heavy duty",
         "adjustable height", "lumbar support", "upholstered seat", "engineered wood"),
        ("construction", "for small spaces", "finish", "design", "quality")),
)


def _asin(rng: random.Random, used: set) -> str:
  alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  while True:
    code = "B0" + "".join(rng.choice(alphabet) for _ in range(8))
    if code not in used:
      used.add(code)
      return code


def generate_products(num_products: int = 2000, seed: int = 0) -> list[dict]:
  """A seeded catalog of ``num_products`` products in WebShop's schema."""
  if num_products < 1:
    raise ValueError(f"num_products must be >= 1, got {num_products}")
  rng = random.Random(seed)
  used: set = set()
  products = []
  for _ in range(num_products):
    cat = rng.choice(_CATEGORIES)
    sub = rng.choice(sorted(cat.subcategories))
    kind = rng.choice(sorted(cat.subcategories[sub]))
    groups, low, high, suffix = cat.subcategories[sub][kind]
    brand = rng.choice(cat.brands)
    mods = rng.sample(cat.modifiers, rng.randint(0, 2))
    attrs = rng.sample(cat.attributes, rng.randint(3, 5))
    in_title = [attrs[0]] if rng.random() < 0.5 else []
    title = " ".join([brand.capitalize()] + mods + in_title + [kind] + ([suffix] if suffix else []))
    options = {}
    for g in groups:
      values = _GROUP_VALUES[g]
      chosen = set(rng.sample(values, rng.randint(2, min(5, len(values)))))
      options[_GROUP_NAME[g]] = [v for v in values if v in chosen]
    cents = rng.randint(low * 100, high * 100 - 1)
    bullets = [f"{a} {rng.choice(cat.tails)}" for a in attrs if rng.random() < 0.8]
    shown = [a for a in attrs if rng.random() < 0.5]
    description = (f"this {' '.join(mods)} {kind} by {brand} is "
                   + (" and ".join(shown) if shown else "made to last")
                   + f" {rng.choice(cat.tails)}")
    products.append(dict(
        asin=_asin(rng, used), name=title, category=cat.name,
        product_category=f"{cat.department} \u203a {sub} \u203a {kind}", query=kind,
        small_description=bullets, full_description=" ".join(description.split()),
        pricing=f"${cents // 100}.{cents % 100:02d}",
        customization_options=options, attributes=attrs))
  return products


# ---- the loader ----------------------------------------------------------------------

SAMPLE = "sample"           # ``load_products(SAMPLE)``: the packaged 15-product sample


def _bad(index: int, product: Any, field: str, why: str) -> ValueError:
  asin = product.get("asin") if isinstance(product, dict) else None
  who = f"asin {asin!r}, index {index}" if isinstance(asin, str) else f"index {index}"
  return ValueError(f"webshop product ({who}): field {field!r} {why}")


def parse_price(text: Any) -> int | None:
  """Cents of a WebShop ``pricing`` field (``"$12.99"``, ``"$10.48 - $18.99"``
  (the lowest), ``12.99``, ``[12.99, 15.0]``), or None if unreadable."""
  if isinstance(text, bool):
    return None
  if isinstance(text, (int, float)):
    amounts = [float(text)]
  elif isinstance(text, str):
    amounts = [float(m) for m in _PRICE.findall(text.replace(",", ""))]
  elif isinstance(text, list) and text and all(
      isinstance(x, (int, float)) and not isinstance(x, bool) for x in text):
    amounts = [float(x) for x in text]
  else:
    return None
  if not amounts or not all(math.isfinite(a) and a >= 0 for a in amounts):
    return None
  return int(round(min(amounts) * 100))


def normalize_product(raw: Any, index: int) -> dict:
  """One product dict, checked and put in canonical form (the fields of
  ``generate_products``).

  Raises:
    ValueError: naming the product (asin and index) and the field.
  """
  if not isinstance(raw, dict):
    raise _bad(index, raw, "<product>", f"must be an object, got {type(raw).__name__}")
  p = raw

  def text(field, default=None):
    value = p.get(field, default)
    if value is None or not isinstance(value, str):
      raise _bad(index, p, field, "must be a string" + ("" if field in p else " (missing)"))
    return value

  asin = text("asin")
  if not asin.strip():
    raise _bad(index, p, "asin", "is empty")
  name = text("name")
  if not words(name):
    raise _bad(index, p, "name", f"has no words: {name!r}")
  category = text("category", "")
  product_category = text("product_category", "")
  levels = [x.strip() for x in product_category.split("\u203a") if x.strip()]
  query = p.get("query")
  if query is None:
    query = levels[-1] if levels else category
  if not isinstance(query, str):
    raise _bad(index, p, "query", "must be a string")
  bullets = p.get("small_description", [])
  if isinstance(bullets, str):
    bullets = [bullets] if bullets.strip() else []
  if not isinstance(bullets, list) or not all(isinstance(b, str) for b in bullets):
    raise _bad(index, p, "small_description", "must be a string or a list of strings")
  description = text("full_description", "")
  if "pricing" not in p:
    raise _bad(index, p, "pricing", "is missing")
  cents = parse_price(p["pricing"])
  if cents is None:
    raise _bad(index, p, "pricing", f"is not a price: {p['pricing']!r}")
  if cents > MAX_DOLLARS * 100 + 99:
    raise _bad(index, p, "pricing", f"is above ${MAX_DOLLARS}.99: {p['pricing']!r}")
  raw_options = p.get("customization_options", {})
  if raw_options is None:
    raw_options = {}
  if not isinstance(raw_options, dict):
    raise _bad(index, p, "customization_options", "must be an object {group: [values]}")
  if len(raw_options) > MAX_GROUPS:
    raise _bad(index, p, "customization_options",
               f"has {len(raw_options)} option groups, at most {MAX_GROUPS}")
  options: dict[str, list[str]] = {}
  for group, values in raw_options.items():
    where = f"customization_options.{group}"
    if not words(group):
      raise _bad(index, p, "customization_options", f"has a group without words: {group!r}")
    if not isinstance(values, list) or not values:
      raise _bad(index, p, where, "must be a non-empty list")
    out = []
    for v in values:
      value = v.get("value") if isinstance(v, dict) else v
      if not isinstance(value, str) or not value.strip():
        raise _bad(index, p, where, f"has a value that is not a non-empty string: {v!r}")
      value = " ".join(value.lower().split())
      if value not in out:
        out.append(value)
    if len(out) > MAX_VALUES:
      raise _bad(index, p, where, f"has {len(out)} values, at most {MAX_VALUES}")
    key = " ".join(group.lower().split())
    if key in options:
      raise _bad(index, p, where, "repeats a group name")
    options[key] = out
  attributes = p.get("attributes", [])
  if not isinstance(attributes, list) or not all(
      isinstance(a, str) and words(a) for a in attributes):
    raise _bad(index, p, "attributes", "must be a list of non-empty strings")
  attrs = []
  for a in attributes:
    a = " ".join(words(a))
    if a not in attrs:
      attrs.append(a)
  return dict(asin=asin, name=name, category=category, product_category=product_category,
              query=query, small_description=list(bullets), full_description=description,
              pricing=f"${cents // 100}.{cents % 100:02d}", customization_options=options,
              attributes=attrs[:MAX_ATTRIBUTES])


def load_products(path: str | os.PathLike) -> list[dict]:
  """The products of a WebShop product JSON file (a list of product objects),
  checked and normalized; ``SAMPLE`` names the packaged sample
  (``envs_jax/data/webshop_sample.json``).

  Raises:
    ValueError: a malformed file or product; the message names the product
      (asin, index) and the field.
  """
  if str(path) == SAMPLE:
    text = (importlib.resources.files("envs_jax") / "data" / "webshop_sample.json"
            ).read_text(encoding="utf-8")
    path = "webshop_sample.json"
  else:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  try:
    data = json.loads(text)
  except json.JSONDecodeError as err:
    raise ValueError(f"webshop product file {path}: not JSON ({err})") from err
  if not isinstance(data, list) or not data:
    raise ValueError(f"webshop product file {path}: must be a non-empty list of products")
  products = [normalize_product(p, i) for i, p in enumerate(data)]
  seen: dict[str, int] = {}
  for i, p in enumerate(products):
    if p["asin"] in seen:
      raise _bad(i, p, "asin", f"repeats product {seen[p['asin']]}'s asin")
    seen[p["asin"]] = i
  return products


# ---- arrays ---------------------------------------------------------------------------


def _pad(rows, width: int, fill: int = -1) -> np.ndarray:
  out = np.full((len(rows), max(width, 1)), fill, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class Catalog:
  """A catalog as static arrays (N products; -1 pads every ragged row).

  Tables of strings (ids index them): ``words`` (the vocabulary),
  ``phrases`` (attribute phrases), ``values`` (option values, in order of
  first appearance: the game's ``click[value]`` actions), ``groups``
  (option group names), ``queries`` (product types), ``levels`` (category
  levels), each with its words where search needs them (``phrase_words``,
  ``value_words``, ``query_words``).

  Per product: ``title`` int32[N, Lt] word ids; ``price`` int32[N] cents;
  ``query`` int32[N]; ``levels_of`` int32[N, Lc] (distinct levels of
  ``product_category``); ``attrs`` int32[N, Na] phrase ids; ``groups_of``
  int32[N, G] and ``values_of`` int32[N, G, V] option ids; ``bullets``
  int32[N, Nb, Lb] and ``description`` int32[N, Ld] word ids (as shown);
  ``title_key`` bool[N, Lt] (the first occurrence of each non-stopword
  title word: the title's "type words" of the reward); ``attr_hit`` bool[N,
  A] (phrase a is one of the product's attributes or a word-run of its
  title, bullets or description); ``doc_words`` / ``doc_weight`` int32[N,
  Ldoc] (the distinct words of its BM25 document and their integer
  weights). ``products`` are the canonical dicts the arrays come from.
  """

  products: tuple
  words: tuple
  phrases: tuple
  values: tuple
  groups: tuple
  queries: tuple
  levels: tuple
  phrase_words: np.ndarray
  value_words: np.ndarray
  query_words: np.ndarray
  title: np.ndarray
  price: np.ndarray
  query: np.ndarray
  levels_of: np.ndarray
  attrs: np.ndarray
  groups_of: np.ndarray
  values_of: np.ndarray
  bullets: np.ndarray
  description: np.ndarray
  title_key: np.ndarray
  attr_hit: np.ndarray
  doc_words: np.ndarray
  doc_weight: np.ndarray

  @property
  def num_products(self) -> int:
    return len(self.products)

  @staticmethod
  def build(products: Sequence[dict]) -> "Catalog":
    """The arrays of canonical product dicts (``normalize_product``'s form)."""
    products = tuple(products)
    vocab: dict[str, int] = {}

    def ids(ws):
      return [vocab.setdefault(w, len(vocab)) for w in ws]

    def table():
      return {}

    phrases, values, groups, queries, levels = table(), table(), table(), table(), table()
    intern = lambda t, s: t.setdefault(s, len(t))
    rows = dict(title=[], full_title=[], query=[], levels=[], attrs=[], groups=[], values=[],
                bullets=[], description=[], full_text=[])
    for p in products:
      title = words(p["name"])
      rows["full_title"].append(title)
      rows["title"].append(ids(title[:TITLE_WORDS]))
      rows["query"].append(intern(queries, " ".join(words(p["query"]))))
      lv = []
      for x in p["product_category"].split("\u203a"):
        x = " ".join(x.lower().split())
        if x and intern(levels, x) not in lv:
          lv.append(levels[x])
      rows["levels"].append(lv)
      rows["attrs"].append([intern(phrases, a) for a in p["attributes"]])
      g_row, v_row = [], []
      for group, vals in p["customization_options"].items():
        g_row.append(intern(groups, group))
        v_row.append([intern(values, v) for v in vals])
      rows["groups"].append(g_row)
      rows["values"].append(v_row)
      bullets = [words(b) for b in p["small_description"]]
      rows["bullets"].append([ids(b[:BULLET_WORDS]) for b in bullets[:BULLETS] if b])
      desc = words(p["full_description"])
      rows["description"].append(ids(desc[:DESCRIPTION_WORDS]))
      rows["full_text"].append([title] + bullets + [desc])
    # Every string's words enter the vocabulary (queries need them).
    for t in (phrases, values, queries):
      for s in t:
        ids(words(s))
    for g in groups:
      ids(words(g))
    n = len(products)
    phrase_list = tuple(sorted(phrases, key=phrases.get))
    # Attribute hits: the product's own attributes, or a word-run of its texts.
    attr_hit = np.zeros((n, max(len(phrase_list), 1)), bool)
    phrase_ws = [tuple(words(a)) for a in phrase_list]
    longest = max((len(ws) for ws in phrase_ws), default=0)
    for i in range(n):
      runs = {tuple(t[j:j + k]) for t in rows["full_text"][i] for k in range(1, longest + 1)
              for j in range(len(t) - k + 1)}
      for a in rows["attrs"][i]:
        attr_hit[i, a] = True
      for a, ws in enumerate(phrase_ws):
        attr_hit[i, a] |= ws in runs
    # Title key words: first occurrences of non-stopwords.
    title_key = np.zeros((n, max(max(len(t) for t in rows["title"]), 1)), bool)
    inv = {i: w for w, i in vocab.items()}
    for i, t in enumerate(rows["title"]):
      seen = set()
      for j, w in enumerate(t):
        if inv[w] not in STOPWORDS and w not in seen:
          title_key[i, j] = True
          seen.add(w)
    doc_words, doc_weight = _bm25(rows["title"],
                                  [[vocab[w] for a in rows["attrs"][i]
                                    for w in words(phrase_list[a])] for i in range(n)])
    lt = title_key.shape[1]
    max_groups = max((len(g) for g in rows["groups"]), default=0)
    max_values = max((len(v) for vs in rows["values"] for v in vs), default=0)
    values_of = np.full((n, max(max_groups, 1), max(max_values, 1)), -1, np.int32)
    for i, vs in enumerate(rows["values"]):
      for g, v in enumerate(vs):
        values_of[i, g, :len(v)] = v
    max_bullets = max((len(b) for b in rows["bullets"]), default=0)
    bullet_words = max((len(w) for b in rows["bullets"] for w in b), default=0)
    bullets = np.full((n, max(max_bullets, 1), max(bullet_words, 1)), -1, np.int32)
    for i, bs in enumerate(rows["bullets"]):
      for k, b in enumerate(bs):
        bullets[i, k, :len(b)] = b
    strings = lambda t: tuple(sorted(t, key=t.get))
    word_rows = lambda t: _pad([[vocab[w] for w in words(s)] for s in strings(t)],
                               max((len(words(s)) for s in t), default=1))
    return Catalog(
        products=products, words=strings(vocab), phrases=phrase_list,
        values=strings(values), groups=strings(groups), queries=strings(queries),
        levels=strings(levels), phrase_words=word_rows(phrases),
        value_words=word_rows(values), query_words=word_rows(queries),
        title=_pad(rows["title"], lt),
        price=np.asarray([parse_price(p["pricing"]) for p in products], np.int32),
        query=np.asarray(rows["query"], np.int32),
        levels_of=_pad(rows["levels"], max(len(x) for x in rows["levels"])),
        attrs=_pad(rows["attrs"], max(len(x) for x in rows["attrs"])),
        groups_of=_pad(rows["groups"], max(max_groups, 1)), values_of=values_of,
        bullets=bullets,
        description=_pad(rows["description"], max(len(x) for x in rows["description"])),
        title_key=title_key, attr_hit=attr_hit, doc_words=doc_words, doc_weight=doc_weight)

  def decode_product(self, i: int) -> dict:
    """Product ``i`` read back from the arrays (canonical words: lowercase,
    title and texts cut to the kept words)."""
    w = lambda row: " ".join(self.words[int(x)] for x in row if x >= 0)
    cents = int(self.price[i])
    options = {}
    for g, gid in enumerate(self.groups_of[i]):
      if gid >= 0:
        options[self.groups[gid]] = [self.values[int(v)] for v in self.values_of[i, g] if v >= 0]
    return dict(
        asin=self.products[i]["asin"], name=w(self.title[i]),
        category=self.products[i]["category"],
        product_category=" \u203a ".join(self.levels[int(x)] for x in self.levels_of[i]
                                         if x >= 0),
        query=self.queries[int(self.query[i])],
        small_description=[w(b) for b in self.bullets[i] if b[0] >= 0],
        full_description=w(self.description[i]),
        pricing=f"${cents // 100}.{cents % 100:02d}", customization_options=options,
        attributes=[self.phrases[int(a)] for a in self.attrs[i] if a >= 0])


def _bm25(titles: list[list[int]], attr_words: list[list[int]]):
  """(doc_words, doc_weight) int32[N, Ldoc]: per document its distinct words
  (in order of first occurrence) and their integer BM25 weights."""
  docs = [t + a for t, a in zip(titles, attr_words)]
  n = len(docs)
  avgdl = sum(len(d) for d in docs) / n
  df: dict[int, int] = {}
  for d in docs:
    for w in set(d):
      df[w] = df.get(w, 0) + 1
  rows_w, rows_x = [], []
  for d in docs:
    counts: dict[int, int] = {}
    for w in d:
      counts[w] = counts.get(w, 0) + 1
    norm = BM25_K1 * (1.0 - BM25_B + BM25_B * len(d) / avgdl)
    rows_w.append(list(counts))
    rows_x.append([int(round(BM25_SCALE * math.log(1.0 + (n - df[w] + 0.5) / (df[w] + 0.5))
                             * tf / (tf + norm))) for w, tf in counts.items()])
  width = max(len(r) for r in rows_w)
  doc_words, doc_weight = _pad(rows_w, width), _pad(rows_x, width, 0)
  if int(doc_weight.sum(1).max()) >= 2 ** 31:
    raise ValueError("BM25 scores overflow int32")
  return doc_words, doc_weight


@functools.lru_cache(maxsize=8)
def catalog_for(source: str, num_products: int, seed: int) -> Catalog:
  """The catalog of a game's configuration (built once per process):
  ``source`` ``"generated"`` (``generate_products(num_products, seed)``),
  ``"sample"`` or a path to a product JSON file."""
  if source == "generated":
    return Catalog.build(generate_products(num_products, seed))
  return Catalog.build(load_products(source))
