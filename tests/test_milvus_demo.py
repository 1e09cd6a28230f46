"""The demo job on real offline data and a real Milvus Lite folder: held-out items are stored under
one view and queried under another, the queries are not in the index, the report marks where each
query found its stored view, and the choice of items is deterministic."""
from __future__ import annotations

import io
import re

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


def _clipart_present() -> bool:
    try:
        from solar.data.offline import clipart_pairs
        clipart_pairs(2)
    except FileNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _clipart_present(), reason="offline clip-art not installed")

LIMIT, HELDOUT = 6, 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from solar_milvus.demo import DemoConfig, run_demo
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(model="solar-tiny-random", out=str(out), limit=LIMIT, heldout=HELDOUT,
                     top_k=3, workers=0, progress=False)
    return cfg, run_demo(cfg)


@pytest.fixture(scope="module")
def rows(demo):
    from solar_milvus.store import connect
    cfg, _ = demo
    client = connect(f"{cfg.out}/milvus.db", "", create=False)
    return client.query(cfg.collection, filter="", limit=1000,
                        output_fields=["id", "text", "source", "meta"])


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _content_id(doc) -> str:
    from solar.data.records import content_id, text_bytes
    return content_id(_png(doc.image) if doc.image is not None else None, text_bytes(doc.text))


def test_index_holds_corpus_plus_one_view_per_heldout_item(demo, rows):
    _, res = demo
    assert res.summary.ingested == LIMIT + HELDOUT == len(rows)
    held = {it.pair.id for it in res.heldout}
    corpus = [r for r in rows if r["source"] == "openclipart"]
    stored = [r for r in rows if r["source"] == "heldout"]
    assert len(corpus) == LIMIT and not held & {r["meta"]["pair_id"] for r in corpus}
    assert sorted(r["meta"]["pair_id"] for r in stored) == sorted(held)
    assert {r["id"] for r in stored} == {it.doc_id for it in res.heldout}
    assert res.originals == [] and "held-out item(s) whole" not in res.report.read_text()


def test_queries_are_not_stored_and_their_other_view_is(demo, rows):
    _, res = demo
    ids = {r["id"] for r in rows}
    texts = {r["text"] for r in rows}
    held = [q for q in res.queries if q.expected is not None]
    assert len(held) == HELDOUT
    kinds = [(q.doc.image is not None, q.doc.text is not None) for q in held]
    assert kinds[-2:] == [(True, False), (False, True)] and (True, True) in kinds
    for q, it in zip(held, res.heldout):
        assert _content_id(q.doc) not in ids and _content_id(it.query) not in ids
        assert q.expected == it.doc_id and q.expected in ids
        assert it.query.text not in texts and it.query.text != it.stored.text
        assert _png(it.query.image) != it.stored_png


def test_targets_and_report_marking(demo):
    cfg, res = demo
    for q, hits, target in zip(res.queries, res.results, res.targets):
        assert len(hits) <= cfg.top_k
        if q.expected is None:
            assert target is None
            continue
        assert target.id == q.expected and target.rank is not None   # 10 docs, searched 100 deep
        assert target.hit.id == q.expected and target.score == target.hit.score
    page = res.report.read_text()
    assert "Heat maps" in page and "Where each query found its other view" in page
    assert page.count('class="verdict') == HELDOUT
    shown = sum(t is not None and t.rank is not None for t in res.targets)
    assert page.count('<span class="badge">its other view</span>') == shown
    below = sum(t is not None and t.rank > cfg.top_k for t in res.targets)
    assert page.count('<tr class="gap">') == below
    for t in res.targets:
        if t is not None:
            assert re.search(rf"its other view: rank {t.rank} \(score {t.score:.3f}\)", page)


def test_rerun_skips_everything(demo):
    from solar_milvus.demo import run_demo
    cfg, first = demo
    again = run_demo(cfg)
    assert again.summary.ingested == 0 and again.summary.skipped == LIMIT + HELDOUT
    assert [t.id for t in again.targets if t] == [t.id for t in first.targets if t]


def test_heldout_choice_is_deterministic_and_from_the_test_split():
    from solar.eval.construct import BenchmarkConfig, offline_split
    from solar_milvus.heldout import pick_heldout
    a, b = pick_heldout(HELDOUT, seed=0), pick_heldout(HELDOUT, seed=0)
    assert [it.pair.id for it in a] == [it.pair.id for it in b]
    assert [it.stored_png for it in a] == [it.stored_png for it in b]
    assert [it.pair.id for it in pick_heldout(HELDOUT, seed=1)] != [it.pair.id for it in a]
    test = {p.id for p in offline_split(BenchmarkConfig(sources=("openclipart",)))["test"]}
    assert {it.pair.id for it in a} <= test
    tops = [it.pair.meta["category"].split("/")[0] for it in a]
    assert len(set(tops)) == len(tops)
    for it in a:
        assert it.stored.text == it.pair.meta["title"] and it.query.text != it.stored.text


def test_corpus_source_leaves_out_excluded_pairs():
    from solar.data.offline import clipart_pairs
    from solar_milvus.heldout import CorpusSource
    pairs = clipart_pairs(5)
    got = [r.meta["pair_id"] for r in CorpusSource(4, {pairs[1].id})]
    assert got == [pairs[0].id] + [p.id for p in pairs[2:5]]


def test_target_find_and_verdict():
    from solar_milvus.report import Target
    from solar_milvus.search import Hit
    hits = [Hit("a", 0.9), Hit("b", 0.5)]
    t = Target.find("b", hits)
    assert (t.rank, t.score, t.depth) == (2, 0.5, 2)
    assert t.verdict() == "its other view: rank 2 (score 0.500)"
    miss = Target.find("z", hits)
    assert miss.rank is None and miss.verdict() == "its other view: not in the top 2"


def test_config_checks():
    from solar_milvus.demo import DemoConfig
    with pytest.raises(ValueError, match="heldout"):
        DemoConfig(heldout=2)


class _OnePair:
    """A clip-art source of one pair, with the records the ``clipart`` source makes."""
    name = "openclipart"

    def __init__(self, pair):
        self.pair = pair

    def __iter__(self):
        from solar.data.records import make_record
        p = self.pair
        with open(p.image_uri, "rb") as f:
            data = f.read()
        yield make_record(p.image_uri, data, p.text, image_uri=p.image_uri, source=self.name,
                          meta={**p.meta, "pair_id": p.id})


def test_a_heldout_item_stored_whole_is_reported(tmp_path):
    from solar_milvus.demo import DemoConfig, run_demo
    from solar_milvus.heldout import pick_heldout
    from solar_milvus.ingest import IngestConfig, ingest
    from solar_milvus.models import load_embedder
    cfg = DemoConfig(model="solar-tiny-random", out=str(tmp_path), limit=2, heldout=3, top_k=2,
                     workers=0, progress=False)
    pair = pick_heldout(3)[1].pair           # as an earlier run with other items would store it
    earlier = IngestConfig([_OnePair(pair)], uri=str(tmp_path / "milvus.db"), token="",
                           collection=cfg.collection, workers=0, progress=False)
    ingest(load_embedder(cfg.model), earlier)
    res = run_demo(cfg)
    assert len(res.originals) == 1 and res.summary.ingested == 2 + 3
    assert "also holds 1 held-out item(s) whole" in res.report.read_text()
