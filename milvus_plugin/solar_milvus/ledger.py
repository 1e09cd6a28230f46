"""The resume ledger and the quarantine file of an ingestion job.

Ledger: a JSONL file; the first line names the collection and the model fingerprint, each next
line lists the ids of one batch that Milvus acknowledged.  Lines are flushed and fsynced as they
are written, so after a kill a re-run skips every acknowledged document without decoding or
encoding it again.  A half-written last line (killed mid-write) is ignored.

Quarantine: a JSONL file with one line per bad record (id, locator, source, kind, reason),
rewritten by each run.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterable

from .store import is_local, redact


def default_state_dir(uri: str) -> Path:
    """Where a job keeps its ledger and quarantine file: beside a Milvus Lite folder
    (``x.db`` -> ``x.db.ingest/``), or ``~/.cache/solar/ingest/<host>`` for a server."""
    if is_local(uri):
        p = Path(uri).expanduser()
        return p.with_name(p.name + ".ingest")
    from urllib.parse import urlsplit
    host = (urlsplit(redact(uri)).netloc or "server").replace("*", "").replace("@", "")
    base = Path(os.environ.get("SOLAR_CACHE_DIR", Path.home() / ".cache" / "solar"))
    return base / "ingest" / host.replace(":", "_")


class Ledger:
    """Ids already acknowledged by Milvus for one (collection, model fingerprint)."""

    def __init__(self, path, collection: str, fingerprint: str):
        self.path = Path(path)
        self.header = {"ledger": 1, "collection": collection, "fingerprint": fingerprint}
        self._f = None

    def load(self) -> set:
        """Ids recorded by earlier runs (empty when the file is missing or for another
        collection/model)."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return set()
        if not lines or _parse(lines[0]) != self.header:
            return set()
        done = set()
        for line in lines[1:]:
            entry = _parse(line)
            if isinstance(entry, dict) and isinstance(entry.get("ids"), list):
                done.update(entry["ids"])
        return done

    def open(self, fresh: bool) -> "Ledger":
        """Open for appending; ``fresh`` (or a missing/foreign file) starts a new ledger."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = not fresh and self.path.exists() and self._header_ok()
        self._f = open(self.path, "ab" if keep else "wb")
        if not keep:
            self._write(self.header)
        else:
            self._f.seek(0, os.SEEK_END)
            self._f.write(b"\n")   # ends a half-written line a kill may have left
        return self

    def _header_ok(self) -> bool:
        with open(self.path, "rb") as f:
            return _parse(f.readline()) == self.header

    def add(self, ids: Iterable[str]) -> None:
        """Record one acknowledged batch (durable before returning)."""
        self._write({"ids": list(ids)})

    def _write(self, obj) -> None:
        self._f.write(json.dumps(obj).encode() + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _parse(line: bytes):
    try:
        return json.loads(line)
    except ValueError:
        return None


class QuarantineFile:
    """Bad records with their reasons, one JSON object per line (rewritten each run)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="utf-8")
        self._lock = threading.Lock()     # the reader loop and the upsert thread both add
        self.count = 0

    def add(self, q) -> None:
        line = json.dumps(q.to_json(), ensure_ascii=False,
                          default=str).encode("utf-8", "replace").decode("utf-8") + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()
            self.count += 1

    def close(self) -> None:
        self._f.close()
