"""The method's options beyond the papers' form (docs/method.md): defaults, and hand-checked values."""
import math

import pytest
import torch
import torch.nn.functional as F

from solar.model import build_model, preset
from solar.train import TrainConfig
from solar.train.losses import (element_alignment, empty_cells, empty_rejection, gla_hinge,
                                gla_local_hinge, gla_smoothmax_hinge, local_alignment)
from solar.train.mixing import keyword_part, mix_patches, mix_texts, token_owners
from solar.train.recipes import crop_keep


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_defaults_are_the_papers_form():
    c = TrainConfig()
    assert (c.gla_form, c.w_local, c.mix_text, c.mix_image) == ("mean", 0.0, 0.0, 0.0)
    assert c.local_form == "pair" and c.neg_form == "hide"
    assert (c.crop_views, c.token_drop, c.anchor_view, c.neg_min_share, c.s2_distill) == (0.0, 0.0, False, 0.0, 0.0)
    m = preset("solar-offline")
    assert (m.readout, m.mask_scores) == ("cls", "global")
    for bad in ({"mix_text": 1.5}, {"w_local": -1.0}, {"gla_temp": 0.0}, {"crop_views": 2.0},
                {"local_form": "tokens"}, {"neg_form": "replace"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_local_hinge_by_hand():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64).repeat(2, 1, 1)   # (2, 2, 2)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    w = torch.ones(2, 2, dtype=torch.bool)
    # doc 0: element [1,0] owns row 0 (s=1 vs 0: ok), element [0,1] owns row 0 (s=0 vs 1: 1 + d)
    # doc 1: element [1,0] owns row 1 (0 vs 1: 1 + d), element [0,1] owns row 1 (ok)
    d = 0.1
    assert gla_local_hinge(x, w, g, d).item() == pytest.approx((2 * (1 + d)) / 4)
    owner = torch.tensor([[0, 1], [0, 1]])          # every element owned by its matching row
    assert gla_local_hinge(x, w, g, d, owner=owner).item() == 0.0


def test_smoothmax_interpolates_between_mean_and_max():
    x, g = _unit(5, 7, 8, seed=1), _unit(5, 8, seed=2)
    w = torch.rand(5, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    w[:, 0] = True
    mean, _ = gla_hinge(x, w, g, 0.2)
    assert gla_smoothmax_hinge(x, w, g, 0.2, 1e5).item() == pytest.approx(mean.item(), abs=1e-4)
    # temp -> 0: pair score is the best element
    s = torch.einsum("bld,jd->blj", x, g).masked_fill(~w[:, :, None], -2).max(dim=1).values
    pos = s.diagonal()[:, None]
    off = ~torch.eye(5, dtype=torch.bool)
    want = (torch.relu(s - pos + 0.2) * off).sum() / off.sum()
    assert gla_smoothmax_hinge(x, w, g, 0.2, 1e-4).item() == pytest.approx(want.item(), abs=1e-3)


def test_local_alignment_prefers_matching_pairs():
    img = _unit(4, 6, 8, seed=4)
    txt = img[:, :3].clone()                            # each text's tokens are its image's patches
    wt, wi = torch.ones(4, 3, dtype=torch.bool), torch.ones(4, 6, dtype=torch.bool)
    good = local_alignment(txt, wt, img, wi, 0.05)
    bad = local_alignment(txt.roll(1, dims=0), wt, img, wi, 0.05)
    assert good.item() < 0.1 < bad.item()
    assert local_alignment(txt[:1], wt[:1], img[:1], wi[:1], 0.05).item() == 0.0


def test_element_alignment_by_hand():
    # 2 documents; text 0 has one token equal to image 0's patch and one equal to image 1's
    e = torch.eye(3, dtype=torch.float64)
    img = torch.stack([e[[0, 2]], e[[1, 2]]])                   # (2, 2, 3); patch 2 padding
    wi = torch.tensor([[True, False], [True, False]])
    txt = torch.stack([e[[0, 1]], e[[1, 0]]])                   # (2, 2, 3)
    wt = torch.ones(2, 2, dtype=torch.bool)
    t = 0.5
    # s(x, j) = cos(x, image j's only valid patch): 1 for the matching image, 0 for the other
    hit, miss = F.cross_entropy(torch.tensor([[1 / t, 0.0]]), torch.tensor([0])).item(), None
    miss = F.cross_entropy(torch.tensor([[0.0, 1 / t]]), torch.tensor([0])).item()
    # own rows: per document one token matches its image (hit), one the other image (miss)
    assert element_alignment(txt, wt, img, wi, t).item() == pytest.approx((hit + miss) / 2)
    # owners that follow the content: every token picks the image it matches
    owner = torch.tensor([[0, 1], [1, 0]])
    assert element_alignment(txt, wt, img, wi, t, owner=owner).item() == pytest.approx(hit)
    # an invalid element does not count; a partner without valid locals is never a choice
    wt2 = torch.tensor([[True, False], [False, True]])
    assert element_alignment(txt, wt2, img, wi, t).item() == pytest.approx((hit + miss) / 2)
    wi2 = torch.tensor([[True, False], [False, False]])
    assert element_alignment(txt, wt, img, wi2, t).item() == pytest.approx(0.0, abs=1e-9)
    # "select": each image picks its elements among all 4 tokens (2 match it: 1/t, 2 do not: 0)
    lse = math.log(2 * math.exp(1 / t) + 2)
    assert element_alignment(txt, wt, img, wi, t, direction="select").item() == pytest.approx(lse - 1)
    assert element_alignment(txt, wt, img, wi, t, owner=owner,
                             direction="select").item() == pytest.approx(lse - 1 / t)
    both = element_alignment(txt, wt, img, wi, t, direction="both").item()
    assert both == pytest.approx((hit + miss) / 2 + lse - 1)
    with pytest.raises(ValueError, match="direction"):
        element_alignment(txt, wt, img, wi, t, direction="rows")


def test_empty_cells_and_their_rejection_by_hand():
    blank = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)          # (P=2, d=2)
    tokens = torch.tensor([[[2.0, 0.1], [1.0, 0.0]],                             # cell 0 blank-like
                           [[0.0, 3.0], [0.0, 1.0]]], dtype=torch.float64)       # cell 1 of doc 0 not
    w = torch.tensor([[True, True], [False, True]])
    assert empty_cells(tokens, blank, w, 0.9).tolist() == [[True, False], [False, True]]
    e = torch.eye(3, dtype=torch.float64)
    patches = torch.stack([e[[0, 1]], e[[2, 2]]])                                # (2, 2, 3)
    texts = torch.stack([e[[0, 2]], e[[1, 1]]])                                  # (2, 2, 3)
    wt = torch.tensor([[True, True], [True, False]])
    empty = torch.tensor([[True, False], [False, False]])
    t, null = 0.5, 0.2
    # the empty patch e0: best token of text 0 is e0 (cos 1), of text 1 is e1 (cos 0)
    want = math.log(math.exp(null / t) + math.exp(1 / t) + math.exp(0.0)) - null / t
    assert empty_rejection(patches, empty, texts, wt, t, null).item() == pytest.approx(want)
    assert empty_rejection(patches, torch.zeros_like(empty), texts, wt, t, null).item() == 0.0
    with pytest.raises(ValueError):
        TrainConfig(w_empty=-1.0)


def test_text_mixing_owners_follow_the_appended_words():
    m = build_model(preset("solar-tiny-random"))
    texts = ["green mug of tea. beverage, tea", "harp. music, instrument", "red car"]
    mixed, other, cut = mix_texts(texts, 1.0, torch.Generator().manual_seed(0))
    for i, t in enumerate(mixed):
        assert t.startswith(texts[i].rstrip(" .,")) and t[cut[i]:] == keyword_part(texts[int(other[i])])
        assert int(other[i]) != i
    own = token_owners(m.text_tower, mixed, cut, other, 12, offset=10)
    words = mixed[0].lower().replace(".", " ").replace(",", " ").split()
    n_own = len(texts[0].replace(".", " ").replace(",", " ").split())
    assert own[0, :n_own].tolist() == [10] * n_own
    assert own[0, n_own:len(words)].tolist() == [10 + int(other[0])] * (len(words) - n_own)
    untouched, _, cut0 = mix_texts(texts, 0.0, torch.Generator().manual_seed(0))
    assert untouched == texts and cut0 == [None] * 3


def test_patch_mixing_moves_one_half_with_its_owner():
    tok = torch.arange(3 * 16, dtype=torch.float32).view(3, 16, 1).repeat(1, 1, 2)
    mixed, own = mix_patches(tok, 1.0, torch.Generator().manual_seed(0), offset=5)
    for i in range(3):
        moved = own[i] != 5 + i
        assert moved.sum() == 8                         # half of the 4 x 4 grid
        j = int(own[i][moved][0]) - 5
        assert torch.equal(mixed[i][moved], tok[j][moved]) and torch.equal(mixed[i][~moved], tok[i][~moved])


def test_crop_keep_drops_whole_grid_rows_or_columns():
    keep = crop_keep((50, 49), 0.3, torch.Generator().manual_seed(0)).view(50, 7, 7)
    for k in keep:
        rows, cols = (~k).all(dim=1), (~k).all(dim=0)
        dropped = int(rows.sum()) + int(cols.sum())
        assert 1 <= dropped <= 3 and (~k).sum() == 7 * dropped


def test_readout_and_local_scores_options():
    base = preset("solar-tiny-random")
    for kw in ({"readout": "cls+pooled"}, {"mask_scores": "local"}):
        m = build_model(base.replace(**kw), seed=0).eval()
        emb = m.encode(texts=["a red fox", "blue sky"])
        assert emb.shape == (2, base.dim) and torch.allclose(emb.norm(dim=-1), torch.ones(2))
        f = m.tower_features(texts=["a red fox", "blue sky"])
        assert m.diagonal_scores(f)[0].shape[0] == 2
    # "local" scores are each element's best cosine among the partner's locals
    m = build_model(base.replace(mask_scores="local"), seed=0).eval()
    from PIL import Image
    imgs = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    f = m.tower_features(imgs, ["a red fox", "blue sky"])
    tok, pat = m.diagonal_scores(f)
    v, l = m.locals(f)
    pv, pl = m.project_locals(v), m.project_locals(l)
    want = torch.einsum("td,pd->tp", pl[0], pv[0]).max(dim=1).values
    assert torch.allclose(tok[0][f.text_weights[0]], want[f.text_weights[0]], atol=1e-6)


def test_swap_partners_pair_every_row_with_another_and_skip_duplicates():
    from types import SimpleNamespace
    from solar.train.recipes import swap_partners
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])   # rows 0 and 2: same caption
    image = torch.eye(4)
    feats = SimpleNamespace(text=SimpleNamespace(pooled=text), image=SimpleNamespace(pooled=image),
                            has_text=torch.ones(4, dtype=torch.bool),
                            has_image=torch.ones(4, dtype=torch.bool))
    seen = set()
    for seed in range(20):
        p, ok = swap_partners(feats, torch.Generator().manual_seed(seed))
        r = int(p[0])
        seen.add(r)
        assert torch.equal(p, (torch.arange(4) + r) % 4) and r != 0
        for i in range(4):
            assert ok[i, 0] == (not torch.equal(text[i], text[p[i]]))    # text swapped in
            assert ok[i, 1]                                               # pictures all differ
    assert seen == {1, 2, 3}
    one = SimpleNamespace(text=SimpleNamespace(pooled=text[:1]), image=SimpleNamespace(pooled=image[:1]),
                          has_text=torch.ones(1, dtype=torch.bool), has_image=torch.ones(1, dtype=torch.bool))
    assert not swap_partners(one, torch.Generator())[1].any()
