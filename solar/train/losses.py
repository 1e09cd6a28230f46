"""Stage-1 losses that are not fused ops: GLA hinge and Pearson distillation (spec 1.3, 3.1.5-7).

The contrastive losses (ITC, GCL, stage 2) are ``solar`` ops and are called from the recipes.
"""
from __future__ import annotations

import torch

from solar import ops


def gla_hinge(locals_: torch.Tensor, weights: torch.Tensor, partner: torch.Tensor,
              margin: float, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-to-local alignment hinge for one direction (spec 3.1.5).

    Args:
        locals_: (B, L, D) L2-normalized local features of one modality.
        weights: (B, L) bool, the valid locals.
        partner: (B', D) L2-normalized global vectors of the partner modality; rows 0..B-1 are
            the documents of ``locals_`` shifted by ``offset`` (B' >= B when gathered across
            ranks; the other rows are negatives only).
        margin: delta.
    Returns:
        (loss, sim): loss = mean over i and j != i of relu(mbar(i, j) + delta - mbar(i, i)), where
        mbar(i, j) = mean over valid t of cos(locals_i[t], partner_j); sim is mbar (B, B').
    The mean of cosines equals the dot product with the masked mean of the unit locals, which
    is computed by ``solar.masked_pool``.
    """
    mean_local = ops.masked_pool(locals_, weights, normalize=False, backend=None)       # (B, D)
    sim = mean_local @ partner.T                                           # (B, B')
    B = sim.shape[0]
    rows, cols = torch.arange(B, device=sim.device), offset + torch.arange(B, device=sim.device)
    pos = sim[rows, cols][:, None]                                         # (B, 1)
    off = torch.ones_like(sim, dtype=torch.bool)
    off[rows, cols] = False
    has = weights.any(dim=1)[:, None] & off                                # rows with locals
    hinge = torch.relu(sim - pos + margin)
    n = has.sum().clamp_min(1)
    return (hinge * has).sum() / n, sim


def pearson(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of a and b over the True entries of ``mask``, per leading row.

    a, b: (N, M) floats; mask: (N, M) bool.  Returns (N,) correlations (0 for rows with fewer
    than 2 entries or no spread).
    """
    m = mask.to(a.dtype)
    n = m.sum(dim=1).clamp_min(1.0)
    am = (a * m).sum(dim=1, keepdim=True) / n[:, None]
    bm = (b * m).sum(dim=1, keepdim=True) / n[:, None]
    da, db = (a - am) * m, (b - bm) * m
    cov = (da * db).sum(dim=1)
    den = (da.square().sum(dim=1) * db.square().sum(dim=1)).clamp_min(1e-12).sqrt()
    return torch.where(m.sum(dim=1) >= 2, cov / den, torch.zeros_like(cov))


def local_distillation(student: torch.Tensor, teacher: torch.Tensor,
                       weights: torch.Tensor) -> torch.Tensor:
    """1 - mean_k corr(G_k^T, G_k) over samples with >= 2 valid locals (spec 3.1.6).

    student: (B, L, D) and teacher: (B, L, d_t) local features on the same token/patch grid;
    weights: (B, L) bool.  G_k is the cosine matrix of sample k's valid locals, off-diagonal
    entries only [I].
    """
    s = torch.nn.functional.normalize(student.float(), dim=-1)
    t = torch.nn.functional.normalize(teacher.float(), dim=-1)
    gs = s @ s.transpose(1, 2)                                             # (B, L, L)
    gt = t @ t.transpose(1, 2)
    L = gs.shape[1]
    eye = torch.eye(L, dtype=torch.bool, device=gs.device)
    pair = weights[:, :, None] & weights[:, None, :] & ~eye                # (B, L, L)
    ok = pair.flatten(1).sum(dim=1) >= 2
    if not ok.any():
        return gs.sum() * 0.0
    corr = pearson(gs.flatten(1)[ok], gt.flatten(1)[ok], pair.flatten(1)[ok])
    return 1.0 - corr.mean()


def global_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - corr(vec S^T, vec S) over off-diagonal entries of the B x B cosine matrices (3.1.7).

    student: (B, D) normalized globals; teacher: (B, d_t) teacher globals (any scale).
    """
    t = torch.nn.functional.normalize(teacher.float(), dim=-1)
    s_mat, t_mat = student.float() @ student.float().T, t @ t.T
    B = s_mat.shape[0]
    if B < 3:
        return s_mat.sum() * 0.0
    off = ~torch.eye(B, dtype=torch.bool, device=s_mat.device)
    return 1.0 - pearson(s_mat[off][None], t_mat[off][None], torch.ones(1, B * B - B,
                                                                        dtype=torch.bool,
                                                                        device=s_mat.device))[0]
