"""Crash faults: the ingestion job killed with SIGKILL at random points (at least 10 times), and the
Milvus server stopped in the middle of a job.  After the re-runs the collection holds exactly the
good records, once each, and the quarantine file names every bad one."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from milvus_server import make_corpus, milvus_server, read_jsonl, stored_ids  # noqa: F401

pytest.importorskip("pymilvus")

JOB = r"""
import json, sys
from solar_milvus.ingest import IngestConfig, ingest
from solar_milvus.ray_engine import load_embedder
a = json.loads(sys.argv[1])
cfg = IngestConfig(sources=a["sources"], uri=a["uri"], collection=a["collection"],
                   batch_size=a["batch"], workers=0, progress=False, retries=a["retries"],
                   ledger=a["ledger"], quarantine=a["quarantine"])
try:
    s = ingest(load_embedder("solar-tiny-random", a["batch"], "cpu"), cfg)
except Exception as err:
    print("JOB-ERROR", type(err).__name__, err, flush=True)
    sys.exit(3)
print("JOB-DONE", json.dumps(s.to_dict()), flush=True)
"""
WAIT_S = 120.0


def _job(args: dict) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", JOB, json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ledger_batches(path: str) -> int:
    try:
        return max(0, len(Path(path).read_bytes().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _wait(cond, proc, limit: float = WAIT_S) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None and not cond():
        time.sleep(0.02)


def _corpus_with_bad(root: Path, n: int, seed: int) -> tuple:
    good = make_corpus(root, n, seed=seed)
    bad = []
    for i in range(6):
        (root / f"bad_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 30)
        bad.append(f"bad_{i}")
    (root / "bad_text.txt").write_bytes(b"caption \xff\xfe")
    bad.append("bad_text")
    return good, bad


def _check_final(client, collection, good, bad, quarantine):
    client.load_collection(collection)            # a reopened store starts released
    ids = stored_ids(client, collection)
    assert len(ids) == len(set(ids)), "duplicate keys"
    assert set(ids) == good
    entries = read_jsonl(quarantine)
    assert all(e["reason"] and e["kind"] for e in entries)
    for stem in bad:
        assert any(f"/{stem}." in e["locator"] for e in entries), stem


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume(tmp_path):
    """Milvus Lite (crash safety of its WAL plus the ledger): >= 10 kills, then a clean run."""
    from solar_milvus.store import connect
    rng = random.Random(1234)
    good, bad = _corpus_with_bad(tmp_path / "docs", 120, seed=5)
    args = dict(sources=[str(tmp_path / "docs")], uri=str(tmp_path / "kill.db"), collection="kill",
                batch=4, retries=2, ledger=str(tmp_path / "kill.ledger.jsonl"),
                quarantine=str(tmp_path / "kill.q.jsonl"))
    kills = 0
    for attempt in range(16):                     # bounded: at most 16 runs before the last one
        proc = _job(args)
        try:
            before = _ledger_batches(args["ledger"])
            if attempt % 4 == 3:                  # some kills land during start-up or decoding
                time.sleep(rng.uniform(0.2, 4.0))
            else:
                target = before + rng.randint(1, 3)
                _wait(lambda: _ledger_batches(args["ledger"]) >= target, proc)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        if kills >= 10 and _ledger_batches(args["ledger"]) > 3:
            break
    assert kills >= 10
    proc = _job(args)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, out[-2000:]
    client = connect(args["uri"])
    try:
        _check_final(client, "kill", good, bad, args["quarantine"])
    finally:
        client.close()


@pytest.mark.slow
def test_server_stopped_mid_job_fails_clearly_and_resumes(milvus_server, tmp_path):  # noqa: F811
    """The server is killed while the job writes: the job stops after its bounded retries with
    an error that says what failed, the ledger keeps every acknowledged batch, and after a
    restart a re-run completes the collection."""
    from solar_milvus.store import connect
    good, bad = _corpus_with_bad(tmp_path / "docs", 160, seed=6)
    args = dict(sources=[str(tmp_path / "docs")], uri=milvus_server.uri, collection="stopped",
                batch=4, retries=2, ledger=str(tmp_path / "s.ledger.jsonl"),
                quarantine=str(tmp_path / "s.q.jsonl"))
    proc = _job(args)
    try:
        _wait(lambda: _ledger_batches(args["ledger"]) >= 3, proc)
        assert proc.poll() is None, "the job ended before the server could be stopped"
        milvus_server.kill()
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=60)     # bounded retries: 0.5 s + 1 s, then an error
        failed_after = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        if not milvus_server.running:
            milvus_server.start()
    assert proc.returncode == 3, out[-2000:]
    assert "JOB-ERROR StoreError" in out and "after 3 attempts" in out, out[-2000:]
    assert failed_after < 30
    acked = _ledger_batches(args["ledger"])
    assert 3 <= acked < len(good) // 4
    proc = _job(args)                             # resume against the restarted server
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, out[-2000:]
    done = json.loads(out.split("JOB-DONE", 1)[1])
    assert done["skipped"] >= acked * 4           # acknowledged batches were not redone
    client = connect(milvus_server.uri)
    try:
        _check_final(client, "stopped", good, bad, args["quarantine"])
    finally:
        client.close()
