"""The pure-PyTorch references against formulations written a second way, plus gradcheck."""
import math

import pytest
import torch

import solar
from solar.ops import reference as R
from common import LOSS_SHAPES, MASK_CASES, POOL_SHAPES, SCALES, assert_close, embeddings, pool_inputs

F64 = torch.float64


# ---------------------------------------------------------------- independent formulations (loops)
def pool_loop(x, w, normalize, eps=1e-12):
    B, L, D = x.shape
    out = torch.zeros(B, D, dtype=F64)
    for b in range(B):
        s = sum(float(w[b, l]) for l in range(L))
        if s == 0:
            continue
        v = sum(float(w[b, l]) * x[b, l].double() for l in range(L)) / s
        if normalize:
            v = v / max(float(v.norm()), eps)
        out[b] = v
    return out


def infonce_rows(q, cols, scale, bias=0.0):
    """mean_i [ log sum_j exp(s_ij) - s_ii ] written with explicit sums."""
    total = 0.0
    for i in range(q.shape[0]):
        s = [scale * float(q[i] @ cols[j]) + bias for j in range(cols.shape[0])]
        m = max(s)
        total += m + math.log(sum(math.exp(v - m) for v in s)) - s[i]
    return total / q.shape[0]


def gcl_loop(ei, et, ef, scale):
    E = [ei, et, ef]
    B = ei.shape[0]
    total = 0.0
    for j in range(B):
        for a in range(3):
            denom = [scale * float(E[a][j] @ E[m][k]) for m in range(3) for k in range(B)
                     if not (m == a and k == j)]
            mx = max(denom)
            lse = mx + math.log(sum(math.exp(v - mx) for v in denom))
            for b in range(3):
                if b != a:
                    total += lse - scale * float(E[a][j] @ E[b][j])
    return total / (6 * B)


# ---------------------------------------------------------------- masked_pool
@pytest.mark.parametrize("shape", POOL_SHAPES[:5])
@pytest.mark.parametrize("case", MASK_CASES)
@pytest.mark.parametrize("normalize", [True, False])
def test_masked_pool_matches_loop(shape, case, normalize):
    x, w = pool_inputs(*shape, case=case)
    y = solar.masked_pool(x, w, normalize=normalize, backend="torch")
    assert y.shape == (shape[0], shape[2]) and y.dtype == F64
    assert_close(y, pool_loop(x, w, normalize), F64, "masked_pool")


def test_masked_pool_all_masked_row_zero_output_and_grad():
    x, w = pool_inputs(3, 9, 5, case="all_masked_row")
    x.requires_grad_(True)
    w.requires_grad_(True)
    y = solar.masked_pool(x, w, backend="torch")
    (y * torch.randn_like(y)).sum().backward()
    assert torch.equal(y[0], torch.zeros(5, dtype=F64))
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    assert torch.equal(x.grad[0], torch.zeros_like(x.grad[0]))
    assert torch.equal(w.grad[0], torch.zeros_like(w.grad[0]))
    assert x.grad[1].abs().sum() > 0 and w.grad[1].abs().sum() > 0


@pytest.mark.parametrize("normalize", [True, False])
def test_masked_pool_gradcheck(normalize):
    # The all-zero row is a kink by definition (zero gradient there); it has its own test above.
    x, w = pool_inputs(3, 6, 4, case="soft")
    x.requires_grad_(True)
    w = (w * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: R.masked_pool_reference(a, b, normalize), (x, w))


def test_masked_pool_bool_mask_equals_float_mask():
    x, w = pool_inputs(4, 13, 7, case="bool")
    assert_close(solar.masked_pool(x, w, backend="torch"),
                 solar.masked_pool(x, w.double(), backend="torch"), F64, "bool vs float mask")


# ---------------------------------------------------------------- contrastive_loss
@pytest.mark.parametrize("shape", LOSS_SHAPES[:5])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("k", [0, 3])
def test_contrastive_matches_loop(shape, scale, k):
    B, D = shape
    a, b = embeddings(B, D, seed=1), embeddings(B, D, seed=2, duplicate=True)
    neg = embeddings(k, D, seed=3) if k else None
    cols = b if neg is None else torch.cat([b, neg])
    expect = 0.5 * (infonce_rows(a, cols, scale) + infonce_rows(b, a, scale))
    got = solar.contrastive_loss(a, b, scale, extra_negatives=neg, backend="torch")
    assert abs(float(got) - expect) < 1e-9 * max(1.0, abs(expect))
    one_way = solar.contrastive_loss(a, b, scale, extra_negatives=neg, symmetric=False,
                                     backend="torch")
    assert abs(float(one_way) - infonce_rows(a, cols, scale)) < 1e-9 * max(1.0, expect)


def test_contrastive_bias_cancels_and_has_zero_grad():
    a, b = embeddings(6, 8, seed=1), embeddings(6, 8, seed=2)
    bias = torch.tensor(-3.0, dtype=F64, requires_grad=True)
    l1 = solar.contrastive_loss(a, b, 10.0, logit_bias=bias, backend="torch")
    l0 = solar.contrastive_loss(a, b, 10.0, backend="torch")
    l1.backward()
    assert abs(float(l1 - l0)) < 1e-12 and abs(float(bias.grad)) < 1e-12


def test_contrastive_gradcheck_all_inputs():
    a = embeddings(5, 7, seed=1).requires_grad_(True)
    b = embeddings(5, 7, seed=2).requires_grad_(True)
    n = embeddings(2, 7, seed=3).requires_grad_(True)
    s = torch.tensor(3.0, dtype=F64, requires_grad=True)
    bias = torch.tensor(0.5, dtype=F64, requires_grad=True)
    fn = lambda a, b, n, s, bias: R.contrastive_loss_reference(a, b, s, bias, n)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b, n, s, bias))


def test_contrastive_large_scale_duplicates_finite():
    a = embeddings(9, 16, seed=4, duplicate=True).requires_grad_(True)
    loss = solar.contrastive_loss(a, a.detach().clone(), 100.0, backend="torch")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all()


# ---------------------------------------------------------------- gcl_loss
@pytest.mark.parametrize("shape", [(1, 3), (3, 5), (7, 9)])
@pytest.mark.parametrize("scale", SCALES)
def test_gcl_matches_loop(shape, scale):
    B, D = shape
    ei, et, ef = (embeddings(B, D, seed=s) for s in (1, 2, 3))
    got = solar.gcl_loss(ei, et, ef, scale, backend="torch")
    expect = gcl_loop(ei, et, ef, scale)
    assert abs(float(got) - expect) < 1e-9 * max(1.0, abs(expect))


def test_gcl_gradcheck():
    ins = [embeddings(4, 5, seed=s).requires_grad_(True) for s in (1, 2, 3)]
    s = torch.tensor(2.5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c, s: R.gcl_loss_reference(a, b, c, s), (*ins, s))


# ---------------------------------------------------------------- multi_positive_infonce
def mpi_loop(a, c, pos, valid, t):
    total = 0.0
    for i in range(a.shape[0]):
        z = [float(a[i] @ c[j]) / t for j in range(c.shape[0])]
        lse = lambda idx: (max(z[j] for j in idx)  # noqa: E731
                           + math.log(sum(math.exp(z[j] - max(z[k] for k in idx)) for j in idx)))
        total += lse([j for j in range(len(z)) if valid[i, j]]) - lse(
            [j for j in range(len(z)) if pos[i, j]])
    return total / a.shape[0]


@pytest.mark.parametrize("B,P,Q,K,D", [(1, 1, 0, 0, 3), (3, 2, 1, 2, 5), (5, 3, 2, 0, 17)])
def test_multi_positive_with_columns_matches_loop(B, P, Q, K, D):
    a = embeddings(B, D, seed=1)
    views = embeddings(B * P, D, seed=2).reshape(B, P, D)
    cn = embeddings(B * Q, D, seed=3).reshape(B, Q, D) if Q else None
    mn = embeddings(B * K, D, seed=4).reshape(B, K, D) if K else None
    cols = solar.build_columns(a, views, cn, mn)
    assert cols.candidates.shape[0] == B * (P + Q + K + 1)
    assert int(cols.positives.sum()) == B * P
    assert not cols.valid[torch.arange(B), cols.slices["anchors"].start + torch.arange(B)].any()
    got = solar.multi_positive_infonce(a, cols.candidates, cols.positives, cols.valid, 0.07,
                                       backend="torch")
    expect = mpi_loop(a, cols.candidates, cols.positives, cols.valid, 0.07)
    assert abs(float(got) - expect) < 1e-9 * max(1.0, abs(expect))


def test_multi_positive_gradcheck_with_temperature():
    a = embeddings(3, 4, seed=1).requires_grad_(True)
    c = embeddings(7, 4, seed=2).requires_grad_(True)
    pos = torch.zeros(3, 7, dtype=torch.bool)
    pos[0, :2] = pos[1, 2] = pos[2, 3:5] = True
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[1, 6] = False
    t = torch.tensor(0.5, dtype=F64, requires_grad=True)
    fn = lambda a, c, t: R.multi_positive_infonce_reference(a, c, pos, valid, t)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, c, t))


def test_multi_positive_refuses_labels_outside_denominator():
    a, c = embeddings(2, 4), embeddings(5, 4)
    pos = torch.zeros(2, 5, dtype=torch.bool)
    pos[0, 1] = pos[1, 2] = True
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 2] = False
    with pytest.raises(ValueError, match="rows \\[1\\].*not valid"):
        solar.multi_positive_infonce(a, c, pos, valid, 0.1)
    pos[1] = False
    with pytest.raises(ValueError, match="no positive"):
        solar.multi_positive_infonce(a, c, pos, None, 0.1)


# ---------------------------------------------------------------- qda_threshold
def _weighted_pdf(t, mu, sd, prior=1.0):
    return prior * math.exp(-0.5 * ((t - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


@pytest.mark.parametrize("mp,sp,mn,sn,priors", [
    (0.6, 0.1, 0.1, 0.2, None), (0.5, 0.05, 0.0, 0.05, None), (0.5, 0.3, 0.2, 0.05, None),
    (0.6, 0.1, 0.1, 0.2, (1.0, 30.0)), (0.5, 0.05, 0.0, 0.05, (1.0, 9.0))])
def test_qda_equal_density(mp, sp, mn, sn, priors):
    t = solar.qda_threshold_from_stats(mp, sp, mn, sn, priors)
    assert mn <= t <= mp
    pp, pn = priors or (1.0, 1.0)
    assert _weighted_pdf(t, mp, sp, pp) == pytest.approx(_weighted_pdf(t, mn, sn, pn), rel=1e-6)


def test_qda_from_samples_and_degenerate_cases():
    g = torch.Generator().manual_seed(0)
    pos = 0.6 + 0.1 * torch.randn(5000, generator=g, dtype=F64)
    neg = 0.1 + 0.2 * torch.randn(20000, generator=g, dtype=F64)
    t = solar.qda_threshold(pos, neg)
    assert t == pytest.approx(solar.qda_threshold_from_stats(
        pos.mean(), pos.std(unbiased=False), neg.mean(), neg.std(unbiased=False)))
    assert solar.qda_threshold_from_stats(0.2, 0.1, 0.5, 0.1) == pytest.approx(0.35)  # reversed
    assert solar.qda_threshold_from_stats(0.5, 0.0, 0.1, 0.0) == pytest.approx(0.3)   # zero spread
    with pytest.raises(ValueError, match="pos_scores"):
        solar.qda_threshold(torch.tensor([0.5]), neg)
    with pytest.raises(ValueError, match="neg_scores.*NaN"):
        solar.qda_threshold(pos, torch.tensor([0.1, float("nan")]))
