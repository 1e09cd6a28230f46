"""Stage-1 composite supervision (solar.train.composites, ``w_compose``): construction, truth,
loss by hand, options, and a short run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from solar.data import Document
from solar.data.composite import cell_labels
from solar.eval.render import pixel_hash
from solar.train import TrainConfig
from solar.train.composites import STOP_WORDS, Composer, compose_loss

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 160, 30),
           "yellow": (230, 200, 20), "purple": (130, 30, 160), "orange": (240, 130, 20),
           "black": (10, 10, 10), "cyan": (20, 200, 200)}
SHAPES = ("disc", "square", "bar")


def _picture(colour, shape):
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (96, 64), "white")
    d = ImageDraw.Draw(img)
    box = {"disc": (20, 8, 68, 56), "square": (24, 10, 72, 54), "bar": (8, 24, 88, 40)}[shape]
    (d.ellipse if shape == "disc" else d.rectangle)(box, fill=COLOURS[colour])
    return img


def _docs():
    out = []
    for c in COLOURS:
        for s in SHAPES:
            out.append(Document(text=f"a {c} {s}. {c} thing", image=lambda c=c, s=s: _picture(c, s),
                                id=f"{c}-{s}"))
    out.append(Document(text="no picture here", id="text-only"))
    return out


def test_construction_is_deterministic_and_seeded():
    docs = _docs()
    a, b = Composer(docs, 12, seed=3).specs(), Composer(docs, 12, seed=3).specs()
    assert a == b and len(a) == 12
    ca, cb = Composer(docs, 12, seed=3), Composer(docs, 12, seed=3)
    assert [pixel_hash(ca.render(s)[0]) for s in a] == [pixel_hash(cb.render(s)[0]) for s in b]
    assert Composer(docs, 12, seed=4).specs() != a


def test_truth_matches_what_was_pasted_and_written():
    docs = _docs()
    comp = Composer(docs, 40, seed=0)
    specs = comp.specs()
    first = set()
    for s in specs:
        assert len({s.a, s.b, s.c}) == 3 and docs[s.a].image is not None
        # B and C share no content word with A (and B none with C)
        assert not (comp.content[s.a] & comp.content[s.c])
        assert not (comp.content[s.b] & (comp.content[s.a] | comp.content[s.c]))
        img, masks = comp.render(s)
        for key, i in (("a", s.a), ("b", s.b)):
            colour = docs[i].id.split("-")[0]
            got = np.asarray(img)[masks[key]]
            # the pasted pixels are the drawing's colour (bicubic edges aside)
            close = (np.abs(got.astype(int) - COLOURS[colour]).sum(axis=1) < 60).mean()
            assert close > 0.8, (key, colour, close)
        assert not (masks["a"] & masks["b"]).any()
        cells = cell_labels(masks, (7, 7))
        assert (cells == 1).any() and (cells == 0).any()
        # every labelled word comes from the caption of its part
        for start, end, label in s.spans:
            word = s.text[start:end].lower()
            src = docs[s.a if label == "a" else s.c].text.lower()
            assert word in src and word not in STOP_WORDS
        assert {lab for *_, lab in s.spans} == {"a", "c"}
        first.add(s.spans[0][2])
    assert first == {"a", "c"}          # the order of the two parts varies: no position shortcut


def test_generic_words_carry_no_label():
    docs = _docs()
    comp = Composer(docs, 20, seed=1)
    assert "thing" in comp.generic          # in every caption
    for s in comp.specs():
        assert all(s.text[a:b].lower() != "thing" for a, b, _ in s.spans)


def test_too_few_documents_refused():
    with pytest.raises(ValueError, match="at least 3"):
        Composer(_docs()[:2], 4)
    with pytest.raises(ValueError, match="positive"):
        Composer(_docs(), 0)


def test_compose_loss_by_hand():
    y = torch.tensor([[1, 0, -1]], dtype=torch.int8)
    sp = torch.tensor([[0.9, -0.9, 5.0]])              # right side of the centre, far out
    low = compose_loss(sp, y, sp, y, center=0.0, temp=0.1)
    assert low.item() < 1e-3
    swapped = compose_loss(-sp, y, -sp, y, center=0.0, temp=0.1)
    z = 9.0                                              # |0.9 / 0.1|
    assert swapped.item() == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(z))), rel=1e-5)
    # the ignored element (-1) never counts: moving it changes nothing
    sp2 = sp.clone()
    sp2[0, 2] = -5.0
    assert compose_loss(sp2, y, sp2, y, 0.0, 0.1).item() == pytest.approx(low.item())
    # a modality without both classes adds 0
    only = torch.tensor([[1, 1, -1]], dtype=torch.int8)
    assert compose_loss(sp, only, sp, y, 0.0, 0.1).item() == pytest.approx(0.5 * low.item())
    g = torch.zeros(1, 3, requires_grad=True)
    compose_loss(g, y, g, y, 0.0, 0.1).backward()
    assert g.grad[0, 0] < 0 < g.grad[0, 1] and g.grad[0, 2] == 0


def test_compose_options_default_off_and_checked():
    c = TrainConfig()
    assert (c.w_compose, c.compose_qda) == (0.0, False)
    for bad in ({"w_compose": -1.0}, {"compose_temp": 0.0}, {"compose_center": 2.0},
                {"compose_n": 1}, {"compose_batch": 1}, {"compose_qda": True},
                {"compose_words": (0, 8)}, {"compose_words": (9, 8)}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def _manifest(tmp_path, n=40):
    rows = []
    for k in range(n):
        c = list(COLOURS)[k % len(COLOURS)]
        s = SHAPES[(k // len(COLOURS)) % len(SHAPES)]
        p = tmp_path / f"img{k}.png"
        _picture(c, s).save(p)
        rows.append({"image": str(p), "text": f"{c} {s} number{k}"})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stage1_with_composites_trains_logs_and_reuses_its_cache(tmp_path):
    from solar.train.loop import train
    data = _manifest(tmp_path)
    base = dict(recipe="stage1", model="solar-tiny-random", data=str(data), steps=3, batch_size=8,
                progress=False, w_compose=1.0, compose_n=16, compose_batch=8, compose_qda=True,
                cache_dir=str(tmp_path / "cache"), val_frac=0.0,
                model_overrides={"mask_scores": "local"})
    train(TrainConfig(out_dir=str(tmp_path / "r1"), **base))
    rows = [json.loads(x) for x in (tmp_path / "r1" / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if r.get("event") == "composites"]
    assert ev and ev[0]["n"] == 16 and ev[0]["cache_hit"] is False
    assert ev[0]["intersection_tokens"] > 0 and ev[0]["difference_tokens"] > 0
    steps = [r for r in rows if "compose" in r]
    assert len(steps) == 3 and all(np.isfinite(r["compose"]) for r in steps)
    names = [p.name for p in (tmp_path / "cache").iterdir()]
    assert any(n.startswith("compose-truth-") for n in names)
    assert any(n.startswith("compose-") and not n.startswith("compose-truth-") for n in names)
    train(TrainConfig(out_dir=str(tmp_path / "r2"), **base))
    rows = [json.loads(x) for x in (tmp_path / "r2" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if r.get("event") == "composites"][0]["cache_hit"] is True
    from solar.model.io import load_model
    m = load_model(str(tmp_path / "r2"))
    assert all(np.isfinite(m.tau))


def test_composites_refuse_a_stream(tmp_path):
    from solar.train.loop import train
    data = _manifest(tmp_path, n=24)
    with pytest.raises(ValueError, match="stream"):
        train(TrainConfig(recipe="stage1", model="solar-tiny-random", data=str(data), steps=2,
                          batch_size=8, progress=False, w_compose=1.0, stream=True,
                          out_dir=str(tmp_path / "r"), val_frac=0.0))


def test_own_alpha_keeps_the_drawings_transparency(tmp_path):
    """``compose_own_alpha``: a clip-art drawing keeps its PNG's alpha (a white interior stays
    white and counts as the drawing); without it near-white pixels are cut out; documents that
    are not from an offline set are cut out either way; the composites' ids differ."""
    from PIL import Image, ImageDraw
    from solar.train.composites import composite_docs
    png = tmp_path / "ring.png"
    img = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((4, 4, 76, 76), fill=(255, 255, 255, 255), outline=(0, 0, 0, 255), width=4)
    img.save(png)
    from solar.data import to_rgb                      # the offline loader: alpha pasted on white
    ring = Document(text="a ring", image=lambda: to_rgb(Image.open(png)), id="ring",
                    image_uri=str(png), source="openclipart")
    plain = Document(text="a ring", image=lambda: to_rgb(Image.open(png)), id="plain")
    own = Composer(_docs(), 4, seed=0, own_alpha=True)
    cut = Composer(_docs(), 4, seed=0)
    own.docs = cut.docs = own.docs + [ring, plain]
    k_ring, k_plain = len(own.docs) - 2, len(own.docs) - 1
    inside = lambda p: np.asarray(p.getchannel("A"))[p.height // 2, p.width // 2]  # noqa: E731
    assert inside(own.picture(k_ring)) == 255          # the white interior is part of the drawing
    assert inside(cut.picture(k_ring)) == 0            # cut out as near-white
    assert inside(own.picture(k_plain)) == 0           # not an offline drawing: cut out
    specs = own.specs()
    ids = lambda c: [x.id for x in composite_docs(c, specs, {}, (7, 7))]  # noqa: E731
    assert set(ids(own)).isdisjoint(ids(cut))
    assert TrainConfig().compose_own_alpha is False
