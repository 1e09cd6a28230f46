"""The plugin's ingestion, search, sharding and bulk import against Milvus Lite and a real Milvus
2.3.5 standalone server (the ``milvus`` wheel, started once per session on 127.0.0.1)."""
import pytest

from milvus_server import make_corpus, milvus_server, read_jsonl, stored_ids, tiny_embedder  # noqa: F401

pytest.importorskip("pymilvus")


@pytest.fixture(params=["lite", "server"])
def store(request, tmp_path):
    """(uri, client) for a fresh store of each kind."""
    from solar_milvus.store import connect
    if request.param == "lite":
        uri = str(tmp_path / "lite.db")
    else:
        uri = request.getfixturevalue("milvus_server").uri
    client = connect(uri)
    yield uri, client
    client.close()


def _cfg(uri, src, tmp_path, name, **kw):
    from solar_milvus.ingest import IngestConfig
    return IngestConfig(sources=[str(src)], uri=uri, collection=name, batch_size=8, workers=0,
                        progress=False, ledger=str(tmp_path / f"{name}.ledger.jsonl"),
                        quarantine=str(tmp_path / f"{name}.q.jsonl"), **kw)


def test_ingest_search_rerun_both_stores(store, tmp_path):
    from solar_milvus.ingest import ingest
    from solar_milvus.search import Searcher
    from solar_milvus.store import SchemaMismatchError, count, open_collection
    uri, client = store
    ids = make_corpus(tmp_path / "docs", 30, seed=1)
    emb = tiny_embedder()
    s = ingest(emb, _cfg(uri, tmp_path / "docs", tmp_path, "plug"), client=client)
    assert s.ingested == len(ids) and s.quarantined == 0
    got = stored_ids(client, "plug")
    assert sorted(got) == sorted(ids) and count(client, "plug") == len(ids)
    again = ingest(emb, _cfg(uri, tmp_path / "docs", tmp_path, "plug"), client=client)
    assert again.ingested == 0 and again.skipped == len(ids)
    assert count(client, "plug") == len(ids)
    # symmetric search: a stored text-only document finds itself first
    text = next(p for p in sorted((tmp_path / "docs").glob("*.txt"))
                if not p.with_suffix(".png").exists()).read_text()
    hits = Searcher(client, "plug", emb).search([text], top_k=3)[0]
    assert hits[0].text == text and hits[0].score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(SchemaMismatchError, match="dimension"):
        open_collection(client, "plug", emb.dim + 1, emb.fingerprint, create=False)


def test_shards_partition_the_input_exactly(tmp_path):
    from solar.data import open_source
    from solar_milvus.sharding import ShardedSource, parse_shard, shard_of
    make_corpus(tmp_path / "docs", 60, seed=2)
    all_ids = [r.id for r in open_source(str(tmp_path / "docs"))]
    for n in (1, 2, 3, 7, 64):
        parts = [[r.id for r in ShardedSource(open_source(str(tmp_path / "docs")), (i, n))]
                 for i in range(n)]
        assert sorted(sum(parts, [])) == sorted(all_ids)              # union is the input
        assert sum(len(p) for p in parts) == len(all_ids)               # and disjoint
        assert all(shard_of(x, n) == i for i, p in enumerate(parts) for x in p)
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) is None
    for bad in ("5/5", "-1/4", "a/b", "3", "0/0", "1/2/3"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_shard_jobs_union_equals_one_job(store, tmp_path):
    from solar_milvus.sharding import ingest_shard, shard_config
    uri, client = store
    ids = make_corpus(tmp_path / "docs", 24, seed=3)
    emb, total = tiny_embedder(), 0
    for i in range(3):
        cfg = _cfg(uri, tmp_path / "docs", tmp_path, "sharded")
        s = ingest_shard(emb, cfg, f"{i}/3", client=client)
        total += s.ingested
        assert "shard-%d-of-3" % i in shard_config(cfg, (i, 3)).paths()[0].name
    assert total == len(ids)
    assert sorted(stored_ids(client, "sharded")) == sorted(ids)


def test_bulk_files_verify_and_import(store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from solar_milvus.bulk import BulkConfig, import_files, verify_bulk_files, write_bulk_files
    from solar_milvus.search import Searcher
    from solar_milvus.store import is_local
    uri, client = store
    ids = make_corpus(tmp_path / "docs", 40, seed=4)
    (tmp_path / "docs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    emb = tiny_embedder()
    out = BulkConfig(sources=[str(tmp_path / "docs")], out_dir=str(tmp_path / "bulk"),
                     batch_size=8, workers=0)
    files = write_bulk_files(emb, out)
    assert files.rows == len(ids) and files.quarantined == 1
    assert [q["kind"] for q in read_jsonl(files.quarantine_path)] == ["corrupt_image"]
    report = verify_bulk_files(files.files, emb.dim, emb.fingerprint)
    assert report.rows == len(ids) and set(report.ids) == ids
    with pytest.raises(ValueError, match="fingerprint|model"):
        verify_bulk_files(files.files, emb.dim, "another-model")
    first = report.files[0]                      # a file with a repeated row is refused
    tbl = pq.read_table(first)
    pq.write_table(pa.concat_tables([tbl, tbl.slice(0, 1)]), tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="repeated"):
        verify_bulk_files([str(tmp_path / "dup.parquet")], emb.dim, emb.fingerprint)
    if is_local(uri):
        return                                   # Milvus Lite has no bulk import
    res = import_files(client, uri, "", "bulk", files.files, emb.dim, emb.fingerprint,
                       timeout=180, ledger=str(tmp_path / "bulk.ledger.jsonl"), ids=files.ids)
    assert res.rows == len(ids)
    assert sorted(stored_ids(client, "bulk")) == sorted(ids)
    text = next(p for p in sorted((tmp_path / "docs").glob("*.txt"))
                if not p.with_suffix(".png").exists()).read_text()
    assert Searcher(client, "bulk", emb).search([text], top_k=1)[0][0].text == text
    # a second write skips everything that is now stored
    again = write_bulk_files(emb, BulkConfig(sources=[str(tmp_path / "docs")],
                                             out_dir=str(tmp_path / "bulk2"), batch_size=8,
                                             workers=0), skip_client=client, collection="bulk")
    assert again.rows == 0 and again.skipped == len(ids)
