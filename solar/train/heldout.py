"""Held-out document-to-document retrieval on offline pairs (a training-time check).

For each held-out item two documents that share the item but split its information differently:
    query     = (the image,                                  the title)
    candidate = (a random crop + flip of the image [seeded],  the keywords and description)
Every query ranks all candidates by cosine (and every candidate all queries: the task is
symmetric, both directions are averaged).  R@K counts the item's own partner in the top K.

    python -m solar.train.heldout --split test name=RUN_DIR_OR_PRESET ...
"""
from __future__ import annotations

import json
import random
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F

from solar.model.base import DocumentEncoder
from solar.model.io import load_model

from .features import Doc, FeatureStore, cached_store


def augment(img, seed: int, scale=(0.55, 0.85)):
    """Seeded random-resized crop (area share in ``scale``, aspect 3/4..4/3) and horizontal flip."""
    from PIL import Image
    rng = random.Random(seed)
    w, h = img.size
    area = rng.uniform(*scale) * w * h
    ar = rng.uniform(0.75, 1.333)
    cw, ch = min(w, max(1, round((area * ar) ** 0.5))), min(h, max(1, round((area / ar) ** 0.5)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x, y, x + cw, y + ch))
    return out.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def _second_text(p) -> Optional[str]:
    kws = ", ".join(p.meta.get("keywords", []))
    desc = p.meta.get("description", "")
    text = ". ".join(t for t in (kws, desc) if t)
    return text or None


def doc2doc_views(pairs, seed: int = 0) -> tuple[list, list]:
    """(queries, candidates) Docs for pairs with a title; see the module docstring."""
    queries, cands = [], []
    for p in pairs:
        title = p.meta.get("title") or p.text
        s = int(p.id[:8], 16) + seed
        queries.append(Doc(p.id + ":q", p.load_image, title))
        cands.append(Doc(p.id + ":c", (lambda p=p, s=s: augment(p.load_image(), s)),
                         _second_text(p)))
    return queries, cands


def recall_at(q: torch.Tensor, c: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Row i of q matches row i of c.  Returns R@K for q->c, c->q and their mean (in [0, 1])."""
    sim = q @ c.T
    target = sim.diagonal()[:, None]
    rank_qc = (sim > target).sum(dim=1)           # 0 = first
    rank_cq = (sim.T > target).sum(dim=1)
    out = {}
    for k in ks:
        a, b = (rank_qc < k).float().mean().item(), (rank_cq < k).float().mean().item()
        out[f"R@{k}"] = 0.5 * (a + b)
        out[f"R@{k}_q2c"], out[f"R@{k}_c2q"] = a, b
    return out


@torch.no_grad()
def embed_store(model: DocumentEncoder, store: FeatureStore, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    dev = model.device
    store.max_tokens = model.cfg.max_text_tokens
    out = [model.embed(store.get(torch.arange(s, min(len(store), s + batch_size))).to(dev)).float().cpu()
           for s in range(0, len(store), batch_size)]
    return F.normalize(torch.cat(out), dim=-1)


def tower_concat(store: FeatureStore) -> torch.Tensor:
    """No-training reference: [normalize(image global); normalize(text global)], normalized."""
    zi = F.normalize(store.t["image_pooled"].float(), dim=-1) * store.t["has_image"][:, None]
    zt = F.normalize(store.t["text_pooled"].float(), dim=-1) * store.t["has_text"][:, None]
    return F.normalize(torch.cat([zi, zt], dim=1), dim=-1)


def evaluate(models: dict, pairs, cache_dir=None, progress: bool = False) -> dict:
    """R@1/5/10 of each model (name -> model) on the doc-to-doc task built from ``pairs``.

    All models must share frozen towers: the tower features are computed (and cached) once.
    """
    names = list(models)
    first = models[names[0]]
    for n in names[1:]:
        m = models[n]
        if (m.cfg.image_tower, m.cfg.text_tower) != (first.cfg.image_tower, first.cfg.text_tower):
            raise ValueError(f"model {n!r} has other towers than {names[0]!r}")
    queries, cands = doc2doc_views(pairs)
    t0 = time.perf_counter()
    qs, qi = cached_store(first, queries, cache_dir, "heldout-q", progress=progress)
    cs, ci = cached_store(first, cands, cache_dir, "heldout-c", progress=progress)
    results = {"_features": {"seconds": time.perf_counter() - t0, "queries": qi, "candidates": ci,
                             "items": len(pairs)}}
    results["tower-concat"] = recall_at(tower_concat(qs), tower_concat(cs))
    for n in names:
        results[n] = recall_at(embed_store(models[n], qs), embed_store(models[n], cs))
    return results


def main(argv=None) -> None:
    import argparse
    from solar.data import offline
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="name=RUN_DIR or name=PRESET")
    ap.add_argument("--split", default="test")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    pairs = offline.split_by_item(offline.clipart_pairs())[a.split]
    models = {}
    for spec in a.models:
        name, _, path = spec.partition("=")
        models[name] = load_model(path or name)
    res = evaluate(models, pairs, a.cache_dir, progress=True)
    text = json.dumps(res, indent=2, default=float)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
