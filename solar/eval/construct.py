"""Build the symmetric MM2MM benchmark from the offline clip-art and emoji sets (docs/benchmark.md).

Items come only from the "test" split of ``solar.data.offline.split_by_item`` (same fractions and
seed as training), so no training item is ever a query, a target or a distractor.  The same
construction over the "val" split gives a twin benchmark for choosing settings.

For an item with a title and at least one keyword that differs from the title:

* anchor   = (crop A of its image on white,        its title)
* positive = (crop B of its image on a tinted background, its keywords)   -- the same document with
  its information split differently: the two crops overlap only in the middle of the drawing and
  the title and keywords are different words.
* hard negative = the positive with one modality's content taken from a *partner* item (a similar
  item of the same category): "text_swap" keeps the positive's image and uses the partner's
  keywords; "image_swap" keeps the positive's keywords and renders the partner's image with the
  positive's crop and background.  Half of the triplets get each kind.

Items without usable keywords are distractors: (whole image, full caption).  See ``manifest`` for
the pools and the asymmetric tasks.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Optional

from solar.data.composite import pastel

from .manifest import Benchmark, Doc, Query, Triplet
from .render import apply_ops, load_source, pixel_hash, render, source_of


@dataclass
class BenchmarkConfig:
    """How the benchmark is built.

    seed: construction seed (crops, colours, partner picks, negative kinds).
    split: the split items come from: "test" (the benchmark) or "val" (a twin benchmark for
        choosing settings without touching the test items).
    split_seed, val, test: the ``split_by_item`` arguments; they must match training's split.
    sources: which offline sets to draw from ("openclipart", "emoji").
    max_items: keep a seeded subset of this many test items (None = all; for tests/quick runs).
    image_long: long side in pixels of rendered crops, before padding.
    crop_min, crop_max: range of the crop fraction along the split axis.
    partner_top: a partner is drawn among this many most similar candidates.
    """
    seed: int = 0
    split: str = "test"
    split_seed: int = 0
    val: float = 0.1
    test: float = 0.1
    sources: tuple = ("openclipart", "emoji")
    max_items: Optional[int] = None
    image_long: int = 224
    crop_min: float = 0.70
    crop_max: float = 0.85
    partner_top: int = 3

    def __post_init__(self):
        self.sources = tuple(self.sources)
        if self.split not in ("test", "val"):
            raise ValueError(f"split must be 'test' or 'val' (never 'train'), got {self.split!r}")
        bad = set(self.sources) - {"openclipart", "emoji"}
        if bad or not self.sources:
            raise ValueError(f"sources must be a non-empty subset of ('openclipart', 'emoji'), got {self.sources}")
        if self.max_items is not None and self.max_items < 4:
            raise ValueError(f"max_items must be at least 4 (or None), got {self.max_items}")
        if not 0.5 < self.crop_min <= self.crop_max <= 1.0:
            raise ValueError(f"need 0.5 < crop_min <= crop_max <= 1, got {self.crop_min}, {self.crop_max}")
        if self.image_long < 16:
            raise ValueError(f"image_long must be at least 16, got {self.image_long}")
        if self.partner_top < 1:
            raise ValueError(f"partner_top must be >= 1, got {self.partner_top}")


# --------------------------------------------------------------------------- items
def _norm(s: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def _words(s: str) -> set:
    return set(re.findall(r"[a-z0-9]+", s.lower()))


@dataclass
class _Item:
    pair: object
    source: dict
    title: str
    keywords: list
    category: str
    base_hash: str
    order: int      # position in the source order (clip-art by path, emoji by code point)

    @property
    def id(self) -> str:
        return self.pair.id

    @functools.cached_property
    def kw_text(self) -> str:
        return ", ".join(self.keywords)

    @functools.cached_property
    def kw_words(self) -> frozenset:
        return frozenset(_words(self.kw_text))

    @functools.cached_property
    def words(self) -> frozenset:
        return frozenset(_words(self.title)) | self.kw_words

    @functools.cached_property
    def norm_title(self) -> str:
        return _norm(self.title)


def offline_split(cfg: BenchmarkConfig) -> dict:
    """The offline pairs of the configured sources, split by item: {"train", "val", "test"}."""
    from solar.data.offline import clipart_pairs, emoji_pairs, split_by_item
    pairs = []
    if "openclipart" in cfg.sources:
        pairs += clipart_pairs()
    if "emoji" in cfg.sources:
        pairs += emoji_pairs()
    return split_by_item(pairs, val=cfg.val, test=cfg.test, seed=cfg.split_seed)


def _subset(pairs: list, cfg: BenchmarkConfig) -> list:
    if cfg.max_items is None or cfg.max_items >= len(pairs):
        return list(pairs)
    key = lambda p: hashlib.sha1(f"{cfg.seed}:subset:{p.id}".encode()).hexdigest()  # noqa: E731
    keep = {p.id for p in sorted(pairs, key=key)[: cfg.max_items]}
    return [p for p in pairs if p.id in keep]


def _items(pairs: list, stats: dict) -> list[_Item]:
    """Offline pairs -> items; drops blank images and images that render like an earlier one."""
    items, seen = [], set()
    for p in pairs:
        src = source_of(p)
        img = load_source(src)
        if img.mode == "RGBA" and img.getchannel("A").getbbox() is None:
            stats["dropped_blank_image"] = stats.get("dropped_blank_image", 0) + 1
            continue
        h = pixel_hash(apply_ops(img, [{"op": "background", "rgb": [255, 255, 255]}]))
        if h in seen:
            stats["dropped_duplicate_image"] = stats.get("dropped_duplicate_image", 0) + 1
            continue
        seen.add(h)
        title = p.meta.get("title", "").strip()
        kws = [k for k in p.meta.get("keywords", []) if _norm(k) and _norm(k) != _norm(title)]
        items.append(_Item(p, src, title, kws, p.meta.get("category", ""), h, len(items)))
    return items


# --------------------------------------------------------------------------- partners
def _distinct(a: _Item, b: _Item) -> bool:
    """Whether b says something else than a: other title and image, and each item's keywords
    carry a word the other item lacks (so neither description contains the other)."""
    return (a.id != b.id and a.norm_title != b.norm_title and a.base_hash != b.base_hash
            and bool(a.kw_words - b.words) and bool(b.kw_words - a.words))


def _ladder(category: str) -> list[str]:
    parts = category.split("/") if category else []
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)] + [""]


def pick_partner(item: _Item, candidates: list[_Item], rng: random.Random, top: int) -> Optional[_Item]:
    """A similar but different item: same category if possible (else the parent, ...), ranked by
    word overlap (Jaccard of title + keywords), then by nearness in the source order (neighbouring
    files of a folder, neighbouring emoji code points), drawn among the ``top`` best."""
    pool = [c for c in candidates if _distinct(item, c)]
    for level in _ladder(item.category):
        near = [c for c in pool if level == "" or c.category == level or c.category.startswith(level + "/")]
        if near:
            w = item.words
            near.sort(key=lambda c: (-len(w & c.words) / max(1, len(w | c.words)),
                                     abs(c.order - item.order), c.id))
            return rng.choice(near[:top])
    return None


# --------------------------------------------------------------------------- image ops
def _crops(rng: random.Random, cfg: BenchmarkConfig) -> tuple[list, list]:
    """Two crop boxes that overlap in the middle: A on one side of an axis, B on the other."""
    fa, fb = rng.uniform(cfg.crop_min, cfg.crop_max), rng.uniform(cfg.crop_min, cfg.crop_max)
    axis = rng.choice(["x", "y", "xy"])
    flip = rng.random() < 0.5

    def box(f, start):
        lo, hi = (0.0, f) if start else (1.0 - f, 1.0)
        x = (lo, hi) if "x" in axis else (0.0, 1.0)
        y = (lo, hi) if "y" in axis else (0.0, 1.0)
        return [round(x[0], 4), round(y[0], 4), round(x[1], 4), round(y[1], 4)]
    return box(fa, not flip), box(fb, flip)


def variant_ops(rng: random.Random, cfg: BenchmarkConfig) -> tuple[list, list]:
    """Ops of crop A (white) and crop B (tinted background and margin)."""
    box_a, box_b = _crops(rng, cfg)
    tint = pastel(rng)
    white = [255, 255, 255]
    ops_a = [{"op": "crop", "box": box_a}, {"op": "resize", "long": cfg.image_long},
             {"op": "background", "rgb": white},
             {"op": "pad", "margin": round(rng.uniform(0.03, 0.08), 3), "rgb": white}]
    ops_b = [{"op": "crop", "box": box_b}, {"op": "resize", "long": cfg.image_long},
             {"op": "background", "rgb": tint},
             {"op": "pad", "margin": round(rng.uniform(0.10, 0.18), 3), "rgb": tint}]
    return ops_a, ops_b


def _full_ops(rng: random.Random, cfg: BenchmarkConfig) -> list:
    rgb = [255, 255, 255] if rng.random() < 0.5 else pastel(rng)
    return [{"op": "resize", "long": cfg.image_long}, {"op": "background", "rgb": rgb},
            {"op": "pad", "margin": round(rng.uniform(0.03, 0.18), 3), "rgb": rgb}]


def _image(source: dict, ops: list) -> dict:
    spec = {"source": source, "ops": ops}
    return {**spec, "pixels": pixel_hash(render(spec))}


def item_views(pair, cfg: Optional[BenchmarkConfig] = None) -> Optional[dict]:
    """Two views of one offline pair, made as a triplet's anchor and positive are (no partner,
    no negative), for showing an item outside the benchmark.

    Returns {"anchor": {"image": spec, "text": title}, "positive": {"image": spec, "text":
    keywords}} (image specs for ``render``), or None when the item makes no triplet: a blank
    image, no title, no keyword besides the title, or two crops with equal pixels.  The crops and
    colours are a pure function of (cfg.seed, pair.id).
    """
    cfg = cfg or BenchmarkConfig()
    items = _items([pair], {})
    if not items or not items[0].title or not items[0].keywords:
        return None
    it = items[0]
    ops_a, ops_b = variant_ops(_rng(cfg, "views", it.id), cfg)
    img_a, img_b = _image(it.source, ops_a), _image(it.source, ops_b)
    if img_a["pixels"] == img_b["pixels"] or _norm(it.title) == _norm(it.kw_text):
        return None
    return {"anchor": {"image": img_a, "text": it.title},
            "positive": {"image": img_b, "text": it.kw_text}}


# --------------------------------------------------------------------------- assembly
class _Builder:
    def __init__(self):
        self.docs: dict = {}
        self.triplets: list = []
        self.queries: list = []
        self.texts: dict = {}           # text -> doc id of the "text" pool

    def doc(self, item: _Item, role: str, image: Optional[dict], text: Optional[str], pools) -> str:
        d = Doc(f"{item.id}:{role}", item.id, role, image, text, list(pools))
        self.docs[d.id] = d
        return d.id

    def text_candidate(self, item: _Item, role: str, text: str) -> str:
        """A text-only document of pool "text"; identical texts are one candidate (the first
        item's doc), so retrieving that string counts for every item that has it."""
        if text not in self.texts:
            self.texts[text] = self.doc(item, role, None, text, ["text"])
        return self.texts[text]


def _add_triplet(b: _Builder, item: _Item, partner: _Item, kind: str, rng: random.Random,
                 cfg: BenchmarkConfig) -> bool:
    """Add one item's triplet and asymmetric queries; False (nothing added) if a check fails."""
    ops_a, ops_b = variant_ops(rng, cfg)
    img_a, img_b = _image(item.source, ops_a), _image(item.source, ops_b)
    if img_a["pixels"] == img_b["pixels"] or _norm(item.title) == _norm(item.kw_text):
        return False
    if kind == "text_swap":
        neg_img, neg_text = img_b, partner.kw_text
    else:
        neg_img, neg_text = _image(partner.source, ops_b), item.kw_text
        if neg_img["pixels"] == img_b["pixels"]:
            return False
    a = b.doc(item, "anchor", img_a, item.title, ["sym"])
    p = b.doc(item, "positive", img_b, item.kw_text, ["sym", "document"])
    n = b.doc(item, "negative", neg_img, neg_text, ["sym"])
    b.docs[n].item = item.id
    b.triplets.append(Triplet(item.id, a, p, n, kind))
    qt = b.doc(item, "anchor_text", None, item.title, [])
    qi = b.doc(item, "anchor_image", img_a, None, [])
    pt = b.text_candidate(item, "positive_text", item.kw_text)
    pi = b.doc(item, "positive_image", img_b, None, ["image"])
    b.queries += [Query("text->document", qt, p), Query("image->document", qi, p),
                  Query("image->text", qi, pt), Query("text->image", qt, pi)]
    return True


def _add_distractor(b: _Builder, item: _Item, rng: random.Random, cfg: BenchmarkConfig) -> None:
    img = _image(item.source, _full_ops(rng, cfg))
    text = item.pair.text
    b.doc(item, "full", img, text, ["sym", "document"])
    b.text_candidate(item, "full_text", text)
    b.doc(item, "full_image", img, None, ["image"])


def _rng(cfg: BenchmarkConfig, *parts) -> random.Random:
    return random.Random(hashlib.sha1(":".join(map(str, (cfg.seed, *parts))).encode()).hexdigest())


def build_benchmark(cfg: Optional[BenchmarkConfig] = None) -> Benchmark:
    """Build the benchmark deterministically from ``cfg`` (see the module docstring)."""
    cfg = cfg or BenchmarkConfig()
    split = offline_split(cfg)
    stats: dict = {"split_sizes": {k: len(v) for k, v in split.items()}}
    items = _items(_subset(split[cfg.split], cfg), stats)
    eligible = [it for it in items if it.title and it.keywords]
    order = sorted(eligible, key=lambda it: _rng(cfg, "order", it.id).random())
    kinds = {it.id: ("text_swap", "image_swap")[i % 2] for i, it in enumerate(order)}
    b = _Builder()
    rejected = []
    for it in eligible:
        rng = _rng(cfg, "item", it.id)
        partner = pick_partner(it, eligible, rng, cfg.partner_top)
        if partner is None or not _add_triplet(b, it, partner, kinds[it.id], rng, cfg):
            rejected.append(it)
    in_triplets = {t.item for t in b.triplets}
    for it in items:
        if it.id not in in_triplets:
            _add_distractor(b, it, _rng(cfg, "distractor", it.id), cfg)
    stats.update(_stats(b, items, rejected))
    bench = Benchmark(dataclasses.asdict(cfg), b.docs, b.triplets, b.queries, stats)
    bench.validate()
    return bench


def _stats(b: _Builder, items: list, rejected: list) -> dict:
    pools = {}
    for d in b.docs.values():
        for p in d.pools:
            pools[p] = pools.get(p, 0) + 1
    kinds = {}
    for t in b.triplets:
        kinds[t.negative_kind] = kinds.get(t.negative_kind, 0) + 1
    by_source = {}
    for t in b.triplets:
        src = "emoji" if t.item in {it.id for it in items if it.source["kind"] == "emoji"} else "openclipart"
        by_source[src] = by_source.get(src, 0) + 1
    return {"items": len(items), "triplets": len(b.triplets), "triplets_by_source": by_source,
            "negative_kinds": kinds, "rejected_items": len(rejected), "pool_sizes": pools,
            "docs": len(b.docs), "queries_per_task": {t: sum(q.task == t for q in b.queries)
                                                      for t in sorted({q.task for q in b.queries})}}


def verify_renders(bench: Benchmark, limit: Optional[int] = None) -> int:
    """Re-render images of ``bench`` and compare with the stored pixel hashes.

    Returns the number of images checked; raises ValueError naming the first mismatching doc
    (for example after a Pillow upgrade changed resampling)."""
    n = 0
    for d in bench.docs.values():
        if d.image is None:
            continue
        if limit is not None and n >= limit:
            break
        got = pixel_hash(render(d.image))
        if got != d.image["pixels"]:
            raise ValueError(f"doc {d.id!r}: rendered pixels {got} differ from the manifest's "
                             f"{d.image['pixels']}")
        n += 1
    return n
