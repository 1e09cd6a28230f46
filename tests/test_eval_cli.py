"""The evaluation pipeline end to end: a tiny deterministic encoder, the tower cache, the
``solar-index eval`` command (happy path and bad arguments) and the Milvus Lite search path."""
import json
import zlib

import pytest
import torch
from click.testing import CliRunner

from common import TOL
from solar.eval.construct import BenchmarkConfig, build_benchmark
from solar.eval.embed import TowerCache, encode_docs
from solar.eval.evaluate import evaluate
from test_eval_construct import pytestmark as _needs_data  # noqa: F401  (same skip rule)

pytestmark = _needs_data
N_ITEMS = 24


class BagEncoder:
    """Deterministic document encoder: hashed words (32 dims) + a 4x4 grey thumbnail (16 dims)."""

    def encode(self, images=None, texts=None, batch_size=32):
        n = len(images if images is not None else texts)
        out = torch.zeros(n, 48, dtype=torch.float64)
        for i in range(n):
            t = texts[i] if texts is not None else None
            if t:
                for w in t.lower().replace(",", " ").split():
                    out[i, zlib.crc32(w.encode()) % 32] += 1.0
            im = images[i] if images is not None else None
            if im is not None:
                g = torch.frombuffer(bytearray(im.convert("L").resize((4, 4)).tobytes()),
                                     dtype=torch.uint8).double()
                out[i, 32:] = (g - g.mean()) / 255.0
        return torch.nn.functional.normalize(out, dim=1).float()


@pytest.fixture(scope="module")
def bench():
    return build_benchmark(BenchmarkConfig(seed=0, max_items=N_ITEMS))


def _brute_rank(emb, q, t, pool):
    s = {d: float(emb[q] @ emb[d]) for d in pool}
    return 1 + sum(1 for d in pool if d not in (q, t) and s[d] >= s[t])


def test_evaluate_matches_a_brute_force_loop(bench):
    enc = BagEncoder()
    res = evaluate(enc, bench)
    ids = list(bench.docs)
    E = encode_docs(enc, [bench.docs[d] for d in ids])
    emb = {d: E[i].double() for i, d in enumerate(ids)}
    trip = bench.triplets
    ranks = [_brute_rank(emb, t.anchor, t.positive, bench.pool("sym")) for t in trip]
    for k in (1, 5, 10):
        want = 100.0 * sum(r <= k for r in ranks) / len(ranks)
        assert res["sym"][f"R@{k}"] == pytest.approx(want)
    won = [float(emb[t.anchor] @ emb[t.positive]) > float(emb[t.anchor] @ emb[t.negative]) for t in trip]
    assert res["sym"]["Precision"] == pytest.approx(100.0 * sum(won) / len(won))
    assert res["sym"]["Avg"] == pytest.approx((res["sym"]["mR"] + res["sym"]["Precision"]) / 2)
    q = bench.task_queries("image->text")
    r = [_brute_rank(emb, x.query, x.target, bench.pool("text")) for x in q]
    assert res["asym"]["image->text"]["R@10"] == pytest.approx(100.0 * sum(v <= 10 for v in r) / len(r))


def test_text_only_encoder_fails_every_image_swap(bench):
    class TextOnly(BagEncoder):
        def encode(self, images=None, texts=None, batch_size=32):
            return super().encode(None, [t or "" for t in texts], batch_size)
    res = evaluate(TextOnly(), bench, tasks=("sym",))
    # image-swap negatives carry the positive's exact text: a tie, which counts as a failure
    assert res["sym"]["Precision[image_swap]"] == 0.0


@pytest.mark.parametrize("preset", ["solar-tiny-random", "score-fusion-tiny-random"])
def test_tower_cache_equals_encode(bench, preset):
    from solar.model import load_model
    model = load_model(preset)
    docs = [bench.docs[d] for d in list(bench.docs)[:90]]
    want = encode_docs(model, docs, batch_size=7)
    cache = TowerCache()
    got = cache.encode_docs(model, docs, batch_size=5)
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    again = cache.encode_docs(model, docs, batch_size=16)
    assert cache.hits > 0
    torch.testing.assert_close(again, want, **TOL[torch.float32])


def _run(args):
    from solar.eval.cli import eval_cmd
    return CliRunner().invoke(eval_cmd, args, catch_exceptions=False)


def test_eval_command_happy_path(tmp_path):
    out, man = tmp_path / "r.json", tmp_path / "b.jsonl"
    res = _run(["solar-tiny-random", "sf=score-fusion-tiny-random", "--max-items", str(N_ITEMS),
                "--out", str(out), "--save-benchmark", str(man), "--tower-cache"])
    assert res.exit_code == 0, res.output
    assert "| solar-tiny-random |" in res.output and "| sf |" in res.output
    data = json.loads(out.read_text())
    assert set(data["models"]) == {"solar-tiny-random", "sf"}
    for r in data["models"].values():
        assert 0 <= r["sym"]["Avg"] <= 100 and set(r["asym"]) == {
            "text->document", "image->document", "image->text", "text->image"}
    # the saved manifest gives the same numbers through the encode path
    res2 = _run(["sf=score-fusion-tiny-random", "--benchmark", str(man), "--out", str(out), "--task", "sym"])
    assert res2.exit_code == 0, res2.output
    again = json.loads(out.read_text())["models"]["sf"]["sym"]
    assert again["Avg"] == pytest.approx(data["models"]["sf"]["sym"]["Avg"])


@pytest.mark.parametrize("args, code, text", [
    ([], 2, "at least one MODEL"),
    (["solar-tiny-random", "--benchmark", "/nonexistent/b.jsonl"], 2, "does not exist"),
    (["solar-tiny-random", "--max-items", "2"], 2, "max-items"),
    (["a=solar-tiny-random", "a=score-fusion-tiny-random"], 2, "duplicate"),
    (["=solar-tiny-random"], 2, "LABEL=PATH"),
    (["solar-tiny-random", "--task", "nope"], 2, "task"),
    (["/nonexistent/ckpt", "--max-items", "8"], 1, "neither a checkpoint"),
])
def test_eval_command_bad_arguments(args, code, text, tmp_path):
    res = _run(args)
    assert res.exit_code == code, res.output
    assert text in res.output


def test_eval_command_benchmark_with_build_options(tmp_path):
    man = tmp_path / "b.jsonl"
    man.write_text("{}")
    res = _run(["solar-tiny-random", "--benchmark", str(man), "--max-items", "8"])
    assert res.exit_code == 2 and "only when building" in res.output
    res = _run(["solar-tiny-random", "--benchmark", str(man)])
    assert res.exit_code == 1 and "not a solar-benchmark manifest" in res.output


def test_milvus_lite_search_matches_exact(tmp_path):
    pytest.importorskip("pymilvus")
    from solar.eval.search import exact_ranks, milvus_ranks
    g = torch.Generator().manual_seed(3)
    p = torch.nn.functional.normalize(torch.randn(300, 24, generator=g), dim=1)
    q = torch.nn.functional.normalize(p[:40] + 0.3 * torch.randn(40, 24, generator=g), dim=1)
    target = torch.arange(40)
    exclude = torch.where(torch.arange(40) % 2 == 0, torch.arange(40) + 100, torch.tensor(-1))
    exact = exact_ranks(q, p, target, exclude)
    got = milvus_ranks(q, p, target, exclude, str(tmp_path / "eval.db"))
    assert (exact <= 10).any()
    assert torch.equal(torch.where(exact <= 10, exact, torch.tensor(11)), got)


def test_eval_command_through_milvus_lite(tmp_path):
    pytest.importorskip("pymilvus")
    out = tmp_path / "r.json"
    res = _run(["sf=score-fusion-tiny-random", "--max-items", "12", "--task", "sym",
                "--milvus-uri", str(tmp_path / "eval.db"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())["models"]["sf"]
    # FLAT inner-product search in Milvus finds the same targets in the top 10 as the exact search
    assert r["milvus"]["sym"]["agreement_top10"] == 100.0
    assert r["milvus"]["sym"]["R@10"] == pytest.approx(r["sym"]["R@10"])
