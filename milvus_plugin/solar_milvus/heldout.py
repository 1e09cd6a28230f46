"""Held-out items for the demo: stored under one view, queried under another.

An item is a clip-art pair of the offline set's ``test`` split (``split_by_item`` with training's
fractions and seed), so the shipped model never trained on it.  Its two views are made by
``solar.eval.construct.item_views``, as the symmetric benchmark makes a triplet's anchor and
positive (docs/benchmark.md):

* view 1, stored: crop A of the drawing on white, with the item's title;
* view 2, the query: crop B of the drawing (the other side, overlapping only in the middle) on a
  tinted background, with the item's keywords.  It is never stored.

The items are drawn in a seeded order, at most one per top-level clip-art category, and left out of
the demo's corpus, so the index holds each of them only as its view 1.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from .embedding import Document

HELDOUT_SOURCE = "heldout"


@dataclass
class HeldOutItem:
    """One held-out item: ``pair`` (an offline set's Document), its stored view 1 (``stored``,
    with ``stored_png``, the exact bytes ingested) and its view 2 (``query``)."""
    pair: object
    stored: Document
    stored_png: bytes
    query: Document

    @property
    def doc_id(self) -> str:
        """The content id of the stored view 1, as ingestion computes it."""
        from solar.data.records import content_id, text_bytes
        return content_id(self.stored_png, text_bytes(self.stored.text))

    @property
    def title(self) -> str:
        return self.pair.meta.get("title", "")


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _item(pair) -> Optional[HeldOutItem]:
    from solar.eval.construct import item_views
    from solar.eval.render import render
    views = item_views(pair)
    if views is None:
        return None
    a, b = views["anchor"], views["positive"]
    stored = Document(text=a["text"], image=render(a["image"]))
    return HeldOutItem(pair, stored, _png(stored.image),
                       Document(text=b["text"], image=render(b["image"])))


@functools.lru_cache(maxsize=1)
def _test_split() -> tuple:
    from solar.eval.construct import BenchmarkConfig, offline_split
    return tuple(offline_split(BenchmarkConfig(sources=("openclipart",)))["test"])


def pick_heldout(n: int, seed: int = 0) -> list[HeldOutItem]:
    """``n`` held-out items of the clip-art test split, the same for the same (n, seed): test
    items in the order of sha1(seed:id), skipping items without two views and items of a
    top-level category already taken."""
    if n < 0:
        raise ValueError(f"the number of held-out items must be >= 0, got {n}")
    order = sorted(_test_split(),
                   key=lambda p: hashlib.sha1(f"{seed}:demo:{p.id}".encode()).hexdigest())
    chosen: list[HeldOutItem] = []
    taken: set = set()
    for p in order:
        if len(chosen) == n:
            break
        top = p.meta.get("category", "").split("/")[0]
        if top in taken:
            continue
        item = _item(p)
        if item is not None:
            chosen.append(item)
            taken.add(top)
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} held-out items qualify, {n} asked for")
    return chosen


def write_views(items: list, folder) -> Path:
    """Write each item's view 1 as ``<pair id>.png`` plus a JSONL manifest (an ingest source)
    into ``folder``; returns the manifest path.  Files with the same bytes are left alone."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in items:
        name = f"{it.pair.id}.png"
        _write_if_changed(folder / name, it.stored_png)
        meta = {"pair_id": it.pair.id, "title": it.title, "split": "test",
                "category": it.pair.meta.get("category", ""), "view": "crop A on white, title"}
        lines.append(json.dumps({"image": name, "text": it.stored.text, "meta": meta},
                                ensure_ascii=False))
    manifest = folder / f"{HELDOUT_SOURCE}.jsonl"
    _write_if_changed(manifest, ("\n".join(lines) + "\n").encode("utf-8"))
    return manifest


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def stored_originals(client, collection: str, items: list) -> list[str]:
    """Ids of corpus rows that hold a held-out item whole (left by a run that chose other items,
    or by an older layout of the folder): each would be a second stored view of its item."""
    if not items:
        return []
    same = " or ".join(f'meta["pair_id"] == {json.dumps(it.pair.id)}' for it in items)
    rows = client.query(collection, filter=f'source == "{CorpusSource.name}" and ({same})',
                        output_fields=["id"], consistency_level="Strong")
    return [r["id"] for r in rows]


class CorpusSource:
    """The first ``limit`` clip-art pairs (all when None) in the set's stable order, leaving out
    the pairs whose id is in ``exclude``; records exactly as the ``clipart`` source makes them."""

    name = "openclipart"

    def __init__(self, limit: Optional[int], exclude=()):
        self.limit, self.exclude = limit, frozenset(exclude)

    def __iter__(self) -> Iterator:
        from solar.data.sources import ClipartSource
        n = 0
        for rec in ClipartSource(None):
            if self.limit is not None and n >= self.limit:
                return
            if rec.meta.get("pair_id") in self.exclude:
                continue
            n += 1
            yield rec
