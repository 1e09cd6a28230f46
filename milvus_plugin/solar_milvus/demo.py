"""The demo job: get a model, build a small symmetric index in a local Milvus Lite folder, query it
with documents that are not in it and write the HTML report.

The index holds ``DEMO_LIMIT`` (500) corpus pairs plus ``DEMO_HELDOUT`` (6) held-out documents,
506 in all:

* corpus: the first 500 clip-art pairs in the set's stable order, whole drawing and full caption
  (any held-out item among them is left out and the next pair taken);
* held-out: 6 items of the clip-art ``test`` split, never trained on, each stored under one view
  only: crop A of the drawing on white with the item's title (see ``heldout``).

The queries are the held-out items under their other view, which is not in the index: crop B of
the drawing on a tinted background with the item's keywords for four of them, crop B alone (image
only) for the fifth and the keywords alone (text only) for the sixth; then a few free texts.  For
each held-out query the report marks its other view among the hits and gives its rank (searched
``RANK_DEPTH`` deep).  The held-out items are a pure function of ``heldout_seed``.  A folder
whose index already holds one of them whole (a corpus pair stored by a run that chose other
items) is left as it is, and the report and the command say so.

With the shipped model on 2 CPU cores shared with a training job, the first run took about 2
minutes (ingest 79 s at 6.4 docs/s) and a re-run 55 s, most of it the heat maps of the 9 queries
(36 s on a quieter machine).
``limit=None`` takes the whole set as the corpus (6,884 pairs here; by extrapolation 10 to 20
minutes there).  A re-run skips every stored document (ledger and content ids), so it pays only
for the model load, the queries and the page.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .embedding import Document
from .heldout import (CorpusSource, HeldOutItem, pick_heldout, stored_originals,
                      write_views)
from .ingest import IngestConfig, IngestSummary, default_workers, ingest
from .models import default_model, load_embedder
from .report import Target, write_report
from .search import Searcher
from .store import connect

DEMO_LIMIT = 500
DEMO_HELDOUT = 6
DEMO_TEXT_QUERIES = ("a cat", "red apple fruit", "a car on the road")
#: Hits searched per query to find the rank of its other view (the page shows the top k).
RANK_DEPTH = 100


@dataclass
class DemoConfig:
    """model: checkpoint folder / preset (None: $SOLAR_MODEL or the offline preset);
    out: folder for the Milvus Lite data, ledger, quarantine file, held-out views and report.html;
    limit: corpus pairs to ingest (None: all); heldout: held-out items stored under view 1 (at
    least 3: some image + text queries, one image only, one text only); heldout_seed: their
    choice."""
    model: Optional[str] = None
    out: str = "solar_demo"
    collection: str = "clipart_demo"
    limit: Optional[int] = DEMO_LIMIT
    heldout: int = DEMO_HELDOUT
    heldout_seed: int = 0
    top_k: int = 5
    batch_size: int = 32
    workers: int = field(default_factory=default_workers)
    device: Optional[str] = None
    progress: bool = True

    def __post_init__(self):
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be at least 2 (or None for all), got {self.limit}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be positive, got {self.top_k}")
        if self.heldout < 3:
            raise ValueError(f"heldout must be at least 3, got {self.heldout}")


@dataclass
class DemoQuery:
    """A query document, a line saying what it is, and the content id of the stored document it
    should find (None for a free text)."""
    doc: Document
    label: str
    expected: Optional[str] = None


@dataclass
class DemoResult:
    summary: IngestSummary
    report: Path
    queries: list           # DemoQuery
    results: list           # the top-k Hits per query
    targets: list           # a report.Target per query (None for free texts)
    heldout: list           # HeldOutItem
    timings: dict
    originals: list = field(default_factory=list)   # ids of held-out items stored whole


def demo_queries(items: list[HeldOutItem]) -> list[DemoQuery]:
    """Each held-out item under its other view: image + text for all but the last two, image only
    for the second last, text only for the last; then the free texts."""
    out = []
    for i, it in enumerate(items):
        q = it.query
        if i == len(items) - 2:
            doc, how = Document(image=q.image), "image only: crop B"
        elif i == len(items) - 1:
            doc, how = Document(text=q.text), "text only: keywords"
        else:
            doc, how = Document(text=q.text, image=q.image), "crop B + keywords"
        out.append(DemoQuery(doc, f"held-out {it.title!r}, other view ({how}); stored as "
                                  f"crop A + title", it.doc_id))
    out += [DemoQuery(Document(text=t), "free text") for t in DEMO_TEXT_QUERIES]
    return out


def _ingest(cfg: DemoConfig, embedder, client, items: list[HeldOutItem]) -> IngestSummary:
    out = Path(cfg.out)
    views = write_views(items, out / "heldout")
    corpus = CorpusSource(cfg.limit, {it.pair.id for it in items})
    return ingest(embedder, IngestConfig([corpus, str(views)], uri=str(out / "milvus.db"),
                                         token="", collection=cfg.collection,
                                         batch_size=cfg.batch_size, workers=cfg.workers,
                                         progress=cfg.progress), client=client)


def run_demo(cfg: DemoConfig = DemoConfig()) -> DemoResult:
    """Run the demo end to end and return the ingest summary, the report path and timings."""
    t0 = time.perf_counter()
    embedder = load_embedder(cfg.model or default_model(), cfg.device, cfg.batch_size)
    _ = embedder.fingerprint, embedder.dim
    t_model = time.perf_counter() - t0
    items = pick_heldout(cfg.heldout, cfg.heldout_seed)
    client = connect(str(Path(cfg.out) / "milvus.db"), "")
    summary = _ingest(cfg, embedder, client, items)
    t1 = time.perf_counter()
    queries = demo_queries(items)
    deep = Searcher(client, cfg.collection, embedder).search(
        [q.doc for q in queries], max(cfg.top_k, RANK_DEPTH))
    targets = [Target.find(q.expected, hits) if q.expected else None
               for q, hits in zip(queries, deep)]
    results = [hits[:cfg.top_k] for hits in deep]
    originals = stored_originals(client, cfg.collection, items)
    t_search = time.perf_counter() - t1
    intro = (f"{summary.collection}: {cfg.limit or 'all'} clip-art corpus pairs and "
             f"{len(items)} held-out items (test split, never trained on) stored under one view "
             f"(crop A of the drawing on white + title). Each held-out query is the same item "
             f"under another view (crop B on a tint, keywords), which is not in the index; "
             f"the badge marks where it found the stored view.")
    if originals:
        intro += " " + originals_warning(len(originals))
    report = write_report(Path(cfg.out) / "report.html", [q.doc for q in queries], results,
                          embedder.model, title=f"solar demo: {summary.collection}",
                          labels=[q.label for q in queries], targets=targets, intro=intro)
    timings = {"model_s": t_model, "ingest_s": summary.seconds, "search_s": t_search,
               "report_s": time.perf_counter() - t1 - t_search,
               "total_s": time.perf_counter() - t0}
    return DemoResult(summary, report, queries, results, targets, items, timings, originals)


def originals_warning(n: int) -> str:
    """The line said when the index also holds ``n`` held-out items whole."""
    return (f"Warning: this folder also holds {n} held-out item(s) whole, from an earlier run's "
            f"corpus, so a query may find that copy too; an empty --out folder avoids it.")
