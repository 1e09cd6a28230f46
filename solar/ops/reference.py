"""Pure-PyTorch reference twins of every fused op.

They are the fallback backend (``torch``), the test oracle and the benchmark baseline, so they are
written for clarity: the plain formula (stated in each docstring), autograd for the gradients.
The losses' derivations are in docs/method.md, section "Ops".

Precision: inputs in bf16/fp16 multiply in their own dtype (as an eager user would) and the
softmax/log-sum-exp runs in fp32; fp32 and fp64 inputs stay in their dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import acc_dtype


def masked_pool_reference(x: torch.Tensor, weights: torch.Tensor, normalize: bool = True,
                          eps: float = 1e-12) -> torch.Tensor:
    """Weighted mean of tokens, optionally L2-normalized.

    Args:
        x: (B, L, D) token features, floating.
        weights: (B, L) bool padding mask or soft mask values in [0, 1].
        normalize: L2-normalize the pooled vector (``v / max(||v||, eps)``).
    Returns:
        (B, D) in x's dtype.  A row whose weights are all zero gives zeros, with zero gradient.
    """
    w = weights.to(x.dtype)
    s = w.sum(dim=1, keepdim=True)                                    # (B, 1)
    v = torch.bmm(w.unsqueeze(1), x).squeeze(1)                       # (B, D) = sum_l w_l x_l
    nz = s > 0
    mean = torch.where(nz, v / torch.where(nz, s, torch.ones_like(s)), torch.zeros_like(v))
    if not normalize:
        return mean
    return mean / mean.norm(dim=-1, keepdim=True).clamp_min(eps)


def contrastive_loss_reference(a: torch.Tensor, b: torch.Tensor, logit_scale, logit_bias=None,
                               extra_negatives: torch.Tensor | None = None,
                               symmetric: bool = True) -> torch.Tensor:
    """CLIP-style InfoNCE between rows of a and b (row i of a matches row i of b).

    S = logit_scale * a [b; extra_negatives]^T + logit_bias (B x (B + K)), S' = logit_scale * b a^T
    + logit_bias (B x B);  loss_ab = mean_i [ logsumexp_j S_ij - S_ii ], loss_ba likewise on S',
    loss = (loss_ab + loss_ba) / 2 when symmetric, else loss_ab.

    Args:
        a, b: (B, D) embeddings (normally L2-normalized).
        logit_scale: the multiplier of the cosines (already exponentiated), number or 0-dim tensor.
        logit_bias: optional additive bias, number or 0-dim tensor.  Under softmax it shifts every
            logit of a row equally, so it cancels in the loss and its gradient is zero.
        extra_negatives: optional (K, D) columns shared by every row in the a->b direction.
        symmetric: average the a->b and b->a directions (b->a sees only the B columns of a).
    Returns:
        0-dim loss (fp32, or fp64 for fp64 inputs).
    """
    acc = acc_dtype(a.dtype)
    cols = b if extra_negatives is None else torch.cat([b, extra_negatives], dim=0)
    labels = torch.arange(a.shape[0], device=a.device)
    logits_ab = logit_scale * (a @ cols.T).to(acc)
    if logit_bias is not None:
        logits_ab = logits_ab + logit_bias
    loss = F.cross_entropy(logits_ab, labels)
    if not symmetric:
        return loss
    logits_ba = logit_scale * (b @ a.T).to(acc)
    if logit_bias is not None:
        logits_ba = logits_ba + logit_bias
    return 0.5 * (loss + F.cross_entropy(logits_ba, labels))


def gcl_loss_reference(e_image: torch.Tensor, e_text: torch.Tensor, e_fused: torch.Tensor,
                       logit_scale) -> torch.Tensor:
    """GCL loss over the 3B x 3B similarity of E = [e_image; e_text; e_fused].

    S = logit_scale * E E^T.  Self terms are excluded; row r = (m, j) has two positives,
    p = (m', j) for the two other modalities m'; the denominator covers all other 3B - 1
    embeddings:  loss = 1/(6B) sum_r sum_{p of r} [ logsumexp_{c != r} S_rc - S_rp ],
    the mean NLL over the 6B (row, positive) entries.
    """
    acc = acc_dtype(e_image.dtype)
    B = e_image.shape[0]
    e = torch.cat([e_image, e_text, e_fused], dim=0)                  # (3B, D)
    s = logit_scale * (e @ e.T).to(acc)                               # (3B, 3B)
    eye = torch.eye(3 * B, dtype=torch.bool, device=e.device)
    logp = torch.log_softmax(s.masked_fill(eye, float("-inf")), dim=1)
    rows = torch.arange(3 * B, device=e.device)
    j, m = rows % B, rows // B
    pos1 = ((m + 1) % 3) * B + j
    pos2 = ((m + 2) % 3) * B + j
    return -(logp[rows, pos1] + logp[rows, pos2]).sum() / (6 * B)


def multi_positive_infonce_reference(anchors: torch.Tensor, candidates: torch.Tensor,
                                     positives: torch.Tensor, valid: torch.Tensor | None,
                                     temperature) -> torch.Tensor:
    """SOLAR stage 2's multi-positive InfoNCE.

    loss_i = logsumexp_{k valid for i} z_ik - logsumexp_{j positive for i} z_ij,  z = <a_i, c_k> / T

    Args:
        anchors: (B, D).  candidates: (N, D).
        positives: (B, N) bool, True where candidate j is a positive of anchor i.
        valid: (B, N) or (N,) bool, the columns in row i's denominator (None: all).
        temperature: number or 0-dim tensor.
    Returns:
        0-dim mean loss over anchors.
    """
    acc = acc_dtype(anchors.dtype)
    z = (anchors @ candidates.T).to(acc) / temperature                # (B, N)
    if valid is None:
        valid = torch.ones_like(positives)
    valid = valid.expand_as(positives)
    neg_inf = torch.tensor(float("-inf"), dtype=z.dtype, device=z.device)
    lse_pos = torch.logsumexp(torch.where(positives, z, neg_inf), dim=1)
    lse_all = torch.logsumexp(torch.where(valid, z, neg_inf), dim=1)
    return (lse_all - lse_pos).mean()


def qda_threshold_from_stats(mu_pos: float, sd_pos: float, mu_neg: float, sd_neg: float,
                             priors: tuple[float, float] | None = None,
                             min_sd: float = 1e-6) -> float:
    """Equal-density threshold of two 1-D Gaussians (the stage-1 QDA rule, docs/method.md).

    Solves pi+ N(t; mu+, sd+) = pi- N(t; mu-, sd-) as a t^2 + b t + c = 0.  Degenerate cases:
      * standard deviations are floored at ``min_sd``;
      * mu+ <= mu- (no separation in the expected order): the midpoint (mu+ + mu-) / 2;
      * equal variances (a ~ 0): the linear solution, the midpoint when priors are equal;
      * no real root (only possible with priors) or no root between the means: the root nearest
        the midpoint, clamped into [mu-, mu+].
    """
    sp, sn = max(float(sd_pos), min_sd), max(float(sd_neg), min_sd)
    mp, mn = float(mu_pos), float(mu_neg)
    mid = 0.5 * (mp + mn)
    if mp <= mn:
        return mid
    log_prior = 0.0
    if priors is not None:
        pp, pn = float(priors[0]), float(priors[1])
        if pp <= 0 or pn <= 0:
            raise ValueError(f"priors must be positive, got {priors}")
        log_prior = math.log(pn / pp)
    a = sn * sn - sp * sp
    b = -2.0 * (sn * sn * mp - sp * sp * mn)
    c = (sn * sn * mp * mp - sp * sp * mn * mn + 2.0 * sp * sp * sn * sn * math.log(sp / sn)
         + 2.0 * sp * sp * sn * sn * log_prior)
    if abs(a) <= 1e-12 * max(sp * sp, sn * sn):
        sigma2 = 0.5 * (sp * sp + sn * sn)
        return min(max(mid + sigma2 * log_prior / (mp - mn), mn), mp)
    disc = b * b - 4.0 * a * c
    if disc < 0:
        return mid
    r = math.sqrt(disc)
    roots = [(-b - r) / (2 * a), (-b + r) / (2 * a)]
    inside = [t for t in roots if mn <= t <= mp]
    if inside:
        return min(inside, key=lambda t: abs(t - mid))
    best = min(roots, key=lambda t: abs(t - mid))
    return min(max(best, mn), mp)


def qda_threshold(pos_scores: torch.Tensor, neg_scores: torch.Tensor,
                  priors: tuple[float, float] | None = None) -> float:
    """QDA threshold between a positive and a negative score population.

    Args:
        pos_scores: any-shape tensor of scores from matching pairs (detached; >= 2 values).
        neg_scores: any-shape tensor of scores from non-matching pairs (>= 2 values).
        priors: optional (pi+, pi-) class priors; None means equal densities (the papers' rule).
    Returns:
        the threshold as a Python float (see ``qda_threshold_from_stats`` for degenerate cases).
    """
    stats = []
    for name, t in (("pos_scores", pos_scores), ("neg_scores", neg_scores)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        v = t.detach().reshape(-1).to(torch.float64)
        if v.numel() < 2:
            raise ValueError(f"{name} needs at least 2 scores, got {v.numel()}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} contains NaN or infinite scores")
        stats += [v.mean().item(), v.std(unbiased=False).item()]
    return qda_threshold_from_stats(stats[0], stats[1], stats[2], stats[3], priors)
