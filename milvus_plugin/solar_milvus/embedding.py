"""An embedding function for image+text documents that follows pymilvus-model's protocol.

``encode_documents``, ``encode_queries``, ``__call__`` and ``dim`` behave like
``pymilvus.model.base.BaseEmbeddingFunction`` (a list in, a list of 1-D float32 arrays out), without
importing pymilvus-model.  The model is symmetric: documents and queries go through the same
encoder, so a text-only, an image-only and an image+text query all land in one space.

Any model works that offers ``encode(images=None, texts=None, batch_size=...)`` returning an
(N, D) tensor or array (``solar.load_model`` returns one); ``dim`` and ``fingerprint`` are read from
the model when it has them and computed here otherwise.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from solar.data.document import Document


def as_document(x: Any, index: int = 0, decode_cfg=None) -> Document:
    """Normalize one input: a Document, a str (text only), a PIL image (image only), a dict with
    ``text`` and/or ``image`` (a PIL image or a file path) or an (image, text) tuple.

    Raises TypeError/ValueError naming ``documents[index]`` when it is neither, or empty.
    """
    from PIL import Image
    if isinstance(x, Document):
        doc = dataclasses.replace(x, meta=dict(x.meta))
    elif isinstance(x, str):
        doc = Document(text=x)
    elif isinstance(x, Image.Image):
        doc = Document(image=x)
    elif isinstance(x, dict):
        unknown = set(x) - {"text", "image"}
        if unknown:
            raise ValueError(f"documents[{index}]: unknown keys {sorted(unknown)}; "
                             f"use 'text' and/or 'image'")
        doc = Document(x.get("text"), x.get("image"))
    elif isinstance(x, tuple) and len(x) == 2:
        doc = Document(text=x[1], image=x[0])
    else:
        raise TypeError(f"documents[{index}] must be a str, a PIL image, a dict, an (image, text) "
                        f"tuple or a Document, got {type(x).__name__}")
    if isinstance(doc.image, (str, Path)):
        doc.image = _load_image_path(str(doc.image), index, decode_cfg)
    elif callable(doc.image):                        # a lazy image (offline sets, training data)
        try:
            doc.image = doc.load_image()
        except (OSError, ValueError) as err:
            raise ValueError(f"documents[{index}].image ({doc.name}): {err}") from None
    if doc.image is not None and not isinstance(doc.image, Image.Image):
        raise TypeError(f"documents[{index}].image must be a PIL image or a path, "
                        f"got {type(doc.image).__name__}")
    if doc.text is not None and not isinstance(doc.text, str):
        raise TypeError(f"documents[{index}].text must be a str, got {type(doc.text).__name__}")
    if doc.text is not None and not doc.text.strip():
        doc.text = None
    if doc.text is None and doc.image is None:
        raise ValueError(f"documents[{index}] is empty: give a text, an image or both")
    return doc


def _load_image_path(path: str, index: int, decode_cfg):
    from solar.data import DecodeConfig, ImageError, load_image_uri
    try:
        return load_image_uri(path, decode_cfg or DecodeConfig())
    except (ImageError, ValueError) as err:
        raise ValueError(f"documents[{index}].image: {err}") from None


def best_device() -> str:
    """"cuda" when a CUDA device is usable, else "cpu"."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_fingerprint(model) -> str:
    """The model's own ``fingerprint`` (attribute or method) when it has one; otherwise a SHA-256
    over its config (JSON, sorted keys) and every weight tensor (name, dtype, shape, bytes)."""
    fp = getattr(model, "fingerprint", None)
    if callable(fp):
        fp = fp()
    if isinstance(fp, str) and fp:
        return fp
    import torch
    h = hashlib.sha256()
    cfg = getattr(model, "config", None) or getattr(model, "cfg", None)
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    elif dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def model_dim(model) -> int:
    """Embedding size: ``model.dim``, ``model.config.dim``, ``model.cfg.dim`` or one probe
    encode."""
    for obj in (model, getattr(model, "config", None), getattr(model, "cfg", None)):
        d = getattr(obj, "dim", None) if obj is not None else None
        if isinstance(d, int) and d > 0:
            return d
    out = model.encode(images=None, texts=["dimension probe"], batch_size=1)
    return int(np.asarray(_to_numpy(out)).shape[1])


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class SolarEmbeddingFunction:
    """Symmetric document embeddings for Milvus, in pymilvus-model's protocol.

    model: an object with ``encode(images, texts, batch_size)`` -> (N, D) float tensor/array.
    batch_size: documents per encoder call.  device: "cuda"/"cpu"/None (None: the best one;
    the model is moved there when it has ``.to``).  fingerprint: override the computed one.
    """

    def __init__(self, model, batch_size: int = 32, device: Optional[str] = None,
                 fingerprint: Optional[str] = None, decode_cfg=None):
        if not hasattr(model, "encode"):
            raise TypeError(f"model must have an encode(images, texts, batch_size) method, "
                            f"got {type(model).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.batch_size = batch_size
        self.device = device or best_device()
        if hasattr(model, "to") and hasattr(model, "parameters"):
            model.to(self.device)
        if hasattr(model, "eval"):
            model.eval()
        self.decode_cfg = decode_cfg
        self._fingerprint = fingerprint
        self._dim: Optional[int] = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = model_dim(self.model)
        return self._dim

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def encode_batch(self, images: Sequence, texts: Sequence) -> np.ndarray:
        """Parallel lists (items may be None) -> (N, dim) float32, one row per document."""
        if len(images) != len(texts):
            raise ValueError(f"images and texts must have the same length, got {len(images)} "
                             f"and {len(texts)}")
        if not len(images):
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch
        ims = list(images) if any(i is not None for i in images) else None
        txs = list(texts) if any(t is not None for t in texts) else None
        with torch.inference_mode():
            out = _to_numpy(self.model.encode(images=ims, texts=txs, batch_size=self.batch_size))
        if out.shape != (len(images), self.dim):
            raise ValueError(f"model returned shape {out.shape}, expected ({len(images)}, "
                             f"{self.dim})")
        return out

    def encode_documents(self, documents: Sequence) -> list[np.ndarray]:
        """Documents (see as_document) -> list of (dim,) float32 arrays."""
        docs = [as_document(d, i, self.decode_cfg) for i, d in enumerate(documents)]
        vecs = self.encode_batch([d.image for d in docs], [d.text for d in docs])
        return list(vecs)

    def encode_queries(self, queries: Sequence) -> list[np.ndarray]:
        """Same encoder as documents: the model is symmetric."""
        return self.encode_documents(queries)

    def __call__(self, documents: Sequence) -> list[np.ndarray]:
        return self.encode_documents(documents)
