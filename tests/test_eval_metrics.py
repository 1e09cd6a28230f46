"""Metrics and search of the benchmark against hand-computed examples and a brute-force loop."""
import pytest
import torch

from common import TOL
from solar.eval.metrics import precision, recall_at_k, sym_summary, target_ranks
from solar.eval.report import aggregate, markdown_table
from solar.eval.search import exact_ranks


def test_target_ranks_hand_example():
    sims = torch.tensor([[0.9, 0.5, 0.7, 0.1],     # target 2 (0.7): only 0.9 is higher -> rank 2
                         [0.2, 0.8, 0.8, 0.3],     # target 1 (0.8), tie with 2 -> rank 2
                         [0.99, 0.1, 0.3, 0.2]])   # target 2 (0.3), exclude 0 (itself) -> rank 1
    ranks = target_ranks(sims, torch.tensor([2, 1, 2]), torch.tensor([-1, -1, 0]))
    assert ranks.tolist() == [2, 2, 1]


def test_recall_precision_avg_hand_example():
    ranks = torch.tensor([1, 3, 7, 12])
    r = recall_at_k(ranks)
    assert r == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0}
    pos = torch.tensor([0.9, 0.5, 0.4, 0.6])
    neg = torch.tensor([0.1, 0.5, 0.8, 0.2])          # a tie counts as a failure
    assert precision(pos, neg) == 50.0
    s = sym_summary(ranks, pos, neg, ["text_swap", "image_swap", "image_swap", "text_swap"])
    assert s["mR"] == pytest.approx(50.0)
    assert s["Avg"] == pytest.approx((50.0 + 50.0) / 2)
    assert s["Precision[text_swap]"] == 100.0 and s["Precision[image_swap]"] == 0.0


def test_exact_ranks_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=1)
    p = torch.nn.functional.normalize(torch.randn(131, 16, generator=g), dim=1)
    p[5] = p[7]                                         # duplicate embeddings: ties
    target = torch.randint(0, 131, (37,), generator=g)
    exclude = torch.where(torch.arange(37) % 3 == 0, (target + 1) % 131, torch.tensor(-1))
    got = exact_ranks(q, p, target, exclude, chunk=10)
    for i in range(37):
        s = [float(q[i] @ p[j]) for j in range(131)]
        t = int(target[i])
        want = 1 + sum(1 for j in range(131) if j not in (t, int(exclude[i])) and s[j] >= s[t])
        assert int(got[i]) == want, i


def test_metric_argument_errors():
    with pytest.raises(ValueError, match="sims"):
        target_ranks(torch.zeros(3), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        target_ranks(torch.zeros(2, 3), torch.tensor([0, 3]), torch.tensor([-1, -1]))
    with pytest.raises(ValueError, match="excluded"):
        target_ranks(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="no queries"):
        recall_at_k(torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="sim_pos"):
        precision(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="queries"):
        exact_ranks(torch.zeros(2, 4), torch.zeros(3, 5), torch.zeros(2, dtype=torch.long),
                    torch.zeros(2, dtype=torch.long))


def test_aggregate_mean_and_spread():
    mk = lambda a: {"sym": {"R@1": a, "R@5": a, "R@10": a, "mR": a, "Precision": a, "Avg": a}}  # noqa
    agg = aggregate([mk(10.0), mk(20.0), mk(30.0)])
    m, sd = agg["Avg"]
    torch.testing.assert_close(torch.tensor([m, sd], dtype=torch.float64),
                               torch.tensor([20.0, 10.0], dtype=torch.float64), **TOL[torch.float64])
    table = markdown_table([("x", agg)])
    assert "20.0 ± 10.0" in table
