"""Model tests: shapes, mixed documents, encode, intersection masks, fusion masking, save/load."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

import solar
from solar.model import DocFeatures, ModelConfig, TowerConfig, build_model, load_model
from solar.model.fusion import FusionEncoder, mask_bias
from solar.model.solar_model import ScoreFusionModel, SolarModel

from common import TOL


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        w, h = 20 + 7 * i, 40 - 3 * i                              # odd sizes, both aspects
        arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        out.append(Image.fromarray(arr, "RGB"))
    return out


TEXTS = ["a red fox jumps", "blue sky over green hills and a river", "cat", "tree, leaf, plant"]


@pytest.fixture(scope="module", params=["solar-tiny-random", "score-fusion-tiny-random"])
def model(request):
    return load_model(request.param)


def test_presets_build_the_right_class():
    assert isinstance(load_model("solar-tiny-random"), SolarModel)
    assert isinstance(load_model("score-fusion-tiny-random"), ScoreFusionModel)
    assert solar.SolarModel is SolarModel and solar.load_model is load_model


def test_tower_features_shapes_and_missing_modalities(model):
    imgs, texts = _images(4), list(TEXTS)
    imgs[1], texts[2] = None, None
    f = model.tower_features(imgs, texts)
    it, tt = model.image_tower, model.text_tower
    assert f.image.tokens.shape == (4, it.num_tokens, it.token_dim)
    assert f.text.tokens.shape[0] == 4 and f.text.tokens.shape[2] == tt.token_dim
    assert f.has_image.tolist() == [True, False, True, True]
    assert f.has_text.tolist() == [True, True, False, True]
    assert not f.image_weights[1].any() and not f.text_weights[2].any()
    assert f.image_weights[0].all()


def test_embed_shapes_image_only_text_only(model):
    D = model.cfg.dim
    e_img = model.encode(images=_images(3))
    e_txt = model.encode(texts=TEXTS[:3])
    e_mix = model.encode([_images(1)[0], None, _images(1)[0]], [None, "words only", "both here"])
    for e in (e_img, e_txt, e_mix):
        assert e.dtype == torch.float32 and e.shape[1] == D
        torch.testing.assert_close(e.norm(dim=1), torch.ones(len(e)), **TOL[torch.float32])
    # An image-only document embeds the same whether or not its batch holds texts.
    torch.testing.assert_close(e_mix[0], model.encode(images=_images(1))[0], **TOL[torch.float32])
    # A text-only document is the same alone and padded next to longer texts.
    torch.testing.assert_close(e_mix[1], model.encode(texts=["words only"])[0], **TOL[torch.float32])


def test_encode_is_deterministic_and_batch_independent(model):
    imgs = _images(4)
    a = model.encode(imgs, TEXTS, batch_size=4)
    b = model.encode(imgs, TEXTS, batch_size=1)
    c = model.encode(imgs, TEXTS, batch_size=4)
    assert torch.equal(a, c)
    torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert a.shape == (4, model.cfg.dim)


def test_encode_rejects_bad_input(model):
    with pytest.raises(ValueError, match="document 1"):
        model.encode([_images(1)[0], None], ["x", None])
    with pytest.raises(ValueError, match="images has 2 items but texts has 1"):
        model.encode(_images(2), ["x"])
    with pytest.raises(TypeError, match="texts\\[0\\]"):
        model.encode(texts=[3])
    with pytest.raises(TypeError, match="images\\[0\\]"):
        model.encode(images=["not an image"])
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(texts=["x"], batch_size=0)
    with pytest.raises(ValueError, match="give images=, texts= or both"):
        model.encode()


def test_intersection_masks_outputs():
    m = load_model("solar-tiny-random")
    imgs, texts = _images(3), TEXTS[:3]
    r = m.intersection_masks(imgs, texts)
    assert r.thresholds_source == "batch" and math.isfinite(r.tau_text) and math.isfinite(r.tau_image)
    assert r.patch_scores.shape == (3, m.image_tower.num_tokens) and r.grid == (4, 4)
    assert r.patch_masks.dtype == torch.bool
    assert torch.equal(r.patch_masks, r.patch_scores > r.tau_image)
    for i, t in enumerate(texts):
        n_words = len(t.replace(",", " ").split())
        assert r.token_scores[i].shape == (n_words,) and len(r.tokens[i]) == n_words
        assert torch.equal(r.token_masks[i], r.token_scores[i] > r.tau_text)
        assert r.token_scores[i].abs().max() <= 1 + 1e-5
    m.thresholds.copy_(torch.tensor([0.1, -0.2]))
    r2 = m.intersection_masks(imgs, texts)
    assert r2.thresholds_source == "model" and (r2.tau_text, r2.tau_image) == pytest.approx((0.1, -0.2))
    with pytest.raises(ValueError, match="image and a text"):
        m.intersection_masks([imgs[0]], [None])


def test_soft_mask_is_a_log_bias():
    torch.manual_seed(0)
    enc = FusionEncoder(16, 2, 2, 2.0, n_patches=5, n_tokens=4).double()
    v, l = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 4, 16, dtype=torch.float64)
    ones_v, ones_l = torch.ones(2, 5, dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64)
    # Weight 0 on a token equals leaving it out.
    w = ones_l.clone()
    w[:, 3] = 0
    out = enc(v, ones_v, l, w)
    cut = enc(v, ones_v, l[:, :3], ones_l[:, :3])
    torch.testing.assert_close(out, cut, **TOL[torch.float64])
    # The bias is log(m): m = 1 gives 0, m = 0 gives -inf.
    b = mask_bias(torch.tensor([[1.0, 0.5, 0.0]]), torch.float64)
    assert b[0, 0] == 0 and b[0, 1] == pytest.approx(math.log(0.5)) and b[0, 2] == -math.inf
    # A soft weight changes the output smoothly between the two.
    w[:, 3] = 0.5
    mid = enc(v, ones_v, l, w)
    assert not torch.allclose(mid, out) and not torch.allclose(mid, enc(v, ones_v, l, ones_l))


def test_save_load_roundtrip(tmp_path, model):
    imgs = _images(2)
    if isinstance(model, SolarModel):
        model.thresholds.copy_(torch.tensor([0.3, 0.4]))
    model.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert type(back) is type(model)
    assert torch.equal(back.encode(imgs, TEXTS[:2]), model.encode(imgs, TEXTS[:2]))
    if isinstance(model, SolarModel):
        assert back.tau == pytest.approx((0.3, 0.4))


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="presets are"):
        load_model("no-such-model")
    with pytest.raises(ValueError, match="overrides apply to presets only"):
        load_model("solar-tiny-random").save(tmp_path / "m") or load_model(tmp_path / "m", dim=8)
    m = load_model("solar-tiny-random", dim=8)
    assert m.encode(texts=["x"]).shape == (1, 8)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="arch"):
        ModelConfig(arch="nope")
    with pytest.raises(ValueError, match="trainable"):
        TowerConfig("tiny-image", trainable="maybe")
    with pytest.raises(ValueError, match="unknown tower kind"):
        build_model(ModelConfig(image_tower=TowerConfig("nope"), text_tower=TowerConfig("tiny-text")))
    with pytest.raises(ValueError, match="is a text tower"):
        build_model(ModelConfig(image_tower=TowerConfig("tiny-text"),
                                text_tower=TowerConfig("tiny-text")))


def test_lora_tower_starts_at_base_and_trains_only_factors(tmp_path):
    base = solar.model.preset("solar-tiny-random")
    lora_cfg = base.replace(image_tower=TowerConfig("tiny-image", image_size=32, patch=8, width=32,
                                                    trainable="lora", lora_targets=("mlp.1",)))
    frozen, tuned = build_model(base), build_model(lora_cfg)
    imgs = _images(3)
    torch.testing.assert_close(tuned.encode(imgs, TEXTS[:3]), frozen.encode(imgs, TEXTS[:3]),
                               **TOL[torch.float32])
    names = [n for n, p in tuned.image_tower.named_parameters() if p.requires_grad]
    assert names == ["backbone.mlp.1.lora_A.default.weight", "backbone.mlp.1.lora_B.default.weight"]
    # Gradients reach the LoRA factors through the tower.
    f = tuned.tower_features(imgs, TEXTS[:3])
    tuned.embed(f).sum().backward()
    assert tuned.image_tower.backbone["mlp"][1].lora_B["default"].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="match no Linear"):
        build_model(base.replace(text_tower=TowerConfig("tiny-text", trainable="lora",
                                                        lora_targets=("nothing",))))


def test_docfeatures_to_casts_floats_only():
    m = load_model("solar-tiny-random")
    f = m.tower_features(_images(2), TEXTS[:2]).to("cpu", torch.float64)
    assert isinstance(f, DocFeatures) and f.image.tokens.dtype == torch.float64
    assert f.image.mask.dtype == torch.bool and f.has_text.dtype == torch.bool
