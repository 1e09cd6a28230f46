"""Backfills through Milvus bulk import: embedded documents -> Parquet files -> an import job.

1. :func:`write_bulk_files` reads and decodes the sources exactly as the ingestion job does (same
   content ids, rows, quarantine), embeds them and writes the rows with pymilvus's bulk writer
   (Parquet, the collection's own schema).  Ids already stored in ``skip_client``'s collection,
   or in the job's ledger, are left out: bulk import appends and does not deduplicate keys.
2. :func:`verify_bulk_files` reads the files back and checks every row (schema, unique ids,
   vector size, finite unit vectors, model fingerprint, JSON metadata).
3. :func:`import_files` opens (or creates) the collection with the same model check as the
   ingestion job, starts one import task per file batch, watches them with a bounded wait,
   waits until the rows are visible, and records their ids in the ledger.

The server reads the files itself: for a standalone server with local storage they must lie on
its disk (absolute paths); for a cluster, write them with pymilvus's ``RemoteBulkWriter`` into
the cluster's object storage (pass it as ``writer``) and give the object keys.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from solar.data import DecodeConfig, Quarantined, open_source

from .ingest import check_job_fields, default_workers, encode_records, record_row
from .ledger import Ledger, QuarantineFile
from .pipeline import DecodePipeline, Skipped
from .store import (DEFAULT_COLLECTION, OUTPUT_FIELDS, PK, VECTOR, IndexSpec, StoreError,
                    build_schema, count, existing_ids, open_collection)

IMPORT_TIMEOUT_S = 600.0
_DONE_STATES = ("Completed", "ImportCompleted")
_FAILED_STATES = ("Failed", "Failed and cleaned")


@dataclass
class BulkConfig:
    """sources: source specs (as for ingestion); out_dir: where the Parquet files go;
    batch_size: documents per model call; workers: decode processes; chunk_mb: rows are cut
    into files of about this size; quarantine: path of the quarantine file (None:
    ``out_dir/quarantine.jsonl``); limit: read at most this many records per source."""
    sources: list
    out_dir: str
    batch_size: int = 32
    workers: int = field(default_factory=default_workers)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    chunk_mb: int = 128
    quarantine: Optional[str] = None
    limit: Optional[int] = None

    def __post_init__(self):
        check_job_fields(self)
        if not isinstance(self.chunk_mb, int) or self.chunk_mb < 1:
            raise ValueError(f"chunk_mb must be a positive int, got {self.chunk_mb!r}")


@dataclass
class BulkFiles:
    """files: one list of Parquet paths per import task; rows: rows written; ids: their ids."""
    files: list
    rows: int
    quarantined: int
    skipped: int
    seconds: float
    quarantine_path: str
    ids: list = field(default_factory=list, repr=False)


def _bulk_writer(schema, out_dir: str, chunk_mb: int):
    try:
        from pymilvus.bulk_writer import BulkFileType, LocalBulkWriter
    except ImportError as err:
        raise ImportError("bulk import files need pymilvus's bulk writer: "
                          "pip install 'pymilvus[bulk_writer]'") from err
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return LocalBulkWriter(schema=schema, local_path=str(out_dir), chunk_size=chunk_mb << 20,
                           file_type=BulkFileType.PARQUET)


def write_bulk_files(embedder, cfg: BulkConfig, skip_client=None,
                     collection: str = DEFAULT_COLLECTION, ledger: Optional[str] = None,
                     writer=None) -> BulkFiles:
    """Embed the sources and write them as bulk-import Parquet files; returns BulkFiles.

    embedder: as for ingestion (encode_batch, dim, fingerprint).  skip_client/collection: leave
    out ids already stored there.  ledger: leave out ids that this ledger file records.
    writer: a pymilvus bulk writer to use instead of a LocalBulkWriter in cfg.out_dir.
    """
    t0 = time.perf_counter()
    sources = [open_source(s, limit=cfg.limit, max_bytes=64 << 20) for s in cfg.sources]
    writer = writer or _bulk_writer(build_schema(embedder.dim), cfg.out_dir, cfg.chunk_mb)
    done = Ledger(ledger, collection, embedder.fingerprint).load() if ledger else set()
    present = None
    if skip_client is not None and skip_client.has_collection(collection):
        present = lambda ids: existing_ids(skip_client, collection, ids)  # noqa: E731
    q_path = Path(cfg.quarantine or Path(cfg.out_dir) / "quarantine.jsonl")
    quarantine = QuarantineFile(q_path)
    ids, skipped, batch = [], 0, []
    try:
        with DecodePipeline(sources, cfg.decode, done, present, cfg.workers) as pipe:
            for item in pipe:
                if isinstance(item, Skipped):
                    skipped += 1
                elif isinstance(item, Quarantined):
                    quarantine.add(item)
                else:
                    batch.append(item)
                    if len(batch) == cfg.batch_size:
                        ids += _write_batch(embedder, batch, writer, quarantine)
                        batch = []
            ids += _write_batch(embedder, batch, writer, quarantine)
        writer.commit()
    finally:
        quarantine.close()
    return BulkFiles([list(map(str, f)) for f in writer.batch_files], len(ids),
                     quarantine.count, skipped, time.perf_counter() - t0, str(q_path), ids)


def _write_batch(embedder, batch: list, writer, quarantine) -> list:
    if not batch:
        return []
    recs, vecs = encode_records(embedder, batch, quarantine)
    for r, v in zip(recs, vecs):
        writer.append_row(record_row(r, v, embedder.fingerprint))
    return [r.id for r in recs]


@dataclass
class VerifyReport:
    """What the files hold: row count, the ids in file order, and the files read."""
    rows: int
    ids: list
    files: list


def verify_bulk_files(files, dim: int, fingerprint: str, atol: float = 1e-4) -> VerifyReport:
    """Read the Parquet files back and check every row.

    files: a list of paths or of lists of paths (BulkFiles.files).  Raises ValueError naming
    the file and row for a missing column, a duplicate or malformed id, a vector that is not
    ``dim`` finite float32 values of unit L2 norm (within ``atol``), another model's
    fingerprint, or metadata that is not a JSON object.
    """
    import numpy as np
    import pyarrow.parquet as pq
    flat = [str(f) for group in files for f in ([group] if isinstance(group, (str, Path))
                                                else group)]
    seen, ids = set(), []
    for path in flat:
        tbl = pq.read_table(path)
        missing = [c for c in OUTPUT_FIELDS + [VECTOR] if c not in tbl.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        vec = tbl.column(VECTOR).to_pylist()
        for i, (doc_id, v, model, meta) in enumerate(zip(tbl.column(PK).to_pylist(), vec,
                                                         tbl.column("model").to_pylist(),
                                                         tbl.column("meta").to_pylist())):
            where = f"{path} row {i}"
            if not isinstance(doc_id, str) or not doc_id or doc_id in seen:
                raise ValueError(f"{where}: id {doc_id!r} is empty or repeated")
            seen.add(doc_id)
            ids.append(doc_id)
            a = np.asarray(v, dtype=np.float64)
            if a.shape != (dim,) or not np.isfinite(a).all() or abs(math.sqrt(a @ a) - 1) > atol:
                raise ValueError(f"{where}: vector is not {dim} finite values of unit norm")
            if model != fingerprint:
                raise ValueError(f"{where}: written by model {model!r}, expected {fingerprint!r}")
            if not isinstance(json.loads(meta) if isinstance(meta, str) else meta, dict):
                raise ValueError(f"{where}: meta is not a JSON object")
    return VerifyReport(len(ids), ids, flat)


@dataclass
class ImportResult:
    """task_ids: one per file batch; rows: rows the server reports imported; seconds: wall."""
    task_ids: list
    rows: int
    seconds: float


def import_files(client, uri: str, token: str, collection: str, files: list, dim: int,
                 fingerprint: str, index: IndexSpec = IndexSpec(),
                 timeout: float = IMPORT_TIMEOUT_S, poll: float = 0.5,
                 ledger: Optional[str] = None, ids: Optional[list] = None) -> ImportResult:
    """Import ``files`` (BulkFiles.files) into ``collection`` on the server at ``uri`` and wait
    until every task is done and the rows are visible.

    The collection is opened (or created) with the ingestion job's model check first.  Raises
    StoreError naming the task and the server's reason when a task fails, or when the tasks or
    the rows do not finish within ``timeout`` seconds.  ``ledger``/``ids``: record the imported
    ids there once visible, so a later ingestion run skips them.
    """
    import warnings

    from pymilvus import connections, utility
    t0 = time.perf_counter()
    open_collection(client, collection, dim, fingerprint, index=index)
    before = count(client, collection)
    alias = f"solar-bulk-{id(client)}"
    with warnings.catch_warnings():
        # The gRPC import call (the one that every server from 2.3 on answers) is only in
        # pymilvus's ORM layer, which warns that it is deprecated.
        warnings.simplefilter("ignore", FutureWarning)
        connections.connect(alias, uri=uri, token=token or "")
        try:
            tasks = [utility.do_bulk_insert(collection, files=list(group), using=alias)
                     for group in files]
            rows = sum(_watch(utility, alias, t, t0 + timeout, poll) for t in tasks)
        finally:
            connections.disconnect(alias)
    _wait_visible(client, collection, before + rows, t0 + timeout, poll)
    if ledger and ids:
        led = Ledger(ledger, collection, fingerprint).open(fresh=False)
        try:
            led.add(ids)
        finally:
            led.close()
    return ImportResult(tasks, rows, time.perf_counter() - t0)


def _watch(utility, alias: str, task: int, deadline: float, poll: float) -> int:
    """Rows imported by one task, once it completes; StoreError when it fails or times out."""
    while True:
        st = utility.get_bulk_insert_state(task, using=alias)
        if st.state_name in _DONE_STATES:
            return int(st.row_count)
        if st.state_name in _FAILED_STATES:
            raise StoreError(f"bulk import task {task} failed: {st.failed_reason}")
        if time.perf_counter() > deadline:
            raise StoreError(f"bulk import task {task} did not finish in time "
                             f"(last state {st.state_name}, {st.progress}%)")
        time.sleep(poll)


def _wait_visible(client, collection: str, expected: int, deadline: float, poll: float) -> None:
    """Imported segments become searchable a few seconds after the task completes."""
    while True:
        n = count(client, collection)
        if n >= expected:
            return
        if time.perf_counter() > deadline:
            raise StoreError(f"bulk import: {collection!r} shows {n} rows, expected {expected}, "
                             f"after the tasks completed")
        time.sleep(poll)
