"""Broken checkpoints and configs are refused with a ValueError that names the file (the CLI shows
it as one line), and nothing is ever unpickled: not a pickle renamed to model.safetensors, not a
Hugging Face tower folder that holds only pytorch_model.bin."""
from __future__ import annotations

import io
import json
import pickle

import pytest
import torch

import solar
from solar.model import build_model
from solar.model.config import preset
from solar.model.io import save_model


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling during the test fails it."""
    def refuse(*a, **k):
        raise AssertionError("a pickle was loaded")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.fixture
def checkpoint(tmp_path):
    return save_model(build_model(preset("solar-tiny-random")), tmp_path / "ck")


def _pickle_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "pickle", "missing"])
def test_a_damaged_weights_file_is_refused_by_name(checkpoint, damage, no_unpickling):
    f = checkpoint / "model.safetensors"
    good = f.read_bytes()
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes({"truncated": good[: len(good) // 2], "empty": b"",
                       "random": torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy()
                       .tobytes(), "pickle": _pickle_bytes()}[damage])
    with pytest.raises(ValueError, match="model.safetensors"):
        solar.load_model(checkpoint)


def test_tensors_of_the_wrong_shape_are_refused_by_name(checkpoint):
    from safetensors.torch import save_file
    other = build_model(preset("solar-tiny-random").replace(dim=24))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
              str(checkpoint / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.safetensors.*shapes differ"):
        solar.load_model(checkpoint)


def _model_cfg(checkpoint) -> dict:
    return json.loads((checkpoint / "config.json").read_text())


@pytest.mark.parametrize("edit, needle", [
    (lambda d: [d], "must be a JSON object"),
    (lambda d: {k: v for k, v in d.items() if k != "model"}, "lacks the 'model' key"),
    (lambda d: {**d, "model": {**d["model"], "dim": "sixteen"}}, "model.dim must be an integer"),
    (lambda d: {**d, "model": {**d["model"], "image_tower": None}}, "image_tower must be"),
    (lambda d: {**d, "model": {**d["model"], "text_tower": {**d["model"]["text_tower"],
                                                            "colour": 1}}}, "colour"),
    (lambda d: {**d, "extra": 1}, "unknown keys ['extra']"),
    (lambda d: {**d, "model": {**d["model"], "width": True}}, "model.width must be"),
    (lambda d: {**d, "model": 7}, "'model' must be a JSON object"),
])
def test_a_bad_config_is_refused_by_name(checkpoint, edit, needle):
    (checkpoint / "config.json").write_text(json.dumps(edit(_model_cfg(checkpoint))))
    with pytest.raises(ValueError, match="config.json") as err:
        solar.load_model(checkpoint)
    assert needle in str(err.value)


def test_invalid_json_config_names_the_file_and_json(checkpoint):
    (checkpoint / "config.json").write_text('{"format": "solar-model", "model": {')
    with pytest.raises(ValueError, match=r"config\.json.*not valid JSON"):
        solar.load_model(checkpoint)


def test_a_tower_folder_with_only_pickled_weights_is_refused(tmp_path, no_unpickling):
    transformers = pytest.importorskip("transformers")
    from solar.model import TowerConfig, build_tower
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=16))
    folder = tmp_path / "bert"
    folder.mkdir()
    bert.config.save_pretrained(folder)
    with open(folder / "pytorch_model.bin", "wb") as f:   # what save_pretrained wrote in the past
        f.write(_pickle_bytes())
    with pytest.raises(ValueError, match="safetensors only"):
        build_tower(TowerConfig("hf-text", path=str(folder), max_length=8), "text")
