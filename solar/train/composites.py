"""Composite documents with a known intersection, built from the training pairs (stage 1, ``w_compose``).

A plain image-caption pair cannot say which of its parts are shared: every token and every patch
of it belongs to the pair, and a loss on plain pairs can be met through the caption's context
alone (docs/experiments.md, S1-0 .. S1-9).  A composite built from three training documents A, B
and C can:

* image: A's and B's pictures side by side on one canvas (white or a pastel tint; order, size and
  vertical position random), each cropped to its visible content;
* text: the first words of A's caption and of C's caption (C is not in the image), joined in a
  random order, so a word's position says nothing about its label.

Truth by construction: A's words and the cells covering A are intersection; C's words, the cells
covering B and empty cells are difference.  Function words and words found in more than 2 % (and
more than 10) of the documents carry no label.  B and C are drawn so their content words are
disjoint from A's (and from each other), so neither is likely to show A's content and no word
is in both parts of the text.

Nothing here reads an evaluation split: the documents come from the run's own training data. The
composites' tower features are cached like the training features (frozen towers); otherwise they
are computed once at setup and kept in memory (with trainable towers: the towers at the start).
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from solar.data.composite import cell_labels, content_box, pastel, token_labels
from solar.data.document import Document

VERSION = 1
# Function words carry no content: they are neither labelled nor used to tell parts apart.
STOP_WORDS = frozenset("a an and as at by for from in is it of on or the to with".split())
_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class CompositeSpec:
    """One composite: document indices a, b (in the image) and c (text only), the layout of A and
    B on a ``size`` canvas (``_boxes``), the background colour, the text and its labelled word
    spans ([start, end, "a" | "c"])."""
    a: int
    b: int
    c: int
    layout: tuple
    background: tuple
    size: int
    text: str
    spans: tuple


def _words(text: str, limit: int) -> list:
    """(start, end, lower-cased word) of the first ``limit`` words of ``text``."""
    out = []
    for m in _WORD.finditer(text or ""):
        out.append((m.start(), m.end(), m.group().lower()))
        if len(out) >= limit:
            break
    return out


def _content(words) -> set:
    return {w for _, _, w in words if w not in STOP_WORDS}


def _part(text: str, words: list) -> str:
    return text[: words[-1][1]] if words else ""


def _rgba(img):
    """The picture as RGBA, cropped to its visible content.  A picture on a white ground (the
    border is near-white) gets its near-white pixels made transparent, so it sits on any
    background; any other picture is an opaque rectangle."""
    from PIL import Image, ImageChops
    if img.mode == "RGBA":
        rgba = img
    else:
        rgb = img.convert("RGB")
        diff = ImageChops.difference(rgb, Image.new("RGB", rgb.size, (255, 255, 255))).convert("L")
        arr = np.asarray(diff)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        if (border <= 24).mean() > 0.9:
            alpha = diff.point(lambda v: 255 if v > 24 else 0)
        else:
            alpha = Image.new("L", rgb.size, 255)
        rgba = rgb.copy()
        rgba.putalpha(alpha)
    return rgba.crop(content_box(rgba))


def _own_rgba(doc):
    """An offline set's drawing with its own transparency (RGBA), or None for any other document
    or when the file cannot be read (the caller then cuts out near-white pixels)."""
    from PIL import Image
    try:
        if "emoji" in doc.meta:
            from solar.data.offline import _render
            return _render(doc.meta["emoji"]).convert("RGBA")
        if doc.source == "openclipart" and doc.image_uri.lower().endswith(".png"):
            with Image.open(doc.image_uri) as img:
                return img.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return None


def _layout(rng: random.Random, scale: tuple) -> tuple:
    """Random numbers that place A and B: (A on the left?, then per drawing: long-side scale,
    horizontal and vertical position within the free room, each in [0, 1])."""
    left = rng.random() < 0.5
    return (left,) + tuple(rng.uniform(*scale) if k % 3 == 0 else rng.random() for k in range(6))


def _boxes(layout: tuple, sizes: dict, size: int) -> dict:
    """Pixel boxes of A and B, each in its own half of the canvas."""
    half = size // 2
    order = ["a", "b"] if layout[0] else ["b", "a"]
    boxes = {}
    for slot, key in enumerate(order):
        u, fx, fy = layout[1:4] if key == "a" else layout[4:7]
        w, h = sizes[key]
        s = u * (half - 4) / max(w, h, 1)
        pw, ph = max(1, round(w * s)), max(1, round(h * s))
        x0 = slot * half + 2 + round(fx * max(0, half - pw - 4))
        y0 = 2 + round(fy * max(0, size - ph - 4))
        boxes[key] = (x0, y0, x0 + pw, y0 + ph)
    return boxes


class Composer:
    """Builds ``n`` composites from documents (``solar.data.Document``), deterministically from
    ``seed``.  ``own_alpha``: an offline set's drawing keeps its own transparency (the clip-art
    PNG's alpha, the rendered emoji's; an opaque PNG stays an opaque rectangle) instead of having
    its near-white pixels cut out; other documents are cut out either way."""

    def __init__(self, docs: list, n: int, seed: int = 0, size: int = 224, max_words: int = 8,
                 min_words: int = 8, scale: tuple = (0.7, 1.0), max_share: float = 0.02, tries: int = 50,
                 own_alpha: bool = False):
        if n < 1:
            raise ValueError(f"the number of composites must be positive, got {n}")
        self.docs, self.n, self.seed, self.size, self.own_alpha = docs, n, seed, size, own_alpha
        if not 1 <= min_words <= max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        self.min_words, self.max_words, self.scale, self.tries = min_words, max_words, scale, tries
        self._pictures: dict = {}
        words = [_words(d.text, max_words) if d.text else [] for d in docs]
        df: dict = {}
        for w in words:
            for x in _content(w):
                df[x] = df.get(x, 0) + 1
        # Words in more than ``max_share`` of the documents ("icon", "symbol") say little about
        # one picture: like function words, they get no label.
        self.generic = frozenset(x for x, n in df.items() if n > max(10, max_share * len(docs)))
        self.words = words
        self.content = [_content(w) - self.generic for w in words]
        self.usable = [i for i, d in enumerate(docs) if d.image is not None and self.content[i]]
        if len(self.usable) < 3:
            raise ValueError("composites need at least 3 training documents with an image and a "
                             f"text with words; {len(self.usable)} have both")

    def _rng(self, *parts) -> random.Random:
        key = ":".join(map(str, (self.seed, "compose", VERSION, *parts)))
        return random.Random(hashlib.sha1(key.encode()).hexdigest())

    def _draw(self, rng, avoid: set, exclude: set) -> Optional[int]:
        for _ in range(self.tries):
            j = rng.choice(self.usable)
            if j not in exclude and not (self.content[j] & avoid):
                return j
        return None

    def spec(self, k: int) -> Optional[CompositeSpec]:
        """The ``k``-th composite, or None when no word-disjoint partners were found."""
        rng = self._rng("case", k)
        a = rng.choice(self.usable)
        c = self._draw(rng, self.content[a], {a})
        b = None if c is None else self._draw(rng, self.content[a] | self.content[c], {a, c})
        if b is None:
            return None
        layout = _layout(rng, self.scale)
        background = (255, 255, 255) if rng.random() < 0.5 else tuple(pastel(rng))
        if self.min_words < self.max_words:          # each part's length drawn in the range
            na, nc = (rng.randint(self.min_words, self.max_words) for _ in range(2))
        else:
            na = nc = self.max_words
        parts = [("a", self.docs[a].text, self.words[a][:na]),
                 ("c", self.docs[c].text, self.words[c][:nc])]
        if rng.random() < 0.5:
            parts.reverse()
        text, spans = "", []
        for label, full, words in parts:
            if text:
                text += ", "
            base = len(text)
            text += _part(full, words)
            spans += [(base + s, base + e, label) for s, e, w in words
                      if w not in STOP_WORDS and w not in self.generic]
        return CompositeSpec(a, b, c, layout, background, self.size, text,
                             tuple(spans))

    def specs(self) -> list:
        out, k = [], 0
        while len(out) < self.n and k < 4 * self.n:
            s = self.spec(k)
            if s is not None:
                out.append(s)
            k += 1
        if not out:
            raise ValueError("no composite could be built from the training documents")
        return out

    def picture(self, i: int):
        if i not in self._pictures:
            src = _own_rgba(self.docs[i]) if self.own_alpha else None
            img = src if src is not None else self.docs[i].load_image()
            if img is None:                               # undecodable: an empty drawing
                from PIL import Image
                self._pictures[i] = Image.new("RGBA", (1, 1), (0, 0, 0, 0))
            else:
                img.thumbnail((self.size, self.size))
                self._pictures[i] = _rgba(img)
            if len(self._pictures) > 256:                 # bound the memory of a long build
                self._pictures.pop(next(iter(self._pictures)))
        return self._pictures[i]

    def render(self, spec: CompositeSpec):
        """(RGB canvas, {"a": bool mask, "b": bool mask}) of the visible pixels of A and B."""
        from PIL import Image
        canvas = Image.new("RGB", (spec.size, spec.size), spec.background)
        pics = {"a": self.picture(spec.a), "b": self.picture(spec.b)}
        boxes = _boxes(spec.layout, {k: p.size for k, p in pics.items()}, spec.size)
        masks = {}
        for key in ("a", "b"):
            x0, y0, x1, y1 = boxes[key]
            d = pics[key].resize((x1 - x0, y1 - y0), Image.BICUBIC)
            alpha = d.getchannel("A")
            canvas.paste(d.convert("RGB"), (x0, y0), mask=alpha)
            m = np.zeros((spec.size, spec.size), dtype=bool)
            m[y0:y1, x0:x1] = np.asarray(alpha) > 16
            masks[key] = m
        return canvas, masks


def composite_docs(composer: Composer, specs: list, cells: dict, grid: tuple) -> list:
    """Documents of the composites for the feature cache (ids name the construction).  Rendering
    one also stores its cell truth in ``cells`` (keyed by position), so a first build renders
    every canvas once."""

    def image(k, s):
        canvas, masks = composer.render(s)
        cells[k] = cell_labels(masks, grid)
        return canvas

    ids = [getattr(d, "id", str(i)) for i, d in enumerate(composer.docs)]
    out = []
    for k, s in enumerate(specs):
        key = (f"compose-v{VERSION}:{composer.seed}:{ids[s.a]}:{ids[s.b]}:{ids[s.c]}:"
               f"{s.layout}:{s.background}:{s.text}" + (":own-alpha" if composer.own_alpha else ""))
        out.append(Document(text=s.text, image=lambda k=k, s=s: image(k, s),
                            id=hashlib.sha1(key.encode()).hexdigest(), source="composite"))
    return out


def square_grid(model) -> tuple:
    P = model.image_tower.num_tokens
    side = int(round(P ** 0.5))
    if side * side != P:
        raise ValueError(f"composites need a square patch grid; the image tower gives {P} tokens")
    return side, side


def composite_truth(model, composer: Composer, specs: list, text_mask: torch.Tensor,
                    cells: Optional[dict] = None, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Truth of every composite: token (N, T) int8 over the features' text positions and patch
    (N, P) int8 over the image tower's grid; 1 intersection, 0 difference, -1 not scored (function
    and generic words, punctuation, padding).  Empty cells and B's cells are difference.  ``cells``:
    cell truth already rendered (see ``composite_docs``); the others are rendered here."""
    grid = square_grid(model)
    cells = {} if cells is None else cells
    N, T = text_mask.shape
    tok = torch.full((N, T), -1, dtype=torch.int8)
    pat = torch.zeros((N, grid[0] * grid[1]), dtype=torch.int8)
    for s0 in range(0, N, batch):
        part = specs[s0:s0 + batch]
        mask = text_mask[s0:s0 + batch]
        used = mask.any(dim=0).nonzero()
        mask = mask[:, : int(used.max()) + 1 if used.numel() else 1]   # the store pads to T
        strings = model.token_strings([s.text for s in part], mask)
        for r, (s, toks) in enumerate(zip(part, strings)):
            k = s0 + r
            labels = token_labels(s.text, [list(x) for x in s.spans], toks)
            pos = mask[r].nonzero().flatten()[: len(labels)]
            tok[k, pos] = torch.tensor(labels, dtype=torch.int8)[: len(pos)]
            c = cells.get(k)
            if c is None:
                c = cell_labels(composer.render(s)[1], grid)
            pat[k] = torch.from_numpy((c == 1).astype(np.int8))
    return tok, pat


def composite_store(model, docs: list, cfg, log=None):
    """(features, token truth, patch truth) of ``cfg.compose_n`` composites of ``docs``.

    Frozen towers with ``cfg.use_cache``: features and truth cached as
    ``compose-<key>.safetensors`` / ``compose-truth-<key>.safetensors`` beside the training
    features; otherwise the towers run over the rendered composites once, now (kept in memory;
    trainable towers are not re-run on them later)."""
    from safetensors.torch import load_file, save_file

    from .features import _atomic_save, build_store, cache_key, cached_store, default_cache_dir
    grid = square_grid(model)
    composer = Composer(docs, cfg.compose_n, cfg.seed, model.image_tower.cfg.image_size,
                        own_alpha=cfg.compose_own_alpha,
                        max_words=cfg.compose_words[1], min_words=cfg.compose_words[0])
    specs = composer.specs()
    cells: dict = {}
    cdocs = composite_docs(composer, specs, cells, grid)
    frozen = model.image_tower.frozen and model.text_tower.frozen
    if frozen and cfg.use_cache:
        store, info = cached_store(model, cdocs, cfg.cache_dir, "compose", cfg.feature_batch)
        folder = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        path = folder / f"compose-truth-{cache_key(model, cdocs)}.safetensors"
        if path.is_file():
            t = load_file(str(path))
            tok, pat = t["token"], t["patch"]
        else:
            tok, pat = composite_truth(model, composer, specs, store.t["text_mask"], cells)
            _atomic_save(save_file, {"token": tok, "patch": pat}, path)
    else:
        with torch.no_grad():
            store = build_store(model, cdocs, cfg.feature_batch)
        tok, pat = composite_truth(model, composer, specs, store.t["text_mask"], cells)
        info = {"hit": False, "path": None}
    if log is not None:
        log({"event": "composites", "n": len(specs), "cache_hit": info.get("hit"),
             "intersection_tokens": int((tok == 1).sum()), "difference_tokens": int((tok == 0).sum()),
             "intersection_patches": int((pat == 1).sum()), "patches": int(pat.numel())})
    return store, tok, pat


def compose_loss(tok_scores: torch.Tensor, tok_truth: torch.Tensor, pat_scores: torch.Tensor,
                 pat_truth: torch.Tensor, center: float, temp: float) -> torch.Tensor:
    """Class-balanced logistic loss on element scores against the composites' truth.

    tok_scores (B, T), tok_truth (B, T) int8 (1, 0, -1 = not scored); pat_scores (B, P),
    pat_truth (B, P) int8.  Per modality: 0.5 * (mean softplus(-z) over intersection elements +
    mean softplus(z) over difference elements), z = (score - center) / temp; the two modalities
    are averaged.  A modality without both classes in the batch adds 0.
    """
    def one(s, y):
        z = (s.float() - center) / temp
        pos, neg = y == 1, y == 0
        if not (pos.any() and neg.any()):
            return s.sum() * 0.0
        return 0.5 * (torch.nn.functional.softplus(-z[pos]).mean()
                      + torch.nn.functional.softplus(z[neg]).mean())
    return 0.5 * (one(tok_scores, tok_truth) + one(pat_scores, pat_truth))
