"""solar_milvus: Milvus ingestion and search for symmetric image+text document embeddings.

Light to import: pymilvus, the model and Pillow load on first use.

* :class:`SolarEmbeddingFunction` - pymilvus-model's protocol (encode_documents, encode_queries,
  dim, __call__) for image+text, image-only and text-only documents.
* :func:`open_collection` - the explicit schema; refuses a collection of another model/dimension.
* :func:`run_ingest` (``solar_milvus.ingest.ingest``) with :class:`IngestConfig` - the
  resumable ingestion job.
* :class:`Searcher` - top-k search with filter expressions.
* :func:`write_report` - the HTML page with thumbnails, scores and heat maps.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "SolarEmbeddingFunction": "embedding", "Document": "embedding", "as_document": "embedding",
    "model_fingerprint": "embedding",
    "connect": "store", "open_collection": "store", "IndexSpec": "store", "count": "store",
    "SchemaMismatchError": "store", "StoreError": "store",
    "IngestConfig": "ingest", "IngestSummary": "ingest", "run_ingest": "ingest",
    "Searcher": "search", "Hit": "search",
    "write_report": "report",
    "load_embedder": "models", "load_encoder": "models", "DEFAULT_MODEL": "models",
    "DemoConfig": "demo", "run_demo": "demo",
}


def __getattr__(name):
    if name in _LAZY:
        attr = "ingest" if name == "run_ingest" else name
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), attr)
    raise AttributeError(f"module 'solar_milvus' has no attribute {name!r}")


__all__ = sorted(_LAZY)
