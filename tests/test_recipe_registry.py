"""The recipe registry: one list of recipes that TrainConfig, the loop and ``solar-index train``
read; a recipe registered outside the package trains by name.  Tiny random towers on a synthetic
JSONL manifest: seconds per test."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import synth
from solar.train import (Recipe, TrainConfig, recipe_class, recipe_names, recipe_spec,
                         register_recipe, train, unregister_recipe)
from solar.train.recipes import CLIP, GCL, Stage1, Stage2

BUILTIN = {"stage1": Stage1, "stage2": Stage2, "gcl": GCL, "clip": CLIP}


class PooledAlignment(Recipe):
    """A recipe from outside the package: cosine alignment of the towers' pooled projections."""

    def __init__(self, cfg, total_steps):
        super().__init__(cfg, total_steps)
        self.calls = 0

    def loss(self, model, feats, idx, step, source):
        e_i, e_t = model.modal_embeddings(feats)
        loss = 1 - F.cosine_similarity(e_i, e_t, dim=-1).mean()
        return loss, {"pooled_cos": 1 - loss.item()}


@pytest.fixture
def custom():
    register_recipe("pooled-alignment", PooledAlignment, default_model="score-fusion-tiny-random",
                    default_lr=5e-3)
    yield "pooled-alignment"
    unregister_recipe("pooled-alignment")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return synth.write_jsonl(tmp_path_factory.mktemp("data") / "m", 40, bad=False)


def _run_cfg(out, data, **kw):
    base = dict(out_dir=str(out), data=str(data), steps=2, batch_size=8, warmup_steps=1,
                progress=False, stream=False, data_workers=0, cache_dir=str(out) + "-cache")
    return TrainConfig(**{**base, **kw})


def test_builtin_recipes_are_registered_once():
    names = recipe_names()
    assert len(names) == len(set(names))
    for name, cls in BUILTIN.items():
        assert recipe_class(name) is cls
    assert {"stage1-no-mask", "stage2-no-constructed", "stage2-no-mined"} <= set(names)
    assert recipe_spec("stage2").default_model is None and recipe_spec("stage2").default_lr == 1e-4
    assert TrainConfig(recipe="gcl").model == recipe_spec("gcl").default_model
    assert TrainConfig(recipe="stage1").lr == 1e-3


def test_custom_recipe_trains_by_name(custom, manifest, tmp_path):
    cfg = _run_cfg(tmp_path / "run", manifest, recipe=custom)
    assert cfg.model == "score-fusion-tiny-random" and cfg.lr == 5e-3       # the spec's defaults
    s = train(cfg)
    assert s["recipe"] == custom and s["steps"] == 2
    assert len(s["losses"]) == 2 and all(math.isfinite(x) for x in s["losses"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "pooled_cos" in r] == [1, 2]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_custom_recipe_trains_from_the_command_line(custom, manifest, tmp_path):
    from click.testing import CliRunner
    from solar.cli import main
    res = CliRunner().invoke(main, ["train", "--recipe", custom, "--out", str(tmp_path / "c"),
                                    "--data", str(manifest), "--steps", "2", "--batch-size", "8",
                                    "--no-stream", "--workers", "0", "--cache-dir",
                                    str(tmp_path / "cache"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["recipe"] == custom
    shown = CliRunner().invoke(main, ["train", "--help"])
    assert custom in shown.output and "stage2-no-mined" in shown.output


def test_unknown_recipe_names_the_registered_ones(custom):
    with pytest.raises(ValueError, match="unknown recipe 'stage3'") as err:
        TrainConfig(recipe="stage3")
    for name in (*BUILTIN, "stage2-no-mined", custom):
        assert name in str(err.value)
    from click.testing import CliRunner
    from solar.cli import main
    res = CliRunner().invoke(main, ["train", "--recipe", "stage3", "--out", "unused"])
    assert res.exit_code == 2 and "registered recipes: stage1, stage2" in res.output
    assert custom in res.output


def test_registration_errors(custom):
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("stage1", PooledAlignment)
    assert recipe_class("stage1") is Stage1
    with pytest.raises(TypeError, match="subclass of solar.train.Recipe"):
        register_recipe("not-a-recipe", dict)
    with pytest.raises(ValueError, match="without spaces"):
        register_recipe("two words", PooledAlignment)
    register_recipe(custom, PooledAlignment)                   # the same class again: no error

    @register_recipe("decorated", default_model="score-fusion-tiny-random")
    class Decorated(PooledAlignment):
        """Registered with the decorator form."""
    try:
        assert recipe_class("decorated") is Decorated
        assert recipe_spec("decorated").summary == "Registered with the decorator form."
    finally:
        unregister_recipe("decorated")
    assert "decorated" not in recipe_names()


def test_recipe_without_default_model_needs_one():
    with pytest.raises(ValueError, match="needs model="):
        TrainConfig(recipe="stage2-no-mined")
    assert TrainConfig(recipe="stage2-no-mined", model="runs/s1").lr == 1e-4


def test_stream_start_is_the_recipes_own(manifest, tmp_path):
    """On a stream each recipe prepares itself: stage 2 mines from its queue, its no-mined
    ablation has none, and a recipe that refuses a stream stops the run with its reason."""
    s1 = train(_run_cfg(tmp_path / "s1", manifest, recipe="stage1", model="solar-tiny-random",
                        segments=2))
    assert s1["steps"] == 2
    stream = dict(model=str(tmp_path / "s1"), stream=True, segments=2, mine_skip=1, mine_window=4)
    for name, mined in (("stage2", True), ("stage2-no-mined", False)):
        s = train(_run_cfg(tmp_path / name, manifest, recipe=name, **stream))
        assert s["data"] == "stream" and all(math.isfinite(x) for x in s["losses"])
        assert ("mined_sim" in (tmp_path / name / "metrics.jsonl").read_text()) == mined

    class NoStream(PooledAlignment):
        def start_stream(self):
            raise ValueError("pooled-alignment-in-memory needs the whole set")
    register_recipe("pooled-alignment-in-memory", NoStream, default_model="score-fusion-tiny-random")
    try:
        with pytest.raises(ValueError, match="needs the whole set"):
            train(_run_cfg(tmp_path / "ns", manifest, recipe="pooled-alignment-in-memory",
                           stream=True))
    finally:
        unregister_recipe("pooled-alignment-in-memory")


def test_installed_packages_add_recipes_through_entry_points(tmp_path):
    """A distribution's ``solar.recipes`` entry points: a class registers under the entry
    point's name with its class attributes as defaults, a module registers what it defines, a
    broken one is skipped with a warning naming it; the command line lists them."""
    import subprocess
    import sys
    import textwrap
    (tmp_path / "plug_recipes.py").write_text(textwrap.dedent('''
        from solar.train import Recipe, register_recipe

        class PlugClip(Recipe):
            """A plugged-in recipe."""
            default_model = "score-fusion-tiny-random"
            default_lr = 2e-3
            def loss(self, model, feats, idx, step, source):
                e_i, e_t = model.modal_embeddings(feats)
                return (e_i - e_t).pow(2).mean(), {}

        @register_recipe("plug-module", default_model="score-fusion-tiny-random")
        class PlugModule(PlugClip):
            """Registered by importing its module."""
    '''))
    info = tmp_path / "solar_plug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: solar-plug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[solar.recipes]\nplug-clip = plug_recipes:PlugClip\nplug-all = plug_recipes\n"
        "plug-broken = plug_missing_module:Nothing\n")
    code = ("import json, warnings\n"
            "warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    from solar.train import TrainConfig, recipe_names, recipe_spec\n"
            "    names = recipe_names()\n"
            "s = recipe_spec('plug-clip')\n"
            "c = TrainConfig(recipe='plug-clip')\n"
            "print(json.dumps({'names': names, 'model': c.model, 'lr': c.lr, 'cls': s.cls.__name__,"
            " 'warnings': [str(x.message) for x in w]}))\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"plug-clip", "plug-module", "stage1", "stage2"} <= set(out["names"])
    assert (out["model"], out["lr"], out["cls"]) == ("score-fusion-tiny-random", 2e-3, "PlugClip")
    assert any("plug-broken" in m and "plug_missing_module" in m for m in out["warnings"])
    helped = subprocess.run([sys.executable, "-m", "solar.cli", "train", "--help"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert helped.returncode == 0 and "plug-clip" in helped.stdout, helped.stderr[-2000:]
