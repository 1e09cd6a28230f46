"""Pair mixing for stage 1: documents whose difference content is known by construction.

A plain image-caption pair shows what the image and its caption share, but never a word the image
does not show, or a region the caption does not name: every element of the pair can be matched
through the pair's context alone, and stage 1 then learns to score an element by its pair, not by
its content (docs/experiments.md, rows S1-1 and S1-2).  Mixing gives the local loss elements whose
true partner is another document of the batch:

* text: document i's caption followed by the keywords of document j (the part after j's first
  ". ", or all of j's caption), encoded by the text tower as one text, so j's words carry i's
  context and can only be told apart by what they say;
* image: one half (left, right, top or bottom) of document i's patch grid replaced by the same
  half of document j's (tower features, so each patch keeps its own receptive field).

Each element then has an *owner*: the document whose partner global it must be closest to
(``solar.train.losses.gla_local_hinge``).  Documents are mixed with probability ``prob`` each;
j is drawn among the other documents of the batch.
"""
from __future__ import annotations

import re

import torch


def partners(B: int, g: torch.Generator) -> torch.Tensor:
    """(B,) a random other document for each of B >= 2 documents."""
    shift = torch.randint(1, B, (B,), generator=g)
    return (torch.arange(B) + shift) % B


def keyword_part(text: str) -> str:
    """The part of a caption after its first ". " (its keywords), or the whole caption."""
    head, sep, tail = text.partition(". ")
    return tail.strip() if sep and tail.strip() else text.strip()


def mix_texts(texts: list, prob: float, g: torch.Generator) -> tuple[list, torch.Tensor, list]:
    """Texts with another document's keywords appended.

    Returns (mixed texts, partner (B,) long, cut: per text the character index where the
    appended words start, or None when that text was not mixed)."""
    B = len(texts)
    other = partners(B, g)
    pick = torch.rand(B, generator=g) < prob
    out, cut = [], []
    for i, t in enumerate(texts):
        if pick[i] and t and texts[int(other[i])]:
            base = t.rstrip(" .,")
            out.append(f"{base}, {keyword_part(texts[int(other[i])])}")
            cut.append(len(base) + 2)
        else:
            out.append(t)
            cut.append(None)
    return out, other, cut


def token_owners(tower, texts: list, cut: list, partner: torch.Tensor, T: int,
                 offset: int = 0) -> torch.Tensor:
    """(B, T) long owner row of each text position: ``offset + i`` for document i's own tokens,
    ``offset + partner[i]`` for tokens that start at or after ``cut[i]``.  Positions follow the
    tower's tokenization (special tokens and padding get the own row; they are not scored)."""
    B = len(texts)
    own = (offset + torch.arange(B))[:, None].expand(B, T).clone()
    tok = getattr(tower, "tokenizer", None)
    for i, c in enumerate(cut):
        if c is None:
            continue
        if tok is not None:
            enc = tok(texts[i], truncation=True, max_length=tower.cfg.max_length,
                      return_offsets_mapping=True)
            starts = [s for s, e in enc["offset_mapping"]][:T]
            foreign = [e > s and s >= c for s, e in enc["offset_mapping"]][:T]
        else:                                   # hashed-word towers: one position per word
            words = list(re.finditer(r"\w+", texts[i].lower()))[:T]
            starts = [m.start() for m in words]
            foreign = [s >= c for s in starts]
        for k, f in enumerate(foreign):
            if f:
                own[i, k] = offset + int(partner[i])
    return own


def mix_patches(tokens: torch.Tensor, prob: float, g: torch.Generator,
                offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace one half of the patch grid of a ``prob`` share of the documents by another
    document's. tokens (B, P, d) with P a square -> (mixed tokens, owner (B, P) long)."""
    B, P, _ = tokens.shape
    side = int(round(P ** 0.5))
    own = (offset + torch.arange(B))[:, None].expand(B, P).clone()
    if side * side != P or side < 2 or B < 2:
        return tokens, own
    other = partners(B, g)
    pick = torch.rand(B, generator=g) < prob
    which = torch.randint(0, 4, (B,), generator=g)
    grid = torch.zeros(4, side, side, dtype=torch.bool)
    h = side // 2
    grid[0, :, :h] = grid[1, :, side - h:] = grid[2, :h] = grid[3, side - h:] = True
    region = grid[which].view(B, P) & pick[:, None]                        # (B, P)
    region = region.to(tokens.device)
    mixed = torch.where(region[:, :, None], tokens[other.to(tokens.device)], tokens)
    own = torch.where(region.cpu(), (offset + other)[:, None].expand(B, P), own)
    return mixed, own.to(tokens.device)
