"""A quick validation score at the end of training: cross-modal retrieval within documents.

Each validation document with both an image and a text gives an image-only and a text-only
embedding (``three_embeddings``: the model's own unimodal passes); R@1 and R@5 count how often a
document's image finds its own text among all validation texts, and the reverse, averaged.  It is
recipe-independent and needs no labels, so it works on any corpus.
"""
from __future__ import annotations

import torch

from .recipes import three_embeddings


@torch.no_grad()
def validate(model, docs: list, device, batch_size: int = 64) -> dict:
    """{"R@1", "R@5", "docs"} over ``docs`` (Docs with both modalities; others are skipped)."""
    was = model.training
    model.eval()
    zi, zt = [], []
    try:
        for s in range(0, len(docs), batch_size):
            part = [(d.load_image(), d.text)
                    for d in docs[s:s + batch_size]]
            part = [(i, t) for i, t in part if i is not None and t is not None]
            if not part:
                continue
            feats = model.tower_features([i for i, _ in part], [t for _, t in part]).to(device)
            e_i, e_t, _ = three_embeddings(model, feats)
            zi.append(e_i.float().cpu())
            zt.append(e_t.float().cpu())
    finally:
        model.train(was)
    if not zi or sum(len(z) for z in zi) < 2:
        return {"docs": 0}
    zi, zt = torch.cat(zi), torch.cat(zt)
    sim = zi @ zt.T                                   # (n, n); n <= val_max
    target = sim.diagonal()[:, None]
    out = {"docs": len(zi)}
    for k in (1, 5):
        a = ((sim > target).sum(dim=1) < k).float().mean().item()
        b = ((sim.T > target).sum(dim=1) < k).float().mean().item()
        out[f"R@{k}"] = 0.5 * (a + b)
    return out
