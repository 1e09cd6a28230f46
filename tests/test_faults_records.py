"""One bad record never stops a job: poison metadata in every source kind, rows the store refuses,
duplicates of bad records, link members of tar shards; and a property test over random mixes of
good and bad records (in random orders and batch sizes) against one real Milvus Lite collection.

Every good record lands once, every bad one is in the quarantine file with a named reason.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from solar.data import DecodeConfig, WebDatasetSource, content_id  # noqa: E402
from solar_milvus.embedding import SolarEmbeddingFunction  # noqa: E402
from solar_milvus.ingest import IngestConfig, ingest  # noqa: E402
from solar_milvus.store import connect, count, open_collection  # noqa: E402
from test_milvus_common import HashEncoder, picture, png_bytes  # noqa: E402

DEEP = 100_000                       # nesting levels of the poison JSON
HUGE_INT = 2 ** 70                   # an integer no 64-bit store holds
BIG_FIELD = 1 << 20                  # a 1 MB manifest cell


def _emb():
    return SolarEmbeddingFunction(HashEncoder(), device="cpu")


def _deep(n: int = DEEP) -> str:
    return "[" * n + "]" * n


def _ingest(sources, tmp_path, name, client=None, batch_size=4, **kw):
    cfg = IngestConfig([str(s) for s in sources], uri=str(tmp_path / f"{name}.db"),
                       collection="docs", batch_size=batch_size, workers=0, progress=False,
                       ledger=str(tmp_path / f"{name}.ledger.jsonl"),
                       quarantine=str(tmp_path / f"{name}.q.jsonl"), **kw)
    client = client or connect(cfg.uri)
    s = ingest(_emb(), cfg, client=client)
    rows = client.query("docs", filter="", output_fields=["id"], limit=16384,
                        consistency_level="Strong")
    q = [json.loads(x) for x in Path(cfg.quarantine).read_text().splitlines() if x.strip()]
    return s, [r["id"] for r in rows], q


# -- poison metadata, one source kind at a time ------------------------------------------------
def _folder_source(root: Path):
    root.mkdir()
    good, bad = set(), {}
    for i in range(6):
        img, txt = png_bytes(picture(i)), f"folder good {i}".encode()
        (root / f"good{i}.png").write_bytes(img)
        (root / f"good{i}.txt").write_bytes(txt)
        (root / f"good{i}.json").write_text(json.dumps({"n": i, "big": 2 ** 62}))
        good.add(content_id(img, txt))
    poison = {"deep": _deep(), "deepobj": '{"a": ' + _deep() + "}",
              "bigint": json.dumps({"n": HUGE_INT}), "biglist": json.dumps({"l": [1, -HUGE_INT]})}
    for name, meta in poison.items():
        (root / f"bad_{name}.png").write_bytes(png_bytes(picture(50 + len(bad))))
        (root / f"bad_{name}.txt").write_text(f"caption {name}")
        (root / f"bad_{name}.json").write_text(meta)
        bad[f"bad_{name}."] = "bad_meta"
    return root, good, bad


def _jsonl_source(root: Path):
    root.mkdir()
    lines, good, bad = [], set(), {}
    for i in range(6):
        t = f"jsonl good {i}"
        lines.append(json.dumps({"text": t, "meta": {"n": i}}))
        good.add(content_id(None, t.encode()))
    for line, kind in ((f'{{"text": "deep meta", "meta": {_deep()}}}', "bad_meta"),
                       (json.dumps({"text": "big int", "meta": {"n": HUGE_INT}}), "bad_meta"),
                       (json.dumps({"text": "big int column", "count": HUGE_INT}), "bad_meta"),
                       (json.dumps({"text": "x" * BIG_FIELD}), "field_too_large")):
        lines.insert(2 * len(bad) + 1, line)
    path = root / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for n, line in enumerate(lines, 1):
        if "good" not in line:
            bad[f"m.jsonl:{n}"] = ("field_too_large" if len(line) > BIG_FIELD else "bad_meta")
    return path, good, bad


def _csv_source(root: Path):
    import csv
    root.mkdir()
    rows, good = [], set()
    for i in range(6):
        t = f"csv good {i}"
        rows.append({"text": t, "meta": json.dumps({"n": i}), "other": "x"})
        good.add(content_id(None, t.encode()))
    poison = [({"text": "deep", "meta": '{"a": ' + _deep(50_000) + "}", "other": ""}, "bad_meta"),
              ({"text": "big", "meta": json.dumps({"n": HUGE_INT}), "other": ""}, "bad_meta"),
              ({"text": "y" * BIG_FIELD, "meta": "", "other": ""}, "field_too_large"),
              ({"text": "big meta", "meta": json.dumps({"s": "z" * BIG_FIELD}), "other": ""},
               "field_too_large")]
    for k, (row, _) in enumerate(poison):
        rows.insert(2 * k + 1, row)
    path = root / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "meta", "other"])
        w.writeheader()
        w.writerows(rows)
    bad = {}
    for n, row in enumerate(rows, 2):                      # line 1 is the header
        for p, kind in poison:
            if row is p:
                bad[f"m.csv:{n}"] = kind
    return path, good, bad


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):                    # ("symlink", target)
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _wds_source(root: Path):
    root.mkdir()
    members, good, bad = [], set(), {}
    for i in range(6):
        img, txt = png_bytes(picture(i)), f"wds good {i}".encode()
        members += [(f"g{i}.png", img), (f"g{i}.txt", txt), (f"g{i}.json", b'{"n": 1}')]
        good.add(content_id(img, txt))
        if i % 2:
            k = f"p{i}"
            meta = _deep().encode() if i == 1 else json.dumps({"n": HUGE_INT}).encode()
            members += [(f"{k}.png", png_bytes(picture(90 + i))), (f"{k}.txt", b"poison"),
                        (f"{k}.json", meta)]
            bad[f"#{k}"] = "bad_meta"
    (root / "a.tar").write_bytes(_tar(members))
    return root / "a.tar", good, bad


def _parquet_source(root: Path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    root.mkdir()
    texts, metas, counts, good, bad = [], [], [], set(), {}
    for i in range(10):
        t = f"parquet row {i}"
        texts.append(t)
        if i in (1, 4):
            metas.append(_deep() if i == 1 else json.dumps({"n": HUGE_INT}))
            counts.append(i)
            bad[f"#row={i}"] = "bad_meta"
        elif i == 7:
            metas.append("{}")
            counts.append(2 ** 64 - 1)                     # a uint64 column beyond int64
            bad[f"#row={i}"] = "bad_meta"
        else:
            metas.append(json.dumps({"n": i}))
            counts.append(i)
            good.add(content_id(None, t.encode()))
    tbl = pa.table({"text": texts, "meta": metas, "count": pa.array(counts, pa.uint64())})
    pq.write_table(tbl, root / "p.parquet")
    return root / "p.parquet", good, bad


@pytest.mark.parametrize("make", [_folder_source, _jsonl_source, _csv_source, _wds_source,
                                  _parquet_source], ids=lambda f: f.__name__.strip("_"))
def test_poison_metadata_is_quarantined_and_the_rest_lands(make, tmp_path):
    src, good, bad = make(tmp_path / "src")
    s, ids, q = _ingest([src], tmp_path, "poison")
    assert sorted(ids) == sorted(good)                            # all good ones, once each
    assert len(q) == len(bad) == s.quarantined
    for needle, kind in bad.items():
        hits = [e for e in q if needle in e["locator"]]
        assert len(hits) == 1 and hits[0]["kind"] == kind, (needle, hits)
        assert needle.strip("#.") in hits[0]["reason"] or hits[0]["locator"] in hits[0]["reason"]
    again, ids2, q2 = _ingest([src], tmp_path, "poison")          # a resume passes them again
    assert again.skipped == len(good) and sorted(ids2) == sorted(good) and len(q2) == len(bad)


# -- rows the store itself refuses --------------------------------------------------------------
def test_a_batch_the_store_refuses_is_split_to_find_the_bad_rows(tmp_path, monkeypatch):
    """Metadata a reader let through but Milvus refuses (here: the reader's check switched off)
    costs only its own row: the batch is bisected, the row quarantined as store_rejected."""
    import solar.data.meta
    from solar_milvus.store import STORE_REJECTED
    monkeypatch.setattr(solar.data.meta, "check_meta", lambda *a, **k: None)
    lines, good = [], set()
    for i in range(13):
        t = f"row {i}"
        if i in (2, 3, 9):
            lines.append(json.dumps({"text": t, "meta": {"n": HUGE_INT + i}}))
        else:
            lines.append(json.dumps({"text": t}))
            good.add(content_id(None, t.encode()))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    s, ids, q = _ingest([tmp_path / "m.jsonl"], tmp_path, "refused", batch_size=8)
    assert sorted(ids) == sorted(good) and s.ingested == len(good)
    assert sorted(e["locator"].rsplit(":", 1)[1] for e in q) == ["10", "3", "4"]
    assert {e["kind"] for e in q} == {STORE_REJECTED} and all("refused" in e["reason"] for e in q)


# -- duplicates, blanks and links ----------------------------------------------------------------
def test_duplicates_of_bad_records_are_quarantined_not_skipped(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    for name, text in (("blank1", b"   \n"), ("blank2", b"\t "), ("blank3", b"")):
        (root / f"{name}.txt").write_bytes(text)
    for name in ("corrupt1", "corrupt2"):
        (root / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
        (root / f"{name}.txt").write_bytes(b"same caption")
    img = png_bytes(picture(1))
    for name in ("good1", "good2"):
        (root / f"{name}.png").write_bytes(img)
        (root / f"{name}.txt").write_bytes(b"a good one")
    s, ids, q = _ingest([root], tmp_path, "dups")
    assert ids == [content_id(img, b"a good one")]
    assert s.skipped == 1                                          # good2: already stored
    kinds = {Path(e["locator"]).stem: e["kind"] for e in q}
    assert kinds == {"blank1": "empty_document", "blank2": "empty_document",
                     "blank3": "empty_document", "corrupt1": "corrupt_image",
                     "corrupt2": "corrupt_image"}
    assert s.quarantined == 5


def test_a_link_member_of_a_shard_is_quarantined(tmp_path):
    img = png_bytes(picture(3))
    data = _tar([("a.png", img), ("a.txt", b"kept"), ("b.png", ("symlink", "/etc/passwd")),
                 ("b.txt", b"text of a link sample"), ("c.txt", b"also kept")])
    (tmp_path / "s.tar").write_bytes(data)
    recs = list(WebDatasetSource(tmp_path / "s.tar"))
    assert [r.problem.kind if r.problem else None for r in recs] == [None, "symlink_member", None]
    s, ids, q = _ingest([tmp_path / "s.tar"], tmp_path, "links")
    assert sorted(ids) == sorted([content_id(img, b"kept"), content_id(None, b"also kept")])
    assert [(e["kind"], e["locator"].endswith("#b")) for e in q] == [("symlink_member", True)]


# -- property: random mixes ----------------------------------------------------------------------
PROPERTY_CASES = 220


def _bad_line(rng: random.Random, images: Path, n: int):
    """A manifest line that must be quarantined (its kind is not checked here)."""
    k = rng.randrange(11)
    if k == 0:
        return json.dumps({"text": f"deep {n}", "meta": json.loads(_deep(rng.randint(33, 60)))})
    if k == 1:
        return '{"text": "very deep", "meta": ' + _deep(rng.choice([2000, DEEP])) + "}"
    if k == 2:
        return json.dumps({"text": f"int {n}", "meta": {"v": rng.choice([1, -1]) * HUGE_INT}})
    if k == 3:
        return json.dumps({"text": "f" * (BIG_FIELD // rng.choice([1, 4])) + str(n)})
    if k == 4:
        return '{"text": "unterminated ' + str(n)
    if k == 5:
        return json.dumps([n, "not an object"])
    if k == 6:
        return json.dumps({"image": f"missing_{n}.png", "text": "missing"})
    if k == 7:
        return json.dumps({"image": "../" * 4 + "etc/hostname", "text": "escape"})
    if k == 8:
        return json.dumps({"text": rng.choice(["", "   ", "\t\n"])})         # empty document
    if k == 9:
        return json.dumps({"image": str(images / "corrupt.png"), "text": "broken image"})
    return json.dumps({"text": "nested too wide", "meta": {"s": "w" * (70 << 10)}})


def _case(rng: random.Random, case: int, root: Path, images: Path):
    lines, good = [], set()
    for n in range(rng.randint(1, 24)):
        r = rng.random()
        if r < 0.45:
            t = f"case {case} good {n}"
            if rng.random() < 0.3:
                lines.append(json.dumps({"image": str(images / "ok.png"), "text": t,
                                         "meta": {"n": n, "nested": [[{"a": 1}]]}}))
                good.add(content_id((images / "ok.png").read_bytes(), t.encode()))
            else:
                lines.append(json.dumps({"text": t, "meta": {"n": n}}))
                good.add(content_id(None, t.encode()))
        elif r < 0.55 and lines:
            lines.append(rng.choice(lines))                 # a duplicate, good or bad
        else:
            lines.append(_bad_line(rng, images, n))
    path = root / f"case{case}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, good, len(lines)


def test_property_random_mixes_land_exactly(tmp_path):
    """220 generated cases: count in Milvus == distinct good records, quarantine == every bad
    line (duplicates of bad ones included), whatever the order and the batch size."""
    images = tmp_path / "img"
    images.mkdir()
    (images / "ok.png").write_bytes(png_bytes(picture(7)))
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    client = connect(str(tmp_path / "prop.db"))
    rng = random.Random(20261204)
    for case in range(PROPERTY_CASES):
        path, good, n_lines = _case(rng, case, tmp_path, images)
        cfg = IngestConfig([str(path)], uri=str(tmp_path / "prop.db"), collection=f"c{case % 8}",
                           batch_size=rng.randint(1, 9), workers=0, progress=False,
                           ledger=str(tmp_path / f"l{case}.jsonl"),
                           quarantine=str(tmp_path / f"q{case}.jsonl"))
        before = count(client, cfg.collection) if client.has_collection(cfg.collection) else 0
        s = ingest(_emb(), cfg, client=client)
        q = [json.loads(x) for x in Path(cfg.quarantine).read_text().splitlines()]
        assert count(client, cfg.collection) - before == len(good) == s.ingested, case
        assert len(q) == s.quarantined == n_lines - len(good) - s.skipped, case
        assert not {e["id"] for e in q} & good, case


def test_property_store_bisection_finds_exactly_the_refused_rows(tmp_path):
    """Store layer alone: random batches mixing good rows with rows Milvus refuses (an integer
    beyond 64 bits, a vector of the wrong size, text over the field's max_length)."""
    from solar_milvus.store import upsert_splitting
    client = connect(str(tmp_path / "bis.db"))
    open_collection(client, "b", 4, "fp")
    rng = random.Random(7)

    def row(i, bad):
        r = {"id": f"{i:032x}", "vector": [1.0, 0.0, 0.0, 0.0], "text": "", "image_uri": "",
             "source": "s", "meta": {"i": i}, "model": "fp"}
        if bad == 1:
            r["meta"] = {"i": HUGE_INT}
        elif bad == 2:
            r["vector"] = [1.0, 0.0, 0.0]
        elif bad == 3:
            r["text"] = "t" * 9000
        return r

    i = n_good = 0
    for case in range(PROPERTY_CASES):
        rows, bad_ids = [], set()
        for _ in range(rng.randint(1, 12)):
            kind = rng.choice([0, 0, 0, 1, 2, 3]) if rng.random() < 0.5 else 0
            rows.append(row(i, kind))
            if kind:
                bad_ids.add(f"{i:032x}")
            i += 1
        written, refused = upsert_splitting(client, "b", rows, retries=0)
        assert [r["id"] for r in written] == [r["id"] for r in rows if r["id"] not in bad_ids]
        assert sorted(r["id"] for r, _ in refused) == sorted(bad_ids), case
        n_good += len(rows) - len(bad_ids)
    assert count(client, "b") == n_good
