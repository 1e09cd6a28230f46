"""The ingestion job: sources -> decode (workers) -> encode (batches) -> upsert (retries) -> summary.

Resumable: acknowledged batches go to a ledger, so a re-run after a kill continues where it
stopped; documents already stored are skipped by content id even without a ledger.  Bad records go
to a quarantine file with their reason and never stop the run.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from solar.data import DecodeConfig, Document, Quarantined, open_source

from .ledger import Ledger, QuarantineFile, default_state_dir
from .pipeline import DecodePipeline, Skipped
from .store import (DEFAULT_COLLECTION, SOURCE_MAX, STORE_REJECTED, TEXT_MAX, URI_MAX, IndexSpec,
                    clean_json, clip_utf8, connect, existing_ids, open_collection, redact,
                    resolve_uri, upsert_splitting)

ENCODE_FAILED = "encode_failed"


def default_workers() -> int:
    """Decode processes: one per spare core (the encoder keeps the others), at least 1, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def check_job_fields(cfg) -> None:
    """Validate the fields every job config shares (ingest, bulk): ``sources`` (a str becomes a
    one-element list) and ``batch_size``."""
    if isinstance(cfg.sources, str):
        cfg.sources = [cfg.sources]
    if not cfg.sources:
        raise ValueError("sources: give at least one source")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {cfg.batch_size!r}")


@dataclass
class IngestConfig:
    """sources: source specs (see solar.data.open_source) or source objects (iterables of
    RawRecord with a ``name``); uri/token: Milvus (None: MILVUS_URI / MILVUS_TOKEN or the Lite
    default); batch_size: documents per encode and upsert;
    workers: decode processes (0: decode in a thread); resume: use the ledger; retries: upsert
    retries; ledger/quarantine: file paths (None: under default_state_dir(uri))."""
    sources: list
    uri: Optional[str] = None
    token: Optional[str] = None
    collection: str = DEFAULT_COLLECTION
    batch_size: int = 32
    workers: int = field(default_factory=default_workers)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    index: IndexSpec = field(default_factory=IndexSpec)
    resume: bool = True
    retries: int = 3
    ledger: Optional[str] = None
    quarantine: Optional[str] = None
    limit: Optional[int] = None
    progress: bool = True

    def __post_init__(self):
        check_job_fields(self)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive int, got {self.limit}")

    def open_sources(self) -> list:
        """The source objects (ValueError naming a bad spec), with ``limit`` applied."""
        sources = [open_source(s) if isinstance(s, str) else s for s in self.sources]
        if self.limit is not None:
            from solar.data.sources import LimitedSource
            sources = [LimitedSource(_Chain(sources), self.limit)]
        return sources

    def paths(self) -> tuple[Path, Path]:
        """(ledger path, quarantine path)."""
        state = default_state_dir(resolve_uri(self.uri, self.token)[0])
        return (Path(self.ledger or state / f"{self.collection}.ledger.jsonl"),
                Path(self.quarantine or state / f"{self.collection}.quarantine.jsonl"))


@dataclass
class IngestSummary:
    """Counts and speed of one run; docs_per_s = ingested / seconds."""
    ingested: int = 0
    skipped: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    docs_per_s: float = 0.0
    encode_seconds: float = 0.0
    collection: str = ""
    quarantine_path: str = ""
    ledger_path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"ingested {self.ingested}, skipped as already present {self.skipped}, "
                f"quarantined {self.quarantined} in {self.seconds:.1f} s "
                f"({self.docs_per_s:.1f} docs/s)")


class IngestInterrupted(KeyboardInterrupt):
    """The job was stopped by Ctrl-C (still a KeyboardInterrupt); the message says what was
    stored and how to resume."""


class _Writer(threading.Thread):
    """Upserts encoded batches in the background and records them in the ledger once acked.
    Rows the store refuses are found by bisection and quarantined; the rest of the batch lands."""

    def __init__(self, client, collection: str, ledger: Ledger, retries: int,
                 quarantine: QuarantineFile):
        super().__init__(name="solar-upsert", daemon=True)
        self.client, self.collection, self.ledger, self.retries = client, collection, ledger, retries
        self.quarantine = quarantine
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.written = 0
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                self._write(*item)
            except BaseException as err:  # noqa: BLE001 - raised in the main thread
                self.error = err

    def _write(self, rows: list, recs: list) -> None:
        written, refused = upsert_splitting(self.client, self.collection, rows, self.retries)
        where = {r.id: r for r in recs}
        for row, reason in refused:
            rec = where[row["id"]]
            self.quarantine.add(Quarantined(rec.id, rec.locator, STORE_REJECTED,
                                            f"{rec.locator}: Milvus refused the row ({reason})",
                                            rec.source))
        if written:
            self.ledger.add(r["id"] for r in written)
            self.written += len(written)

    def put(self, rows: list, recs: list) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((rows, recs))

    def finish(self) -> None:
        self.q.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def record_row(rec: Document, vec, fingerprint: str) -> dict:
    """The collection row of one encoded record (shared by ingest, bulk and the Ray engine)."""
    return {"id": rec.id, "vector": vec.tolist(), "text": clip_utf8(rec.text or "", TEXT_MAX),
            "image_uri": clip_utf8(rec.image_uri or "", URI_MAX),
            "source": clip_utf8(rec.source or "", SOURCE_MAX), "meta": clean_json(rec.meta),
            "model": fingerprint}


def encode_records(embedder, batch: list, quarantine: QuarantineFile) -> tuple[list, list]:
    """(records, vectors) for a batch; if the batch fails, each record is tried alone and the
    ones that still fail are quarantined."""
    try:
        return batch, list(embedder.encode_batch([r.image for r in batch], [r.text for r in batch]))
    except Exception:  # noqa: BLE001 - find the record that fails
        if len(batch) == 1:
            raise
    keep, vecs = [], []
    for r in batch:
        try:
            vecs.append(embedder.encode_batch([r.image], [r.text])[0])
            keep.append(r)
        except Exception as err:  # noqa: BLE001
            quarantine.add(Quarantined(r.id, r.locator, ENCODE_FAILED,
                                       f"{r.locator}: the model failed on it ({err})", r.source))
    return keep, vecs


def ingest(embedder, cfg: IngestConfig, client=None) -> IngestSummary:
    """Run one ingestion job and return its summary.

    embedder: a SolarEmbeddingFunction (or anything with encode_batch, dim, fingerprint);
    client: an open MilvusClient (None: connect to cfg.uri).  Raises SchemaMismatchError before
    writing when the collection belongs to another model; ValueError for a bad source spec.
    """
    t0 = time.perf_counter()
    sources = cfg.open_sources()
    client = client if client is not None else connect(cfg.uri, cfg.token)
    created = open_collection(client, cfg.collection, embedder.dim, embedder.fingerprint,
                              index=cfg.index)
    ledger_path, q_path = cfg.paths()
    ledger = Ledger(ledger_path, cfg.collection, embedder.fingerprint)
    done = ledger.load() if cfg.resume and not created else set()
    ledger.open(fresh=created or not cfg.resume)
    quarantine = QuarantineFile(q_path)
    present = None if created else (lambda ids: existing_ids(client, cfg.collection, ids))
    writer = _Writer(client, cfg.collection, ledger, cfg.retries, quarantine)
    writer.start()
    s = IngestSummary(collection=cfg.collection, quarantine_path=str(q_path),
                      ledger_path=str(ledger_path))
    bar = _progress(cfg.progress, redact(resolve_uri(cfg.uri, cfg.token)[0]))
    try:
        with DecodePipeline(sources, cfg.decode, done, present, cfg.workers,
                            ahead=max(64, 2 * cfg.batch_size)) as pipe:
            batch: list = []
            for item in pipe:
                if isinstance(item, Skipped):
                    s.skipped += 1
                elif isinstance(item, Quarantined):
                    quarantine.add(item)
                else:
                    batch.append(item)
                    if len(batch) == cfg.batch_size:
                        _flush(embedder, batch, writer, quarantine, s)
                        batch = []
                _tick(bar, s, quarantine, t0)
            _flush(embedder, batch, writer, quarantine, s)
        writer.finish()
    except KeyboardInterrupt:
        _drain(writer)
        raise IngestInterrupted(
            f"{writer.written} documents stored in {cfg.collection!r} this run "
            f"(every acknowledged batch is in the ledger {ledger_path}); run the same command "
            f"again to resume") from None
    finally:
        if writer.is_alive():
            writer.q.put(None)
            writer.join()
        ledger.close()
        quarantine.close()
        bar.close()
    s.ingested, s.quarantined = writer.written, quarantine.count
    s.seconds = time.perf_counter() - t0
    s.docs_per_s = s.ingested / s.seconds if s.seconds > 0 else 0.0
    return s


def _flush(embedder, batch: list, writer: _Writer, quarantine: QuarantineFile,
           s: IngestSummary) -> None:
    if not batch:
        return
    t = time.perf_counter()
    recs, vecs = encode_records(embedder, batch, quarantine)
    s.encode_seconds += time.perf_counter() - t
    if recs:
        writer.put([record_row(r, v, embedder.fingerprint) for r, v in zip(recs, vecs)], recs)
    s.ingested += len(recs)          # provisional, for the progress bar


def _drain(writer: _Writer) -> None:
    """After Ctrl-C: let the batches already handed to the writer land (a second Ctrl-C stops
    waiting)."""
    try:
        if writer.is_alive():
            writer.q.put(None)
            writer.join()
    except KeyboardInterrupt:
        pass


class _Chain:
    def __init__(self, sources):
        self.sources, self.name = sources, "+".join(getattr(s, "name", "?") for s in sources)

    def __iter__(self):
        for s in self.sources:
            yield from s


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass

    def close(self):
        pass


def _progress(enabled: bool, where: str):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(desc=f"ingest -> {where}", unit="doc", dynamic_ncols=True, mininterval=0.5)


def _tick(bar, s: IngestSummary, quarantine: QuarantineFile, t0: float) -> None:
    bar.update(1)
    el = time.perf_counter() - t0
    bar.set_postfix(ingested=s.ingested, skipped=s.skipped, quarantined=quarantine.count,
                    docs_s=f"{s.ingested / el:.1f}" if el > 0 else "0", refresh=False)
