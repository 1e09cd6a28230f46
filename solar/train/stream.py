"""Streaming training data for corpora bigger than memory.

The corpus is a list of *units* (one per ``.tar`` shard or Parquet file; a folder or manifest is
one unit) with their record counts, counted once and kept in ``<run>/data_index.json``.  Each
epoch orders the units by a seeded permutation and cuts the concatenated records into
G = world x workers equal contiguous ranges of R = N // G records, one per *logical worker*
g = rank x workers + q (the < G left-over records wait for another epoch's order).  A worker
reads only its own range (skipping, without decoding, into its first unit), shuffles it with a
seeded buffer of raw records, drops records of the other split, decodes, resizes and tokenizes in
the DataLoader worker process (the model's ``preparer()``, which holds no weights) and yields
whole batches of B prepared documents.  A record whose content id is already in the
batch being filled is skipped (two copies in one batch would be each other's false negative; the
stage-2 queue of mined negatives skips an anchor's own id too); copies in different batches are
trained on as often as they occur.

Every worker yields exactly ``n_b = R_split // B`` batches per epoch, so all ranks take the same
number of steps and no collective waits on a rank that ran dry.  Bad records are skipped (and
reported with the batch); if a worker's range runs out of good records before n_b batches it
reads its range again (a new shuffle), so a few of its documents are seen twice that epoch.  With
the content-id split the train share of one range varies by a few per thousand; records beyond
n_b x B are left for that epoch.  With ``--val-data`` (no split) and no bad records, every record
of the first G x R is seen exactly once per epoch.

Exact resume: each batch carries its worker's (epoch, raw records consumed, batches made); the
loop keeps the latest per logical worker and the checkpoint stores them for every rank.  On resume
a worker replays its raw-record order and skips that many records without decoding them.
DataLoader worker w plays logical worker (w + start) mod workers, so the resumed batch order is the
uninterrupted one.
"""
from __future__ import annotations

import itertools
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from .data import QuarantineLog, in_val, read_docs


@dataclass(frozen=True)
class Unit:
    """kind: "tar", "parquet" or "spec" (any other source spec, read as one unit)."""
    kind: str
    path: str
    count: int


def _units_of(spec: str) -> list[tuple[str, str]]:
    from solar.data import open_source
    from solar.data.shards import ParquetSource, WebDatasetSource
    src = open_source(spec)
    if isinstance(src, WebDatasetSource):
        return [("tar", str(p)) for p in src.shards]
    if isinstance(src, ParquetSource):
        return [("parquet", str(p)) for p in src.files]
    return [("spec", spec)]


def open_unit(u: Unit):
    """The unit's RawRecords (the same readers as ingestion)."""
    from solar.data import open_source
    from solar.data.shards import ParquetSource, WebDatasetSource
    if u.kind == "tar":
        return WebDatasetSource(u.path)
    if u.kind == "parquet":
        return ParquetSource(u.path)
    return open_source(u.path)


def count_unit(kind: str, path: str) -> int:
    """Records a unit yields: tar headers grouped by key, Parquet metadata, else a full read."""
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
            return pq.ParquetFile(path).metadata.num_rows
        except (OSError, ValueError):
            return 1                                         # read as one quarantined entry
    if kind == "tar":
        import tarfile
        from solar.data.shards import _split_key
        n, key = 0, None
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar:
                    if m.isfile():
                        k = _split_key(m.name)[0]
                        n, key = n + (k != key), k
        except (tarfile.TarError, EOFError, OSError):
            n += 1
        return n
    return sum(1 for _ in open_unit(Unit(kind, path, 0)))


def _stamp(kind: str, path: str) -> list:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [None, None]


class StreamPlan:
    """The units of the training specs, their counts and the split; picklable for workers."""

    def __init__(self, units: list, split: Optional[str], val_frac: float, seed: int):
        self.units, self.split, self.val_frac, self.seed = units, split, val_frac, seed
        self.total = sum(u.count for u in units)

    @classmethod
    def build(cls, specs: list, split: Optional[str], val_frac: float, seed: int,
              limit: Optional[int] = None, index_path: Optional[Path] = None) -> "StreamPlan":
        """Count the units of ``specs`` (reusing ``index_path`` when the files are unchanged);
        ``limit`` keeps the first ``limit`` records in spec order."""
        found = [(k, p) for s in specs for k, p in _units_of(s)]
        key = [[k, p, *_stamp(k, p)] for k, p in found]
        old = json.loads(index_path.read_text()) if index_path and index_path.is_file() else {}
        if old.get("key") == key:
            counts = old["counts"]
        else:
            counts = [count_unit(k, p) for k, p in found]
            if index_path is not None:
                index_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = index_path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"key": key, "counts": counts}))
                tmp.replace(index_path)
        units, left = [], limit
        for (k, p), n in zip(found, counts):
            if left is not None:
                n = min(n, left)
                left -= n
            if n > 0:
                units.append(Unit(k, p, n))
        return cls(units, split, val_frac, seed)

    def wanted(self, doc_id: str) -> bool:
        return self.split is None or in_val(doc_id, self.val_frac, self.seed) == (self.split == "val")

    def split_share(self) -> float:
        return 1.0 if self.split is None else (self.val_frac if self.split == "val"
                                                else 1.0 - self.val_frac)

    def val_docs(self, n: int, quarantine: QuarantineLog) -> list:
        """The first ``n`` validation documents in unit order (the content-id val split)."""
        if self.split is None or self.val_frac <= 0:
            return []
        specs = [u.path for u in self.units]
        return read_docs(specs, "val", self.val_frac, self.seed, quarantine, max_docs=n) if n else []

    # -- one worker's records ------------------------------------------------------------------
    def epoch_units(self, epoch: int) -> list:
        order = list(range(len(self.units)))
        random.Random(f"units:{self.seed}:{epoch}").shuffle(order)
        return [self.units[i] for i in order]

    def range_records(self, g: int, G: int, epoch: int) -> Iterator:
        """Raw records [g R, (g+1) R) of the epoch's unit order, R = total // G."""
        R = self.total // G
        lo, hi, off = g * R, (g + 1) * R, 0
        for u in self.epoch_units(epoch):
            a, b = max(lo - off, 0), min(hi - off, u.count)
            if a < b:
                yield from itertools.islice(iter(open_unit(u)), a, b)
            off += u.count
            if off >= hi:
                return


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A seeded shuffle buffer of ``size`` items (size <= 1: unchanged order)."""
    if size <= 1:
        yield from items
        return
    buf: list = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = x
    rng.shuffle(buf)
    yield from buf


@dataclass
class WorkerState:
    """Where a logical worker is: epoch, raw records consumed in it, batches made in it."""
    epoch: int = 0
    cursor: int = 0
    made: int = 0


class DocStream(torch.utils.data.IterableDataset):
    """Batches of decoded documents for one rank (see the module docstring).

    Each item: {"images": [PIL or None], "texts": [str or None], "ids": [str], "q": logical
    worker, "state": (epoch, cursor, made) after the batch, "bad": [quarantined dicts]}.  With
    ``prepare`` (a model's ``preparer()``) the worker also resizes and tokenizes: the item holds
    "prepared" (``PreparedDocs``) instead of "images" and "texts"; an image the preparation
    rejects is quarantined like one the decoder rejects.
    """

    def __init__(self, plan: StreamPlan, batch_size: int, workers: int, rank: int, world: int,
                 states: list, offset: int = 0, shuffle_buffer: int = 512, seed: int = 0,
                 prepare=None):
        self.prepare = prepare
        self.plan, self.B, self.K = plan, batch_size, max(1, workers)
        self.rank, self.world, self.states, self.offset = rank, world, states, offset
        self.buffer, self.seed = shuffle_buffer, seed
        self.G = self.world * self.K
        R = plan.total // self.G
        self.n_b = int(R * plan.split_share()) // batch_size
        if self.n_b < 1:
            raise ValueError(f"{plan.total} records over {self.G} readers (world {world} x "
                             f"workers {self.K}) leave fewer than batch_size={batch_size} "
                             "training records each; lower batch_size or workers")

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch (all ranks alike)."""
        return self.K * self.n_b

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w = info.id if info is not None else 0
        q = (w + self.offset) % self.K
        st = self.states[q]
        yield from self._batches(q, WorkerState(st.epoch, st.cursor, st.made))

    def _raw(self, g: int, epoch: int) -> Iterator:
        """The epoch's raw-record order of worker g: its range, shuffled, read again as needed."""
        for p in itertools.count():
            rng = random.Random(f"shuffle:{self.seed}:{epoch}:{g}:{p}")
            yield from shuffled(self.plan.range_records(g, self.G, epoch), self.buffer, rng)
            yield None                                       # end of one pass

    def _batches(self, q: int, st: WorkerState):
        from solar.data import decode_record
        g = self.rank * self.K + q
        while True:
            if st.made >= self.n_b:
                st = WorkerState(st.epoch + 1, 0, 0)
            raw = self._raw(g, st.epoch)
            for _ in range(st.cursor):                      # resume: skip, no decoding
                next(raw)
            images, texts, ids, bad = [], [], [], []
            good, empty_passes = 0, 0
            while st.made < self.n_b:
                r = next(raw)
                st.cursor += 1
                if r is None:                               # two ends with nothing good between
                    empty_passes = empty_passes + 1 if good == 0 else 0
                    if empty_passes >= 2:
                        raise RuntimeError(f"reader {g}: no usable training record in its range "
                                           f"(or fewer distinct documents than batch_size={self.B})")
                    good = 0
                    continue
                if not self.plan.wanted(r.id) or r.id in ids:   # a copy in one batch would be
                    continue                                    # its own false negative
                rec = decode_record(r)
                image = getattr(rec, "image", None)
                if image is not None and self.prepare is not None:
                    image, rec = self._pixels(rec)
                if not hasattr(rec, "image"):
                    bad.append(rec.to_json())
                    continue
                good += 1
                images.append(image)
                texts.append(rec.text)
                ids.append(rec.id)
                if len(ids) == self.B:
                    st.made += 1
                    item = {"ids": ids, "q": q, "state": (st.epoch, st.cursor, st.made), "bad": bad}
                    if self.prepare is None:
                        item.update(images=images, texts=texts)
                    else:
                        item["prepared"] = self._prepared(images, texts)
                    yield item
                    images, texts, ids, bad = [], [], [], []

    def _pixels(self, rec):
        """(the image tower's prepared tensors of a decoded document, the document), or
        (None, Quarantined) when the preparation fails."""
        from solar.data.records import CORRUPT_IMAGE, Quarantined
        try:
            return self.prepare.image([rec.image]), rec
        except Exception as err:  # noqa: BLE001 - one bad image must not end the stream
            return None, Quarantined(rec.id, rec.locator, CORRUPT_IMAGE,
                                     f"{rec.locator}: image preprocessing failed "
                                     f"({type(err).__name__}: {err})", rec.source)

    def _prepared(self, images: list, texts: list):
        """One batch's ``PreparedDocs`` from per-document prepared images and raw texts."""
        from solar.model.base import PreparedDocs
        has_i = [i for i, x in enumerate(images) if x is not None]
        has_t = [i for i, x in enumerate(texts) if x is not None]
        image = ({k: torch.cat([images[i][k] for i in has_i]) for k in images[has_i[0]]}
                 if has_i else None)
        text = self.prepare.text([texts[i] for i in has_t]) if has_t else None
        return PreparedDocs(len(images), image, text, has_i, has_t)


def identity(x):
    return x


def make_loader(ds: DocStream, workers: int):
    """A DataLoader over the DocStream (whole batches; decoding in ``workers`` processes).  It
    draws its worker seeds from its own generator, so the global RNG (in the checkpoint) stays
    the same whether the loader was made at step 0 or on resume."""
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                       collate_fn=identity,
                                       generator=torch.Generator().manual_seed(ds.seed),
                                       prefetch_factor=2 if workers > 0 else None)
