"""The benchmark as data: documents, pools, triplets and queries, stored as one JSONL manifest.

Manifest lines (one JSON object each; the first is the header):

* ``{"kind": "header", "format": "solar-benchmark", "version": 1, "config": {...}, "stats": {...}}``
* ``{"kind": "doc", "id", "item", "role", "image": {"source", "ops", "pixels"} | null,
  "text": str | null, "pools": [...]}``: one document; ``image.pixels`` is the hash of the
  rendered pixels (``solar.eval.render.pixel_hash``) so a re-render can be checked.
* ``{"kind": "triplet", "item", "anchor", "positive", "negative", "negative_kind"}``
* ``{"kind": "query", "task", "query", "target"}``: one query of an asymmetric task.

Tasks: "sym" (anchor -> positive over pool "sym", one query per triplet) and the asymmetric
"text->document", "image->document" (pool "document"), "image->text" (pool "text"),
"text->image" (pool "image").
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

FORMAT = "solar-benchmark"
VERSION = 1
SYM = "sym"
ASYM_TASKS = {"text->document": "document", "image->document": "document",
              "image->text": "text", "text->image": "image"}
TASK_POOLS = {SYM: SYM, **ASYM_TASKS}


@dataclass
class Doc:
    """One benchmark document.  image: {"source", "ops", "pixels"} or None; text: str or None."""
    id: str
    item: str
    role: str
    image: Optional[dict]
    text: Optional[str]
    pools: list = field(default_factory=list)


@dataclass
class Triplet:
    """Doc ids of one (anchor, positive, hard negative); negative_kind: "text_swap"|"image_swap"."""
    item: str
    anchor: str
    positive: str
    negative: str
    negative_kind: str


@dataclass
class Query:
    """One query of an asymmetric task: doc ids of the query and its single relevant target."""
    task: str
    query: str
    target: str


@dataclass
class Benchmark:
    """A whole benchmark.  ``docs`` keeps manifest order; pools are read from the docs."""
    config: dict
    docs: dict
    triplets: list
    queries: list
    stats: dict = field(default_factory=dict)

    def pool(self, name: str) -> list[str]:
        """Doc ids of pool ``name`` in manifest order."""
        if name not in set(TASK_POOLS.values()):
            raise ValueError(f"unknown pool {name!r}; pools are {sorted(set(TASK_POOLS.values()))}")
        return [d.id for d in self.docs.values() if name in d.pools]

    def task_queries(self, task: str) -> list[Query]:
        """Queries of ``task``; for "sym" one per triplet (anchor -> positive)."""
        if task == SYM:
            return [Query(SYM, t.anchor, t.positive) for t in self.triplets]
        if task not in ASYM_TASKS:
            raise ValueError(f"unknown task {task!r}; tasks are {sorted(TASK_POOLS)}")
        return [q for q in self.queries if q.task == task]

    def validate(self) -> None:
        """Check references and pools; raises ValueError naming the first bad entry."""
        for t in self.triplets:
            for role in ("anchor", "positive", "negative"):
                if getattr(t, role) not in self.docs:
                    raise ValueError(f"triplet of item {t.item}: {role} doc {getattr(t, role)!r} missing")
        for q in self.queries:
            for role in ("query", "target"):
                if getattr(q, role) not in self.docs:
                    raise ValueError(f"{q.task} query: {role} doc {getattr(q, role)!r} missing")
            if self.docs[q.target].pools.count(ASYM_TASKS.get(q.task, "?")) != 1:
                raise ValueError(f"{q.task} query {q.query!r}: target {q.target!r} is not in its pool")
        for d in self.docs.values():
            if d.image is None and d.text is None:
                raise ValueError(f"doc {d.id!r} has neither an image nor a text")

    # ------------------------------------------------------------------ I/O
    def save(self, path: Union[str, Path]) -> Path:
        """Write the manifest (JSONL) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            head = {"kind": "header", "format": FORMAT, "version": VERSION,
                    "config": self.config, "stats": self.stats}
            f.write(json.dumps(head, ensure_ascii=False) + "\n")
            for d in self.docs.values():
                f.write(json.dumps({"kind": "doc", **asdict(d)}, ensure_ascii=False) + "\n")
            for t in self.triplets:
                f.write(json.dumps({"kind": "triplet", **asdict(t)}, ensure_ascii=False) + "\n")
            for q in self.queries:
                f.write(json.dumps({"kind": "query", **asdict(q)}, ensure_ascii=False) + "\n")
        return path


def load_benchmark(path: Union[str, Path]) -> Benchmark:
    """Read a manifest written by ``Benchmark.save``; raises ValueError on a malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark manifest {str(path)!r} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path} is empty")
    try:
        head = json.loads(lines[0])
    except ValueError as err:
        raise ValueError(f"{path}: line 1 is not JSON") from err
    if head.get("kind") != "header" or head.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest (bad header line)")
    if head.get("version") != VERSION:
        raise ValueError(f"{path}: manifest version {head.get('version')} is not {VERSION}")
    docs, triplets, queries = {}, [], []
    makers = {"doc": Doc, "triplet": Triplet, "query": Query}
    for n, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
            kind = row.pop("kind")
            obj = makers[kind](**row)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: line {n} is not a valid doc/triplet/query entry ({err})") from err
        if kind == "doc":
            docs[obj.id] = obj
        else:
            (triplets if kind == "triplet" else queries).append(obj)
    bench = Benchmark(head.get("config", {}), docs, triplets, queries, head.get("stats", {}))
    bench.validate()
    return bench
