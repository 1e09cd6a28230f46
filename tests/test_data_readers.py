"""Readers: folder, JSONL/CSV manifest, WebDataset tar, Parquet, offline sets and source specs.
Each bad entry becomes one quarantined record with a reason; good ones are never lost."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import pytest

from solar.data import (DecodeConfig, Document, FolderSource, ManifestSource, ParquetSource,
                        Quarantined, WebDatasetSource, content_id, decode_record, load_image_uri,
                        open_source)
from test_milvus_common import MAX_PIXELS, corpus, good_text, make_corpus, picture, png_bytes  # noqa: F401

CFG = DecodeConfig(max_pixels=MAX_PIXELS)


def _decode_all(src):
    out = [decode_record(r, CFG) for r in src]
    good = [o for o in out if isinstance(o, Document)]
    bad = [o for o in out if isinstance(o, Quarantined)]
    return good, bad


def test_folder_source_pairs_by_stem_and_quarantines_each_bad_kind(corpus):
    good, bad = _decode_all(FolderSource(corpus["path"]))
    assert len(good) == corpus["good"]
    assert Counter(q.kind for q in bad) == Counter(corpus["kinds"])
    by_name = {g.meta["path"]: g for g in good}
    d3 = by_name["doc03.png"]
    assert d3.text == good_text(3) and d3.image.size == (48, 40) and d3.meta["n"] == 3
    assert d3.id == content_id((corpus["path"] / "doc03.png").read_bytes(), good_text(3).encode())
    assert by_name["solo_image.png"].text is None and by_name["solo_text.txt"].image is None
    reasons = {q.kind: q.reason for q in bad}
    assert "escape.png" in reasons["path_escape"] and "escapes" in reasons["path_escape"]
    assert "zero.png" in reasons["zero_bytes"]
    assert "badtext.png" in reasons["bad_text"]


def test_folder_ids_are_stable_across_reads(corpus):
    a = [r.id for r in FolderSource(corpus["path"])]
    b = [r.id for r in FolderSource(corpus["path"])]
    assert a == b and len(set(a)) == len(a)


def test_folder_source_rejects_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        FolderSource(tmp_path / "nope")


def _write_images(root, n):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img{i}.png").write_bytes(png_bytes(picture(i)))


def test_jsonl_manifest(tmp_path):
    root = tmp_path / "m"
    _write_images(root, 3)
    (tmp_path / "secret.png").write_bytes(png_bytes(picture(9)))
    lines = [
        json.dumps({"image": "img0.png", "text": "apple", "id": "a-0", "meta": {"k": 1},
                    "license": "cc0"}),
        json.dumps({"image_path": "img1.png", "caption": "boat"}),
        json.dumps({"text": "text only"}),
        json.dumps({"image": "missing.png", "text": "gone"}),
        json.dumps({"image": "../secret.png", "text": "escape"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"image": "img2.png", "text": "ok", "meta": "not an object"}),
        "",
    ]
    raw = ("\n".join(lines)).encode() + b'\n{"text": "caf\xe9"}\n'
    (root / "m.jsonl").write_bytes(raw)
    good, bad = _decode_all(ManifestSource(root / "m.jsonl"))
    assert [g.text for g in good] == ["apple", "boat", "text only"]
    assert good[0].meta == {"k": 1, "source_id": "a-0", "license": "cc0", "path": "img0.png"}
    assert Counter(q.kind for q in bad) == {"missing_file": 1, "path_escape": 1, "bad_entry": 3,
                                            "bad_text": 1}
    assert any(q.locator.endswith("m.jsonl:4") and "missing.png" in q.reason for q in bad)


def test_csv_manifest_with_invalid_utf8_row(tmp_path):
    root = tmp_path / "c"
    _write_images(root, 2)
    body = (b"image,text,id,color\nimg0.png,red apple,r0,red\n"
            b"img1.png,caf\xe9 au lait,r1,brown\n,only words,r2,\n")
    (root / "m.csv").write_bytes(body)
    good, bad = _decode_all(ManifestSource(root / "m.csv"))
    assert [g.text for g in good] == ["red apple", "only words"]
    assert good[0].meta["color"] == "red" and good[0].meta["source_id"] == "r0"
    assert [q.kind for q in bad] == ["bad_text"] and "m.csv:3" in bad[0].reason


def _tar(path, members):
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_webdataset_shards_group_by_key_and_survive_truncation(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    big = png_bytes(picture(7, size=(300, 300)))
    _tar(d / "a-000.tar", [("s/000.png", png_bytes(picture(0))), ("s/000.txt", b"apple"),
                           ("s/001.jpg", png_bytes(picture(1), "JPEG")),
                           ("s/001.json", json.dumps({"caption": "boat", "w": 1}).encode()),
                           ("s/002.txt", b"words only"), ("s/003.png", b"\0garbage"),
                           ("s/003.txt", b"bad pic")])
    _tar(d / "b-001.tar", [("004.png", png_bytes(picture(4))), ("004.txt", b"kettle"),
                           ("005.png", big), ("005.txt", b"lost")])
    with tarfile.open(d / "b-001.tar") as t:
        cut = t.getmember("005.png").offset_data + len(big) // 2
    (d / "b-001.tar").write_bytes((d / "b-001.tar").read_bytes()[:cut])
    src = open_source(str(d))
    assert isinstance(src, WebDatasetSource)
    good, bad = _decode_all(src)
    assert [g.text for g in good] == ["apple", "boat", "words only", "kettle"]
    assert good[1].meta["w"] == 1 and good[1].meta["key"] == "s/001"
    kinds = sorted(q.kind for q in bad)
    assert kinds == ["bad_entry", "corrupt_image"]
    assert any("b-001.tar" in q.reason and "truncated" in q.reason for q in bad)
    img = load_image_uri(good[0].image_uri)
    assert img.size == (48, 40)


def test_parquet_reader(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = {"image": [png_bytes(picture(0)), None, b"", png_bytes(picture(3))],
            "text": [b"apple", b"text only", b"empty image", b"\xffbad"],
            "id": ["p0", "p1", "p2", "p3"],
            "meta": [json.dumps({"k": 0}), None, None, None], "score": [0.5, 1.0, 2.0, 3.0]}
    pq.write_table(pa.table(rows), tmp_path / "a.parquet")
    hf = {"image": [{"bytes": png_bytes(picture(5)), "path": "x.png"}], "text": ["hf style"]}
    pq.write_table(pa.table(hf), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 not really")
    src = open_source(str(tmp_path / "*.parquet"))
    assert isinstance(src, ParquetSource)
    good, bad = _decode_all(src)
    assert [g.text for g in good] == ["apple", "text only", "hf style"]
    assert good[0].meta == {"k": 0, "score": 0.5, "source_id": "p0"}
    assert sorted(q.kind for q in bad) == ["bad_entry", "bad_text", "zero_bytes"]
    assert load_image_uri(good[2].image_uri).size == (48, 40)


def test_offline_sources_and_limits():
    try:
        clip = list(open_source("clipart:3"))
    except FileNotFoundError as err:
        pytest.skip(str(err))
    assert len(clip) == 3 and all(r.image and r.text for r in clip)
    assert clip[0].source == "openclipart" and clip[0].meta["pair_id"]
    assert [r.id for r in open_source("clipart", limit=3)] == [r.id for r in clip]
    try:
        emo = list(open_source("emoji:2"))
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(str(err))
    out = decode_record(emo[0])
    assert isinstance(out, Document) and out.image.size == (136, 128)
    assert load_image_uri(emo[0].image_uri).size == (136, 128)


@pytest.mark.parametrize("spec,match", [("", "non-empty"), ("/no/such/dir", "no such file"),
                                        ("clipart:0", "positive integer"),
                                        ("clipart:x", "positive integer")])
def test_bad_source_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        open_source(spec)


def test_unknown_file_kind(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(ValueError, match="unknown kind"):
        open_source(str(tmp_path / "x.bin"))


def test_spec_dispatch(tmp_path):
    make_corpus(tmp_path / "f", n_good=1)
    assert isinstance(open_source(str(tmp_path / "f")), FolderSource)
    (tmp_path / "f" / "m.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    assert isinstance(open_source(str(tmp_path / "f" / "m.jsonl")), ManifestSource)


@pytest.mark.parametrize("cut", [0, 100, 511])
def test_tar_cut_inside_a_header_is_reported(tmp_path, cut):
    _tar(tmp_path / "s.tar", [(f"{i:03d}.txt", f"text {i}".encode() * 50) for i in range(3)])
    with tarfile.open(tmp_path / "s.tar") as t:
        start = t.getmember("002.txt").offset          # header of the last sample
    (tmp_path / "s.tar").write_bytes((tmp_path / "s.tar").read_bytes()[:start + cut])
    recs = list(WebDatasetSource(tmp_path / "s.tar"))
    assert [r.text[:6] for r in recs if r.problem is None] == [b"text 0"]
    bad = [r for r in recs if r.problem is not None]
    assert len(bad) == 1 and "truncated" in bad[0].problem.reason
