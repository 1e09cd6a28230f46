"""Real image-text pairs that work offline, from Debian packages (docs/data.md).

* Open Clip Art Library (``apt-get install openclipart-png openclipart-svg``): 8,121 clip-art PNGs;
  each has an SVG twin whose RDF metadata carries a title, keywords and sometimes a description.
* Noto color emoji (``apt-get install fonts-noto-color-emoji``, ``pip install emoji``): emoji
  rendered with Pillow, named by the ``emoji`` package.

Each pair is a :class:`solar.data.Document` whose image loads when asked (``load_image``), with a
stable id (a hash of the image content and the text), so splits by item are deterministic and
identical images at two paths are one item; ``image_uri`` is the PNG path or ``emoji:<emoji>``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import html
import os
import re
import subprocess
from pathlib import Path
from typing import Optional

from .decode import to_rgb
from .document import Document

_MISSING_CLIPART = ("the Open Clip Art Library is not installed: apt-get install -y "
                    "--no-install-recommends openclipart-png openclipart-svg (or set SOLAR_CLIPART_DIR)")
_MISSING_EMOJI = ("emoji data is missing: apt-get install -y --no-install-recommends "
                  "fonts-noto-color-emoji and pip install emoji (or set SOLAR_EMOJI_FONT)")


def _clipart_image(path: str):
    """A clip-art PNG as RGB (transparency pasted on white)."""
    return to_rgb(_open(path))


def _document(pid: str, text: str, image, uri: str, source: str, meta: dict) -> Document:
    """An offline set's document: its image loads lazily (``Document.load_image``)."""
    return Document(text=text, image=image, id=pid, locator=uri, image_uri=uri, source=source,
                    meta=meta)


def _open(path):
    from PIL import Image
    img = Image.open(path)
    img.load()
    return img


def _dpkg_files(package: str) -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.splitlines() if out.returncode == 0 else []


@functools.lru_cache(maxsize=1)
def clipart_root() -> Path:
    """The folder holding ``png/`` and ``svg/`` of the Open Clip Art Library."""
    env = os.environ.get("SOLAR_CLIPART_DIR")
    if env:
        root = Path(env)
    else:
        pngs = [f for f in _dpkg_files("openclipart-png") if f.endswith(".png")]
        if not pngs:
            raise FileNotFoundError(_MISSING_CLIPART)
        p = Path(pngs[0])
        while p.name != "png" and p != p.parent:
            p = p.parent
        root = p.parent
    if not (root / "png").is_dir():
        raise FileNotFoundError(f"{root}/png not found; {_MISSING_CLIPART}")
    return root


_TAG = re.compile(r"<[^>]+>")


def _svg_metadata(svg: Path) -> dict:
    try:
        s = svg.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    work = re.search(r"<cc:Work.*?</cc:Work>", s, re.S)
    body = work.group(0) if work else s
    title = re.search(r"<dc:title>(.*?)</dc:title>", body, re.S)
    desc = re.search(r"<dc:description>(.*?)</dc:description>", body, re.S)
    subject = re.search(r"<dc:subject>(.*?)</dc:subject>", body, re.S)
    kws = re.findall(r"<rdf:li>(.*?)</rdf:li>", subject.group(1), re.S) if subject else []
    clean = lambda t: html.unescape(html.unescape(_TAG.sub("", t))).strip()  # noqa: E731
    return {"title": clean(title.group(1)) if title else "",
            "description": clean(desc.group(1)) if desc else "",
            "keywords": [clean(k) for k in kws]}


_JUNK_KW = {"", "unsorted", "clip art", "clipart", "image", "media", "png", "svg", "public domain"}


def clean_title(title: str, stem: str) -> str:
    """'Clipart by Nicu Buculei - jigsaw_red_10' -> 'jigsaw red'; falls back to the file stem."""
    t = title.strip()
    if t.lower().startswith("clipart by") and " - " in t:
        t = t.split(" - ", 1)[1]
    if not t:
        t = re.sub(r"\d+", " ", stem)
    t = re.sub(r"[_\-]+", " ", t)
    t = re.sub(r"\b\d+\b", " ", t)
    t = re.sub(r"\s+", " ", t).strip()
    return t or re.sub(r"\s+", " ", re.sub(r"[_\-\d]+", " ", stem)).strip()


def _clean_keywords(kws) -> list[str]:
    out = []
    for k in kws:
        k = re.sub(r"\s+", " ", k.replace("_", " ")).strip().lower()
        if k not in _JUNK_KW and k not in out:
            out.append(k)
    return out


def _caption(title: str, keywords: list[str], description: str) -> str:
    text = title
    if keywords:
        text += ". " + ", ".join(keywords)
    if description and "@" not in description and description.lower() != title.lower():
        text += ". " + description
    return text


def _pair_id(image_bytes: bytes, text: str) -> str:
    h = hashlib.sha1(image_bytes)
    h.update(b"\0" + text.encode("utf-8"))
    return h.hexdigest()[:20]


def _scan_clipart(root: Path) -> list[dict]:
    rows = []
    for png in sorted((root / "png").rglob("*.png")):
        rel = png.relative_to(root / "png")
        meta = _svg_metadata((root / "svg" / rel).with_suffix(".svg"))
        rows.append({"path": str(png), "rel": str(rel), "sha1": hashlib.sha1(png.read_bytes()).hexdigest(),
                     "pixels": _pixels(png), **meta})
    return rows


def _pixels(png: Path) -> int:
    """Width x height from the PNG header (the pixels are not decoded)."""
    import warnings

    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(png) as img:
                return img.size[0] * img.size[1]
    except Exception:  # an unreadable or bomb-sized file is left out like an oversized one
        return -1


# A few drawings are rendered at hundreds of megapixels (Pillow refuses them as decompression
# bombs); they are left out of the set, as are files whose header cannot be read.
MAX_CLIPART_PIXELS = 40_000_000
_INDEX_VERSION = 2


def _index_cache(root: Path) -> Path:
    key = f"{root}:{(root / 'png').stat().st_mtime_ns}:{_INDEX_VERSION}"
    stamp = hashlib.sha1(key.encode()).hexdigest()[:12]
    base = Path(os.environ.get("SOLAR_CACHE_DIR", Path.home() / ".cache" / "solar"))
    return base / f"clipart-index-{stamp}.json"


@functools.lru_cache(maxsize=1)
def _all_clipart() -> tuple:
    import json
    root = clipart_root()
    cache = _index_cache(root)
    try:
        rows = json.loads(cache.read_text())
    except (OSError, ValueError):
        rows = _scan_clipart(root)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(rows))
            tmp.replace(cache)
        except OSError:
            pass  # a read-only home only costs the re-scan next time
    # Titles shared by many drawings ("gramastar", "Part of the Flat Icon Collection") say little:
    # those items take their title from the file name instead.
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["title"]] = counts.get(r["title"], 0) + 1
    pairs, seen = [], set()
    for r in rows:
        if r["sha1"] in seen or not 0 < r["pixels"] <= MAX_CLIPART_PIXELS:
            continue                # duplicates filed under two categories are one item
        seen.add(r["sha1"])
        stem = Path(r["rel"]).stem
        raw_title = r["title"] if counts[r["title"]] <= 5 else ""
        title = clean_title(raw_title, stem)
        kws = _clean_keywords(r.get("keywords", []))
        desc = re.sub(r"\s+", " ", r.get("description", "")).strip()
        text = _caption(title, kws, desc)
        pairs.append(_document(_pair_id(bytes.fromhex(r["sha1"]), text), text,
                               functools.partial(_clipart_image, r["path"]), r["path"], "openclipart",
                               {"title": title, "keywords": kws, "description": desc,
                                "category": str(Path(r["rel"]).parent), "source": "openclipart"}))
    return tuple(pairs)


def clipart_pairs(limit: Optional[int] = None) -> list[Document]:
    """Clip-art pairs in a stable order (sorted by path), deduplicated by image content."""
    pairs = _all_clipart()
    return [dataclasses.replace(p) for p in (pairs[:limit] if limit is not None else pairs)]


@functools.lru_cache(maxsize=1)
def emoji_font_path() -> str:
    env = os.environ.get("SOLAR_EMOJI_FONT")
    if env:
        return env
    fonts = [f for f in _dpkg_files("fonts-noto-color-emoji") if f.endswith(".ttf")]
    if not fonts:
        raise FileNotFoundError(_MISSING_EMOJI)
    return fonts[0]


@functools.lru_cache(maxsize=4096)
def _render(e: str):
    from PIL import Image, ImageDraw, ImageFont
    font = ImageFont.truetype(emoji_font_path(), 109)   # the bitmap strike size of the font
    img = Image.new("RGBA", (136, 128), (255, 255, 255, 0))
    ImageDraw.Draw(img).text((0, 0), e, font=font, embedded_color=True)
    return img


def render_emoji(e: str):
    """An emoji rendered with the Noto color font, RGB on white (136 x 128)."""
    return to_rgb(_render(e).copy())


def emoji_pairs(limit: Optional[int] = None) -> list[Document]:
    """Fully qualified emoji with their English names as captions (stable order)."""
    try:
        import emoji as emoji_pkg
    except ImportError as err:
        raise ImportError(_MISSING_EMOJI) from err
    emoji_font_path()
    out = []
    for e, data in sorted(emoji_pkg.EMOJI_DATA.items(), key=lambda kv: kv[0]):
        if data.get("status") != emoji_pkg.STATUS["fully_qualified"]:
            continue
        name = data["en"].strip(":").replace("_", " ")
        aliases = [a.strip(":").replace("_", " ") for a in data.get("alias", [])]
        text = name if not aliases else f"{name}. " + ", ".join(a for a in aliases if a != name)
        out.append(_document(_pair_id(e.encode("utf-8"), text), text,
                             functools.partial(render_emoji, e), f"emoji:{e}", "noto-emoji",
                             {"title": name, "keywords": aliases, "description": "", "emoji": e,
                              "category": "emoji", "source": "noto-emoji"}))
        if limit is not None and len(out) >= limit:
            break
    return out


def split_by_item(pairs: list[Document], val: float = 0.1, test: float = 0.1,
                  seed: int = 0) -> dict[str, list[Document]]:
    """Deterministic split by item id: a pair's split depends only on (id, seed)."""
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise ValueError(f"val and test must be fractions with val + test < 1, got {val}, {test}")
    out = {"train": [], "val": [], "test": []}
    for p in pairs:
        u = int(hashlib.sha1(f"{seed}:{p.id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        out["test" if u < test else "val" if u < test + val else "train"].append(p)
    return out
