"""Deterministic image variants for the benchmark, described by small JSON specs.

A benchmark image is never stored: the manifest holds a *source* (an Open Clip Art PNG named by its
path under the library's ``png/`` folder, or an emoji character) and a list of *ops*; ``render``
re-derives the exact pixels from the installed offline packages.  A source whose long side
exceeds ``MAX_SOURCE_SIDE`` is first reduced to it.

Ops (applied in order, all coordinates relative so they do not depend on the source resolution):

* ``{"op": "crop", "box": [x0, y0, x1, y1]}``: crop a window of the *content box* (the bounding
  box of visible pixels: alpha > 16, or not near-white for opaque images), in fractions of it.
* ``{"op": "resize", "long": N}``: scale so the long side is N pixels (bicubic).
* ``{"op": "background", "rgb": [r, g, b]}``: paste the transparent image onto this colour
  (opaque images keep their own background).
* ``{"op": "pad", "margin": m, "rgb": [r, g, b]}``: add a margin of ``m`` times the long side
  (at least 2 px) and pad to a square with this colour.

Rendering always ends in an RGB PIL image.
"""
from __future__ import annotations

import functools
import hashlib
import warnings
from pathlib import Path

from solar.data.composite import content_box

_OPS = ("crop", "resize", "background", "pad")
# Sources larger than this are first reduced to it (long side, bicubic) so ops stay cheap.
MAX_SOURCE_SIDE = 1024


def source_of(doc) -> dict:
    """The image source spec of an offline set's document (see ``solar.data.offline``)."""
    from solar.data.offline import clipart_root
    if "emoji" in doc.meta:
        return {"kind": "emoji", "emoji": doc.meta["emoji"]}
    rel = Path(doc.image_uri).relative_to(clipart_root() / "png")
    return {"kind": "openclipart", "path": rel.as_posix()}


@functools.lru_cache(maxsize=2048)
def _load_rgba(kind: str, key: str):
    from PIL import Image

    from solar.data.offline import _render, clipart_root
    if kind == "emoji":
        return _render(key).convert("RGBA")
    if kind == "openclipart":
        path = clipart_root() / "png" / key
        if not path.is_file():
            raise FileNotFoundError(f"clip-art image {key!r} not found under {clipart_root()}/png")
        with warnings.catch_warnings():   # a few library drawings are 10k x 16k pixels
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()
        has_alpha = img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info
        img = img.convert("RGBA") if has_alpha else img.convert("RGB")
        if max(img.size) > MAX_SOURCE_SIDE:
            img.thumbnail((MAX_SOURCE_SIDE, MAX_SOURCE_SIDE), Image.BICUBIC)
        return img
    raise ValueError(f"unknown image source kind {kind!r} (expected 'openclipart' or 'emoji')")


def load_source(source: dict):
    """The source image as RGBA (transparent sources) or RGB (opaque ones); a fresh copy."""
    if not isinstance(source, dict) or "kind" not in source:
        raise ValueError(f"image source must be a dict with 'kind', got {source!r}")
    key = source.get("emoji") if source["kind"] == "emoji" else source.get("path")
    if not isinstance(key, str):
        raise ValueError(f"image source {source!r} lacks its 'emoji' or 'path'")
    return _load_rgba(source["kind"], key).copy()


def _solid(size, rgb):
    from PIL import Image
    return Image.new("RGB", size, tuple(int(c) for c in rgb))


def _rgb(op: dict) -> tuple:
    rgb = op.get("rgb")
    if not (isinstance(rgb, (list, tuple)) and len(rgb) == 3 and all(0 <= int(c) <= 255 for c in rgb)):
        raise ValueError(f"op {op!r} needs rgb = [r, g, b] in 0..255")
    return tuple(int(c) for c in rgb)


def _crop(img, box):
    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        raise ValueError(f"crop box must be [x0, y0, x1, y1], got {box!r}")
    x0, y0, x1, y1 = (float(b) for b in box)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"crop box must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {box!r}")
    L, T, R, B = content_box(img)
    w, h = R - L, B - T
    px = (L + round(x0 * w), T + round(y0 * h), L + round(x1 * w), T + round(y1 * h))
    px = (px[0], px[1], max(px[2], px[0] + 1), max(px[3], px[1] + 1))
    return img.crop(px)


def _resize(img, long: int):
    from PIL import Image
    if not isinstance(long, int) or long <= 0:
        raise ValueError(f"resize 'long' must be a positive int, got {long!r}")
    s = long / max(img.size)
    size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    return img.resize(size, Image.BICUBIC)


def _background(img, rgb):
    if img.mode != "RGBA":
        return img.convert("RGB")
    bg = _solid(img.size, rgb)
    bg.paste(img, mask=img.getchannel("A"))
    return bg


def _pad(img, margin: float, rgb):
    if not 0 <= float(margin) <= 1:
        raise ValueError(f"pad margin must be in [0, 1], got {margin!r}")
    img = _background(img, (255, 255, 255)) if img.mode == "RGBA" else img.convert("RGB")
    m = max(2, round(float(margin) * max(img.size)))
    side = max(img.size) + 2 * m
    out = _solid((side, side), rgb)
    out.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return out


def apply_ops(img, ops: list):
    """Apply the ops to a PIL image (see module docstring) -> RGB PIL image."""
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or op.get("op") not in _OPS:
            raise ValueError(f"ops[{i}] must be a dict with op in {_OPS}, got {op!r}")
        kind = op["op"]
        if kind == "crop":
            img = _crop(img, op.get("box"))
        elif kind == "resize":
            img = _resize(img, op.get("long"))
        elif kind == "background":
            img = _background(img, _rgb(op))
        else:
            img = _pad(img, op.get("margin", 0.0), _rgb(op))
    return img.convert("RGB") if img.mode != "RGB" else img


def render(spec: dict):
    """Render ``{"source": {...}, "ops": [...]}`` -> RGB PIL image (deterministic)."""
    if not isinstance(spec, dict) or "source" not in spec:
        raise ValueError(f"image spec must be a dict with 'source' and 'ops', got {spec!r}")
    return apply_ops(load_source(spec["source"]), spec.get("ops", []))


def pixel_hash(img) -> str:
    """A hash of the exact pixels and size of an RGB image (for duplicate checks)."""
    h = hashlib.sha1(f"{img.mode}{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:20]


def spec_key(spec: dict) -> str:
    """A stable key for an image spec (source + ops)."""
    import json
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
