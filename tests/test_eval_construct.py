"""Benchmark construction on real offline data: deterministic, test split only, no trivial positives."""
import json

import pytest

from solar.eval.construct import BenchmarkConfig, build_benchmark, offline_split, verify_renders
from solar.eval.manifest import load_benchmark
from solar.eval.render import pixel_hash, render
from solar.eval.run import manifest_digest

N_ITEMS = 40


def _offline_data_present():
    try:
        from solar.data.offline import clipart_root, emoji_font_path
        clipart_root()
        emoji_font_path()
        import emoji  # noqa: F401
    except (FileNotFoundError, ImportError):
        return False
    return True


pytestmark = pytest.mark.skipif(not _offline_data_present(),
                                reason="offline clip-art / emoji data not installed")


@pytest.fixture(scope="module")
def bench():
    return build_benchmark(BenchmarkConfig(seed=0, max_items=N_ITEMS))


def test_same_seed_same_manifest(bench, tmp_path):
    again = build_benchmark(BenchmarkConfig(seed=0, max_items=N_ITEMS))
    a, b = bench.save(tmp_path / "a.jsonl"), again.save(tmp_path / "b.jsonl")
    assert a.read_bytes() == b.read_bytes()
    other = build_benchmark(BenchmarkConfig(seed=1, max_items=N_ITEMS))
    assert manifest_digest(other) != manifest_digest(bench)


def test_items_come_from_the_test_split_only(bench):
    split = offline_split(BenchmarkConfig())
    test_ids = {p.id for p in split["test"]}
    train_ids = {p.id for p in split["train"]} | {p.id for p in split["val"]}
    items = {d.item for d in bench.docs.values()}
    assert items and items <= test_ids
    assert not items & train_ids
    assert bench.stats["triplets"] == len(bench.triplets) > 10


def test_positive_is_not_a_duplicate(bench):
    for t in bench.triplets:
        a, p, n = bench.docs[t.anchor], bench.docs[t.positive], bench.docs[t.negative]
        ia, ip = render(a.image), render(p.image)
        assert pixel_hash(ia) != pixel_hash(ip), t.item
        assert a.image["source"] == p.image["source"]            # the same drawing ...
        assert a.text.strip().lower() != p.text.strip().lower()  # ... with its information split
        if t.negative_kind == "text_swap":
            assert n.image == p.image and n.text != p.text
        else:
            assert n.text == p.text and n.image["source"] != p.image["source"]
    assert {t.negative_kind for t in bench.triplets} == {"text_swap", "image_swap"}


def test_renders_match_the_manifest_and_round_trip(bench, tmp_path):
    assert verify_renders(bench, limit=30) == 30
    path = bench.save(tmp_path / "m.jsonl")
    loaded = load_benchmark(path)
    assert manifest_digest(loaded) == manifest_digest(bench)
    assert sorted(loaded.pool("sym")) == sorted(bench.pool("sym"))
    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:3] + ['{"kind": "doc", "id": 1}'] + lines[3:]))
    with pytest.raises(ValueError, match="line 4"):
        load_benchmark(bad)
    head = json.loads(lines[0])
    head["format"] = "other"
    bad.write_text("\n".join([json.dumps(head)] + lines[1:]))
    with pytest.raises(ValueError, match="header"):
        load_benchmark(bad)


def test_pools_and_queries_are_consistent(bench):
    for pool in ("sym", "document", "image", "text"):
        keys = [((bench.docs[d].image or {}).get("pixels"), bench.docs[d].text) for d in bench.pool(pool)]
        assert len(keys) == len(set(keys)), f"pool {pool} holds identical documents (forced ties)"
    sym = set(bench.pool("sym"))
    for t in bench.triplets:
        assert {t.anchor, t.positive, t.negative} <= sym
    for task in ("text->document", "image->document", "image->text", "text->image"):
        qs = bench.task_queries(task)
        assert len(qs) == len(bench.triplets)
        for q in qs:
            d = bench.docs[q.query]
            assert (d.image is None) == task.startswith("text") and (d.text is None) == task.startswith("image")


def test_val_twin_uses_val_items_only():
    val = build_benchmark(BenchmarkConfig(seed=0, split="val", max_items=16))
    split = offline_split(BenchmarkConfig())
    items = {d.item for d in val.docs.values()}
    assert items and items <= {p.id for p in split["val"]}


def test_config_errors():
    with pytest.raises(ValueError, match="split"):
        BenchmarkConfig(split="train")
    with pytest.raises(ValueError, match="sources"):
        BenchmarkConfig(sources=("laion",))
    with pytest.raises(ValueError, match="max_items"):
        BenchmarkConfig(max_items=2)
    with pytest.raises(ValueError, match="crop_min"):
        BenchmarkConfig(crop_min=0.3)


def test_item_views_two_views_of_one_item():
    from solar.eval.construct import item_views
    test = offline_split(BenchmarkConfig(sources=("openclipart",)))["test"]
    with_kw = [p for p in test if p.meta["keywords"] and p.meta["title"]][:5]
    views = [(p, item_views(p)) for p in with_kw]
    assert sum(v is not None for _, v in views) >= 3
    for p, v in views:
        if v is None:
            continue
        a, b = v["anchor"], v["positive"]
        assert a["text"] == p.meta["title"] and b["text"] != a["text"]
        assert a["image"]["pixels"] != b["image"]["pixels"]
        assert pixel_hash(render(a["image"])) == a["image"]["pixels"]
        assert item_views(p) == v                                  # a pure function of the item
        assert item_views(p, BenchmarkConfig(seed=1)) != v
    no_kw = next(p for p in test if not p.meta["keywords"])
    assert item_views(no_kw) is None
