"""32 concurrent search clients for 30 s against the real Milvus server: zero errors; the
latency percentiles are printed (run with -s) and attached to the test report."""
import threading
import time

import numpy as np
import pytest

from milvus_server import milvus_server  # noqa: F401

pytest.importorskip("pymilvus")

CLIENTS, SECONDS, ROWS, DIM = 32, 30.0, 5000, 64


def _fill(uri: str) -> None:
    from solar_milvus.store import connect, count, open_collection, upsert_rows
    client = connect(uri)
    try:
        open_collection(client, "soak", DIM, "soak-test-vectors")
        rng = np.random.default_rng(0)
        vecs = rng.normal(size=(ROWS, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for i in range(0, ROWS, 1000):
            upsert_rows(client, "soak", [
                {"id": f"v{j:06d}", "vector": vecs[j].tolist(), "text": f"row {j}",
                 "image_uri": "", "source": "soak", "meta": {"j": j}, "model": "soak-test-vectors"}
                for j in range(i, min(ROWS, i + 1000))])
        assert count(client, "soak") == ROWS
    finally:
        client.close()


def _client_loop(uri, seed, stop_at, lat, errors):
    from solar_milvus.store import connect
    rng = np.random.default_rng(seed)
    client = connect(uri)
    try:
        while time.monotonic() < stop_at:          # bounded by time
            q = rng.normal(size=DIM).astype(np.float32)
            t = time.perf_counter()
            try:
                res = client.search("soak", data=[(q / np.linalg.norm(q)).tolist()],
                                    anns_field="vector", limit=10, output_fields=["id"],
                                    search_params={"metric_type": "COSINE"})
                if len(res[0]) != 10:
                    errors.append(f"client {seed}: {len(res[0])} hits")
            except Exception as err:  # noqa: BLE001 - every error is counted
                errors.append(f"client {seed}: {type(err).__name__}: {err}")
            lat.append(time.perf_counter() - t)
    finally:
        client.close()


@pytest.mark.slow
def test_32_clients_30_seconds_zero_errors(milvus_server, record_property):  # noqa: F811
    _fill(milvus_server.uri)
    lat, errors = [], []
    stop_at = time.monotonic() + SECONDS
    threads = [threading.Thread(target=_client_loop, args=(milvus_server.uri, i, stop_at, lat,
                                                           errors), daemon=True)
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    ms = np.asarray(lat) * 1e3
    stats = {"clients": CLIENTS, "seconds": SECONDS, "requests": len(ms),
             "qps": round(len(ms) / SECONDS, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
             "p99_ms": round(float(np.percentile(ms, 99)), 2), "rows": ROWS, "dim": DIM}
    record_property("search_soak", stats)
    print("\nsearch soak:", stats)
    assert len(ms) > CLIENTS
