"""Shared test vocabulary: one tolerance table keyed by dtype, one list of awkward shapes per op,
and input makers.  Every backend is compared against the float64 reference with these
(tests/test_ops_conformance.py)."""
from __future__ import annotations

import torch

# One tolerance table, keyed by the dtype of the inputs under test (compared to a float64 reference).
TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-11),
    torch.float32: dict(rtol=2e-4, atol=2e-5),
    torch.float16: dict(rtol=1e-2, atol=2e-3),
    torch.bfloat16: dict(rtol=5e-2, atol=1e-2),
}

# (B, L, D) for pooling: non-powers of two, batch 1, a single token, block-size edges.
POOL_SHAPES = [(1, 1, 1), (1, 7, 3), (3, 97, 131), (2, 33, 1023), (5, 16, 64), (4, 65, 129),
               (2, 32, 256), (2, 33, 257)]
# (B, D) for the losses.
LOSS_SHAPES = [(1, 1), (1, 8), (3, 5), (17, 33), (97, 131), (64, 64), (65, 129)]
# (B, D) for GCL, whose logits are 3B x 3B: B <= 40 keeps the Triton interpreter's runs short.
GCL_SHAPES = [(1, 1), (1, 8), (3, 5), (17, 33), (33, 20), (40, 131)]
# (B, D, K): the contrastive loss with K shared hard-negative columns.
NEG_SHAPES = [(1, 8, 1), (17, 33, 5), (40, 131, 31), (33, 65, 64)]
# (B, N, D) for multi-positive InfoNCE: anchors against N candidates.
MPI_SHAPES = [(1, 1, 1), (1, 1, 8), (3, 7, 5), (17, 40, 33), (33, 65, 40), (64, 97, 131)]
# Temperatures of multi-positive InfoNCE (1/T is the logit scale: 1, ~14, 100).
TEMPERATURES = [1.0, 0.07, 0.01]
# Logit scales: 1, CLIP's init (1/0.07), and the usual clamp of 100.
SCALES = [1.0, 14.285714, 100.0]
# Mask cases for pooling.
MASK_CASES = ["soft", "bool", "all_masked_row", "single_token", "noncontiguous"]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = ""):
    """Compare in float64 with the tolerance of ``dtype`` (the dtype the op ran in)."""
    assert actual is not None, f"{what}: missing"
    assert not torch.isnan(actual).any(), f"{what}: NaN in result"
    torch.testing.assert_close(actual.detach().double().cpu(), expected.detach().double().cpu(),
                               msg=lambda m: f"{what}: {m}", **TOL[dtype])


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mpi_masks(B, N, seed, valid_2d):
    """Positive and validity masks of multi_positive_infonce: every row has a positive, and
    validity is per (row, column) or per column."""
    g = generator(seed)
    pos = torch.rand(B, N, generator=g) < 0.2
    pos[torch.arange(B), torch.randint(0, N, (B,), generator=g)] = True
    if valid_2d:
        valid = (torch.rand(B, N, generator=g) < 0.7) | pos
    else:
        valid = (torch.rand(N, generator=g) < 0.7) | pos.any(0)
    return pos, valid


def pool_inputs(B, L, D, dtype=torch.float64, case="soft", seed=0, device="cpu"):
    """x (B, L, D) and weights (B, L) for one mask case; weights are bool for 'bool'."""
    g = generator(seed)
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    w = torch.rand(B, L, generator=g, dtype=torch.float64)
    if case == "bool":
        w = torch.rand(B, L, generator=g) > 0.4
        w[:, 0] = True
    elif case == "all_masked_row":
        w[0] = 0.0
    elif case == "single_token":
        w.zero_()
        w[torch.arange(B), torch.randint(0, L, (B,), generator=g)] = 0.5
    x = x.to(device=device, dtype=dtype)
    w = w.to(device=device, dtype=w.dtype if w.dtype == torch.bool else dtype)
    if case == "noncontiguous":
        x = x.transpose(1, 2).contiguous().transpose(1, 2)      # same values, other strides
        w = torch.cat([w, w], dim=1)[:, ::2] if L > 0 else w    # stride 2 along L
        w = w[:, :L]
    return x, w


def embeddings(B, D, dtype=torch.float64, seed=0, device="cpu", duplicate=False, normalize=True):
    g = generator(seed)
    e = torch.randn(B, D, generator=g, dtype=torch.float64)
    if duplicate and B > 1:
        e[B // 2] = e[0]
    if normalize:
        e = torch.nn.functional.normalize(e, dim=-1)
    return e.to(device=device, dtype=dtype)


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-unit last-dim stride."""
    return torch.stack([t, t], dim=-1)[..., 0]
