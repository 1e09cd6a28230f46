"""Malformed inputs (generated here, over 200 of them): each one is quarantined with a reason that
names it, or refused with a clear error; none ends the job or costs a good record.

Good but awkward images (CMYK, 16-bit, palette, alpha, 1-bit, 1x1, very wide) and an overlong
text must be ingested, not quarantined.
"""
import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from milvus_server import milvus_server, read_jsonl, stored_ids, tiny_embedder  # noqa: F401

pytest.importorskip("pymilvus")


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _png_with_size(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR (correct CRC) that declares w x h pixels, and a tiny
    IDAT: a decompression-bomb header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
            chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def make_malformed_folder(root: Path, seed: int = 0):
    """Write a folder source mixing good documents and malformed ones.

    Returns (good, bad): good maps file stem -> content id; bad is the list of file stems that
    must be quarantined (each stem appears in its quarantine entry's locator).
    """
    from PIL import Image

    from solar.data import content_id
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    good, bad = {}, []
    base = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    png, jpg = _png(base), _jpeg(base)

    def put(stem, image=None, ext=".png", text=None, is_good=False):
        if image is not None:
            (root / f"{stem}{ext}").write_bytes(image)
        if text is not None:
            (root / f"{stem}.txt").write_bytes(text)
        if is_good:
            good[stem] = content_id(image, text)
        else:
            bad.append(stem)

    for i in range(30):                                  # truncated PNGs
        put(f"bad_trunc_png_{i}", png[: int(len(png) * (i + 1) / 32)], text=b"caption")
    for i in range(20):                                  # truncated JPEGs
        put(f"bad_trunc_jpg_{i}", jpg[: max(2, int(len(jpg) * i / 40))], ".jpg")
    for i in range(40):                                  # random bytes behind an image name
        put(f"bad_noise_{i}", rng.bytes(int(rng.integers(1, 4000))), (".png", ".jpg", ".webp")[i % 3])
    for i in range(15):                                  # zero-byte images
        put(f"bad_zero_img_{i}", b"", text=f"the image is empty {i}".encode() if i else None)
    for i in range(2):                                   # zero-byte text, no image (and the same
        put(f"bad_zero_txt_{i}", text=b"")               # empty document again, whitespace only)
    for i in range(3):
        put(f"bad_blank_txt_{i}", text=b" \n\t " * (i + 1))
    for i in range(25):                                  # invalid UTF-8 (alone or with a good image)
        junk = [b"\xff\xfe", b"abc\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"ok\x80"][i % 5]
        put(f"bad_utf8_{i}", png if i % 2 else None, text=b"caption %d " % i + junk)
    for i in range(10):                                  # decompression bombs (declared size)
        put(f"bad_bomb_{i}", _png_with_size(30000 + i, 30000))
    bomb = Image.new("1", (12000, 9000))                 # a real 108 Mpx image, 14 kB on disk
    put("bad_bomb_real", _png(bomb))
    dims = [(0, 5), (5, 0), (0, 0), (2**31 - 1, 2**31 - 1), (1, 1 << 30), (1 << 30, 1),
            (65535, 65535), (100000, 100000), (2**31 - 1, 1), (9500, 9500)]
    for i, (w, h) in enumerate(dims):                    # huge or zero declared dimensions
        put(f"bad_dims_{i}", _png_with_size(w, h))
    for i in range(10):                                  # PNG/GIF/BMP headers with corrupt bodies
        head = [png[:60], b"GIF89a" + rng.bytes(40), b"BM" + rng.bytes(60)][i % 3]
        put(f"bad_corrupt_body_{i}", head + rng.bytes(100), (".png", ".gif", ".bmp")[i % 3])
    for i in range(8):                                   # broken metadata files beside good images
        put(f"bad_meta_{i}", png, text=b"caption")
        (root / f"bad_meta_{i}.json").write_bytes([b"{not json", b"[1, 2]", b"\xff\xfe",
                                                   b"42"][i % 4])
    outside = root.parent / f"outside_{seed}.png"
    outside.write_bytes(png)
    for i in range(5):                                   # symlinks that leave the folder
        os.symlink(outside, root / f"bad_escape_link_{i}.png")
        bad.append(f"bad_escape_link_{i}")
    _good_awkward_images(put, rng)
    return good, bad


def _good_awkward_images(put, rng):
    from PIL import Image
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    put("good_cmyk", _jpeg(cmyk), ".jpg", text=b"a cmyk jpeg", is_good=True)
    put("good_16bit", _png(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)),
        is_good=True)
    put("good_palette", _png(Image.fromarray(rgb).convert("P")), text=b"palette", is_good=True)
    pal_t = Image.fromarray(rgb).convert("P")
    pal_t.info["transparency"] = 0
    put("good_palette_alpha", _png(pal_t), is_good=True)
    put("good_rgba", _png(Image.fromarray(np.dstack([rgb, rgb[..., :1]]))), is_good=True)
    put("good_la", _png(Image.fromarray(rgb[..., :2].copy())), is_good=True)
    put("good_1bit", _png(Image.fromarray(rgb[..., 0] > 128)), is_good=True)
    put("good_1x1", _png(Image.new("RGB", (1, 1), (9, 9, 9))), text=b"one pixel", is_good=True)
    put("good_wide", _png(Image.new("RGB", (4000, 2), (1, 2, 3))), is_good=True)
    put("good_overlong_text", text=("long text " * 20000).encode(), is_good=True)
    put("good_unicode_text", text="Grüße, 東京, emoji \U0001f600".encode(), is_good=True)
    for i in range(20):
        img = _png(Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
        put(f"good_plain_{i}", img, text=f"plain good document {i}".encode(), is_good=True)


def make_broken_manifest(root: Path, images: Path):
    """A JSONL manifest with good lines and broken ones.  Returns (good ids, bad line numbers)."""
    from solar.data import content_id
    img = next(images.glob("good_plain_0.png")).read_bytes()
    lines, good, bad = [], set(), []

    def add(line: bytes, gid=None):
        lines.append(line)
        (good.add(gid) if gid else bad.append(len(lines)))

    for i in range(5):
        t = f"manifest good {i}"
        add(json.dumps({"image": str(images / "good_plain_0.png"), "text": t}).encode(),
            content_id(img, t.encode()))
    for i in range(8):
        add(b'{"image": "x.png", "text": ' + b"unterminated" * (i + 1))
    for i in range(4):
        add(json.dumps([i, "a list, not an object"]).encode())
    for i in range(6):
        add(json.dumps({"image": "../" * (i + 1) + "etc/passwd", "text": "escape"}).encode())
    for i in range(3):
        add(json.dumps({"image": "/etc/hostname", "text": "absolute path elsewhere"}).encode())
    for i in range(5):
        add(json.dumps({"image": f"missing_{i}.png", "text": "missing file"}).encode())
    for i in range(3):
        add(json.dumps({"text": {"not": "a string"}}).encode())
    for i in range(3):
        add(json.dumps({"image": str(images / "good_plain_1.png"), "text": "x",
                        "meta": "not an object"}).encode())
    for i in range(3):
        add(b'{"text": "bad utf8 \xff\xfe"}')
    for i in range(3):
        add(json.dumps({"other": "no image and no text"}).encode())
    path = root / "manifest.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, good, bad


def make_broken_shards(root: Path):
    """Tar shards: one good, one truncated in its middle, one not a tar at all, and one with a
    corrupt image member.  Returns (folder, ids that must be stored, number of bad entries)."""
    from PIL import Image

    from solar.data import content_id
    root.mkdir(parents=True, exist_ok=True)
    good, rng = set(), np.random.default_rng(7)

    def shard(name, members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for n, data in members:
                info = tarfile.TarInfo(n)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    docs = []
    for i in range(12):
        img = _png(Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)))
        docs.append((f"s{i:03d}", img, f"shard text {i}".encode()))
    members = lambda ds: [m for k, im, tx in ds for m in ((f"{k}.png", im), (f"{k}.txt", tx))]  # noqa: E731
    (root / "a_good.tar").write_bytes(shard("a", members(docs[:6])))
    good |= {content_id(im, tx) for _, im, tx in docs[:6]}
    whole = shard("b", members(docs[6:12]))
    cut = 2048 * 2 + 512 + 100               # inside the image data of the 3rd sample
    (root / "b_truncated.tar").write_bytes(whole[:cut])
    (root / "c_not_a_tar.tar").write_bytes(rng.bytes(3000))
    (root / "d_corrupt_member.tar").write_bytes(shard("d", [("z.png", b"\x89PNG\r\n\x1a\nxx"),
                                                            ("z.txt", b"corrupt member")]))
    return root, good


@pytest.mark.slow
def test_malformed_inputs_are_quarantined_and_good_ones_kept(milvus_server, tmp_path):  # noqa: F811
    from solar_milvus.ingest import IngestConfig, ingest
    from solar_milvus.store import connect
    folder = tmp_path / "src"
    good, bad = make_malformed_folder(folder)
    manifest, m_good, m_bad = make_broken_manifest(tmp_path, folder)
    shards, s_good = make_broken_shards(tmp_path / "shards")
    assert len(bad) + len(m_bad) >= 200
    q = tmp_path / "q.jsonl"
    cfg = IngestConfig(sources=[str(folder), str(manifest), str(shards)], uri=milvus_server.uri,
                       collection="malformed", batch_size=16, workers=1, progress=False,
                       ledger=str(tmp_path / "l.jsonl"), quarantine=str(q))
    s = ingest(tiny_embedder(), cfg)
    client = connect(milvus_server.uri)
    ids = stored_ids(client, "malformed")
    client.close()
    expect = set(good.values()) | m_good | s_good
    assert len(ids) == len(set(ids))                               # no duplicate keys
    assert expect <= set(ids)                                      # no good record lost
    entries = read_jsonl(q)
    assert all(e["reason"] and e["kind"] and e["locator"] for e in entries)
    firsts, dups = _first_of_each_content(cfg.sources, expect)
    for stem in bad:                                               # each bad file is named
        locs = [loc for loc in firsts if f"/{stem}." in loc]
        assert all(any(e["locator"] == loc for e in entries) for loc in locs), stem
    named = [stem for stem in bad if any(f"/{stem}." in e["locator"] for e in entries)]
    assert len(named) + len(m_bad) >= 200
    lines = {int(e["locator"].rsplit(":", 1)[1]) for e in entries
             if e["locator"].startswith(str(manifest) + ":")}
    assert lines == {n for n in m_bad if f"{manifest}:{n}" in firsts}
    assert s.skipped == dups          # only copies of good ones; copies of bad ones are named
    for name in ("b_truncated", "c_not_a_tar", "d_corrupt_member"):
        assert any(name in e["locator"] or name in e["reason"] for e in entries), name
    assert not set(ids) & {e["id"] for e in entries}               # nothing both stored and bad
    # the good samples before the cut of the truncated shard are stored, nothing else is
    assert set(ids) - expect <= _readable_samples(shards / "b_truncated.tar")
    assert s.ingested == len(ids) and s.quarantined == len(entries)


def _first_of_each_content(specs, good: set) -> tuple:
    """Locators of the records the job stores or quarantines (all but later copies of a good
    document, which are skipped as already stored; a copy of a bad one, such as a second empty
    document, is quarantined too), and the number of skipped copies."""
    from solar.data import open_source
    seen, firsts, dups = set(), set(), 0
    for spec in specs:
        for r in open_source(spec):
            if r.problem is None and r.id in seen and r.id in good:
                dups += 1
                continue
            seen.add(r.id)
            firsts.add(r.locator)
    return firsts, dups


def _readable_samples(path: Path) -> set:
    from solar.data import WebDatasetSource
    return {r.id for r in WebDatasetSource(path) if r.problem is None}


def test_unknown_or_missing_source_is_refused_clearly(tmp_path):
    from solar_milvus.ingest import IngestConfig, ingest
    weird = tmp_path / "data.xyz"
    weird.write_bytes(b"??")
    for spec, msg in ((str(weird), "unknown kind"), (str(tmp_path / "nope"), "no such file"),
                      (str(tmp_path / "*.tar"), "matches no file")):
        cfg = IngestConfig(sources=[spec], uri=str(tmp_path / "x.db"), progress=False, workers=0)
        with pytest.raises(ValueError, match=msg):
            ingest(tiny_embedder(), cfg)


# A tar shard cut inside a header block: Python's tarfile reads a short last header as the end of
# the archive, so the reader must notice the missing end-of-archive marker and report the shard.
@pytest.mark.parametrize("cut", [1536 * 2 + 100, 1536 * 2 + 511])   # inside a header block
def test_truncated_tar_shard_is_reported(tmp_path, cut):
    from solar.data import WebDatasetSource
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(4):
            data = f"text {i}".encode() * 100
            info = tarfile.TarInfo(f"k{i}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "cut.tar").write_bytes(buf.getvalue()[:cut])
    recs = list(WebDatasetSource(tmp_path / "cut.tar"))
    assert any(r.problem is not None for r in recs)
