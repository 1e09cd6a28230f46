"""Tower features for training: an on-disk cache for frozen towers, or live tower passes.

A *document source* gives ``DocFeatures`` for a batch of document indices:
  * ``FeatureStore``: all tower outputs in memory (token features in fp16), built once and cached
    as one safetensors file keyed by the tower configs and the document ids;
  * ``LiveSource``: runs the towers every step (needed when a tower trains, e.g. with LoRA).
Documents are :class:`solar.data.Document` objects whose ``image`` is a callable returning a PIL
image (or None), so images are decoded only when needed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import torch

from solar.data.document import Document
from solar.model.base import DocFeatures, DocumentEncoder
from solar.model.towers import TowerOutput

CACHE_VERSION = 1


def docs_from_pairs(pairs) -> list[Document]:
    """The offline sets' documents (solar.data.offline) for training: the same documents whose
    image, when it cannot be decoded (corrupt, or over Pillow's decompression-bomb limit), leaves
    the document text-only, with a warning naming it."""
    return [dataclasses.replace(p, image=functools.partial(_safe_image, p))
            if p.image is not None else p for p in pairs]


def _safe_image(doc: Document):
    from PIL import Image
    try:
        return doc.load_image()
    except (Image.DecompressionBombError, OSError, ValueError) as err:
        warnings.warn(f"document {doc.id} ({doc.name}): image not usable, "
                      f"kept as a text-only document: {err}")
        return None


def _trim(feats: DocFeatures, max_tokens: Optional[int] = None) -> DocFeatures:
    return feats.trim_text(max_tokens)


class FeatureStore:
    """Tower outputs of N documents in memory.  ``get(idx)`` -> DocFeatures (CPU, float32)."""
    KEYS = ("image_tokens", "image_mask", "image_pooled", "text_tokens", "text_mask",
            "text_pooled", "has_image", "has_text")

    def __init__(self, tensors: dict, ids: list, max_tokens: Optional[int] = None,
                 texts: Optional[list] = None):
        missing = [k for k in self.KEYS if k not in tensors]
        if missing:
            raise ValueError(f"feature store lacks {missing}")
        self.t = tensors
        self.ids = list(ids)
        self.max_tokens = max_tokens
        self.texts = texts          # the documents' texts (pair mixing re-encodes them)

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, idx: torch.Tensor, model: Optional[DocumentEncoder] = None) -> DocFeatures:
        t = self.t
        f = DocFeatures(
            TowerOutput(t["image_tokens"][idx].float(), t["image_mask"][idx], t["image_pooled"][idx].float()),
            TowerOutput(t["text_tokens"][idx].float(), t["text_mask"][idx], t["text_pooled"][idx].float()),
            t["has_image"][idx], t["has_text"][idx])
        return _trim(f, self.max_tokens)

    def pooled(self, model: Optional[DocumentEncoder] = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.t["image_pooled"].float(), self.t["text_pooled"].float()

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.t.values())


def _pad_text(out: TowerOutput, T: int) -> TowerOutput:
    L = out.tokens.shape[1]
    if L >= T:
        return TowerOutput(out.tokens[:, :T], out.mask[:, :T], out.pooled)
    pad = T - L
    tok = torch.nn.functional.pad(out.tokens, (0, 0, 0, pad))
    return TowerOutput(tok, torch.nn.functional.pad(out.mask, (0, pad)), out.pooled)


def _load(docs: list, batch: list) -> tuple[list, list]:
    return ([docs[i].load_image() for i in batch],
            [docs[i].text for i in batch])


@torch.no_grad()
def build_store(model: DocumentEncoder, docs: list, batch_size: int = 32,
                progress: bool = False) -> FeatureStore:
    """Run the towers over ``docs`` (image decoding overlaps with the towers in a thread)."""
    from tqdm.auto import tqdm
    model.eval()
    T = model.text_tower.num_tokens
    chunks = [list(range(s, min(len(docs), s + batch_size))) for s in range(0, len(docs), batch_size)]
    parts: dict[str, list] = {k: [] for k in FeatureStore.KEYS}
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(_load, docs, chunks[0]) if chunks else None
        for n, chunk in enumerate(tqdm(chunks, desc="tower features", disable=not progress)):
            images, texts = fut.result()
            if n + 1 < len(chunks):
                fut = pool.submit(_load, docs, chunks[n + 1])
            f = model.tower_features(images, texts)
            txt = _pad_text(f.text, T)
            for k, v in (("image_tokens", f.image.tokens.half()), ("image_mask", f.image.mask),
                         ("image_pooled", f.image.pooled.float()), ("text_tokens", txt.tokens.half()),
                         ("text_mask", txt.mask), ("text_pooled", txt.pooled.float()),
                         ("has_image", f.has_image), ("has_text", f.has_text)):
                parts[k].append(v.cpu())
    tensors = {k: torch.cat(v) for k, v in parts.items()}
    return FeatureStore(tensors, [d.id for d in docs])


# Tower fields added after the cache format: at these values the features are what they were
# before the field existed, so the field stays out of the key (existing caches stay valid).
_LATER_FIELDS = {"context": "full", "output_stride": 32}


def _tower_key(tc) -> dict:
    return {k: v for k, v in tc.__dict__.items()
            if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}


def cache_key(model: DocumentEncoder, docs: list) -> str:
    h = hashlib.sha1(json.dumps({"v": CACHE_VERSION, "image": _tower_key(model.cfg.image_tower),
                                 "text": _tower_key(model.cfg.text_tower)}, sort_keys=True,
                                default=str).encode())
    for d in docs:
        h.update(d.id.encode() + b"\0")
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    import os
    return Path(os.environ.get("SOLAR_CACHE_DIR", Path.home() / ".cache" / "solar")) / "features"


def cached_store(model: DocumentEncoder, docs: list, cache_dir=None, name: str = "docs",
                 batch_size: int = 32, progress: bool = False,
                 shard: int = 1024) -> tuple[FeatureStore, dict]:
    """Load the features of ``docs`` from the cache, or build and save them.

    The build writes one part file per ``shard`` documents first, so an interrupted build resumes
    from its last finished part; the parts are then joined into one file.
    Returns (store, info) with info = {path, hit, seconds (build time, 0 on a hit), bytes}.
    """
    from safetensors.torch import load_file, save_file
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(model, docs)
    path = folder / f"{name}-{key}.safetensors"
    if path.is_file():
        t0 = time.perf_counter()
        store = FeatureStore(load_file(str(path)), [d.id for d in docs])
        return store, {"path": str(path), "hit": True, "seconds": 0.0,
                       "load_seconds": time.perf_counter() - t0, "bytes": path.stat().st_size}
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parts = []
    for n, s in enumerate(range(0, len(docs), shard)):
        part = folder / f"{name}-{key}.part{n:04d}.safetensors"
        if not part.is_file():
            st = build_store(model, docs[s:s + shard], batch_size, progress)
            _atomic_save(save_file, {k: v.contiguous() for k, v in st.t.items()}, part)
        parts.append(part)
    tensors = {}
    loaded = [load_file(str(p)) for p in parts]
    for k in FeatureStore.KEYS:
        tensors[k] = torch.cat([t[k] for t in loaded]) if loaded else torch.empty(0)
    seconds = time.perf_counter() - t0
    _atomic_save(save_file, tensors, path, {"n": str(len(docs)), "build_seconds": f"{seconds:.2f}"})
    for p in parts:
        p.unlink(missing_ok=True)
    return FeatureStore(tensors, [d.id for d in docs]), {
        "path": str(path), "hit": False, "seconds": seconds, "bytes": path.stat().st_size}


def _atomic_save(save_file, tensors: dict, path: Path, metadata: Optional[dict] = None) -> None:
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


class LiveSource:
    """Runs the towers each time (trainable towers).  Same ``get`` interface as FeatureStore."""

    def __init__(self, docs: list, max_tokens: Optional[int] = None):
        self.docs = docs
        self.ids = [d.id for d in docs]
        self.texts = [d.text for d in docs]
        self.max_tokens = max_tokens

    def __len__(self) -> int:
        return len(self.docs)

    def get(self, idx: torch.Tensor, model: DocumentEncoder) -> DocFeatures:
        images, texts = _load(self.docs, idx.tolist())
        return _trim(model.tower_features(images, texts), self.max_tokens)

    @torch.no_grad()
    def pooled(self, model: DocumentEncoder, batch_size: int = 32):
        outs_i, outs_t = [], []
        for s in range(0, len(self.docs), batch_size):
            f = self.get(torch.arange(s, min(len(self.docs), s + batch_size)), model)
            outs_i.append(f.image.pooled.float().cpu())
            outs_t.append(f.text.pooled.float().cpu())
        return torch.cat(outs_i), torch.cat(outs_t)
