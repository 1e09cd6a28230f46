"""The ablated recipes of the results table run, change what they claim to change, and leave the
training registry as it was."""
import pytest
import torch

from test_eval_construct import pytestmark as _needs_data  # noqa: F401  (same skip rule)

pytestmark = _needs_data


def _cfg(tmp_path, name, **kw):
    from solar.train import TrainConfig
    return TrainConfig(out_dir=str(tmp_path / name), limit=160, batch_size=8, progress=False,
                       cache_dir=str(tmp_path / "cache"), **kw)


def test_ablations_train_and_restore_the_registry(tmp_path):
    from solar.eval.ablations import NoConstructedStage2, NoMinedStage2, ablated_training
    from solar.model import load_model
    from solar.train import loop, train
    before = dict(loop.RECIPES)
    with ablated_training("no_mask"):
        assert loop.RECIPES["stage1"].__name__ == "NoMaskStage1"
        train(_cfg(tmp_path, "s1", recipe="stage1", model="solar-tiny-random", steps=2))
    assert loop.RECIPES == before
    s1 = str(tmp_path / "s1")
    for name in ("no_constructed_negatives", "no_mined_negatives"):
        with ablated_training(name):
            out = train(_cfg(tmp_path, name, recipe="stage2", model=s1, steps=2))
        assert len(out["losses"]) == 2 and all(torch.isfinite(torch.tensor(out["losses"])))
        assert (tmp_path / name / "model.safetensors").is_file()
    assert loop.RECIPES == before
    # without difference masks no constructed negative view is valid
    model = load_model(s1)
    recipe = NoConstructedStage2(_cfg(tmp_path, "x", recipe="stage2", model=s1), 2)
    from solar.train.features import LiveSource, docs_from_pairs
    from solar.train.loop import load_pairs
    source = LiveSource(docs_from_pairs(load_pairs(_cfg(tmp_path, "y", recipe="stage2", model=s1))[:24]))
    recipe.setup(model, source, torch.device("cpu"))
    assert not recipe.masks.token_diff.any() and not recipe.masks.seg_diff.any()
    # without mined negatives: mine_k = 0, so no neighbour pools and no mined columns
    recipe = NoMinedStage2(_cfg(tmp_path, "z", recipe="stage2", model=s1), 2)
    assert recipe.cfg.mine_k == 0
    recipe.setup(model, source, torch.device("cpu"))
    assert recipe.pools is None
    feats = source.get(torch.arange(8), model)
    loss, metrics = recipe.loss(model, feats, torch.arange(8), 0, source)
    assert torch.isfinite(loss) and "mined_sim" not in metrics
    with pytest.raises(ValueError, match="unknown ablation"):
        with ablated_training("nope"):
            pass
