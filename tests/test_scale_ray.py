"""Distributed ingestion on Ray Data (a local Ray instance, 2 CPUs): the same rows, ids, ledger and
quarantine as the single-process job, against the real server and against Milvus Lite."""
import numpy as np
import pytest

from milvus_server import (MODEL, make_corpus, milvus_server, read_jsonl, stored_ids,  # noqa: F401
                           tiny_embedder)

pytest.importorskip("pymilvus")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


def _job(uri, sources, tmp_path, name, **kw):
    from solar_milvus.ingest import IngestConfig
    return IngestConfig(sources=[str(s) for s in sources], uri=uri, collection=name,
                        batch_size=8, workers=0, progress=False,
                        ledger=str(tmp_path / f"{name}.ledger.jsonl"),
                        quarantine=str(tmp_path / f"{name}.q.jsonl"), **kw)


def _ray_cfg(job, **kw):
    from solar_milvus.ray_engine import RayIngestConfig, model_factory
    return RayIngestConfig(job, model_factory(MODEL, 8, "cpu"), workers=2, cpus_per_worker=0.5,
                           decode_cpus=0.5, rows_per_block=16, **kw)


def _rows(client, name):
    rows = client.query(name, filter='id != ""', output_fields=["*"], limit=10000,
                        consistency_level="Strong")
    return {r["id"]: r for r in rows}


@pytest.mark.slow
def test_ray_matches_single_process_job_on_server(local_ray, milvus_server, tmp_path):  # noqa: F811
    from test_faults_malformed import make_malformed_folder
    from solar_milvus.ingest import ingest
    from solar_milvus.ray_engine import run_ray_ingest
    from solar_milvus.store import connect
    docs = tmp_path / "docs"
    good_ids = make_corpus(docs, 40, seed=8)
    good, bad = make_malformed_folder(tmp_path / "bad", seed=1)
    srcs = [docs, tmp_path / "bad"]
    single = ingest(tiny_embedder(), _job(milvus_server.uri, srcs, tmp_path, "single"))
    s = run_ray_ingest(_ray_cfg(_job(milvus_server.uri, srcs, tmp_path, "viaray")))
    client = connect(milvus_server.uri)
    try:
        a, b = _rows(client, "single"), _rows(client, "viaray")
    finally:
        client.close()
    assert set(b) == set(a) and good_ids | set(good.values()) <= set(b)
    for k in a:                                   # identical rows, vectors equal to float32
        va, vb = np.asarray(a[k].pop("vector")), np.asarray(b[k].pop("vector"))
        assert a[k] == b[k]
        np.testing.assert_allclose(vb, va, rtol=0, atol=1e-6)
    key = lambda e: (e["id"], e["locator"], e["kind"], e["reason"])  # noqa: E731
    qa = sorted(map(key, read_jsonl(tmp_path / "single.q.jsonl")))
    qb = sorted(map(key, read_jsonl(tmp_path / "viaray.q.jsonl")))
    assert qa == qb and len(qb) >= 150                # copies of bad records included
    assert s.ingested == single.ingested == len(b) and s.quarantined == single.quarantined
    again = run_ray_ingest(_ray_cfg(_job(milvus_server.uri, srcs, tmp_path, "viaray")))
    assert again.ingested == 0 and again.skipped >= len(b)       # the ledger is honoured


@pytest.mark.slow
def test_ray_shards_and_lite(local_ray, tmp_path):
    """Shard 0/2 then the whole input, into Milvus Lite through the job-state actor: the second
    run skips exactly what the first wrote (ledger), and the union is the input."""
    from solar_milvus.ray_engine import run_ray_ingest
    from solar_milvus.store import connect
    ids = make_corpus(tmp_path / "docs", 30, seed=9)
    uri = str(tmp_path / "ray.db")
    first = run_ray_ingest(_ray_cfg(_job(uri, [tmp_path / "docs"], tmp_path, "lite"),
                                    shard="0/2"))
    assert 0 < first.ingested < len(ids)
    job = _job(uri, [tmp_path / "docs"], tmp_path, "lite")
    job.ledger = str(tmp_path / "lite.shard-0-of-2.ledger.jsonl")     # resume from shard 0's
    rest = run_ray_ingest(_ray_cfg(job))
    assert rest.ingested == len(ids) - first.ingested and rest.skipped == first.ingested
    client = connect(uri)
    try:
        client.load_collection("lite")
        assert sorted(stored_ids(client, "lite")) == sorted(ids)
    finally:
        client.close()


def test_ray_config_is_checked():
    from solar_milvus.ingest import IngestConfig
    from solar_milvus.ray_engine import RayIngestConfig
    job = IngestConfig(sources=["x"], progress=False)
    with pytest.raises(ValueError, match="workers"):
        RayIngestConfig(job, lambda: None, workers=0)
    with pytest.raises(ValueError, match="--shard"):
        RayIngestConfig(job, lambda: None, shard="3/3")
    with pytest.raises(TypeError, match="embedder_factory"):
        RayIngestConfig(job, "solar-tiny-random")
