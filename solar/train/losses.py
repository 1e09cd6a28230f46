"""Stage-1 losses that are not fused ops: GLA hinge and Pearson distillation (docs/method.md, "Stage 1").

The contrastive losses (ITC, GCL, stage 2) are ``solar`` ops and are called from the recipes.
"""
from __future__ import annotations

from typing import Optional

import torch

from solar import ops
from solar.model.solar_model import best_match


def gla_hinge(locals_: torch.Tensor, weights: torch.Tensor, partner: torch.Tensor,
              margin: float, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-to-local alignment hinge for one direction (docs/method.md, "GLA").

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


def gla_local_hinge(locals_: torch.Tensor, weights: torch.Tensor, partner: torch.Tensor,
                    margin: float, offset: int = 0,
                    owner: Optional[torch.Tensor] = None) -> torch.Tensor:
    """GLA per local element: every valid token (or patch) must be closer to its owner's partner
    global than to any other document's, by ``margin`` (docs/method.md, "GLA").

    Same arguments as ``gla_hinge``, plus ``owner`` (B, L) long: the row of ``partner`` each
    element belongs to (default: its own document, ``offset + i``; pair mixing gives elements
    taken from another document that document's row).  loss = mean over valid elements x and
    rows j != owner(x) of relu(cos(x, g_j) + delta - cos(x, g_owner(x))).  Unlike the hinge on
    means, it cannot be satisfied by a few elements that carry the whole pair.
    """
    s = torch.einsum("bld,jd->blj", locals_, partner)                      # (B, L, B')
    B, L, _ = s.shape
    if owner is None:
        owner = (offset + torch.arange(B, device=s.device))[:, None].expand(B, L)
    pos = s.gather(2, owner[:, :, None])                                   # (B, L, 1)
    keep = weights[:, :, None].expand_as(s).clone()
    keep.scatter_(2, owner[:, :, None], False)
    hinge = torch.relu(s - pos + margin)
    return (hinge * keep).sum() / keep.sum().clamp_min(1)


def gla_smoothmax_hinge(locals_: torch.Tensor, weights: torch.Tensor, partner: torch.Tensor,
                        margin: float, temp: float, offset: int = 0) -> torch.Tensor:
    """GLA on a smooth maximum of the element scores instead of their mean (docs/method.md, "GLA").

    pair score S(i, j) = temp * log(mean over valid t of exp(cos(x_i[t], g_j) / temp)): the mean
    of the paper's form as temp -> inf, the best element as temp -> 0.  loss = mean over i and
    j != i of relu(S(i, j) + delta - S(i, i)).  The gradient goes to the elements that match a
    partner best, so elements that match nothing (background, words the image does not show) are
    not pulled towards the pair.
    """
    s = torch.einsum("bld,jd->blj", locals_, partner) / temp                # (B, L, B')
    w = weights[:, :, None].expand_as(s)
    n = weights.sum(dim=1).clamp_min(1).to(s.dtype)                       # (B,)
    S = temp * (torch.logsumexp(s.masked_fill(~w, float("-inf")), dim=1) - n.log()[:, None])
    B = S.shape[0]
    rows, cols = torch.arange(B, device=S.device), offset + torch.arange(B, device=S.device)
    pos = S[rows, cols][:, None]
    off = torch.ones_like(S, dtype=torch.bool)
    off[rows, cols] = False
    has = weights.any(dim=1)[:, None] & off
    hinge = torch.relu(S.masked_fill(~has, 0.0) - pos.masked_fill(~weights.any(dim=1)[:, None], 0.0)
                       + margin)
    return (hinge * has).sum() / has.sum().clamp_min(1)


def local_alignment(text_locals: torch.Tensor, text_weights: torch.Tensor,
                    image_locals: torch.Tensor, image_weights: torch.Tensor,
                    temp: float) -> torch.Tensor:
    """Token-to-patch alignment (docs/method.md, "local alignment"): pair score
    S(i, j) = mean over i's valid tokens of the best cosine among j's valid patches; a symmetric
    InfoNCE over the batch on S / temp.  Each word must find its region in its own image better
    than in any other image of the batch, which a caption's shared context cannot do for it.

    text_locals (B, T, D), image_locals (B, P, D): L2-normalized; weights bool.
    """
    s = torch.einsum("itd,jpd->ijtp", text_locals, image_locals)
    s = s.masked_fill(~image_weights[None, :, None, :], float("-inf")).max(dim=3).values
    s = s.clamp_min(-1.0)                                                  # (B, B, T)
    w = text_weights[:, None, :].to(s.dtype)
    S = (s * w).sum(dim=2) / w.sum(dim=2).clamp_min(1)                     # (B, B)
    ok = text_weights.any(dim=1) & image_weights.any(dim=1)
    if ok.sum() < 2:
        return S.sum() * 0.0
    S = S[ok][:, ok] / temp
    y = torch.arange(S.shape[0], device=S.device)
    return 0.5 * (torch.nn.functional.cross_entropy(S, y)
                  + torch.nn.functional.cross_entropy(S.T, y))


def element_alignment(locals_: torch.Tensor, weights: torch.Tensor, partner_locals: torch.Tensor,
                      partner_weights: torch.Tensor, temp: float,
                      owner: Optional[torch.Tensor] = None, direction: str = "owner") -> torch.Tensor:
    """Element-level local contrast (docs/method.md, "local alignment", ``local_form`` "owner",
    "select" or "both"), on the best-match score of an element x (a token or a patch) against
    partner document j: s(x, j) = max over j's valid partner locals y of cos(x, y)
    (``solar.model.solar_model.best_match``).

    locals_ (B, L, D), partner_locals (J, M, D): L2-normalized; weights (B, L), partner_weights
    (J, M) bool; owner (B, L) long row of the partner batch (default: the element's own row).
    See ``element_contrast`` for the directions.
    """
    return element_contrast(best_match(locals_, partner_locals, partner_weights), weights,
                            partner_weights.any(dim=1), temp, owner, direction)


def element_contrast(scores: torch.Tensor, weights: torch.Tensor, has: torch.Tensor, temp: float,
                     owner: Optional[torch.Tensor] = None, direction: str = "owner") -> torch.Tensor:
    """``element_alignment`` from best-match scores (B, J, L) (``best_match``'s layout, e.g. the
    model's ``cross_scores`` under ``mask_scores="local"``); has (J,) bool: partners with valid
    locals.

    direction "owner": each valid x picks its owner among the batch's partners,
        mean over x of CE(s(x, .) / temp, owner(x)).  Invariant to a shift of one element's scores,
        so it ranks partners for an element, not elements for a partner.
    direction "select": each partner picks its own elements among all valid elements of the batch,
        mean over x of [logsumexp over x' of s(x', o) / temp - s(x, o) / temp], o = owner(x).  This
        is the ranking the masks need: within one document, the words its image shows above the
        words it does not (with pair mixing, another document's words in the same caption).
    "both": the sum of the two.
    """
    if direction not in ("owner", "select", "both"):
        raise ValueError(f"direction must be owner, select or both, got {direction!r}")
    s = scores.transpose(1, 2) / temp                                      # (B, L, J)
    B, L, _ = s.shape
    if owner is None:
        owner = torch.arange(B, device=s.device)[:, None].expand(B, L)
    keep = weights & has[owner]
    loss = s.sum() * 0.0
    if not keep.any():
        return loss
    if direction in ("owner", "both"):
        rows = s.masked_fill(~has[None, None, :], float("-inf"))
        loss = loss + torch.nn.functional.cross_entropy(rows[keep], owner[keep])
    if direction in ("select", "both"):
        flat = s[keep]                                                     # (N, J)
        lse = torch.logsumexp(flat, dim=0)                                 # (J,)
        o = owner[keep]
        loss = loss + (lse[o] - flat.gather(1, o[:, None])[:, 0]).mean()
    return loss


def empty_cells(tokens: torch.Tensor, blank: torch.Tensor, weights: torch.Tensor,
                min_cos: float) -> torch.Tensor:
    """(B, P) bool: valid patches whose tower feature is within ``min_cos`` (cosine) of the same
    grid cell's feature on a blank canvas (``blank`` (P, d)): cells that show only background.
    tokens (B, P, d) tower patch features; weights (B, P) bool."""
    t = torch.nn.functional.normalize(tokens.float(), dim=-1)
    b = torch.nn.functional.normalize(blank.float().to(t.device), dim=-1)
    return weights & ((t * b[None]).sum(dim=-1) >= min_cos)


def empty_rejection(patch_locals: torch.Tensor, empty: torch.Tensor, text_locals: torch.Tensor,
                    text_weights: torch.Tensor, temp: float, null: float) -> torch.Tensor:
    """Background cells match no word (docs/method.md, "empty cells", ``w_empty``): each empty
    patch p scores every text j of the batch by its best token, s(p, j) = max over valid t of
    cos(p, t), beside a "none" option of fixed score ``null``, and must pick "none":
    mean over empty p of [log(exp(null / temp) + sum_j exp(s(p, j) / temp)) - null / temp].

    patch_locals (B, P, D), text_locals (J, T, D): L2-normalized; empty (B, P), text_weights
    (J, T) bool.
    """
    if not empty.any():
        return patch_locals.sum() * 0.0
    s = best_match(patch_locals[empty][None], text_locals, text_weights)[0].T   # (N, J)
    s = s[:, text_weights.any(dim=1)] / temp
    z = torch.full((s.shape[0], 1), null / temp, dtype=s.dtype, device=s.device)
    return (torch.logsumexp(torch.cat([z, s], dim=1), dim=1) - null / temp).mean()


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
    """1 - mean_k corr(G_k^T, G_k) over samples with >= 2 valid locals (docs/method.md, "Local and global distillation").

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
    """1 - corr(vec S^T, vec S) over off-diagonal entries of the B x B cosine matrices (docs/method.md).

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
