"""Adapters and the fusion (VL) encoder over [CLS; V'; L'] with soft masks.

A soft mask m in [0, 1] per patch/token enters attention as a log-bias on the keys: the logit of
key k gets + log(m_k), so a weight of rho scales that key's attention by rho before normalizing,
and m_k = 0 (hard-masked or padding) removes the key.  The bias applies to every query row [I: the
spec leaves "CLS row only vs. all rows" open]; the CLS key is always visible, so no row is empty.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """2-layer MLP mapping one tower's token features into the shared width.

    LayerNorm on the input [I] keeps the scale of different towers comparable.
    (B, L, d_in) -> (B, L, width).
    """

    def __init__(self, d_in: int, hidden: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def mask_bias(weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) soft mask in [0, 1] (or bool) -> (B, L) additive bias log(m), -inf where m == 0."""
    w = weights.to(torch.float32)
    bias = torch.log(w.clamp_min(1e-30))
    return bias.masked_fill(w <= 0, float("-inf")).to(dtype)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: (B, S, W); bias: (B, S) additive key bias -> (B, S, W)."""
        B, S, W = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = bias[:, None, None, :].to(q.dtype)                          # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, S, W))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class FusionEncoder(nn.Module):
    """[CLS; V'; L'] -> CLS output.  Either modality may be absent (None) for unimodal passes.

    Learned type embeddings mark image vs. text tokens; learned position embeddings cover
    ``n_patches`` image and ``n_tokens`` text positions.
    """

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, n_patches: int,
                 n_tokens: int, dropout: float = 0.0):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.type_embed = nn.Parameter(torch.randn(2, width) * 0.02)
        self.pos_image = nn.Parameter(torch.randn(n_patches, width) * 0.02)
        self.pos_text = nn.Parameter(torch.randn(n_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def embed_image(self, v: torch.Tensor) -> torch.Tensor:
        """(B, P, W) adapter outputs -> with position and type embeddings."""
        return v + self.pos_image[: v.shape[1]] + self.type_embed[0]

    def embed_text(self, l: torch.Tensor) -> torch.Tensor:
        return l + self.pos_text[: l.shape[1]] + self.type_embed[1]

    def forward(self, v: Optional[torch.Tensor] = None, v_weights: Optional[torch.Tensor] = None,
                l: Optional[torch.Tensor] = None,
                l_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """v: (B, P, W) image locals with (B, P) weights; l: (B, T, W) text locals with (B, T)
        weights (soft masks in [0, 1] or bool padding masks).  Returns the CLS output (B, W)."""
        parts, biases = [], []
        ref = v if v is not None else l
        if ref is None:
            raise ValueError("the fusion encoder needs at least one of v and l")
        B = ref.shape[0]
        parts.append(self.cls.expand(B, -1, -1).to(ref.dtype))
        biases.append(torch.zeros(B, 1, dtype=torch.float32, device=ref.device))
        for x, w, emb in ((v, v_weights, self.embed_image), (l, l_weights, self.embed_text)):
            if x is None:
                continue
            if w is None or w.shape != x.shape[:2]:
                raise ValueError(f"weights must have shape {tuple(x.shape[:2])}, got "
                                 f"{None if w is None else tuple(w.shape)}")
            parts.append(emb(x))
            biases.append(mask_bias(w, torch.float32))
        h = torch.cat(parts, dim=1)                                            # (B, S, W)
        bias = torch.cat(biases, dim=1)                                        # (B, S)
        for blk in self.blocks:
            h = blk(h, bias)
        return self.norm(h[:, 0])
