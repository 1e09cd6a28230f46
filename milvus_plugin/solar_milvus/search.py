"""Search: query documents (image and/or text) -> the top-k stored documents, with filters.

The model is symmetric, so a text-only, an image-only and an image+text query are all encoded by
the same function and searched in the same vector field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from .store import OUTPUT_FIELDS, PK, VECTOR, IndexSpec, open_collection


@dataclass
class Hit:
    """One result: score is the cosine similarity (higher is closer)."""
    id: str
    score: float
    text: str = ""
    image_uri: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "score": self.score, "text": self.text,
                "image_uri": self.image_uri, "source": self.source, "meta": self.meta}


class Searcher:
    """Searches one collection with one embedding function.

    Opening checks that the collection was written by the same model (SchemaMismatchError
    otherwise) and loads it.
    """

    def __init__(self, client, collection: str, embedder, index: IndexSpec = IndexSpec()):
        self.client, self.collection, self.embedder, self.index = client, collection, embedder, index
        open_collection(client, collection, embedder.dim, embedder.fingerprint, create=False,
                        index=index)

    def search(self, queries: Sequence, top_k: int = 10, filter: Optional[str] = None
               ) -> list[list[Hit]]:
        """queries: documents as for SolarEmbeddingFunction (str, PIL image, dict, Document).
        filter: a Milvus boolean expression over the scalar fields, e.g.
        ``source == "openclipart" and meta["category"] == "animals"``.
        Returns one list of at most top_k hits per query, best first."""
        if not isinstance(top_k, int) or not 1 <= top_k <= 16384:
            raise ValueError(f"top_k must be an int in [1, 16384], got {top_k!r}")
        if not queries:
            return []
        vecs = self.embedder.encode_queries(list(queries))
        return self.search_vectors(vecs, top_k, filter)

    def search_vectors(self, vectors, top_k: int = 10, filter: Optional[str] = None
                       ) -> list[list[Hit]]:
        """Search with already encoded query vectors ((dim,) float32 each)."""
        from pymilvus.exceptions import MilvusException
        data = [v.tolist() if hasattr(v, "tolist") else list(v) for v in vectors]
        try:
            res = self.client.search(self.collection, data=data, anns_field=VECTOR, limit=top_k,
                                     filter=filter or "", output_fields=OUTPUT_FIELDS,
                                     search_params=self.index.search_params(),
                                     consistency_level="Strong")
        except MilvusException as err:
            if filter:
                raise ValueError(f"filter {filter!r} was rejected: "
                                 f"{_filter_message(err.message, filter)}") from None
            raise
        return [[_hit(h) for h in hits] for hits in res]


def _hit(h: dict) -> Hit:
    e = h.get("entity", {})
    return Hit(id=str(h.get(PK, e.get(PK))), score=float(h["distance"]), text=e.get("text", ""),
               image_uri=e.get("image_uri", ""), source=e.get("source", ""),
               meta=e.get("meta") or {})


def _filter_message(message: str, expr: str) -> str:
    """Milvus's message about a filter as one line: the echoed expression and its caret line are
    dropped (the column is in the message), the other lines joined."""
    keep = [ln.strip() for ln in str(message).splitlines()
            if ln.strip() and ln.strip() != expr.strip() and set(ln.strip()) - set("^~ ")]
    return "; ".join(keep) or str(message).strip()

