"""The ablated recipes of the results table are registered recipes: they train by name (nothing
swapped in or patched), change what they claim to change and leave the other recipes as they
were.  Tiny random towers on a synthetic JSONL manifest."""
from __future__ import annotations

import json
import math

import pytest
import torch

import synth
from solar.train import TrainConfig, recipe_class, recipe_names, train
from solar.train.ablations import NoConstructedStage2, NoMaskStage1, NoMinedStage2
from solar.train.recipes import Stage1, Stage2

ABLATED = {"stage1-no-mask": (NoMaskStage1, Stage1), "stage2-no-constructed": (NoConstructedStage2, Stage2),
           "stage2-no-mined": (NoMinedStage2, Stage2)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """stage1-no-mask, then each stage-2 ablation and plain stage 2 from it: 2 steps each."""
    root = tmp_path_factory.mktemp("ablations")
    data = synth.write_jsonl(root / "m", 40, bad=False)

    def cfg(name, **kw):
        return TrainConfig(out_dir=str(root / name), data=str(data), steps=2, batch_size=8,
                           warmup_steps=1, progress=False, stream=False, data_workers=0,
                           cache_dir=str(root / "cache"), segments=2, mine_skip=1, mine_window=4,
                           **kw)

    out = {"stage1-no-mask": train(cfg("s1", recipe="stage1-no-mask", model="solar-tiny-random"))}
    for name in ("stage2", "stage2-no-constructed", "stage2-no-mined"):
        out[name] = train(cfg(name, recipe=name, model=str(root / "s1")))
    return root, out


def _metrics(run_dir) -> list:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_ablations_resolve_by_name():
    for name, (cls, base) in ABLATED.items():
        assert name in recipe_names()
        assert recipe_class(name) is cls and issubclass(cls, base)
    assert recipe_class("stage1") is Stage1 and recipe_class("stage2") is Stage2


def test_ablations_train_by_name(runs):
    root, out = runs
    for name, s in out.items():
        assert s["recipe"] == name and len(s["losses"]) == 2
        assert all(math.isfinite(x) for x in s["losses"]), (name, s["losses"])
    saved = json.loads((root / "stage2-no-mined" / "train_config.json").read_text())
    assert saved["recipe"] == "stage2-no-mined"          # the run says what it trained
    assert recipe_class("stage2") is Stage2             # nothing left swapped


def test_ablations_change_what_they_claim(runs):
    root, _ = runs
    plain, no_cons, no_mined = (_metrics(root / n) for n in
                                ("stage2", "stage2-no-constructed", "stage2-no-mined"))
    assert all("mined_sim" in r for r in plain) and all("mined_sim" in r for r in no_cons)
    assert not any("mined_sim" in r for r in no_mined)               # no mined columns
    assert all(r["neg_views_ok"] == 0.0 for r in no_cons)            # no constructed negatives
    assert any(r["neg_views_ok"] > 0.0 for r in plain)


def test_no_mask_keeps_the_full_mask():
    cfg = TrainConfig(recipe="stage1-no-mask", model="solar-tiny-random")
    recipe = recipe_class("stage1-no-mask")(cfg, 10)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 4, 6, generator=g)
    weights = torch.rand(4, 6, generator=g) > 0.3
    soft, _, _ = recipe._masks("text", scores, weights, rho=0.0)
    torch.testing.assert_close(soft, weights.float())
    masked, _, _ = Stage1(cfg, 10)._masks("text", scores, weights, rho=0.0)
    assert not torch.equal(masked, weights.float())                   # the plain one does mask
    assert NoMinedStage2(TrainConfig(recipe="stage2-no-mined", model="x"), 2).cfg.mine_k == 0


def test_results_table_trains_ablations_by_recipe_name(monkeypatch, tmp_path):
    """The table asks for each ablation by its registered name (the runs are recorded, not
    trained, here; the smoke preset of scripts/results_table.sh trains them)."""
    from solar.experiments import table
    for r1, r2 in table.ABLATION_RECIPES.values():
        assert recipe_class(r1) and recipe_class(r2)
    asked = {}

    def fake_train(cfg, pairs, run, log, **kw):
        asked[run.name] = kw
        return run
    monkeypatch.setattr(table, "_train", fake_train)
    cfg = table.TableConfig(out_dir=str(tmp_path), seeds=(0,), methods=("solar_s12",))
    out = table._runs_for_seed(cfg, [], 0, print)
    assert set(out) == {"solar_s12", *table.ABLATIONS}
    assert asked["no_mask_s1-seed0"]["recipe"] == "stage1-no-mask"
    assert asked["no_mask_s12-seed0"]["recipe"] == "stage2"
    assert asked["no_mask_s12-seed0"]["model"] == str(tmp_path / "runs" / "no_mask_s1-seed0")
    s1 = str(tmp_path / "runs" / "solar_s1-seed0")
    assert asked["no_constructed_negatives-seed0"]["recipe"] == "stage2-no-constructed"
    assert asked["no_mined_negatives-seed0"]["recipe"] == "stage2-no-mined"
    assert asked["no_mined_negatives-seed0"]["model"] == s1
    # the project's settings per recipe, and each deviation switched off on its own
    assert asked["solar_s1-seed0"]["local_form"] == "owner"
    assert asked["solar_s1-seed0"]["batch_size"] == 64 and "batch_size" not in asked["solar_s12-seed0"]
    assert asked["solar_s1-seed0"]["model_overrides"]["mask_scores"] == "local"
    assert asked["solar_s12-seed0"]["s2_distill"] == 1.0 and "model_overrides" not in asked["solar_s12-seed0"]
    p1 = asked["paper_stage1_s1-seed0"]
    assert (p1["gla_form"], p1["w_local"], p1["model_overrides"]["mask_scores"]) == ("mean", 0.0, "global")
    assert (p1["w_compose"], p1["compose_qda"]) == (0.0, False)
    assert (asked["solar_s1-seed0"]["w_compose"], asked["solar_s1-seed0"]["compose_qda"]) == (3.0, True)
    n1 = asked["no_composites_s1-seed0"]
    assert (n1["w_compose"], n1["compose_qda"], n1["local_form"]) == (0.0, False, "owner")
    assert asked["no_composites_s12-seed0"]["s2_distill"] == 1.0
    assert asked["paper_stage1_s12-seed0"]["crop_views"] == 0.3
    c1 = asked["cls_readout_s1-seed0"]
    assert (c1["model_overrides"]["readout"], c1["local_form"]) == ("cls", "owner")
    assert asked["solar_s1-seed0"]["model_overrides"]["readout"] == "cls+pooled"
    assert asked["no_views-seed0"]["crop_views"] == 0.0 and asked["no_views-seed0"]["model"] == s1
    assert asked["no_s2_distill-seed0"]["s2_distill"] == 0.0
