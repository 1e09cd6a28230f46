"""Distributed ingestion on Ray Data: ``solar-index ingest --engine ray``.

The same job as :func:`solar_milvus.ingest.ingest` (same sources, content ids, decode, rows,
ledger, quarantine and collection checks), spread over a Ray cluster::

    read (one task per shard file, or per source)  -> skip ids in the ledger
    -> decode (CPU tasks; skips ids already stored)  -> embed (map_batches on a pool of model
    actors, one GPU each where the cluster has GPUs)  -> MilvusDatasink (upserts each block with
    bounded retries, then records its ids in the ledger)

One small actor on the driver's node owns the ledger and the quarantine file, so a re-run after a
kill resumes exactly like the single-process job.  Against a Milvus server every write task
upserts directly; a Milvus Lite folder admits one process, so then that actor holds the only
client and the writes go through it.  ``address`` picks the cluster: None starts (or joins, via
RAY_ADDRESS) a local instance, ``"auto"`` joins the running one, ``"ray://head:10001"`` a remote.
"""
from __future__ import annotations

import copy
import functools
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .ingest import IngestConfig, IngestSummary, encode_records, record_row
from .sharding import Shard, ShardedSource, parse_shard, shard_config, shard_of
from .store import StoreError, is_local, resolve_uri

_RAW_COLS = ("id", "locator", "image", "text", "image_uri", "source", "meta", "q_kind",
             "q_reason")


@dataclass
class RayIngestConfig:
    """job: the ingestion settings shared with the single-process job (sources, uri, collection,
    batch_size = documents per model call and per upsert, decode, index, resume, retries, ledger,
    quarantine, limit).  embedder_factory: a picklable callable returning an embedder (encode_batch,
    dim, fingerprint) -- each model actor calls it once; see :func:`model_factory`.
    address: Ray cluster (see module doc).  workers: model actors.  cpus_per_worker /
    gpus_per_worker: Ray resources per actor (gpus None: 1 when the cluster has GPUs, else 0).
    decode_cpus: CPUs per decode task.  shard: (i, N) to ingest only shard i of N."""
    job: IngestConfig
    embedder_factory: Callable
    address: Optional[str] = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: Optional[float] = None
    decode_cpus: float = 0.5
    rows_per_block: int = 64
    shard: Optional[Shard] = None
    ray_init_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if not callable(self.embedder_factory):
            raise TypeError("embedder_factory must be a callable returning an embedder")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive int, got {self.workers!r}")
        if self.cpus_per_worker < 0 or self.decode_cpus < 0:
            raise ValueError("cpus_per_worker and decode_cpus must be >= 0")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.rows_per_block < 1:
            raise ValueError(f"rows_per_block must be >= 1, got {self.rows_per_block}")
        self.shard = parse_shard(self.shard)


def load_embedder(model: str, batch_size: int = 32, device: Optional[str] = None):
    """A SolarEmbeddingFunction for ``solar.load_model(model)`` (a preset name or a path)."""
    import solar

    from .embedding import SolarEmbeddingFunction
    return SolarEmbeddingFunction(solar.load_model(model), batch_size=batch_size, device=device)


def model_factory(model: str, batch_size: int = 32, device: Optional[str] = None) -> Callable:
    """A picklable factory for :class:`RayIngestConfig` (each actor loads its own copy)."""
    return functools.partial(load_embedder, model, batch_size, device)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError("the Ray engine needs Ray Data: pip install 'ray[data]'") from err
    return ray


# -- the job state actor (ledger, quarantine, and the Lite client) -----------------------------
class _JobState:
    """Lives on the driver's node; the only writer of the ledger and the quarantine file."""

    def __init__(self, uri, token, collection, dim, fingerprint, index, ledger_path, q_path,
                 resume):
        from .ledger import Ledger, QuarantineFile
        from .store import connect, open_collection
        self.collection, self.lite = collection, is_local(uri)
        self.client = connect(uri, token)
        created = open_collection(self.client, collection, dim, fingerprint, index=index)
        self.ledger = Ledger(ledger_path, collection, fingerprint)
        self.done = self.ledger.load() if resume and not created else set()
        self.ledger.open(fresh=created or not resume)
        self.quarantine = QuarantineFile(q_path)
        self.created = created
        self.ingested = self.skipped = 0
        self.encode_seconds = 0.0
        if not self.lite:                       # write tasks hold their own clients
            self.client.close()
            self.client = None

    def start_info(self) -> tuple:
        return self.created, self.done

    def present(self, ids: list) -> set:
        from .store import existing_ids
        return existing_ids(self.client, self.collection, ids)

    def upsert(self, rows: list, retries: int, locators: dict) -> int:
        from .store import upsert_splitting
        written, refused = upsert_splitting(self.client, self.collection, rows, retries)
        self.add_refused(refused, locators)
        return self.record([r["id"] for r in written]) if written else 0

    def add_refused(self, refused: list, locators: dict) -> None:
        """Quarantine the rows the store refused (locators: id -> (locator, source))."""
        from solar.data import Quarantined

        from .store import STORE_REJECTED
        for row, reason in refused:
            loc, src = locators.get(row["id"], (row["id"], row.get("source", "")))
            self.quarantine.add(Quarantined(row["id"], loc, STORE_REJECTED,
                                            f"{loc}: Milvus refused the row ({reason})", src))

    def record(self, ids: list) -> int:
        self.ledger.add(ids)
        self.ingested += len(ids)
        return len(ids)

    def add_quarantined(self, items: list) -> None:
        from solar.data import Quarantined
        for it in items:
            self.quarantine.add(Quarantined(**it))

    def add_counts(self, skipped: int = 0, encode_seconds: float = 0.0) -> None:
        self.skipped += skipped
        self.encode_seconds += encode_seconds

    def close(self) -> dict:
        self.ledger.close()
        self.quarantine.close()
        if self.client is not None:
            self.client.close()
            self.client = None
        return {"ingested": self.ingested, "skipped": self.skipped,
                "quarantined": self.quarantine.count, "encode_seconds": self.encode_seconds}


# -- reading: one Ray read task per unit --------------------------------------------------------
def _units(job: IngestConfig) -> list:
    """Picklable sources to read in parallel: one per shard file of a multi-file WebDataset or
    Parquet source (keeping the source's name, so rows match the single-process job), else one
    per source spec.  With ``limit`` the sources are read as one unit, in order."""
    from solar.data import ParquetSource, WebDatasetSource
    sources = IngestConfig.open_sources(job)      # unsharded: the read tasks filter the shard
    units = []
    for src in sources:
        attr = "shards" if isinstance(src, WebDatasetSource) else \
            "files" if isinstance(src, ParquetSource) else None
        if attr is None or len(getattr(src, attr)) < 2:
            units.append(src)
            continue
        for path in getattr(src, attr):
            one = copy.copy(src)
            setattr(one, attr, [path])
            units.append(one)
    return units


def _raw_table(rows: list):
    import pyarrow as pa
    return pa.table({c: [r[c] for r in rows] for c in _RAW_COLS},
                    schema=pa.schema([("id", pa.string()), ("locator", pa.string()),
                                      ("image", pa.binary()), ("text", pa.binary()),
                                      ("image_uri", pa.string()), ("source", pa.string()),
                                      ("meta", pa.string()), ("q_kind", pa.string()),
                                      ("q_reason", pa.string())]))


def _read_unit(unit, shard, done_ref, state, rows_per_block: int):
    """Raw records of one unit as Arrow blocks; ids already in the ledger are counted and
    dropped.  A later copy of a record of the unit is marked with the first one's locator and
    resolved when decoded, as the single-process job does (skipped when the content is good,
    quarantined with the first one's reason when it is bad)."""
    import ray
    done = ray.get(done_ref)
    first, rows, skipped = {}, [], 0
    src = ShardedSource(unit, shard) if shard else unit
    for r in src:
        if r.problem is None and r.id in done:
            skipped += 1
            continue
        dup_of = first.get(r.id) if r.problem is None else None
        if r.problem is None and dup_of is None:
            first[r.id] = r.locator
        rows.append({"id": r.id, "locator": r.locator, "image": r.image, "text": r.text,
                     "image_uri": r.image_uri, "source": r.source,
                     "meta": json.dumps(r.meta, default=str),
                     "q_kind": r.problem.kind if r.problem else (_DUP if dup_of else None),
                     "q_reason": r.problem.reason if r.problem else dup_of})
        if len(rows) == rows_per_block:
            yield _raw_table(rows)
            rows = []
    if rows:
        yield _raw_table(rows)
    if skipped:
        state.add_counts.remote(skipped=skipped)


def _datasource(units, shard, done_ref, state, rows_per_block):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class SolarSources(Datasource):
        def get_name(self) -> str:
            return "SolarSources"

        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None,
                                 exec_stats=None)
            return [ReadTask(functools.partial(_read_unit, u, shard, done_ref, state,
                                               rows_per_block), meta) for u in units]

    return SolarSources()


# -- decode (CPU tasks) ---------------------------------------------------------------------------
_CLIENTS: dict = {}
_DUP = "__copy__"          # q_kind of a later copy of a record; q_reason holds the first locator


def _client(uri: str, token: str):
    """One MilvusClient per worker process and server."""
    if (uri, token) not in _CLIENTS:
        from .store import connect
        _CLIENTS[(uri, token)] = connect(uri, token)
    return _CLIENTS[(uri, token)]


def _decode_block(batch, decode_cfg, check_present, uri, token, collection, state):
    """Raw Arrow block -> decoded block: RGB pixels (bytes, width, height) and text, or the
    quarantine kind and reason.  Ids already stored in the collection are counted and dropped."""
    import pyarrow as pa
    import ray
    from solar.data import Quarantined, RawRecord, decode_record
    from solar.data.records import Problem
    rows = batch.to_pylist()
    if check_present:
        ids = [r["id"] for r in rows if r["q_kind"] in (None, _DUP)]
        stored = (ray.get(state.present.remote(ids)) if is_local(uri) else
                  _present(_client(uri, token), collection, ids)) if ids else set()
        if stored:
            state.add_counts.remote(skipped=len(stored))
            rows = [r for r in rows if r["q_kind"] not in (None, _DUP) or r["id"] not in stored]
    out, copies = [], 0
    for r in rows:
        dup_of = r["q_reason"] if r["q_kind"] == _DUP else None
        prob = Problem(r["q_kind"], r["q_reason"]) if r["q_kind"] and not dup_of else None
        raw = RawRecord(r["id"], dup_of or r["locator"], r["image"], r["text"], r["image_uri"],
                        r["source"], json.loads(r["meta"]), prob)
        d = decode_record(raw, decode_cfg)
        if dup_of and not isinstance(d, Quarantined):
            copies += 1                               # the first one is stored
        elif dup_of:
            out.append(_decoded_row(r, None, None, d.kind, f"{r['locator']}: same content as "
                                    f"{dup_of}, which was quarantined: {d.reason}"))
        elif isinstance(d, Quarantined):
            out.append(_decoded_row(r, None, None, d.kind, d.reason))
        else:
            out.append(_decoded_row(r, d.image, d.text, None, None))
    if copies:
        state.add_counts.remote(skipped=copies)
    return pa.Table.from_pylist(out, schema=_decoded_schema()) if out else \
        _decoded_schema().empty_table()


def _present(client, collection, ids):
    from .store import existing_ids
    return existing_ids(client, collection, ids)


def _decoded_row(r, image, text, kind, reason) -> dict:
    return {"id": r["id"], "locator": r["locator"], "image_uri": r["image_uri"],
            "source": r["source"], "meta": r["meta"], "text": text,
            "pixels": image.tobytes() if image is not None else None,
            "width": image.width if image is not None else 0,
            "height": image.height if image is not None else 0,
            "q_kind": kind, "q_reason": reason}


@functools.lru_cache(maxsize=1)
def _decoded_schema():
    """Arrow schema of decoded blocks (built on first use: pyarrow loads lazily)."""
    import pyarrow as pa
    return pa.schema([("id", pa.string()), ("locator", pa.string()), ("image_uri", pa.string()),
                      ("source", pa.string()), ("meta", pa.string()), ("text", pa.string()),
                      ("pixels", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
                      ("q_kind", pa.string()), ("q_reason", pa.string())])


# -- embed (a pool of model actors) ---------------------------------------------------------------
class _EmbedActor:
    """Holds one embedder (on its GPU when it has one) and turns decoded blocks into Milvus rows
    (the same rows as the single-process job); quarantined records pass through."""

    def __init__(self, factory, state):
        self.embedder, self.state = factory(), state

    def __call__(self, batch):
        from PIL import Image
        from solar.data import Document
        rows, good, failed = batch.to_pylist(), [], _Collector()
        for r in rows:
            if r["q_kind"] is None:
                img = (Image.frombytes("RGB", (r["width"], r["height"]), r["pixels"])
                       if r["pixels"] is not None else None)
                good.append(Document(text=r["text"], image=img, id=r["id"], locator=r["locator"],
                                     image_uri=r["image_uri"], source=r["source"],
                                     meta=json.loads(r["meta"])))
        t = time.perf_counter()
        recs, vecs = encode_records(self.embedder, good, failed) if good else ([], [])
        self.state.add_counts.remote(encode_seconds=time.perf_counter() - t)
        fp = self.embedder.fingerprint
        out = [_out_row(record_row(rec, v, fp)) for rec, v in zip(recs, vecs)]
        out += [_out_row(None, r) for r in rows if r["q_kind"] is not None]
        out += [_out_row(None, q.to_json()) for q in failed.items]
        import pyarrow as pa
        return pa.table({"row": pa.array([o[0] for o in out], pa.string()),
                         "quarantine": pa.array([o[1] for o in out], pa.string())})


class _Collector:
    """Stands in for the quarantine file inside an actor (the records are written by the job
    state actor)."""

    def __init__(self):
        self.items = []

    def add(self, q) -> None:
        self.items.append(q)


def _out_row(row: Optional[dict], q: Optional[dict] = None) -> tuple:
    """(Milvus row as JSON or None, quarantine record as JSON or None)."""
    if row is not None:
        row = dict(row, vector=[float(x) for x in row["vector"]])
        return json.dumps(row, ensure_ascii=False), None
    item = {"id": q["id"], "locator": q["locator"], "source": q.get("source", ""),
            "kind": q.get("kind") or q.get("q_kind"), "reason": q.get("reason") or q.get("q_reason")}
    return None, json.dumps(item, ensure_ascii=False)


# -- write (the datasink) -------------------------------------------------------------------------
def _make_datasink(uri: str, token: str, collection: str, retries: int, state):
    from ray.data import Datasink

    class MilvusDatasink(Datasink):
        """Upserts each block (pk = content id, bounded retries), then records its ids in the
        ledger through the job state actor; quarantined records go to the quarantine file."""

        def get_name(self) -> str:
            return "MilvusDatasink"

        def write(self, blocks, ctx) -> dict:
            import ray
            from ray.data.block import BlockAccessor
            written = 0
            for block in blocks:
                tbl = BlockAccessor.for_block(block).to_arrow()
                rows = [json.loads(s) for s in tbl.column("row").to_pylist() if s is not None]
                bad = [json.loads(s) for s in tbl.column("quarantine").to_pylist()
                       if s is not None]
                if bad:
                    ray.get(state.add_quarantined.remote(bad))
                if not rows:
                    continue
                locators = {r["id"]: (r.get("image_uri") or r["id"], r.get("source", ""))
                            for r in rows}
                if is_local(uri):
                    written += ray.get(state.upsert.remote(rows, retries, locators))
                else:
                    from .store import upsert_splitting
                    ok, refused = upsert_splitting(_client(uri, token), collection, rows, retries)
                    if refused:
                        ray.get(state.add_refused.remote(refused, locators))
                    if ok:
                        written += ray.get(state.record.remote([r["id"] for r in ok]))
            return {"written": written}

    return MilvusDatasink()


# -- the driver -----------------------------------------------------------------------------------
def run_ray_ingest(cfg: RayIngestConfig) -> IngestSummary:
    """Run the job on Ray and return its IngestSummary (same fields as the single-process job;
    ``encode_seconds`` sums over the actors).

    Raises SchemaMismatchError before writing when the collection belongs to another model,
    ValueError for a bad source spec, StoreError when Milvus refused a block after the retries
    (the ledger then holds every block acknowledged so far: re-run to resume).
    """
    ray = _import_ray()
    t0 = time.perf_counter()
    job = shard_config(cfg.job, cfg.shard)
    uri, token = resolve_uri(job.uri, job.token)
    if not is_local(uri):            # an unreachable server fails here, before Ray starts
        from .store import connect
        connect(uri, token).close()
    probe = cfg.embedder_factory()
    dim, fingerprint = probe.dim, probe.fingerprint
    del probe
    started = _ensure_ray(ray, cfg)
    ledger_path, q_path = job.paths()
    state = _start_state(ray, uri, token, job, dim, fingerprint, ledger_path, q_path)
    counts: dict = {}
    try:
        try:
            created, done = ray.get(state.start_info.remote())
        except Exception as err:  # noqa: BLE001 - e.g. Milvus unreachable from the state actor
            raise _unwrap(err) from None
        ds = _build_dataset(ray, cfg, job, uri, token, state, created, ray.put(done))
        try:
            ds.write_datasink(_make_datasink(uri, token, job.collection, job.retries, state),
                              ray_remote_args={"max_retries": 0})
        except Exception as err:  # noqa: BLE001 - unwrap the store error from the Ray wrapper
            raise _unwrap(err) from None
    finally:
        counts = _close_state(ray, state)
        _stop_actor(ray, state)
        if is_local(uri):
            _wait_unlocked(uri)
        if started:
            ray.shutdown()
    s = IngestSummary(collection=job.collection, quarantine_path=str(q_path),
                      ledger_path=str(ledger_path), **counts)
    s.seconds = time.perf_counter() - t0
    s.docs_per_s = s.ingested / s.seconds if s.seconds > 0 else 0.0
    return s


def _ensure_ray(ray, cfg: RayIngestConfig) -> bool:
    """Connect to (or start) Ray unless already connected; True when this call did it."""
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, **cfg.ray_init_kwargs}
    ray.init(address=cfg.address, **kwargs)
    return True


def _start_state(ray, uri, token, job, dim, fingerprint, ledger_path, q_path):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_restarts=0)(_JobState).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
    return actor.remote(uri, token, job.collection, dim, fingerprint, job.index,
                        str(ledger_path), str(q_path), job.resume)


def _close_state(ray, state) -> dict:
    """The job state's final counts; {} when the actor already died (its error is raised)."""
    try:
        return ray.get(state.close.remote())
    except Exception:  # noqa: BLE001 - the actor's own failure is what the caller reports
        return {}


def _stop_actor(ray, actor, limit_s: float = 30.0) -> None:
    """Kill the job state actor and wait until its process is gone: a Milvus Lite folder stays
    locked until then, so the next job (or reader) could not open it."""
    from ray.exceptions import GetTimeoutError, RayActorError
    ray.kill(actor, no_restart=True)
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=1.0)
        except RayActorError:
            return
        except GetTimeoutError:
            continue
        time.sleep(0.05)


def _wait_unlocked(uri: str, limit_s: float = 30.0) -> None:
    """Wait until the Milvus Lite folder's LOCK (an flock) is free again after the actor that
    held it was killed, so the caller can open the folder as soon as the job returns."""
    import fcntl
    from pathlib import Path
    lock = Path(uri).expanduser() / "LOCK"
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            with open(lock, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
            return
        except FileNotFoundError:
            return
        except BlockingIOError:
            time.sleep(0.05)


def _build_dataset(ray, cfg, job, uri, token, state, created, done_ref):
    gpus = cfg.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    ds = ray.data.read_datasource(_datasource(_units(job), cfg.shard, done_ref, state,
                                              cfg.rows_per_block))
    ds = ds.map_batches(_decode_block, batch_format="pyarrow", batch_size=cfg.rows_per_block,
                        num_cpus=cfg.decode_cpus,
                        fn_kwargs=dict(decode_cfg=job.decode, check_present=not created, uri=uri,
                                       token=token, collection=job.collection, state=state))
    return ds.map_batches(_EmbedActor, batch_format="pyarrow", batch_size=job.batch_size,
                          compute=ray.data.ActorPoolStrategy(size=cfg.workers),
                          fn_constructor_args=(cfg.embedder_factory, state),
                          num_cpus=cfg.cpus_per_worker, num_gpus=gpus)


def _unwrap(err: BaseException) -> BaseException:
    """The StoreError (or other user error) inside Ray's task-error wrappers, if any."""
    seen = set()
    cur = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (StoreError, ValueError, TypeError, ConnectionError)):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    return StoreError(f"the Ray ingestion job failed: {err}")


__all__ = ["RayIngestConfig", "run_ray_ingest", "model_factory", "load_embedder", "shard_of"]
