"""Offline hard-negative mining by nearest neighbours (docs/method.md, "Stage 2": mined negatives).

The "off-the-shelf retrieval models" are the frozen towers themselves [I]: the similarity of two
documents is the mean of their image-global and text-global cosines.  For each document the
``skip`` nearest neighbours are dropped (likely duplicates or false negatives) and the next
``window`` ranks form its pool; each step samples K of them.

Scale: the search is exact and never forms the N x N similarity matrix.  Rows are taken in blocks
of ``chunk``, each block is scored against the columns in blocks of ``col_chunk`` and only the
running top (skip + window) per row is kept (merged block by block), so memory is
O(chunk x col_chunk + N x (skip + window)) beyond the inputs, which may be memory-mapped
(``numpy.memmap`` / safetensors ``safe_open`` slices) and are moved block by block to ``device``.
The cost is N^2 d multiply-adds: about a minute for 1M documents of d = 1664 on one GPU, hours on
a CPU.  Exact search is chosen over querying the Milvus collection because it needs no running
server, gives the same pools on every run (exact resume), and the corpus being trained on is
usually not ingested yet (nor with this model).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _block(x, s: int, e: int, device) -> torch.Tensor:
    return F.normalize(torch.as_tensor(x[s:e]).to(device, torch.float32), dim=-1)


def neighbour_pools(image_pooled, text_pooled, skip: int, window: int, chunk: int = 1024,
                    col_chunk: int = 16384, device: Optional[torch.device] = None) -> torch.Tensor:
    """(N, d_v), (N, d_l) tower globals -> (N, W) int64 candidate negatives per document.

    W = min(window, N - 1 - skip); raises ValueError when the set is too small.  The inputs may
    be tensors or any array supporting row slices (read block by block).
    """
    N = image_pooled.shape[0]
    W = min(window, N - 1 - skip)
    if W < 1:
        raise ValueError(f"mining needs more documents: N={N}, mine_skip={skip}")
    k = skip + W
    device = torch.device(device or "cpu")
    out = torch.empty(N, W, dtype=torch.long)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        qi, qt = _block(image_pooled, s, e, device), _block(text_pooled, s, e, device)
        best_v = torch.full((e - s, 0), float("-inf"), device=device)
        best_i = torch.empty((e - s, 0), dtype=torch.long, device=device)
        for cs in range(0, N, col_chunk):
            ce = min(N, cs + col_chunk)
            sim = 0.5 * (qi @ _block(image_pooled, cs, ce, device).T
                         + qt @ _block(text_pooled, cs, ce, device).T)      # (c, c')
            if max(s, cs) < min(e, ce):                                       # never yourself
                rows = torch.arange(max(s, cs), min(e, ce), device=device)
                sim[rows - s, rows - cs] = float("-inf")
            v, i = sim.topk(min(k, ce - cs), dim=1)
            best_v, order = torch.cat([best_v, v], 1).topk(min(k, best_v.shape[1] + v.shape[1]),
                                                           dim=1)
            best_i = torch.cat([best_i, i + cs], 1).gather(1, order)
        out[s:e] = best_i[:, skip:k].cpu()
    return out


def sample_negatives(pools: torch.Tensor, rows: torch.Tensor, k: int,
                     g: torch.Generator) -> torch.Tensor:
    """Sample k distinct pool entries for each document in ``rows`` -> (B, k) int64."""
    W = pools.shape[1]
    k = min(k, W)
    pick = torch.rand(len(rows), W, generator=g).argsort(dim=1)[:, :k]
    return pools[rows][torch.arange(len(rows))[:, None], pick]


class NegativeQueue:
    """Mined negatives on a stream: the last ``size`` documents this rank has trained on.

    A stream has no random access to the corpus, so the neighbours are searched in a queue of
    recent documents instead of the whole set (the memory-bank form of mining): each document's
    id, its towers' pooled vectors (the similarity of ``neighbour_pools``) and its joint embedding
    as computed when it was trained on (detached: a queued negative gives no gradient).  For every
    anchor the entries with its own id are skipped, then its ``skip`` nearest, and ``k`` are drawn
    from the next ``window`` ranks.  Memory and work are O(size) per anchor; the state is a few
    tensors, kept in the checkpoint, so a resumed run mines exactly as an uninterrupted one.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"the negative queue needs size >= 1, got {size}")
        self.size = size
        self.ids = self.image = self.text = self.emb = None
        self.count = 0                    # documents pushed so far (the next slot is count % size)

    def __len__(self) -> int:
        return min(self.count, self.size)

    def mine(self, ids: torch.Tensor, image_pooled: torch.Tensor, text_pooled: torch.Tensor,
             skip: int, window: int, k: int, g: torch.Generator):
        """(B,) int64 ids and (B, d) pooled vectors of the anchors -> (B, k, D) embeddings,
        (B, k) int64 ids and (B, k) bool valid (False where fewer than skip + 1 queued documents
        were left for that anchor, and always before the first push)."""
        B, n = len(ids), len(self)
        if n == 0:
            return None, None, None
        dev = self.emb.device
        qi = F.normalize(image_pooled.detach().to(dev, torch.float32), dim=-1)
        qt = F.normalize(text_pooled.detach().to(dev, torch.float32), dim=-1)
        sim = 0.5 * (qi @ self.image[:n].float().T + qt @ self.text[:n].float().T)   # (B, n)
        same = ids.to(dev)[:, None] == self.ids[:n][None, :]
        sim = sim.masked_fill(same, float("-inf"))
        top = min(n, skip + window)
        v, order = sim.topk(top, dim=1)                                              # (B, top)
        ranks = torch.arange(top, device=dev)[None, :]
        usable = (ranks >= skip) & torch.isfinite(v)                                 # (B, top)
        key = torch.rand(B, top, generator=g).to(dev).masked_fill(~usable, 2.0)
        pick = key.argsort(dim=1)[:, :k]
        if pick.shape[1] < k:                                                        # top < k
            pick = torch.cat([pick, pick[:, :1].expand(B, k - pick.shape[1])], dim=1)
        valid = usable.gather(1, pick)
        if pick.shape[1] > top:
            valid[:, top:] = False
        slot = order.gather(1, pick)
        return self.emb[slot], self.ids[slot], valid

    @torch.no_grad()
    def push(self, ids: torch.Tensor, image_pooled: torch.Tensor, text_pooled: torch.Tensor,
             emb: torch.Tensor) -> None:
        """Add a batch (oldest entries are overwritten once the queue is full)."""
        if self.emb is None:
            dev = emb.device
            self.ids = torch.full((self.size,), -1, dtype=torch.long, device=dev)
            self.image = torch.zeros(self.size, image_pooled.shape[1], dtype=torch.float16, device=dev)
            self.text = torch.zeros(self.size, text_pooled.shape[1], dtype=torch.float16, device=dev)
            self.emb = torch.zeros(self.size, emb.shape[1], dtype=torch.float32, device=dev)
        B = len(ids)
        slots = (self.count + torch.arange(B, device=self.emb.device)) % self.size
        if B > self.size:                                  # only the last `size` survive
            slots, ids, image_pooled, text_pooled, emb = (slots[-self.size:], ids[-self.size:],
                                                          image_pooled[-self.size:],
                                                          text_pooled[-self.size:], emb[-self.size:])
        self.ids[slots] = ids.to(self.ids.device)
        self.image[slots] = F.normalize(image_pooled.float(), dim=-1).to(self.image)
        self.text[slots] = F.normalize(text_pooled.float(), dim=-1).to(self.text)
        self.emb[slots] = emb.detach().float()
        self.count += B

    def state_tensors(self) -> dict:
        if self.emb is None:
            return {"queue_count": torch.tensor(0)}
        return {"queue_count": torch.tensor(self.count), "queue_ids": self.ids,
                "queue_image": self.image, "queue_text": self.text, "queue_emb": self.emb}

    def load_state_tensors(self, state: dict, device=None) -> None:
        self.count = int(state["queue_count"])
        if self.count:
            dev = device or state["queue_emb"].device
            self.ids, self.image, self.text, self.emb = (
                state[f"queue_{k}"].to(dev) for k in ("ids", "image", "text", "emb"))
            if len(self.ids) != self.size:
                raise ValueError(f"the checkpoint's negative queue holds {len(self.ids)} slots, "
                                 f"mine_queue is {self.size}; resume with the same mine_queue")
