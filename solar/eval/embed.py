"""Embed benchmark documents with a model.

Default path: render each document's image and call the public ``model.encode(images, texts)``.

Optional ``TowerCache`` path (for evaluating many checkpoints that share frozen towers, as the
results table does): tower outputs of every distinct image and text are computed once with
``model.tower_features`` and reused; each model then runs only ``model.embed`` on them.  It is the
same computation as ``encode`` (tested to agree within float32 tolerance) and is used only when
both towers are frozen and the model exposes ``tower_features`` and ``embed``.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import torch

from .render import render


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def _image_key(doc) -> str:
    return doc.image.get("pixels") or hashlib.sha1(json.dumps(doc.image, sort_keys=True).encode()).hexdigest()[:20]


def encode_docs(model, docs: list, batch_size: int = 32, chunk: int = 256) -> torch.Tensor:
    """Documents -> (N, D) float32 L2-normalized embeddings through ``model.encode``."""
    if not hasattr(model, "encode"):
        raise TypeError(f"model must have an encode(images=, texts=, batch_size=) method, "
                        f"got {type(model).__name__}")
    out = []
    for s in range(0, len(docs), chunk):
        part = docs[s:s + chunk]
        images = [render(d.image) if d.image is not None else None for d in part]
        texts = [d.text for d in part]
        emb = model.encode(images=images, texts=texts, batch_size=batch_size)
        if not isinstance(emb, torch.Tensor) or emb.shape[0] != len(part):
            raise ValueError(f"model.encode returned {getattr(emb, 'shape', type(emb))} for {len(part)} documents")
        out.append(emb.float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


# --------------------------------------------------------------------------- tower cache
def _tower_key(tower) -> str:
    """Config plus a hash of the tower's weights (frozen towers of two checkpoints can differ)."""
    import dataclasses
    h = hashlib.sha1(json.dumps(dataclasses.asdict(tower.cfg), sort_keys=True, default=str).encode())
    for name, t in sorted(tower.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def cache_applies(model) -> bool:
    """Whether the tower cache may stand in for ``encode``: both towers frozen, and the model
    has ``tower_features`` and ``embed``."""
    towers = [getattr(model, n, None) for n in ("image_tower", "text_tower")]
    return (all(t is not None and getattr(t, "frozen", False) for t in towers)
            and hasattr(model, "tower_features") and hasattr(model, "embed"))


class TowerCache:
    """Per-item tower outputs keyed by (tower, item): tokens trimmed to their last real token."""

    def __init__(self):
        self._store: dict = {}          # (tower_key, item_key) -> (tokens (L, d), mask (L,), pooled (d,))
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def _fill(self, model, modality: str, tkey: str, keys: list, items: list, batch_size: int):
        todo = [(k, it) for k, it in zip(keys, items) if (tkey, k) not in self._store]
        seen = set()
        todo = [(k, it) for k, it in todo if not (k in seen or seen.add(k))]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        for s in range(0, len(todo), batch_size):
            part = todo[s:s + batch_size]
            items_ = [it() if callable(it) else it for _, it in part]
            with torch.no_grad():
                f = model.tower_features(**{f"{modality}s": items_})
            out = f.image if modality == "image" else f.text
            for j, (k, _) in enumerate(part):
                m = out.mask[j].cpu()
                last = int(m.nonzero().max()) + 1 if m.any() else 1
                self._store[(tkey, k)] = (out.tokens[j, :last].float().cpu().clone(), m[:last].clone(),
                                          out.pooled[j].float().cpu().clone())

    def _gather(self, tkey: str, keys: list, width: int, pooled_dim: int):
        B = len(keys)
        L = max([self._store[(tkey, k)][0].shape[0] for k in keys if k is not None] or [1])
        tokens = torch.zeros(B, L, width)
        mask = torch.zeros(B, L, dtype=torch.bool)
        pooled = torch.zeros(B, pooled_dim)
        for i, k in enumerate(keys):
            if k is not None:
                t, m, p = self._store[(tkey, k)]
                n = t.shape[0]
                tokens[i, :n].copy_(t)
                mask[i, :n] = m
                pooled[i] = p
        return tokens, mask, pooled

    @torch.no_grad()
    def encode_docs(self, model, docs: list, batch_size: int = 32) -> torch.Tensor:
        """Like ``encode_docs`` but through cached tower outputs -> (N, D) float32."""
        from solar.model.base import DocFeatures
        from solar.model.towers import TowerOutput
        if not cache_applies(model):
            raise ValueError("the tower cache needs frozen towers and tower_features/embed")
        model.eval()
        ik, tk = _tower_key(model.image_tower), _tower_key(model.text_tower)
        img_keys = [_image_key(d) if d.image is not None else None for d in docs]
        txt_keys = [_text_key(d.text) if d.text is not None else None for d in docs]
        pairs = [(k, (lambda d=d: render(d.image))) for k, d in zip(img_keys, docs) if k]
        self._fill(model, "image", ik, [k for k, _ in pairs], [f for _, f in pairs], batch_size)
        pairs = [(k, d.text) for k, d in zip(txt_keys, docs) if k]
        self._fill(model, "text", tk, [k for k, _ in pairs], [t for _, t in pairs], batch_size)
        dev = model.device
        # Batch documents of the same modality pattern together (text-only rows then carry no
        # padded image tokens); rows are put back in input order at the end.
        order = sorted(range(len(docs)), key=lambda i: (img_keys[i] is None, txt_keys[i] is None))
        img_keys, txt_keys = [img_keys[i] for i in order], [txt_keys[i] for i in order]
        out = []
        for s in range(0, len(docs), batch_size):
            ib, tb = img_keys[s:s + batch_size], txt_keys[s:s + batch_size]
            it, tt = model.image_tower, model.text_tower
            img = TowerOutput(*self._gather(ik, ib, it.token_dim, it.pooled_dim))
            txt = TowerOutput(*self._gather(tk, tb, tt.token_dim, tt.pooled_dim))
            flags = (torch.tensor([k is not None for k in ib]), torch.tensor([k is not None for k in tb]))
            feats = DocFeatures(img, txt, *flags).to(dev)
            out.append(model.embed(feats).float().cpu())
        if not out:
            return torch.empty(0, model.cfg.dim)
        emb = torch.empty_like(torch.cat(out))
        emb[torch.tensor(order)] = torch.cat(out)
        return torch.nn.functional.normalize(emb, dim=-1)


def embed_docs(model, docs: list, batch_size: int = 32,
               cache: Optional[TowerCache] = None) -> torch.Tensor:
    """Embeddings of ``docs``: through ``cache`` when given and applicable, else ``encode``."""
    if cache is not None and cache_applies(model):
        return cache.encode_docs(model, docs, batch_size)
    return encode_docs(model, docs, batch_size)
