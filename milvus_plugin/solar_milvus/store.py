"""The collection: an explicit schema, opening with a model check, upserts with bounded retries.

Schema (one vector field keeps it portable to every Milvus version):

=========  ==================  ===================================================
field      type                content
=========  ==================  ===================================================
id         VARCHAR(64), pk     content id of (image bytes, text): re-ingest is idempotent
vector     FLOAT_VECTOR(dim)   joint embedding (L2-normalized), COSINE metric
text       VARCHAR(8192)       the document's text ("" when image only)
image_uri  VARCHAR(2048)       how to load the image again ("" when text only)
source     VARCHAR(256)        short source name
meta       JSON                source metadata
model      VARCHAR(128)        fingerprint of the model that wrote the row
=========  ==================  ===================================================

The collection's properties carry ``solar.fingerprint`` and ``solar.dim``.  Opening a collection
written by another model or dimension raises SchemaMismatchError before anything is written.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URI = "./solar_milvus.db"
DEFAULT_COLLECTION = "solar_docs"
PK, VECTOR = "id", "vector"
TEXT_MAX, URI_MAX, SOURCE_MAX, MODEL_MAX = 8192, 2048, 256, 128
OUTPUT_FIELDS = ["id", "text", "image_uri", "source", "meta", "model"]
INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")
FP_PROP, DIM_PROP = "solar.fingerprint", "solar.dim"


class SchemaMismatchError(ValueError):
    """The collection was written by another model or with another dimension or schema."""


class StoreError(RuntimeError):
    """Milvus refused an operation after the allowed retries."""


class RowsRejected(ValueError):
    """Milvus (or the client, before sending) refused the data of a batch: retrying the same
    rows cannot help, a smaller batch may.  Never raised for transient errors."""


STORE_REJECTED = "store_rejected"     # quarantine kind of a row the store refused on its own


@dataclass(frozen=True)
class IndexSpec:
    """index_type: one of INDEX_TYPES (FLAT is exact and builds instantly); metric: COSINE or IP.
    search_ef (HNSW) and nprobe (IVF) are search-time knobs, which every Milvus honours."""
    index_type: str = "FLAT"
    metric: str = "COSINE"
    search_ef: int = 64
    nprobe: int = 16

    def __post_init__(self):
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {self.index_type!r}")
        if self.metric not in ("COSINE", "IP"):
            raise ValueError(f"metric must be COSINE or IP, got {self.metric!r}")

    def search_params(self) -> dict:
        params = {"HNSW": {"ef": self.search_ef}, "IVF_FLAT": {"nprobe": self.nprobe}}
        return {"metric_type": self.metric, "params": params.get(self.index_type, {})}


def is_local(uri: str) -> bool:
    """True for a Milvus Lite path (anything that is not an http/https/tcp/grpc/unix URI)."""
    return urlsplit(uri).scheme not in ("http", "https", "tcp", "grpc", "unix")


def redact(uri: str) -> str:
    """The URI without any user:password part, for messages."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def resolve_uri(uri: Optional[str] = None, token: Optional[str] = None) -> tuple[str, str]:
    """(uri, token) from the arguments, else MILVUS_URI / MILVUS_TOKEN, else the Lite default."""
    uri = uri or os.environ.get("MILVUS_URI") or DEFAULT_URI
    token = token if token is not None else os.environ.get("MILVUS_TOKEN", "")
    return uri, token


def connect(uri: Optional[str] = None, token: Optional[str] = None, create: bool = True):
    """A MilvusClient: Milvus Lite for a local path ending in ``.db`` (its folder is created
    unless ``create`` is False: then a missing one is an error and nothing is written), a server
    for an http(s) URI.  Errors name the URI (credentials removed), never the token."""
    try:
        from pymilvus import MilvusClient
    except ImportError as err:
        raise ImportError("Milvus support needs pymilvus and milvus-lite: "
                          "pip install 'solar-mm[milvus]'") from err
    uri, token = resolve_uri(uri, token)
    if is_local(uri):
        if not uri.endswith(".db"):
            raise ValueError(f"--uri {uri!r}: a Milvus Lite path must end in .db (or give an "
                             f"http(s):// server URI)")
        _check_lite_path(Path(uri).expanduser(), create)
    kw = {}
    if is_local(uri):
        # The in-process Lite server refuses pymilvus's 10 s keep-alive pings while idle (a
        # GOAWAY "too_many_pings" logged during long encodes); a local channel needs none.
        kw["grpc_options"] = {"grpc.keepalive_permit_without_calls": False,
                              "grpc.keepalive_time_ms": 3_600_000}
    try:
        return MilvusClient(uri=uri, token=token, **kw)
    except Exception as err:  # noqa: BLE001 - re-raised with a clear, token-free message
        if is_local(uri) and _locked(err):
            raise ConnectionError(
                f"cannot open Milvus Lite at {uri}: another process is using it (only one "
                f"process may open a Milvus Lite folder); wait for it to finish, or share the "
                f"folder with `milvus-lite server --data-dir {uri}` and --uri http://...") from None
        msg = getattr(err, "message", None) or str(err)
        msg = msg.replace(token, "***") if token else msg
        hint = (" (is another process using this Milvus Lite folder? Only one process may open "
                "it; run `milvus-lite server` to share it)" if is_local(uri) else "")
        raise ConnectionError(f"cannot open Milvus at {redact(uri)}: {msg}{hint}") from None


def _locked(err: BaseException) -> bool:
    """Whether Milvus Lite failed because another process holds the folder's lock."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if type(err).__name__ == "DataDirLockedError" or isinstance(err, BlockingIOError):
            return True
        err = err.__cause__ or err.__context__
    return False


def _check_lite_path(path: Path, create: bool) -> None:
    """Refuse a Lite path that cannot be a Milvus Lite folder before Milvus Lite touches it."""
    if path.exists() and not path.is_dir():
        raise ConnectionError(f"cannot open Milvus at {path}: it is a file, not a Milvus Lite "
                              f"folder; give another --uri")
    if not create and not path.is_dir():
        raise ConnectionError(f"no Milvus Lite database at {path}: nothing to search (ingest "
                              f"documents into it first, or give the right --uri)")
    if create:
        path.resolve().parent.mkdir(parents=True, exist_ok=True)


def build_schema(dim: int):
    from pymilvus import DataType, MilvusClient
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field(PK, DataType.VARCHAR, max_length=64, is_primary=True)
    s.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
    s.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX)
    s.add_field("image_uri", DataType.VARCHAR, max_length=URI_MAX)
    s.add_field("source", DataType.VARCHAR, max_length=SOURCE_MAX)
    s.add_field("meta", DataType.JSON)
    s.add_field("model", DataType.VARCHAR, max_length=MODEL_MAX)
    return s


def open_collection(client, name: str, dim: int, fingerprint: str, create: bool = True,
                    index: IndexSpec = IndexSpec()) -> bool:
    """Open (or create) collection ``name`` for a model of ``dim`` / ``fingerprint`` and load it.

    Returns True when it was created now.  Raises SchemaMismatchError, naming what differs, when
    it exists with another model, dimension or schema; ValueError when it is missing and
    ``create`` is False.  Nothing is written before the check passes.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if len(fingerprint) > MODEL_MAX:
        raise ValueError(f"fingerprint is longer than {MODEL_MAX} characters")
    created = False
    if client.has_collection(name):
        check_collection(client, name, dim, fingerprint)
    elif not create:
        raise ValueError(f"collection {name!r} does not exist (ingest documents first)")
    else:
        client.create_collection(name, schema=build_schema(dim), consistency_level="Strong",
                                 properties={FP_PROP: fingerprint, DIM_PROP: str(dim)})
        ip = client.prepare_index_params()
        ip.add_index(VECTOR, index_type=index.index_type, metric_type=index.metric)
        # sync=False: Milvus Lite lacks the AllocTimestamp call that a synchronous wait makes.
        client.create_index(name, ip, sync=False)
        created = True
    client.load_collection(name)
    return created


def check_collection(client, name: str, dim: int, fingerprint: str) -> None:
    """Raise SchemaMismatchError when ``name`` was written by another model or dimension."""
    desc = client.describe_collection(name)
    fields = {f["name"]: f for f in desc.get("fields", [])}
    missing = [f for f in OUTPUT_FIELDS + [VECTOR] if f not in fields]
    if missing:
        raise SchemaMismatchError(f"collection {name!r} is not a solar collection: it lacks "
                                  f"field(s) {missing}; use another --collection")
    have_dim = int(fields[VECTOR].get("params", {}).get("dim", -1))
    have_fp = (desc.get("properties") or {}).get(FP_PROP) or _row_fingerprint(client, name)
    problems = []
    if have_dim != dim:
        problems.append(f"its vectors have dimension {have_dim} but the model gives {dim}")
    if have_fp and have_fp != fingerprint:
        problems.append(f"it was written by model {have_fp} but the model in use is {fingerprint}")
    if problems:
        raise SchemaMismatchError(f"collection {name!r} does not match the model: "
                                  + "; ".join(problems)
                                  + ". Use the same model or another --collection.")


def _row_fingerprint(client, name: str) -> Optional[str]:
    rows = client.query(name, filter="", output_fields=["model"], limit=1)
    return rows[0]["model"] if rows else None


def count(client, name: str) -> int:
    """Number of rows, read with Strong consistency."""
    res = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
    return int(res[0]["count(*)"])


def existing_ids(client, name: str, ids: list, chunk: int = 512) -> set:
    """The subset of ``ids`` already stored (Strong consistency)."""
    found = set()
    for i in range(0, len(ids), chunk):
        part = ids[i:i + chunk]
        rows = client.query(name, filter=f"{PK} in {json.dumps(part)}", output_fields=[PK],
                            consistency_level="Strong")
        found.update(r[PK] for r in rows)
    return found


def upsert_rows(client, name: str, rows: list, retries: int = 3, backoff: float = 0.5,
                sleep: Callable[[float], None] = time.sleep) -> int:
    """Upsert ``rows``; a failed call is retried up to ``retries`` times with exponential backoff
    (0.5 s, 1 s, 2 s, ...).  Data that Milvus or the client refuses is not retried: RowsRejected.
    Returns the row count; raises StoreError after the last attempt."""
    for attempt in range(retries + 1):
        try:
            client.upsert(name, rows)
            return len(rows)
        except Exception as err:  # noqa: BLE001 - transient server/network errors are retried
            if is_data_error(err):
                raise RowsRejected(f"{type(err).__name__}: {_message(err)}") from err
            if attempt == retries:
                raise StoreError(f"upsert of {len(rows)} rows into {name!r} failed after "
                                 f"{retries + 1} attempts: {err}") from err
            sleep(backoff * (2 ** attempt))
    return 0


def upsert_splitting(client, name: str, rows: list, retries: int = 3, backoff: float = 0.5,
                     sleep: Callable[[float], None] = time.sleep) -> tuple[list, list]:
    """Upsert ``rows``, finding the rows of a refused batch by bisection: a batch whose data is
    refused (RowsRejected) is split in halves, each retried, down to single rows.  Returns
    (written rows in order, [(refused row, reason)]); a transient failure still raises
    StoreError.  k bad rows in n cost O(k log n) extra calls."""
    written, refused = [], []
    stack = [rows]
    while stack:
        part = stack.pop()
        if not part:
            continue
        try:
            upsert_rows(client, name, part, retries, backoff, sleep)
            written += part
        except RowsRejected as err:
            if len(part) == 1:
                refused.append((part[0], str(err)))
            else:
                mid = len(part) // 2
                stack += [part[mid:], part[:mid]]      # the first half is tried first
    return written, refused


# Status codes of refused input: legacy IllegalArgument (5), IllegalDimension (7) and
# IllegalRowRecord (11), Milvus 2.3+'s ParameterInvalid (1100), and Milvus Lite's
# IllegalArgument (6, e.g. a VARCHAR over its max_length or a vector of the wrong size).
_DATA_CODES = {5, 6, 7, 11, 1100}


def is_data_error(err: BaseException) -> bool:
    """True when ``err`` says the rows themselves are unacceptable (bad type, size, value), not
    that the server is unreachable or busy."""
    try:
        from pymilvus.exceptions import (DataNotMatchException, DataTypeNotSupportException,
                                         MilvusException, ParamError)
    except ImportError:                                       # pragma: no cover
        return isinstance(err, (TypeError, ValueError, OverflowError))
    if isinstance(err, (ParamError, DataNotMatchException, DataTypeNotSupportException,
                        TypeError, ValueError, OverflowError)):
        return True
    if isinstance(err, MilvusException) and type(err) is MilvusException:
        return getattr(err, "code", None) in _DATA_CODES
    return False


def _message(err: BaseException) -> str:
    msg = getattr(err, "message", None) or str(err)
    return msg if len(msg) <= 300 else msg[:300] + "..."


def clip_utf8(s: str, limit: int) -> str:
    """``s`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    b = s.encode("utf-8", "replace")
    return s if len(b) <= limit else b[:limit].decode("utf-8", "ignore")


def clean_json(v):
    """Metadata made storable as JSON: non-finite floats -> None, other objects -> str, text
    with lone surrogates repaired."""
    if isinstance(v, dict):
        return {clean_json(str(k)): clean_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean_json(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return str(v).encode("utf-8", "replace").decode("utf-8")
