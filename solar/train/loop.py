"""The training loop shared by all recipes: ``train(TrainConfig) -> summary dict``.

Data (solar.train.data) is either held in memory or streamed (solar.train.stream).  In memory,
data order is a pure function of (seed, step): each epoch is a seeded permutation of the training
documents, split into global batches (batch_size x world x grad_accum, last partial batch
dropped), so a resumed run sees exactly the batches it would have seen.  Streamed, each rank's
readers follow a seeded order and the checkpoint keeps their positions, with the same guarantee.
Runs under torchrun (gloo on CPU, nccl on GPU); bf16 autocast on CUDA.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from solar.model.config import PRESETS, preset
from solar.model.io import load_model, save_model
from solar.model.resolve import with_towers

from . import dist
from .checkpoint import has_checkpoint, load_checkpoint, load_extra, save_checkpoint
from .config import TrainConfig
from .data import QuarantineLog, is_offline, offline_pairs, plan_data, specs_of
from .features import LiveSource, cached_store
from .registry import recipe_class
from .validate import validate


def load_pairs(cfg: TrainConfig) -> list:
    """The offline pairs of ``cfg.data`` (an offline spec such as "clipart+emoji") for ``cfg.split``."""
    from solar.data import offline
    spec = "+".join(specs_of(cfg.data))
    if not is_offline(spec):
        raise ValueError(f"load_pairs reads the offline sets only, got {cfg.data!r}")
    pairs = offline_pairs(spec, cfg.limit)
    return offline.split_by_item(pairs, cfg.val_frac, cfg.test_frac, cfg.split_seed)[cfg.split]


def _device(cfg: TrainConfig, local: Optional[torch.device]) -> torch.device:
    if local is not None:
        return local
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def make_model(cfg: TrainConfig):
    """The starting model: ``solar.load_model`` of a preset (with ``model_overrides`` and the
    chosen towers), a shipped model name or a checkpoint/run folder."""
    overrides = dict(cfg.model_overrides)
    towers = (cfg.image_tower, cfg.text_tower, cfg.lora_rank, cfg.freeze_towers, cfg.text_context)
    if any(t is not None for t in towers):
        if cfg.model not in PRESETS:
            raise ValueError(f"towers are chosen when training starts from a preset "
                             f"{sorted(PRESETS)}; {cfg.model!r} brings its own")
        mc = with_towers(preset(cfg.model).replace(**overrides), *towers)
        overrides.update(image_tower=mc.image_tower, text_tower=mc.text_tower)
    try:
        return load_model(cfg.model, seed=cfg.seed, **overrides)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"model {cfg.model!r}: {err}") from None


def text_budget(cfg: TrainConfig, model) -> int:
    return min(cfg.max_text_tokens or model.cfg.max_text_tokens, model.cfg.max_text_tokens)


def make_source(cfg: TrainConfig, model, docs, device, log, name: str = "docs"):
    """Tower features: the on-disk cache for frozen towers on up to ``stream_above`` documents,
    live tower passes otherwise."""
    frozen = model.image_tower.frozen and model.text_tower.frozen
    max_tokens = text_budget(cfg, model)
    if not (frozen and cfg.use_cache and len(docs) <= cfg.stream_above):
        return LiveSource(docs, max_tokens)
    model.to(device)
    store, info = cached_store(model, docs, cfg.cache_dir, name,
                               cfg.feature_batch, cfg.progress and dist.rank() == 0)
    store.max_tokens = max_tokens
    store.texts = [d.text for d in docs]
    store.docs = docs                   # recipes that build from the documents (composites)
    log({"event": "feature_cache", **info, "docs": len(docs)})
    return store


def batch_indices(n: int, step: int, micro: int, cfg: TrainConfig) -> torch.Tensor:
    """Document indices of (step, micro-step) on this rank."""
    B, W = cfg.batch_size, dist.world()
    gb = B * W * cfg.grad_accum
    per_epoch = n // gb
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
    chunk = perm[pos * gb:(pos + 1) * gb]
    start = (micro * W + dist.rank()) * B
    return chunk[start:start + B]


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr [I]."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.trainable_parameters()
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=cfg.lr)


class _Log:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def __call__(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record, default=float) + "\n")


def train(cfg: TrainConfig, pairs: Optional[list] = None) -> dict:
    """Train one recipe; returns a summary (steps, losses, timings, data counts, paths).

    ``pairs``: optional list of solar.data.offline Pairs to train on instead of ``cfg.data``.
    """
    local = dist.init_from_env()
    device = _device(cfg, local)
    out = Path(cfg.out_dir)
    resuming = cfg.resume and has_checkpoint(out)
    if dist.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not resuming:
            for f in [*out.glob("quarantine*.jsonl"), *out.glob("doc_ids.rank*.jsonl")]:
                f.unlink()
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    dist.barrier()
    log = _Log(out / "metrics.jsonl", dist.rank() == 0)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    data = plan_data(cfg, out if dist.rank() == 0 else None, pairs)
    read_s = time.perf_counter() - t0
    model = make_model(cfg)
    info = {"read_seconds": read_s, "data": "stream" if data.streaming else "memory"}
    log({"event": "data", **info, "val_docs": len(data.val_docs),
         "records": data.stream.total if data.streaming else len(data.docs)})
    if data.streaming:
        summary = _train_stream(cfg, model, data, device, log, info)
    else:
        summary = _train_docs(cfg, model, data, device, log, info)
    q = _quarantine_counts(data.quarantine, device, summed=data.streaming)
    summary["quarantined"] = q
    log({"event": "quarantine", "counts": q, "file": str(out / "quarantine.jsonl")})
    if dist.rank() == 0 and data.val_docs and summary["end_step"] >= summary["steps"]:
        summary["val"] = validate(model, data.val_docs, device)
        log({"event": "val", "docs": len(data.val_docs), **summary["val"]})
    return summary


def _train_docs(cfg, model, data, device, log, info) -> dict:
    """Documents in memory: cached or live tower features, batches by (seed, step)."""
    docs = data.docs
    t0 = time.perf_counter()
    source = make_source(cfg, model, docs, device, log, data.cache_name)
    prep_s = time.perf_counter() - t0
    total = cfg.steps
    gb = cfg.batch_size * dist.world() * cfg.grad_accum
    if len(docs) < gb:
        raise ValueError(f"batch_size*grad_accum*world = {gb} exceeds the {len(docs)} training "
                         "documents; lower batch_size")
    if cfg.epochs is not None:
        total = max(1, math.ceil(cfg.epochs * len(docs) / gb))
    model.to(device).train()
    recipe = recipe_class(cfg.recipe)(cfg, total)
    recipe.check(model)
    t1 = time.perf_counter()
    used = torch.cat([batch_indices(len(source), s, a, cfg)
                      for s in range(total) for a in range(cfg.grad_accum)])
    recipe.log = log
    recipe.setup(model, source, device, used)
    setup_s = time.perf_counter() - t1
    opt = make_optimizer(model, cfg)
    start = 0
    if cfg.resume and has_checkpoint(cfg.out_dir):
        start = load_checkpoint(cfg.out_dir, model, opt, recipe)
        log({"event": "resume", "step": start})
    ids = _IdLog(cfg)

    def fetch(step, micro):
        idx = batch_indices(len(source), step, micro, cfg)
        ids(step, micro, [source.ids[i] for i in idx.tolist()])
        return source.get(idx, model).to(device), idx, source

    return _run(cfg, model, opt, recipe, fetch, device, start, total, log, lambda: {},
                {"feature_seconds": prep_s, "setup_seconds": setup_s, "docs": len(docs), **info})


def _train_stream(cfg, model, data, device, log, info) -> dict:
    """A stream of shards read and decoded by DataLoader workers (solar.train.stream)."""
    from .stream import DocStream, WorkerState, make_loader
    cls = recipe_class(cfg.recipe)
    per_batch = cls.setup_per_batch
    K, W, r = max(1, cfg.data_workers), dist.world(), dist.rank()
    states = [WorkerState() for _ in range(K)]
    probe = DocStream(data.stream, cfg.batch_size, cfg.data_workers, r, W, states)
    per_epoch = probe.batches_per_epoch // cfg.grad_accum
    if per_epoch < 1:
        raise ValueError("grad_accum exceeds the batches per epoch of the stream")
    total = cfg.steps if cfg.epochs is None else max(1, math.ceil(cfg.epochs * per_epoch))
    model.to(device).train()
    recipe = cls(cfg, total)
    recipe.log = log
    recipe.check(model)
    recipe.start_stream()
    if not per_batch:
        recipe.setup(model, None, device, None)
    opt = make_optimizer(model, cfg)
    start = 0
    if cfg.resume and has_checkpoint(cfg.out_dir):
        start = load_checkpoint(cfg.out_dir, model, opt, recipe)
        saved = load_extra(cfg.out_dir).get("stream_state")
        if saved is None or tuple(saved.shape) != (W, K, 3):
            raise ValueError(f"the checkpoint's stream position was saved for another world size "
                             f"or data_workers (saved {None if saved is None else list(saved.shape[:2])}, "
                             f"now [{W}, {K}]); resume with the same torchrun size and workers")
        states = [WorkerState(*map(int, row)) for row in saved[r]]
        log({"event": "resume", "step": start})
    ds = DocStream(data.stream, cfg.batch_size, cfg.data_workers, r, W, states,
                   offset=(start * cfg.grad_accum) % K, shuffle_buffer=cfg.shuffle_buffer,
                   seed=cfg.seed, prepare=model.preparer())
    batches = iter(make_loader(ds, cfg.data_workers))
    qlog = data.quarantine if r == 0 else QuarantineLog(
        Path(cfg.out_dir) / f"quarantine.rank{r}.jsonl")
    data.quarantine = qlog
    ids, max_tokens = _IdLog(cfg), text_budget(cfg, model)

    def fetch(step, micro):
        b = next(batches)
        states[b["q"]] = WorkerState(*b["state"])
        for bad in b["bad"]:
            qlog.add(bad)
        ids(step, micro, b["ids"])
        feats = model.prepared_features(b["prepared"]).trim_text(max_tokens).to(device)
        idx = torch.arange(len(b["ids"]))
        if not per_batch:
            return feats, idx, None
        source = BatchSource(feats, b["ids"])  # stage 2: the frozen stage-1 masks of this batch
        recipe.setup(model, source, device, None)
        return feats, idx, source

    def extra():
        st = torch.tensor([[s.epoch, s.cursor, s.made] for s in states], dtype=torch.long)
        return {"stream_state": dist.all_gather_nograd(st.to(device)).cpu().view(W, K, 3)}

    try:
        return _run(cfg, model, opt, recipe, fetch, device, start, total, log, extra,
                    {"docs": data.stream.total, "batches_per_epoch": per_epoch, **info})
    finally:
        del batches


class BatchSource:
    """One batch's DocFeatures behind the ``get(idx)`` interface of a document source, so a recipe
    that prepares per-document state in ``setup`` (stage 2's frozen masks) can run on a stream,
    preparing each batch as it comes.  ``ids``: the documents' content ids, as int64 (the first
    60 bits), which name a document across batches and ranks."""

    def __init__(self, feats, ids=()):
        self.feats = feats
        self.ids = torch.tensor([int(i[:15], 16) for i in ids], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.feats)

    def get(self, idx: torch.Tensor, model=None):
        f, i = self.feats, idx.to(self.feats.has_image.device)
        pick = lambda o: type(o)(o.tokens[i], o.mask[i], o.pooled[i])  # noqa: E731
        return type(f)(pick(f.image), pick(f.text), f.has_image[i], f.has_text[i])


class _IdLog:
    """Each rank's batch ids per micro-step (``log_ids``), for checking data order."""

    def __init__(self, cfg):
        self.path = Path(cfg.out_dir) / f"doc_ids.rank{dist.rank()}.jsonl" if cfg.log_ids else None

    def __call__(self, step, micro, ids) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, "micro": micro, "ids": ids}) + "\n")


def _quarantine_counts(q: QuarantineLog, device, summed: bool) -> dict:
    """Quarantine counts by kind (``summed``: each rank saw its own records; add them up)."""
    from solar.data.records import KINDS
    kinds = sorted(set(KINDS) | set(q.counts))
    if summed and dist.world() > 1:
        kinds = list(KINDS) + ["other"]
        v = torch.tensor([q.counts.get(k, 0) for k in KINDS]
                         + [sum(n for k, n in q.counts.items() if k not in KINDS)])
        v = dist.all_reduce_sum(v.to(device)).cpu()
        return {k: int(n) for k, n in zip(kinds, v.tolist()) if n}
    return {k: q.counts[k] for k in kinds if q.counts.get(k)}


def _run(cfg, model, opt, recipe, fetch, device, start, total, log, extra, info) -> dict:
    from tqdm.auto import tqdm
    params = model.trainable_parameters()
    amp = cfg.amp and device.type == "cuda"
    losses, t0 = [], time.perf_counter()
    end = min(total, cfg.stop_at) if cfg.stop_at else total
    bar = tqdm(range(start, end), desc=cfg.recipe, initial=start, total=total,
               disable=not (cfg.progress and dist.rank() == 0))
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, cfg)
        opt.zero_grad(set_to_none=True)
        step_loss, metrics = 0.0, {}
        for micro in range(cfg.grad_accum):
            feats, idx, source = fetch(step, micro)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, metrics = recipe.loss(model, feats, idx, step, source)
            (loss / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
        dist.average_gradients(params)
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
        opt.step()
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        log({"step": step + 1, "loss": step_loss, "lr": opt.param_groups[0]["lr"],
             "grad_norm": None if gnorm is None else float(gnorm), **metrics})
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            _save(cfg, model, opt, step + 1, recipe, extra())
    train_s = time.perf_counter() - t0
    _save(cfg, model, opt, max(end, start), recipe, extra())
    if dist.rank() == 0 and end >= total:
        save_model(model, cfg.out_dir)
    summary = {"recipe": cfg.recipe, "steps": total, "start_step": start, "end_step": end,
               "losses": losses,
               "train_seconds": train_s, "out_dir": cfg.out_dir, **info}
    log({"event": "done", **{k: v for k, v in summary.items() if k != "losses"}})
    return summary


def _save(cfg, model, opt, step, recipe, extra) -> None:
    if dist.rank() == 0:
        save_checkpoint(cfg.out_dir, model, opt, step, cfg.to_dict(), recipe, extra)
    dist.barrier()
