"""Training data from any source spec that ``solar-index ingest`` takes.

``--data`` names one or more specs (see :func:`solar.data.open_source`): a folder, a JSONL/CSV
manifest, WebDataset ``.tar`` shards, Parquet files, or the offline sets.  Records come from the
same readers as ingestion, so they carry the same content ids and bad ones get the same named
quarantine reasons; a bad record is counted, written to ``<run>/quarantine.jsonl`` and skipped,
never fatal.

Splits: the offline names (``clipart``, ``emoji``, ``clipart+emoji``, ``clipart:N``) keep their
own item split (:func:`solar.data.offline.split_by_item`), so the benchmark's test items never
train.  Any other spec is split by content id: a record is in ``val`` when
``blake2b(seed:id) < val_frac``, otherwise in ``train``; with ``val_data`` all of ``data`` trains.

Two ways to feed the loop (:func:`plan_data` picks one):
  * in memory (``TrainData.docs``): up to ``stream_above`` documents (default 20,000); their
    bytes are held and the frozen-tower feature cache can be used; every recipe works;
  * streaming (``TrainData.stream``, :mod:`solar.train.stream`): shards are read and decoded by
    DataLoader workers, nothing is held; recipes stage1, gcl and clip.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from solar.data.document import Document

from .features import docs_from_pairs

_OFFLINE_PART = re.compile(r"^(clipart|emoji)(:[1-9][0-9]*)?$")


def specs_of(data) -> list[str]:
    """``data`` (a spec string or a list of them) as a list of spec strings."""
    specs = [data] if isinstance(data, str) else list(data or [])
    if not specs or not all(isinstance(s, str) and s for s in specs):
        raise ValueError(f"data: give one or more source specs, got {data!r}")
    return specs


def is_offline(spec: str) -> bool:
    """Whether ``spec`` names the offline sets (``clipart``, ``emoji:50``, ``clipart+emoji``)
    rather than a path."""
    if Path(spec).exists():
        return False
    return all(_OFFLINE_PART.match(p) for p in spec.split("+"))


def offline_pairs(spec: str, limit: Optional[int] = None) -> list:
    """All pairs of an offline spec, in the order the sets define (``:N`` keeps the first N)."""
    from solar.data import offline
    sets = {"clipart": offline.clipart_pairs, "emoji": offline.emoji_pairs}
    pairs = []
    for part in spec.split("+"):
        name, _, n = part.partition(":")
        ps = sets[name]()
        pairs += ps[: int(n)] if n else ps
    return pairs[:limit] if limit is not None else pairs


def in_val(doc_id: str, val_frac: float, seed: int) -> bool:
    """The content-id split: True for the ``val_frac`` share of ids (stable for a given seed)."""
    h = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0 ** 64 < val_frac


# --------------------------------------------------------------------------- quarantine
class QuarantineLog:
    """Counts bad records by kind (once per id) and appends them to a JSONL file."""

    def __init__(self, path: Optional[Path] = None):
        self.path = path
        self.counts: dict[str, int] = {}
        self._seen: set = set()
        if path is not None and path.is_file():             # a resumed run: keep what it found
            for line in path.read_text().splitlines():
                d = json.loads(line)
                self._seen.add(d["id"])
                self.counts[d["kind"]] = self.counts.get(d["kind"], 0) + 1

    def add(self, q) -> None:
        """``q``: a solar.data.Quarantined, or its ``to_json()`` dict."""
        d = q if isinstance(q, dict) else q.to_json()
        if d["id"] in self._seen:
            return
        self._seen.add(d["id"])
        self.counts[d["kind"]] = self.counts.get(d["kind"], 0) + 1
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(d) + "\n")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------- in memory
def _image_from_bytes(data: bytes, name: str):
    from solar.data import open_image
    return open_image(data, name)


def _check(raws: list) -> list:
    """decode_record over a chunk, keeping only what the parent needs (no PIL images back)."""
    from solar.data import decode_record
    out = []
    for raw in raws:
        rec = decode_record(raw)
        out.append(rec.to_json() if not hasattr(rec, "image") else (rec.text,))
    return out


def read_docs(specs: list, split: Optional[str], val_frac: float, seed: int,
              quarantine: QuarantineLog, limit: Optional[int] = None, workers: int = 0,
              chunk: int = 64, max_docs: Optional[int] = None) -> list[Document]:
    """Read and check the records of ``specs`` (the first ``limit`` of them): good ones become
    Docs (image bytes held, decoded on use), bad ones go to ``quarantine``; a record whose content
    id was seen before is dropped (a duplicate would be its own false negative).

    split: "train" or "val" (the content-id split), or None for all records; max_docs: stop
    reading once this many good documents are found.
    """
    import itertools
    from solar.data import open_source
    docs, seen = [], set()

    def keep(raw) -> bool:
        if raw.id in seen:
            return False
        seen.add(raw.id)
        return split is None or in_val(raw.id, val_frac, seed) == (split == "val")

    raws = itertools.islice((r for s in specs for r in open_source(s)), limit)
    for batch, checked in _checked_chunks(filter(keep, raws), chunk, workers):
        for raw, res in zip(batch, checked):
            if isinstance(res, dict):
                quarantine.add(res)
                continue
            image = (functools.partial(_image_from_bytes, raw.image, raw.locator)
                     if raw.image is not None else None)
            docs.append(Document(text=res[0], image=image, id=raw.id, locator=raw.locator,
                                 image_uri=raw.image_uri, source=raw.source))
        if max_docs is not None and len(docs) >= max_docs:
            return docs[:max_docs]
    return docs


def _checked_chunks(raws, chunk: int, workers: int):
    """(chunk of raw records, their check results), decoded in ``workers`` processes."""
    import itertools
    chunks = iter(lambda: list(itertools.islice(raws, chunk)), [])
    if workers <= 0:
        for c in chunks:
            yield c, _check(c)
        return
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers) as pool:
        pending = []
        for c in chunks:
            pending.append((c, pool.submit(_check, c)))
            if len(pending) > 2 * workers:
                c0, f = pending.pop(0)
                yield c0, f.result()
        for c0, f in pending:
            yield c0, f.result()


# --------------------------------------------------------------------------- the plan
@dataclass
class TrainData:
    """What the loop trains on: ``docs`` (in memory) or ``stream`` (a StreamPlan), plus the
    validation documents and the quarantine counts so far."""
    docs: Optional[list] = None
    stream: Optional[object] = None
    val_docs: list = field(default_factory=list)
    quarantine: Optional[QuarantineLog] = None
    cache_name: str = "docs"

    @property
    def streaming(self) -> bool:
        return self.stream is not None


def plan_data(cfg, out: Optional[Path], pairs=None, world: int = 1) -> TrainData:
    """The data of a TrainConfig (``pairs``: offline Pairs given directly, as in tests)."""
    q = QuarantineLog(out / "quarantine.jsonl" if out is not None else None)
    if pairs is not None:
        return TrainData(docs=docs_from_pairs(pairs), quarantine=q, cache_name="pairs")
    specs = specs_of(cfg.data)
    if all(is_offline(s) for s in specs):
        spec = "+".join(specs)
        from solar.data import offline
        split = offline.split_by_item(offline_pairs(spec, cfg.limit), cfg.val_frac,
                                      cfg.test_frac, cfg.split_seed)
        # No end-of-run validation here: the offline sets have their benchmark (docs/benchmark.md).
        return TrainData(docs=docs_from_pairs(split[cfg.split]), quarantine=q,
                         cache_name=f"{spec.replace(':', '_')}-{cfg.split}")
    split = None if cfg.val_data else cfg.split
    if cfg.split == "test":
        raise ValueError("split='test' exists for the offline sets only; pass --val-data or "
                         "split='val' for your own data")
    val_q = QuarantineLog(out / "quarantine.val.jsonl" if out is not None else None)
    val = None
    if cfg.val_data:
        val = (read_docs(specs_of(cfg.val_data), None, 0.0, 0, val_q, max_docs=cfg.val_max)
               if cfg.val_max else [])
    if cfg.stream is False:
        plan = None
    else:
        from .stream import StreamPlan
        plan = StreamPlan.build(specs, split, cfg.val_frac, cfg.split_seed, cfg.limit,
                                out / "data_index.json" if out is not None else None)
    stream = plan is not None and (cfg.stream or plan.total > cfg.stream_above)
    if stream:
        if val is None:
            val = plan.val_docs(cfg.val_max, val_q)
        return TrainData(stream=plan, val_docs=val, quarantine=q)
    if val is not None:
        docs = read_docs(specs, None, 0.0, 0, q, cfg.limit, cfg.data_workers)
    else:
        both = read_docs(specs, None, 0.0, 0, q, cfg.limit, cfg.data_workers)
        parts = {"train": [], "val": []}
        for d in both:
            parts["val" if in_val(d.id, cfg.val_frac, cfg.split_seed) else "train"].append(d)
        docs, val = parts[cfg.split], parts["val"][: cfg.val_max]
    return TrainData(docs=docs, val_docs=val, quarantine=q, cache_name=f"data-{cfg.split}")
