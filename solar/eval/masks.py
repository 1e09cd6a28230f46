"""The intersection-mask benchmark: composites whose shared and one-modality parts are known.

Stage 1 of SOLAR learns, per text token and per image patch, whether the content is shared by
image and text (intersection) or shown by one modality only (difference).  Real captions do not
say which is which, so this benchmark builds documents where it is known by construction, from
clip-art items of one held-out split (``val`` for choosing settings, ``test`` for the reported
numbers; never ``train``):

* image: drawing A and drawing B side by side on one canvas (white or a pastel tint), in random
  order, sizes and vertical positions;
* text: A's title and keywords, then keywords of a third item C that is not in the image.

Ground truth: A's words are intersection, C's words are text-only difference; patches covering A
are intersection, patches covering B are image-only difference, background is neither.  B and C
share no word with A or with each other, and come from other categories than A when possible.

Stored like the symmetric benchmark: a JSONL manifest of sources, placements and character spans;
``render_case`` re-derives the exact pixels (checked by a pixel hash).  Docs: docs/masks.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from solar.data.composite import content_box, pastel

from .construct import _Item, _items, _words, offline_split
from .render import load_source, pixel_hash

FORMAT = "solar-mask-benchmark"
VERSION = 1


@dataclass
class MaskBenchConfig:
    """How the mask benchmark is built.

    seed: construction seed (partners, order, sizes, positions, colours, keyword picks).
    split: "val" (choose settings) or "test" (report); split_seed/val/test as in training.
    max_cases: keep at most this many composites (a seeded choice of A items; None: one per
        eligible item).
    max_items: draw A, B and C from a seeded subset of this many items of the split (None: all;
        for tests and quick runs).
    size: canvas side in pixels.
    max_a_keywords, max_c_keywords: keywords of A and of C put into the text.
    max_keyword_share: keywords found in more than this share of the split's items ("icon",
        "signs and symbols", "food") are left out of both parts: they say little about one
        drawing, so whether the image shows them is not known.
    scale_min, scale_max: a drawing's long side as a fraction of its half of the canvas.
    """
    seed: int = 0
    split: str = "test"
    split_seed: int = 0
    val: float = 0.1
    test: float = 0.1
    max_cases: Optional[int] = None
    max_items: Optional[int] = None
    size: int = 224
    max_a_keywords: int = 2
    max_c_keywords: int = 5
    max_keyword_share: float = 0.02
    scale_min: float = 0.7
    scale_max: float = 1.0

    def __post_init__(self):
        if self.split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test' (never 'train'), got {self.split!r}")
        if self.max_cases is not None and self.max_cases < 1:
            raise ValueError(f"max_cases must be positive (or None), got {self.max_cases}")
        if self.size < 32:
            raise ValueError(f"size must be at least 32, got {self.size}")
        if not 0.2 <= self.scale_min <= self.scale_max <= 1.0:
            raise ValueError(f"need 0.2 <= scale_min <= scale_max <= 1, got "
                             f"{self.scale_min}, {self.scale_max}")
        if self.max_a_keywords < 0 or self.max_c_keywords < 1:
            raise ValueError("max_a_keywords must be >= 0 and max_c_keywords >= 1")


@dataclass
class Case:
    """One composite document and its truth.

    a, b, c: item ids; sources: {"a": source spec, "b": source spec}; boxes: {"a": [x0, y0, x1, y1],
    "b": [...]} pixel boxes on the canvas where each drawing's content is pasted; background:
    [r, g, b]; text: the document text; spans: [[start, end, "a" | "c"], ...] character spans of
    each word of A's part and C's part; pixels: hash of the rendered canvas.
    """
    id: str
    a: str
    b: str
    c: str
    sources: dict
    boxes: dict
    background: list
    size: int
    text: str
    spans: list
    pixels: str = ""


@dataclass
class MaskBenchmark:
    config: dict
    cases: list
    stats: dict = field(default_factory=dict)

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"kind": "header", "format": FORMAT, "version": VERSION,
                                "config": self.config, "stats": self.stats}) + "\n")
            for c in self.cases:
                f.write(json.dumps({"kind": "case", **dataclasses.asdict(c)}) + "\n")
        return path

    def digest(self) -> str:
        h = hashlib.sha256()
        for c in self.cases:
            h.update(json.dumps(dataclasses.asdict(c), sort_keys=True).encode())
        return h.hexdigest()


def load_mask_benchmark(path: Union[str, Path]) -> MaskBenchmark:
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        head = json.loads(lines[0]) if lines else {}
    except ValueError as err:
        raise ValueError(f"{path}: line 1 is not JSON") from err
    if head.get("format") != FORMAT or head.get("version") != VERSION:
        raise ValueError(f"{path} is not a {FORMAT} manifest of version {VERSION}")
    cases = []
    for n, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
            row.pop("kind")
            cases.append(Case(**row))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: line {n} is not a valid case ({err})") from err
    return MaskBenchmark(head.get("config", {}), cases, head.get("stats", {}))


# --------------------------------------------------------------------------- construction
def _rng(cfg: MaskBenchConfig, *parts) -> random.Random:
    return random.Random(hashlib.sha1(":".join(map(str, (cfg.seed, "mask", *parts))).encode()).hexdigest())


def _top_category(item: _Item) -> str:
    return item.category.split("/")[0] if item.category else ""


def _pick(item: _Item, pool: list, avoid_words: frozenset, rng: random.Random,
          usable=lambda c: True) -> Optional[_Item]:
    """A ``usable`` item whose words are all absent from ``avoid_words``, preferably of another
    top-level category than ``item``; drawn at random among those that qualify."""
    ok = [c for c in pool if c.id != item.id and c.base_hash != item.base_hash
          and not (c.words & avoid_words) and usable(c)]
    other = [c for c in ok if _top_category(c) != _top_category(item)]
    cands = other or ok
    return rng.choice(cands) if cands else None


def _text_and_spans(a: _Item, c: _Item, rng: random.Random, cfg: MaskBenchConfig,
                    generic: set) -> tuple:
    """"A's title, A's keywords, C's keywords" with each word's span labelled "a" or "c"."""
    import re
    a_kws = [k for k in a.keywords if k not in generic][: cfg.max_a_keywords]
    c_kws = [k for k in c.keywords if k not in generic and not (_words(k) & a.words)]
    rng.shuffle(c_kws)
    c_kws = c_kws[: cfg.max_c_keywords]
    parts = [(a.title, "a")] + [(k, "a") for k in a_kws] + [(k, "c") for k in c_kws]
    text, spans = "", []
    for n, (s, label) in enumerate(parts):
        text += ". " if n == 1 else ", " if n > 1 else ""
        base = len(text)
        text += s
        spans += [[base + m.start(), base + m.end(), label] for m in re.finditer(r"[A-Za-z0-9]+", s)]
    return text, spans, len(c_kws)


def _placements(a_img, b_img, rng: random.Random, cfg: MaskBenchConfig) -> dict:
    """Pixel boxes of A and B: each in its own half (order random), scaled and shifted."""
    S, half = cfg.size, cfg.size // 2
    order = ["a", "b"] if rng.random() < 0.5 else ["b", "a"]
    boxes = {}
    for slot, key in enumerate(order):
        img = a_img if key == "a" else b_img
        L, T, R, B = content_box(img)
        w, h = R - L, B - T
        long = rng.uniform(cfg.scale_min, cfg.scale_max) * (half - 4)
        s = long / max(w, h)
        pw, ph = max(1, round(w * s)), max(1, round(h * s))
        x0 = slot * half + rng.randint(2, max(2, half - pw - 2))
        y0 = rng.randint(2, max(2, S - ph - 2))
        boxes[key] = [x0, y0, x0 + pw, y0 + ph]
    return boxes


def _drawing(source: dict):
    """The drawing's visible content as RGBA, cropped to its content box."""
    img = load_source(source)
    box = content_box(img)
    return img.convert("RGBA").crop(box)


def render_case(case: Case, with_masks: bool = False):
    """The composite as an RGB PIL image; with ``with_masks`` also the (S, S) bool numpy masks of
    A's and B's visible pixels: (image, {"a": mask, "b": mask})."""
    import numpy as np
    from PIL import Image
    S = case.size
    canvas = Image.new("RGB", (S, S), tuple(case.background))
    masks = {}
    for key in ("a", "b"):
        d = _drawing(case.sources[key])
        x0, y0, x1, y1 = case.boxes[key]
        d = d.resize((x1 - x0, y1 - y0), Image.BICUBIC)
        alpha = d.getchannel("A")
        if d.getextrema()[3][0] == 255:       # opaque source: its whole rectangle is the drawing
            alpha = Image.new("L", d.size, 255)
        canvas.paste(d.convert("RGB"), (x0, y0), mask=alpha)
        if with_masks:
            m = np.zeros((S, S), dtype=bool)
            m[y0:y1, x0:x1] = np.asarray(alpha) > 16
            masks[key] = m
    return (canvas, masks) if with_masks else canvas


def build_mask_benchmark(cfg: Optional[MaskBenchConfig] = None) -> MaskBenchmark:
    """Build the benchmark deterministically from ``cfg`` (see the module docstring)."""
    cfg = cfg or MaskBenchConfig()
    split = offline_split(_bench_cfg(cfg))
    stats: dict = {}
    pool = split[cfg.split]
    if cfg.max_items is not None:
        key = lambda p: hashlib.sha1(f"{cfg.seed}:mask-subset:{p.id}".encode()).hexdigest()  # noqa
        pool = sorted(pool, key=key)[: cfg.max_items]
    items = [it for it in _items(pool, stats) if it.source["kind"] == "openclipart"]
    a_items = [it for it in items if it.title and _words(it.title)]
    df: dict = {}
    for it in items:
        for k in set(it.keywords):
            df[k] = df.get(k, 0) + 1
    generic = {k for k, n in df.items() if n > cfg.max_keyword_share * len(items)}
    a_items.sort(key=lambda it: _rng(cfg, "order", it.id).random())
    if cfg.max_cases is not None:
        a_items = a_items[: cfg.max_cases]
    cases, skipped = [], 0
    for a in a_items:
        rng = _rng(cfg, "case", a.id)
        c = _pick(a, items, a.words, rng, lambda c: any(k not in generic for k in c.keywords))
        b = None if c is None else _pick(a, items, a.words | c.words, rng)
        if c is None or b is None or b.id == c.id:
            skipped += 1
            continue
        text, spans, n_c = _text_and_spans(a, c, rng, cfg, generic)
        if n_c == 0:
            skipped += 1
            continue
        boxes = _placements(_drawing(a.source), _drawing(b.source), rng, cfg)
        bg = [255, 255, 255] if rng.random() < 0.5 else pastel(rng)
        case = Case(f"{a.id}:mask", a.id, b.id, c.id, {"a": a.source, "b": b.source}, boxes, bg,
                     cfg.size, text, spans)
        case.pixels = pixel_hash(render_case(case))
        cases.append(case)
    stats.update({"items": len(items), "cases": len(cases), "skipped": skipped,
                  "generic_keywords": sorted(generic),
                  "a_words": sum(s[2] == "a" for c in cases for s in c.spans),
                  "c_words": sum(s[2] == "c" for c in cases for s in c.spans)})
    return MaskBenchmark(dataclasses.asdict(cfg), cases, stats)


def _bench_cfg(cfg: MaskBenchConfig):
    from .construct import BenchmarkConfig
    return BenchmarkConfig(seed=cfg.seed, split=cfg.split, split_seed=cfg.split_seed, val=cfg.val,
                           test=cfg.test, sources=("openclipart",))
