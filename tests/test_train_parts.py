"""Unit tests of the training parts: losses, QDA running estimate, mask schedule, views, mining,
data order, checkpoint optimizer round trip and the all-gather with gradients."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from solar.train import losses as L
from solar.train.mining import neighbour_pools, sample_negatives
from solar.train.qda import RunningQDA, annealed_mask, rho_schedule
from solar.train.views import StageOneMasks, build_views, segment_patches, segment_scores

from common import TOL, assert_close


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_gla_hinge_matches_loops():
    loc, part = _unit(4, 6, 8), _unit(4, 8, seed=1)
    w = torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) > 0.3
    w[0] = False                                                    # a document without locals
    w[1, 0] = True
    loss, sim = L.gla_hinge(loc, w, part, 0.2)
    terms = []
    for i in range(4):
        if not w[i].any():
            continue
        mean = lambda j: torch.stack([loc[i, t] @ part[j] for t in range(6) if w[i, t]]).mean()  # noqa
        for j in range(4):
            if j != i:
                terms.append(torch.relu(mean(j) + 0.2 - mean(i)))
    assert_close(loss, torch.stack(terms).mean(), torch.float64, "gla")
    # Gathered partners: row i's positive sits at column offset + i.
    loss2, _ = L.gla_hinge(loc[2:], w[2:], part, 0.2, offset=2)
    assert loss2 >= 0 and sim.shape == (4, 4)


def test_pearson_and_distillation():
    torch.manual_seed(0)
    a, b = torch.randn(3, 50, dtype=torch.float64), torch.randn(3, 50, dtype=torch.float64)
    m = torch.rand(3, 50) > 0.2
    got = L.pearson(a, b, m)
    for i in range(3):
        ref = np.corrcoef(a[i][m[i]].numpy(), b[i][m[i]].numpy())[0, 1]
        assert got[i].item() == pytest.approx(ref, rel=1e-9)
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    w = torch.ones(2, 7, dtype=torch.bool)
    assert L.local_distillation(x, x * 3.0, w).item() == pytest.approx(0.0, abs=1e-12)
    assert L.local_distillation(x, torch.randn(2, 7, 9, dtype=torch.float64), w) > 0.3
    g = _unit(6, 4)
    assert L.global_distillation(g, g * 2).item() == pytest.approx(0.0, abs=1e-12)


def test_running_qda_recovers_the_equal_density_point():
    g = torch.Generator().manual_seed(0)
    q = RunningQDA(momentum=0.5)
    assert math.isnan(q.threshold())
    for _ in range(5):
        q.update(0.5 + 0.1 * torch.randn(20000, generator=g), 0.1 * torch.randn(20000, generator=g))
    # Equal variances and no priors: the midpoint.
    assert q.threshold() == pytest.approx(0.25, abs=0.01)
    # With priors (1, 9) the threshold moves toward the positive mean.
    qp = RunningQDA(0.0, priors=(1.0, 9.0))
    qp.update(0.5 + 0.1 * torch.randn(20000, generator=g), 0.1 * torch.randn(20000, generator=g))
    expect = 0.25 + 0.01 * math.log(9.0) / 0.5
    assert qp.threshold() == pytest.approx(expect, abs=0.01)
    q.update(torch.ones(1), torch.zeros(5))                            # too few: ignored
    assert q.ready


def test_rho_schedule_and_annealed_mask():
    assert rho_schedule(0, 100, 0.5) == 1.0
    assert rho_schedule(25, 100, 0.5) == pytest.approx(0.5)
    assert rho_schedule(60, 100, 0.5) == 0.0 and rho_schedule(3, 100, 0.0) == 0.0
    hard = torch.tensor([[True, False, True, False]])
    valid = torch.tensor([[True, True, True, False]])
    assert annealed_mask(hard, valid, 0.25).tolist() == [[1.0, 0.25, 1.0, 0.0]]
    assert annealed_mask(hard, valid, 1.0).tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_segments_are_connected_and_bounded():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(49, 16, generator=g).numpy()
    f[:21] += 4.0                                                    # top three rows differ
    lab = segment_patches(f, np.ones(49, bool), 5)
    assert lab.min() == 0 and lab.max() <= 4
    grid = lab.reshape(7, 7)
    assert len(set(grid[:3].ravel()) & set(grid[3:].ravel())) == 0   # the boundary is found
    for k in np.unique(lab):                                         # each segment is connected
        cells = {tuple(x) for x in np.argwhere(grid == k)}
        seen, todo = set(), [next(iter(cells))]
        while todo:
            r, c = todo.pop()
            if (r, c) in seen:
                continue
            seen.add((r, c))
            todo += [n for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)) if n in cells]
        assert seen == cells
    part = segment_patches(f[:10], np.array([True] * 6 + [False] * 4), 3)
    assert (part[6:] == -1).all() and set(part[:6]) <= {0, 1, 2}
    s = segment_scores(torch.from_numpy(lab)[None], torch.arange(49.0)[None], 5)
    assert s.shape == (1, 5)


def _greedy_ward(x: np.ndarray, adjacent) -> list:
    """Reference: merge the adjacent pair of clusters with the least Ward cost
    n_a n_b / (n_a + n_b) ||mean_a - mean_b||^2 until the wanted count; clusters as index sets."""
    clusters = [{i} for i in range(len(x))]

    def cost(a, b):
        ma, mb = x[sorted(a)].mean(0), x[sorted(b)].mean(0)
        return len(a) * len(b) / (len(a) + len(b)) * ((ma - mb) ** 2).sum()

    def merge_once():
        pairs = [(cost(a, b), i, j) for i, a in enumerate(clusters) for j, b in enumerate(clusters)
                 if i < j and any(adjacent(p, q) for p in a for q in b)]
        _, i, j = min(pairs)
        clusters[i] |= clusters.pop(j)
    return clusters, merge_once


def _partition(labels: np.ndarray) -> list:
    return sorted(sorted(np.flatnonzero(labels == k).tolist()) for k in np.unique(labels) if k >= 0)


def test_segments_of_a_hand_made_grid():
    """4x4 grid: the left and right columns look alike, the middle ones differ; connectivity keeps
    the two outer columns apart (k=3), and labels count segments by their first patch."""
    col = np.arange(16) % 4
    f = np.where(np.isin(col, [0, 3])[:, None], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    f = f + 1e-3 * np.random.default_rng(0).normal(size=f.shape)
    lab = segment_patches(f, np.ones(16, bool), 3)
    np.testing.assert_array_equal(lab, np.tile([0, 1, 1, 2], 4))
    quad = (np.arange(16) // 8) * 2 + (col >= 2)                   # 0 1 / 2 3 quadrants
    g = np.eye(4)[quad] + 1e-3 * np.random.default_rng(1).normal(size=(16, 4))
    np.testing.assert_array_equal(segment_patches(g, np.ones(16, bool), 4), quad)
    np.testing.assert_array_equal(segment_patches(g, np.ones(16, bool), 16), np.arange(16))


@pytest.mark.parametrize("side, k, holes", [(4, 3, False), (5, 6, False), (4, 4, True), (3, 2, False)])
def test_segments_match_greedy_ward(side, k, holes):
    """The same partitions as greedy Ward merging on normalized features (grid neighbours only
    when every patch is valid, any pair otherwise)."""
    rng = np.random.default_rng(side * 10 + k)
    for _ in range(5):
        P = side * side
        f = rng.normal(size=(P, 8))
        valid = rng.random(P) > 0.3 if holes else np.ones(P, bool)
        idx = np.flatnonzero(valid)
        x = f[idx] / np.linalg.norm(f[idx], axis=1, keepdims=True)
        grid = lambda p, q: abs(idx[p] // side - idx[q] // side) + abs(idx[p] % side - idx[q] % side) == 1  # noqa: E731
        clusters, merge_once = _greedy_ward(x, (lambda p, q: True) if holes else grid)
        while len(clusters) > min(k, len(idx)):
            merge_once()
        want = sorted(sorted(idx[sorted(c)].tolist()) for c in clusters)
        assert _partition(segment_patches(f, valid, k)) == want


def test_views_hide_the_right_elements():
    T, P, K = 6, 4, 2
    m = StageOneMasks(
        token_int=torch.tensor([[1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool),
        token_diff=torch.tensor([[0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool),
        segments=torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
        seg_int=torch.tensor([[True, False], [False, False]]),
        seg_diff=torch.tensor([[False, True], [True, True]]))
    tv = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    iv = torch.ones(2, P, dtype=torch.bool)
    v = build_views(m, tv, iv, pos_ratio=0.5, neg_ratio=1.0, area_cap=0.5,
                    g=torch.Generator().manual_seed(0))
    hidden_pos = tv & ~v["pos_text"]
    assert (hidden_pos[0] <= m.token_int[0]).all() and hidden_pos[0].sum() == 2   # ceil(3 * .5)
    assert hidden_pos[1].sum() == 2                          # fallback: random valid tokens
    assert torch.equal(tv & ~v["neg_text"], m.token_diff & tv)
    assert torch.equal(~v["pos_image"][0], torch.tensor([True, True, False, False]))
    assert (~v["neg_image"][1]).sum() <= 2                   # area cap 0.5 of 4 patches
    assert v["neg_ok"].tolist() == [[True, True], [True, True]]
    none = StageOneMasks(m.token_int, torch.zeros_like(m.token_diff), m.segments, m.seg_int,
                         torch.zeros_like(m.seg_diff))
    v2 = build_views(none, tv, iv, 0.5, 1.0, 0.5, torch.Generator().manual_seed(0))
    assert not v2["neg_ok"].any() and torch.equal(v2["neg_text"], tv)


def test_mining_skips_self_and_top_ranks():
    z = F.normalize(torch.randn(20, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    pools = neighbour_pools(z, z, skip=2, window=5)
    assert pools.shape == (20, 5)
    sim = z @ z.T
    sim.fill_diagonal_(-math.inf)
    order = sim.argsort(dim=1, descending=True)
    assert torch.equal(pools, order[:, 2:7])
    negs = sample_negatives(pools, torch.tensor([3, 7]), 3, torch.Generator().manual_seed(0))
    assert negs.shape == (2, 3)
    for r, row in zip((3, 7), negs):
        assert set(row.tolist()) <= set(pools[r].tolist()) and len(set(row.tolist())) == 3
    with pytest.raises(ValueError, match="more documents"):
        neighbour_pools(z[:3], z[:3], skip=2, window=5)


def test_batch_order_is_a_function_of_step(monkeypatch):
    from solar.train.config import TrainConfig
    from solar.train.loop import batch_indices, lr_at
    cfg = TrainConfig(recipe="clip", batch_size=4, grad_accum=2, seed=3)
    seen = torch.cat([batch_indices(25, s, m, cfg) for s in range(3) for m in range(2)])
    assert len(set(seen.tolist())) == 24                      # one epoch: no repeats
    assert torch.equal(batch_indices(25, 5, 1, cfg), batch_indices(25, 5, 1, cfg))
    assert not torch.equal(batch_indices(25, 0, 0, cfg), batch_indices(25, 3, 0, cfg))
    assert lr_at(0, 100, cfg) < lr_at(cfg.warmup_steps, 100, cfg) == pytest.approx(cfg.lr)
    assert lr_at(99, 100, cfg) < 0.1 * cfg.lr


def test_optimizer_state_round_trip(tmp_path):
    from solar.model import load_model
    from solar.train.checkpoint import load_checkpoint, save_checkpoint
    from solar.train.config import TrainConfig
    from solar.train.loop import make_optimizer
    from solar.train.recipes import Stage1
    cfg = TrainConfig(recipe="stage1", model="solar-tiny-random")
    m = load_model("solar-tiny-random").train()
    opt = make_optimizer(m, cfg)
    m.encode(texts=["warm up"])
    for p in m.trainable_parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    rec = Stage1(cfg, 10)
    rec.qda["text"].update(torch.rand(10), torch.rand(10) - 0.5)
    save_checkpoint(tmp_path, m, opt, 7, cfg.to_dict(), rec)
    m2 = load_model("solar-tiny-random", dim=16).train()
    opt2, rec2 = make_optimizer(m2, cfg), Stage1(cfg, 10)
    assert load_checkpoint(tmp_path, m2, opt2, rec2) == 7
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for k in s1["state"]:
        for name in s1["state"][k]:
            assert torch.equal(torch.as_tensor(s1["state"][k][name]), torch.as_tensor(s2["state"][k][name]))
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"]
    assert torch.equal(rec.qda["text"].stats, rec2.qda["text"].stats)


def _embed(x, y, w):
    """A tiny 'model': both modalities share the weight w (D, D)."""
    return F.normalize(x @ w, dim=-1), F.normalize(y @ w.T, dim=-1)


def _gather_worker(rank, world, port, x, y, w0, queue):
    import torch.distributed as tdist
    from solar import ops
    from solar.train import dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    n = x.shape[0] // world
    w = w0.clone().requires_grad_(True)                       # replicated parameter
    a, b = _embed(x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n], w)
    loss = ops.contrastive_loss(dist.all_gather_grad(a), dist.all_gather_grad(b), 10.0,
                                backend="torch")
    loss.backward()
    dist.average_gradients([w])
    queue.put((rank, loss.item(), w.grad.numpy().copy()))   # plain data: no shared memory
    tdist.destroy_process_group()


def test_all_gather_grad_gives_the_global_batch_gradient():
    """Two gloo ranks with half the batch each reproduce the one-process loss and gradient."""
    import multiprocessing as mp
    from solar import ops
    world, port = 2, 20000 + os.getpid() % 20000
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, dtype=torch.float64, generator=g), torch.randn(6, 5, dtype=torch.float64, generator=g)
    w0 = torch.randn(5, 5, dtype=torch.float64, generator=g)
    w = w0.clone().requires_grad_(True)
    ref = ops.contrastive_loss(*_embed(x, y, w), 10.0, backend="torch")
    ref.backward()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_gather_worker, args=(r, world, port, x, y, w0, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in range(world)]
    for p in procs:
        p.join(timeout=60)
    for rank, loss, grad in results:
        assert_close(torch.tensor(loss, dtype=torch.float64), ref, torch.float64, f"loss {rank}")
        assert_close(torch.from_numpy(grad), w.grad, torch.float64, f"weight gradient {rank}")


def test_torchrun_two_ranks_trains(tmp_path):
    """The train command under torchrun (2 CPU ranks, gloo): one global batch spans both ranks."""
    import shutil
    import subprocess
    offline = pytest.importorskip("solar.data.offline")
    try:
        offline.clipart_root()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    out = tmp_path / "run"
    cmd = ["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "solar.cli", "train",
           "--recipe", "gcl", "--out", str(out), "--model", "score-fusion-tiny-random",
           "--limit", "40", "--steps", "2", "--batch-size", "4", "--cache-dir",
           str(tmp_path / "cache"), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) for r in steps)
    assert (out / "model.safetensors").is_file() and (out / "checkpoint" / "trainer.json").is_file()
