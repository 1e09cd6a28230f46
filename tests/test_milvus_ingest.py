"""Ingestion and search against a real Milvus Lite (no mocks for the store): ingest, search,
filters, idempotent re-ingest, resume after an interruption and after kill -9, quarantine of
planted bad files, schema mismatch, worker processes, and the real tiny model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from solar.data import DecodeConfig, make_record  # noqa: E402
from solar.data.records import RawRecord  # noqa: E402
from solar_milvus.embedding import SolarEmbeddingFunction  # noqa: E402
from solar_milvus.ingest import IngestConfig, ingest  # noqa: E402
from solar_milvus.pipeline import DecodePipeline  # noqa: E402
from solar_milvus.search import Searcher  # noqa: E402
from solar_milvus.store import SchemaMismatchError, connect, count  # noqa: E402
from test_milvus_common import (MAX_PIXELS, HashEncoder, corpus, good_text, picture,  # noqa: F401,E402
                                png_bytes)

TESTS = Path(__file__).resolve().parent


def _cfg(corpus, tmp_path, **kw):
    base = dict(uri=str(tmp_path / "m.db"), collection="docs", batch_size=4, workers=0,
                decode=DecodeConfig(max_pixels=MAX_PIXELS), progress=False)
    base.update(kw)
    return IngestConfig([str(corpus["path"])], **base)


def _emb(**kw):
    return SolarEmbeddingFunction(HashEncoder(**kw), device="cpu")


def _all_ids(client):
    rows = client.query("docs", filter="", output_fields=["id"], consistency_level="Strong",
                        limit=10_000)
    return [r["id"] for r in rows]


def test_ingest_search_filter_and_idempotent_reingest(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path)
    client = connect(cfg.uri)
    s = ingest(_emb(), cfg, client=client)
    assert (s.ingested, s.skipped, s.quarantined) == (corpus["good"], 0, corpus["bad"])
    assert s.seconds > 0 and s.docs_per_s > 0
    assert count(client, "docs") == corpus["good"]
    lines = [json.loads(x) for x in Path(s.quarantine_path).read_text().splitlines()]
    assert sorted(q["kind"] for q in lines) == sorted(
        k for k, n in corpus["kinds"].items() for _ in range(n))
    assert all(q["reason"] and q["locator"] for q in lines)

    searcher = Searcher(client, "docs", _emb())
    img = picture(3)
    text_hits, image_hits, both_hits = searcher.search(
        [good_text(3), img, {"text": good_text(3), "image": img}], top_k=3)
    for hits in (text_hits, image_hits, both_hits):         # one space for all three kinds
        assert hits[0].text == good_text(3)
    assert both_hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert both_hits[0].meta["n"] == 3 and both_hits[0].image_uri.endswith("doc03.png")

    odd = searcher.search([img], top_k=20, filter='meta["parity"] == 1')[0]
    assert odd and all(h.meta["parity"] == 1 for h in odd)
    assert good_text(3) in [h.text for h in odd]
    even = searcher.search([img], top_k=20, filter='meta["parity"] == 0')[0]
    assert good_text(3) not in [h.text for h in even]
    with pytest.raises(ValueError, match="rejected"):
        searcher.search(["x"], filter="no_such_field >>> 3")

    again = ingest(_emb(), cfg, client=client)                # idempotent
    assert (again.ingested, again.skipped, again.quarantined) == (0, corpus["good"], corpus["bad"])
    fresh = ingest(_emb(), _cfg(corpus, tmp_path, resume=False), client=client)
    assert (fresh.ingested, fresh.skipped) == (0, corpus["good"])  # found by content id
    ids = _all_ids(client)
    assert len(ids) == len(set(ids)) == corpus["good"]


def test_schema_mismatch_is_refused_before_anything_is_written(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path)
    client = connect(cfg.uri)
    ingest(_emb(), cfg, client=client)
    ledger = Path(cfg.paths()[0]).read_bytes()
    with pytest.raises(SchemaMismatchError, match="dimension 32 but the model gives 48"):
        ingest(SolarEmbeddingFunction(HashEncoder(dim=48), device="cpu"), cfg, client=client)
    with pytest.raises(SchemaMismatchError, match="hash-encoder-v2"):
        ingest(_emb(fingerprint="hash-encoder-v2"), cfg, client=client)
    assert count(client, "docs") == corpus["good"]
    assert Path(cfg.paths()[0]).read_bytes() == ledger


def test_resume_after_an_interruption(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path)
    client = connect(cfg.uri)
    with pytest.raises(KeyboardInterrupt):
        ingest(_emb(interrupt_after=2), cfg, client=client)
    partial = count(client, "docs")
    assert partial == 2 * cfg.batch_size                     # the acknowledged batches
    s = ingest(_emb(), cfg, client=client)
    assert s.skipped == partial and s.ingested == corpus["good"] - partial
    ids = _all_ids(client)
    assert len(ids) == len(set(ids)) == corpus["good"]


_KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from solar.data import DecodeConfig
from solar_milvus.embedding import SolarEmbeddingFunction
from solar_milvus.ingest import IngestConfig, ingest
from test_milvus_common import HashEncoder, MAX_PIXELS
if __name__ == "__main__":
    cfg = IngestConfig([{src!r}], uri={uri!r}, collection="docs", batch_size=2, workers=0,
                       decode=DecodeConfig(max_pixels=MAX_PIXELS), progress=False)
    ingest(SolarEmbeddingFunction(HashEncoder(delay=0.4), device="cpu"), cfg)
    print("finished")
"""


def test_resume_after_kill_9(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path, batch_size=2)
    script = tmp_path / "writer.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(TESTS), src=str(corpus["path"]), uri=cfg.uri))
    ledger = Path(cfg.paths()[0])
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if ledger.exists() and len(ledger.read_bytes().splitlines()) >= 3:   # header + 2 batches
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    client = connect(cfg.uri)                   # the lock died with the process
    before = count(client, "docs")
    assert 4 <= before < corpus["good"]
    s = ingest(_emb(), cfg, client=client)
    assert s.skipped >= 4 and s.ingested + s.skipped == corpus["good"]
    ids = _all_ids(client)
    assert len(ids) == len(set(ids)) == corpus["good"]


def test_a_bad_record_never_costs_a_good_one_with_workers(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path, workers=1)
    client = connect(cfg.uri)
    s = ingest(_emb(), cfg, client=client)
    assert (s.ingested, s.quarantined) == (corpus["good"], corpus["bad"])
    assert count(client, "docs") == corpus["good"]


class CrashingRecord(RawRecord):
    """Kills the decode worker that unpickles it (a decoder crash)."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_a_worker_crash_quarantines_only_that_record():
    good = [make_record(f"g{i}", png_bytes(picture(i)), f"doc {i}") for i in range(5)]
    crash = CrashingRecord("c" * 32, "crash.png", b"x", b"boom")
    with DecodePipeline([good[:2] + [crash] + good[2:]], DecodeConfig(), set(), None,
                        workers=1, chunk=2) as pipe:
        items = list(pipe)
    kinds = [type(x).__name__ for x in items]
    assert kinds.count("Document") == 5
    bad = [x for x in items if type(x).__name__ == "Quarantined"]
    assert len(bad) == 1 and bad[0].locator == "crash.png" and "crashed" in bad[0].reason


def test_real_tiny_model(corpus, tmp_path):
    solar = pytest.importorskip("solar")
    try:
        model = solar.load_model("solar-tiny-random")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"solar-tiny-random unavailable: {err}")
    emb = SolarEmbeddingFunction(model, device="cpu")
    cfg = _cfg(corpus, tmp_path, batch_size=8)
    client = connect(cfg.uri)
    s = ingest(emb, cfg, client=client)
    assert (s.ingested, s.quarantined) == (corpus["good"], corpus["bad"])
    img = picture(5)
    hits = Searcher(client, "docs", emb).search([{"text": good_text(5), "image": img}], top_k=1)[0]
    assert hits[0].text == good_text(5) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert emb.dim == model.cfg.dim and emb.fingerprint.startswith("sha256:")
