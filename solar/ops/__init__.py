"""The ops facade: the only door to the kernels.

Every op validates its arguments, picks a backend (``backend="auto"``, or ``$SOLAR_BACKEND``) and
runs either its pure-PyTorch reference (``torch``) or a kernel backend through the custom ops that
``_library`` generates from the op table (one autograd path for every backend; ``torch.compile``
traces them).  Layout: ``table`` (the ops), ``registry`` (the backend switch), ``_triton`` and
``_native`` (the kernel backends' tables), ``reference`` (the torch twins), ``_checks``.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks as C
from .columns import ColumnGroups, build_columns
from .reference import (contrastive_loss_reference, gcl_loss_reference, masked_pool_reference,
                        multi_positive_infonce_reference, qda_threshold, qda_threshold_from_stats)
from .registry import (BACKENDS, OPS, BackendUnavailable, KernelImpl, available_backends, backend_status,
                       register, resolve)
from .table import OPS as OP_TABLE

__all__ = [
    "masked_pool", "contrastive_loss", "gcl_loss", "multi_positive_infonce", "qda_threshold",
    "qda_threshold_from_stats", "masked_pool_reference", "contrastive_loss_reference",
    "gcl_loss_reference", "multi_positive_infonce_reference", "ColumnGroups", "build_columns",
    "BACKENDS", "BackendUnavailable", "KernelImpl", "available_backends", "backend_status",
    "register", "resolve", "OPS", "OPS_FOR_INFO",
]

OPS_FOR_INFO = OPS


def _run(op: str, backend: str, public: tuple, kernel_inputs) -> torch.Tensor:
    """The op on ``backend``: the reference twin on the public arguments, or the kernel backend
    through the custom ops on ``kernel_inputs()`` (the op table's inputs)."""
    if backend == "torch":
        return OP_TABLE[op].reference(*public)
    from . import _library  # registers the custom ops on first use
    return _library.run(op, backend, *kernel_inputs())


def masked_pool(x: torch.Tensor, weights: torch.Tensor, normalize: bool = True,
                eps: float = 1e-12, backend: Optional[str] = None) -> torch.Tensor:
    """Masked mean pooling of token features, optionally L2-normalized.

    Args:
        x: (B, L, D) floating token features (any strides).
        weights: (B, L) bool padding mask or soft mask values in [0, 1] (differentiable).
        normalize: L2-normalize the pooled vector.
        eps: lower clamp of the norm when normalizing.
        backend: "auto", "cuda", "triton", "cpu" or "torch"; None (default) reads $SOLAR_BACKEND,
            else "auto".
    Returns:
        (B, D) in x's dtype; all-zero rows give zeros with zero gradient.
    """
    C.tensor("x", x, ndim=3)
    C.tensor("weights", weights, ndim=2, allow_bool=True)
    C.nonempty("x", x, dims=(0, 1, 2))
    C.same_device(x=x, weights=weights)
    C.same_size("x and weights batch/length", x=tuple(x.shape[:2]), weights=tuple(weights.shape))
    name = resolve("masked_pool", backend, x, weights)
    w = weights.to(x.dtype) if weights.dtype == torch.bool else weights
    return _run("masked_pool", name, (x, weights, normalize, eps),
                lambda: (x, w, bool(normalize), float(eps)))


def _embeddings(**named):
    first = None
    for n, t in named.items():
        C.tensor(n, t, ndim=2)
        C.nonempty(n, t, dims=(0, 1))
        if first is None:
            first = (n, t)
        elif t.shape[1] != first[1].shape[1]:
            raise ValueError(f"{n} has dimension {t.shape[1]} but {first[0]} has {first[1].shape[1]}")
        if t.dtype != first[1].dtype:
            raise TypeError(f"{n} has dtype {t.dtype} but {first[0]} has {first[1].dtype}")
    C.same_device(**named)


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, logit_scale, logit_bias=None,
                     extra_negatives: Optional[torch.Tensor] = None, symmetric: bool = True,
                     backend: Optional[str] = None) -> torch.Tensor:
    """CLIP-style symmetric InfoNCE with a learnable logit scale (see the reference's docstring).

    Args:
        a, b: (B, D) embeddings, row i of a matches row i of b.
        logit_scale: multiplier of the cosines (already exponentiated): number or 0-dim tensor;
            its gradient is returned when it requires grad.
        logit_bias: optional number or 0-dim tensor (cancels under softmax; gradient zero).
        extra_negatives: optional (K, D) hard-negative columns shared by all rows, a->b direction.
        symmetric: average a->b and b->a.
    Returns:
        0-dim loss, fp32 (fp64 for fp64 inputs).
    """
    named = {"a": a, "b": b}
    if extra_negatives is not None:
        named["extra_negatives"] = extra_negatives
    _embeddings(**named)
    C.same_size("a and b batch", a=a.shape[0], b=b.shape[0])
    scale = C.scalar("logit_scale", logit_scale, a.device)
    bias = None if logit_bias is None else C.scalar("logit_bias", logit_bias, a.device)
    name = resolve("contrastive_loss", backend, a, b, extra_negatives)
    acc = C.acc_dtype(a.dtype)
    return _run("contrastive_loss", name, (a, b, scale, bias, extra_negatives, symmetric),
                lambda: (a, b, scale.to(acc), None if bias is None else bias.to(acc),
                         extra_negatives, bool(symmetric)))


def gcl_loss(e_image: torch.Tensor, e_text: torch.Tensor, e_fused: torch.Tensor, logit_scale,
             backend: Optional[str] = None) -> torch.Tensor:
    """GCL's 3B x 3B loss over [image; text; fused] embeddings (self terms excluded, 2 positives/row).

    Args:
        e_image, e_text, e_fused: (B, D) embeddings of the same B documents.
        logit_scale: multiplier of the cosines (already exponentiated).
    Returns:
        0-dim mean NLL over the 6B (row, positive) entries.
    """
    _embeddings(e_image=e_image, e_text=e_text, e_fused=e_fused)
    C.same_size("e_image, e_text and e_fused batch", e_image=e_image.shape[0],
                e_text=e_text.shape[0], e_fused=e_fused.shape[0])
    scale = C.scalar("logit_scale", logit_scale, e_image.device)
    name = resolve("gcl_loss", backend, e_image, e_text, e_fused)
    return _run("gcl_loss", name, (e_image, e_text, e_fused, scale),
                lambda: (e_image, e_text, e_fused, scale.to(C.acc_dtype(e_image.dtype))))


def multi_positive_infonce(anchors: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor,
                           valid: Optional[torch.Tensor], temperature,
                           backend: Optional[str] = None) -> torch.Tensor:
    """SOLAR stage 2's multi-positive InfoNCE with explicit positive and denominator masks.

    Build the masks with ``build_columns`` (named column groups) rather than by hand.

    Args:
        anchors: (B, D).  candidates: (N, D).
        positives: (B, N) bool; every row needs at least one positive.
        valid: (B, N) or (N,) bool columns of each row's denominator, or None for all.  Every
            positive must be valid, so a label can never point at a column outside the denominator.
        temperature: number or 0-dim tensor (> 0); differentiable when it is a tensor.
    Returns:
        0-dim mean loss over anchors.
    """
    _embeddings(anchors=anchors, candidates=candidates)
    B, N = anchors.shape[0], candidates.shape[0]
    C.tensor("positives", positives, ndim=2, floating=False)
    if positives.dtype != torch.bool:
        raise TypeError(f"positives must be a bool tensor, got dtype {positives.dtype}")
    C.same_size("positives shape and (anchors, candidates) rows", positives=tuple(positives.shape),
                expected=(B, N))
    if valid is None:
        valid = torch.ones_like(positives)
    else:
        C.tensor("valid", valid, floating=False)
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got dtype {valid.dtype}")
        if tuple(valid.shape) not in {(B, N), (N,)}:
            raise ValueError(f"valid must have shape ({B}, {N}) or ({N},), got {tuple(valid.shape)}")
        valid = valid.expand(B, N)
    C.same_device(anchors=anchors, candidates=candidates, positives=positives, valid=valid)
    _check_labels(positives, valid)
    temp = C.scalar("temperature", temperature, anchors.device)
    name = resolve("multi_positive_infonce", backend, anchors, candidates)
    return _run("multi_positive_infonce", name, (anchors, candidates, positives, valid, temp),
                lambda: (anchors, candidates, positives, valid.contiguous(),
                         1.0 / temp.to(C.acc_dtype(anchors.dtype))))


def _check_labels(positives: torch.Tensor, valid: torch.Tensor) -> None:
    no_pos = (~positives.any(dim=1)).nonzero().flatten()
    if no_pos.numel():
        raise ValueError(f"positives: anchor rows {no_pos[:8].tolist()} have no positive column")
    bad = (positives & ~valid).any(dim=1).nonzero().flatten()
    if bad.numel():
        raise ValueError(f"positives: anchor rows {bad[:8].tolist()} mark a positive column that "
                         "is not valid (outside the denominator)")
