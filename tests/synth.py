"""Small synthetic image+text corpora in every training format, with planted bad records.

Each good document is a small PNG of one colour (with a little noise) and a text naming the
colour, so a few training steps can learn something.  ``BAD`` lists the bad records each writer
plants, by quarantine kind.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
           "yellow": (230, 220, 40), "purple": (140, 40, 170), "orange": (240, 140, 20)}
BAD = {"jsonl": {"missing_file": 1, "corrupt_image": 1, "bad_entry": 1},
       "tar": {"corrupt_image": 1, "zero_bytes": 1, "bad_text": 1},
       "parquet": {"corrupt_image": 1, "empty_document": 1}}


def png(i: int, size: int = 12) -> bytes:
    from PIL import Image
    name = list(COLOURS)[i % len(COLOURS)]
    rng = np.random.default_rng(i)
    a = np.clip(np.array(COLOURS[name]) + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(a.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def text(i: int) -> str:
    return f"a {list(COLOURS)[i % len(COLOURS)]} square number {i}"


def write_jsonl(root: Path, n: int, bad: bool = True) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        (root / "img" / f"{i}.png").write_bytes(png(i))
        lines.append(json.dumps({"image": f"img/{i}.png", "text": text(i), "id": f"doc{i}"}))
    if bad:
        (root / "img" / "broken.png").write_bytes(b"\x89PNG not really")
        lines += [json.dumps({"image": "img/nowhere.png", "text": "lost"}),
                  json.dumps({"image": "img/broken.png", "text": "broken"}),
                  "{not json"]
    path = root / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tars(root: Path, n: int, shards: int = 2, bad: bool = True, start: int = 0) -> Path:
    """``shards`` .tar files as img2dataset writes them (key.png, key.txt, key.json)."""
    root.mkdir(parents=True, exist_ok=True)
    per = -(-n // shards)
    for s in range(shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(start + s * per, start + min(n, (s + 1) * per)):
                key = f"{i:09d}"
                _add(tar, f"{key}.png", png(i))
                _add(tar, f"{key}.txt", text(i).encode())
                _add(tar, f"{key}.json", json.dumps({"key": key}).encode())
            if bad and s == 0:
                _add(tar, "bad00001.jpg", b"\xff\xd8 corrupt")
                _add(tar, "bad00001.txt", b"corrupt")
                _add(tar, "bad00002.png", b"")
                _add(tar, "bad00002.txt", b"empty image")
                _add(tar, "bad00003.png", png(999))
                _add(tar, "bad00003.txt", b"\xff\xfe bad utf8")
    return root


def write_parquet(root: Path, n: int, bad: bool = True) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    root.mkdir(parents=True, exist_ok=True)
    images = [png(i) for i in range(n)]
    texts = [text(i) for i in range(n)]
    if bad:
        images += [b"GIF89a broken", None]
        texts += ["broken gif", None]
    pq.write_table(pa.table({"image": images, "text": texts}), root / "docs.parquet")
    return root / "docs.parquet"
