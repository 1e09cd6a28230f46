"""Bad arguments fail early with ValueError/TypeError naming the argument."""
import pytest
import torch

import solar

x = torch.randn(2, 3, 4)
w = torch.ones(2, 3)
a, b = torch.randn(4, 8), torch.randn(4, 8)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: solar.masked_pool(torch.randn(2, 3), w), ValueError, "x must have 3 dimensions"),
    (lambda: solar.masked_pool(x, torch.ones(2, 4)), ValueError, "x and weights"),
    (lambda: solar.masked_pool(x.long(), w), TypeError, "x must be a floating"),
    (lambda: solar.masked_pool(x, w.long()), TypeError, "weights must be a bool or floating"),
    (lambda: solar.masked_pool(torch.randn(0, 3, 4), torch.ones(0, 3)), ValueError, "x must not be empty"),
    (lambda: solar.masked_pool([1, 2], w), TypeError, "x must be a torch.Tensor"),
    (lambda: solar.contrastive_loss(a, b[:3], 1.0), ValueError, "a and b batch"),
    (lambda: solar.contrastive_loss(a, torch.randn(4, 7), 1.0), ValueError, "b has dimension 7"),
    (lambda: solar.contrastive_loss(a, b.double(), 1.0), TypeError, "b has dtype"),
    (lambda: solar.contrastive_loss(a[:0], b[:0], 1.0), ValueError, "a must not be empty"),
    (lambda: solar.contrastive_loss(a, b, torch.ones(2)), ValueError, "logit_scale must hold one"),
    (lambda: solar.contrastive_loss(a, b, "x"), TypeError, "logit_scale"),
    (lambda: solar.contrastive_loss(a, b, 1.0, extra_negatives=torch.randn(3, 5)), ValueError,
     "extra_negatives has dimension 5"),
    (lambda: solar.gcl_loss(a, b, b[:2], 1.0), ValueError, "e_fused"),
    (lambda: solar.multi_positive_infonce(a, b, torch.ones(4, 4), None, 0.1), TypeError,
     "positives must be a bool"),
    (lambda: solar.multi_positive_infonce(a, b, torch.ones(4, 3, dtype=torch.bool), None, 0.1),
     ValueError, "positives shape"),
    (lambda: solar.multi_positive_infonce(a, b, torch.eye(4, dtype=torch.bool),
                                          torch.ones(3, dtype=torch.bool), 0.1), ValueError, "valid must have shape"),
    (lambda: solar.masked_pool(x, w, backend="gpu"), ValueError, "backend must be"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
