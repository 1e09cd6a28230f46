"""Shared pieces of the data and Milvus tests: a deterministic stand-in encoder (a test double for
the model only; the store is always a real Milvus Lite) and a corpus of good and planted bad files.
The tests at the bottom check the stand-in itself."""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


class HashEncoder:
    """Deterministic document encoder: words hash into dims [0, 16), a 4x4 grey thumbnail of the
    image fills [16, 32); the sum is L2-normalized.  Same protocol as solar.load_model's models."""

    def __init__(self, dim: int = 32, fingerprint: str = "hash-encoder-v1", delay: float = 0.0,
                 interrupt_after: int | None = None):
        if dim < 32:
            raise ValueError("HashEncoder needs dim >= 32")
        self.dim, self.fingerprint, self.delay = dim, fingerprint, delay
        self.interrupt_after = interrupt_after
        self.calls = 0

    def vector(self, image, text) -> np.ndarray:
        v = np.zeros(self.dim)
        for w in (text or "").lower().split():
            h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            v[h % 16] += 1.0 if (h >> 20) & 1 else -1.0
        if image is not None:
            a = np.asarray(image.convert("L").resize((4, 4)), dtype=np.float64).ravel() / 255.0
            v[16:32] += a - 0.45
        return v / (np.linalg.norm(v) or 1.0)

    def encode(self, images=None, texts=None, batch_size=32):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt("interrupted by the test")
        if self.delay:
            time.sleep(self.delay)
        n = len(images) if images is not None else len(texts)
        images = images if images is not None else [None] * n
        texts = texts if texts is not None else [None] * n
        return torch.tensor(np.stack([self.vector(i, t) for i, t in zip(images, texts)]),
                            dtype=torch.float32)


def slow_encoder() -> HashEncoder:
    """A HashEncoder that takes 0.3 s per batch (``--model test_milvus_common:slow_encoder``),
    so a job is still running when a test interrupts or kills it."""
    return HashEncoder(delay=0.3)


# -- corpus ----------------------------------------------------------------------------------
WORDS = ["apple", "boat", "cactus", "dragon", "engine", "falcon", "guitar", "harbor", "igloo",
         "jaguar", "kettle", "lantern"]


def picture(i: int, size=(48, 40), mode: str = "RGB") -> Image.Image:
    """A distinct picture per i: a colour field with a bar whose place depends on i."""
    rng = np.random.default_rng(i)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:] = rng.integers(0, 256, 3)
    x = (i * 7) % (size[0] - 8)
    a[:, x:x + 8] = 255 - a[0, 0]
    return Image.fromarray(a, "RGB").convert(mode)


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def good_text(i: int) -> str:
    return f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5 + 3) % len(WORDS)]} number{i}"


def make_corpus(root: Path, n_good: int = 10) -> dict:
    """A folder with n_good image+text documents (plus one image-only and one text-only, also
    good) and one planted bad file of each kind.  Returns counts and the bad locators."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        (root / f"doc{i:02d}.png").write_bytes(png_bytes(picture(i)))
        (root / f"doc{i:02d}.txt").write_text(good_text(i), encoding="utf-8")
        (root / f"doc{i:02d}.json").write_text(json.dumps({"n": i, "parity": i % 2}))
    (root / "solo_image.png").write_bytes(png_bytes(picture(100, mode="RGBA")))
    (root / "solo_text.txt").write_text("a lonely note about lanterns", encoding="utf-8")
    good = n_good + 2
    full = png_bytes(picture(200, size=(64, 64)))
    bad = {
        "corrupt_image": ("corrupt.png", os.urandom(300)),
        "truncated": ("truncated.png", full[: len(full) // 2]),
        "zero_bytes": ("zero.png", b""),
        "too_many_pixels": ("huge.png", png_bytes(Image.new("L", (400, 300), 128))),
    }
    for kind, (name, data) in bad.items():
        (root / name).write_bytes(data)
        (root / name).with_suffix(".txt").write_text(f"caption of {name}")
    (root / "badtext.png").write_bytes(png_bytes(picture(300)))
    (root / "badtext.txt").write_bytes(b"caf\xe9 \xff\xfe broken")
    (root / "blank.txt").write_text("   \n")
    outside = root.parent / f"{root.name}_outside.png"
    outside.write_bytes(png_bytes(picture(400)))
    (root / "escape.png").symlink_to(outside)
    kinds = {"corrupt_image": 2, "zero_bytes": 1, "too_many_pixels": 1, "bad_text": 1,
             "empty_document": 1, "path_escape": 1}
    return {"good": good, "bad": sum(kinds.values()), "kinds": kinds}


MAX_PIXELS = 100_000          # huge.png (400 x 300 = 120,000 px) is over it; the others are not


@pytest.fixture
def corpus(tmp_path):
    info = make_corpus(tmp_path / "corpus")
    info["path"] = tmp_path / "corpus"
    return info


# -- the stand-in's own tests ----------------------------------------------------------------
def test_hash_encoder_is_deterministic_and_normalized():
    enc = HashEncoder()
    imgs = [picture(1), None, picture(2)]
    texts = ["apple boat", "kettle", None]
    a, b = enc.encode(imgs, texts), enc.encode(imgs, texts)
    assert a.shape == (3, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    assert not torch.allclose(a[0], a[2])


def test_corpus_counts(tmp_path):
    info = make_corpus(tmp_path / "c", n_good=3)
    assert info["good"] == 5 and info["bad"] == 7
    assert (tmp_path / "c" / "escape.png").is_symlink()
