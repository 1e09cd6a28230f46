"""Pictures and truth shared by the two kinds of composite documents: the mask benchmark
(:mod:`solar.eval.masks`, from val/test items) and composite supervision in stage 1
(:mod:`solar.train.composites`, from training documents).

:func:`content_box` finds a picture's visible content, :func:`pastel` draws a background tint,
:func:`cell_labels` and :func:`token_labels` turn what was pasted where and which words came from
which document into per-patch and per-token truth.  Pillow and numpy load when used.
"""
from __future__ import annotations

import random


def content_box(img) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the visible content; the whole image when it is blank."""
    from PIL import Image, ImageChops
    if img.mode == "RGBA":
        box = img.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox()
    else:
        diff = ImageChops.difference(img.convert("RGB"), Image.new("RGB", img.size, (255, 255, 255)))
        box = diff.convert("L").point(lambda v: 255 if v > 24 else 0).getbbox()
    return box or (0, 0, img.width, img.height)


def pastel(rng: random.Random) -> list:
    """A random light tint (each channel 190..250, one at most 225), as [r, g, b]."""
    while True:
        rgb = [rng.randint(190, 250) for _ in range(3)]
        if min(rgb) <= 225:
            return rgb


def cell_labels(masks: dict, grid: tuple, min_cover: float = 0.2):
    """Per-patch truth on a ``grid`` = (rows, cols) over the canvas: 1 (A), 0 (B), -1 (background).

    A cell belongs to a drawing when at least ``min_cover`` of its pixels are that drawing's
    footprint (visible pixels dilated by 1/32 of the canvas, so thin line art counts); when both
    qualify, the larger cover wins.  Returns an int8 numpy array of rows * cols, row-major (the
    order of the image tower's patch tokens)."""
    import numpy as np
    from PIL import Image, ImageFilter
    rows, cols = grid
    S = next(iter(masks.values())).shape[0]
    grow = ImageFilter.MaxFilter(2 * max(1, S // 64) + 1)
    cover = {}
    for key, m in masks.items():
        fp = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).filter(grow)) > 0
        ys = np.linspace(0, S, rows + 1).round().astype(int)
        xs = np.linspace(0, S, cols + 1).round().astype(int)
        cover[key] = np.array([[fp[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() for j in range(cols)]
                               for i in range(rows)]).reshape(-1)
    out = np.full(rows * cols, -1, dtype=np.int8)
    a_ok, b_ok = cover["a"] >= min_cover, cover["b"] >= min_cover
    out[a_ok & (~b_ok | (cover["a"] >= cover["b"]))] = 1
    out[b_ok & (~a_ok | (cover["b"] > cover["a"]))] = 0
    return out


def token_labels(text: str, spans: list, tokens: list) -> list:
    """Truth per token: 1 (A's words), 0 (C's words), -1 (punctuation, or a token that cannot be
    placed in the text).  ``tokens`` are the tokenizer's strings in order (WordPiece "##" pieces,
    byte-level "Ġ" and SentencePiece "▁" prefixes are understood); each is located in the
    lower-cased text after the previous one and takes the label of the word span it falls in."""
    low, pos, out = text.lower(), 0, []
    for tok in tokens:
        t = tok.lower().replace("##", "").replace("ġ", "").replace("▁", "").strip()
        at = low.find(t, pos) if t else -1
        if at < 0:
            out.append(-1)
            continue
        pos = at + len(t)
        label = -1
        for s, e, lab in spans:
            if s <= at < e:
                label = 1 if lab == "a" else 0
                break
        out.append(label)
    return out
