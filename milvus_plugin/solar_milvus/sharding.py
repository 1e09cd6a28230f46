"""``--shard i/N``: a deterministic split of the input for plain job arrays (Slurm, Kubernetes).

A record belongs to shard ``blake2b(id) mod N``.  The id is the record's content id (a hash of its
image bytes and text; for a broken entry, a hash of its locator), so the split does not depend on
the order of the files, the machine or the Python hash seed: for any N, the N shards are disjoint
and their union is exactly the input, and a document found twice always lands in the same shard
(where the ledger and the content-id upsert make it one row).

Each shard job keeps its own ledger and quarantine file (``<collection>.shard-3-of-8.ledger.jsonl``)
so N jobs never write the same state file.  Jobs of one collection may run at once against a
Milvus server; a Milvus Lite folder admits one process at a time.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, Optional, Tuple

Shard = Tuple[int, int]


def parse_shard(spec) -> Optional[Shard]:
    """``"i/N"`` -> (i, N) with 0 <= i < N; None or "" -> None (no sharding).

    Raises ValueError naming ``--shard`` for anything else ("3", "2/2", "-1/4", "a/b", "0/0").
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, tuple) and len(spec) == 2:
        i, n = spec
    else:
        head, sep, tail = str(spec).partition("/")
        if not sep or not head.strip().isdigit() or not tail.strip().isdigit():
            raise ValueError(f"--shard {spec!r}: expected i/N with integers 0 <= i < N, e.g. 0/4")
        i, n = int(head), int(tail)
    if not isinstance(i, int) or not isinstance(n, int) or n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: expected i/N with integers 0 <= i < N, e.g. 0/4")
    return i, n


def shard_of(doc_id: str, n: int) -> int:
    """The shard (0..n-1) of a record id: the first 8 bytes of blake2b(id) modulo n."""
    if n < 1:
        raise ValueError(f"number of shards must be >= 1, got {n}")
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


class ShardedSource:
    """The records of ``inner`` (an iterable of RawRecord with a ``name``) in shard i of N."""

    def __init__(self, inner, shard: Shard):
        self.inner, (self.index, self.count) = inner, parse_shard(shard)
        self.name = getattr(inner, "name", "source")

    def __iter__(self) -> Iterator:
        for rec in self.inner:
            if shard_of(rec.id, self.count) == self.index:
                yield rec


def shard_suffix(shard: Optional[Shard]) -> str:
    """``".shard-3-of-8"`` (or "" without sharding), for state file names."""
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"


def shard_config(cfg, shard: Optional[Shard]):
    """A copy of IngestConfig ``cfg`` that reads only shard i of N (its ``open_sources`` wraps
    each source in a ShardedSource) and keeps its own ledger and quarantine file (explicit paths
    given by the user get the same suffix before their extension)."""
    shard = parse_shard(shard)
    if shard is None:
        return cfg
    ledger, quarantine = cfg.paths()
    sfx = shard_suffix(shard)

    def tag(p: Path) -> str:
        stem, dot, ext = p.name.partition(".")
        return str(p.with_name(f"{stem}{sfx}{dot}{ext}"))

    values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    values.update(ledger=tag(Path(ledger)), quarantine=tag(Path(quarantine)))
    return _sharded_config_class(type(cfg))(**values, shard=shard)


@functools.lru_cache(maxsize=None)
def _sharded_config_class(base):
    """``base`` (an IngestConfig class) with a ``shard`` field and a filtering open_sources."""

    @dataclass
    class ShardedIngestConfig(base):
        shard: Optional[Shard] = None

        def open_sources(self) -> list:
            return [ShardedSource(s, self.shard) for s in super().open_sources()]

    return ShardedIngestConfig


def ingest_shard(embedder, cfg, shard: Optional[Shard], client=None):
    """Run the single-process ingestion job (solar_milvus.ingest.ingest) over shard i of N of
    ``cfg``'s sources and return its IngestSummary.  Same content ids, ledger, quarantine and
    schema as an unsharded run; only the input is filtered."""
    from .ingest import ingest
    return ingest(embedder, shard_config(cfg, shard), client)
