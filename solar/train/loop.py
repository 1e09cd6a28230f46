"""The training loop shared by all recipes: ``train(TrainConfig) -> summary dict``.

Data order is a pure function of (seed, step): each epoch is a seeded permutation of the training
documents, split into global batches (batch_size x world x grad_accum, last partial batch
dropped), so a resumed run sees exactly the batches it would have seen.  Runs under torchrun
(gloo on CPU, nccl on GPU); bf16 autocast on CUDA.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from solar.model.io import build_model, load_model, save_model
from solar.model.config import PRESETS, preset

from . import dist
from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .features import LiveSource, cached_store, docs_from_pairs
from .recipes import RECIPES


def load_pairs(cfg: TrainConfig) -> list:
    """The offline pairs of ``cfg.data`` for ``cfg.split``."""
    from solar.data import offline
    sets = {"clipart": offline.clipart_pairs, "emoji": offline.emoji_pairs}
    names = cfg.data.split("+")
    for n in names:
        if n not in sets:
            raise ValueError(f"data must be 'clipart', 'emoji' or 'clipart+emoji', got {cfg.data!r}")
    pairs = [p for n in names for p in sets[n]()]
    if cfg.limit is not None:
        pairs = pairs[: cfg.limit]
    return offline.split_by_item(pairs, cfg.val_frac, cfg.test_frac, cfg.split_seed)[cfg.split]


def _device(cfg: TrainConfig, local: Optional[torch.device]) -> torch.device:
    if local is not None:
        return local
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def make_model(cfg: TrainConfig):
    if Path(cfg.model).is_dir():
        if cfg.model_overrides:
            raise ValueError("model_overrides apply to presets only")
        return load_model(cfg.model)
    if cfg.model not in PRESETS:
        raise ValueError(f"model must be a preset {sorted(PRESETS)} or a run/checkpoint folder, "
                         f"got {cfg.model!r}")
    return build_model(preset(cfg.model).replace(**cfg.model_overrides), seed=cfg.seed)


def make_source(cfg: TrainConfig, model, docs, device, log):
    frozen = model.image_tower.frozen and model.text_tower.frozen
    max_tokens = min(cfg.max_text_tokens or model.cfg.max_text_tokens, model.cfg.max_text_tokens)
    if not (frozen and cfg.use_cache):
        return LiveSource(docs, max_tokens)
    model.to(device)
    store, info = cached_store(model, docs, cfg.cache_dir, f"{cfg.data}-{cfg.split}",
                               cfg.feature_batch, cfg.progress and dist.rank() == 0)
    store.max_tokens = max_tokens
    store.texts = [d.text for d in docs]
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
    """Train one recipe; returns a summary (steps, losses, timings, paths).

    ``pairs``: optional list of solar.data.offline Pairs to train on instead of ``cfg.data``.
    """
    local = dist.init_from_env()
    device = _device(cfg, local)
    out = Path(cfg.out_dir)
    if dist.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
    dist.barrier()
    log = _Log(out / "metrics.jsonl", dist.rank() == 0)
    torch.manual_seed(cfg.seed)
    pairs = load_pairs(cfg) if pairs is None else pairs
    docs = docs_from_pairs(pairs)
    model = make_model(cfg)
    t0 = time.perf_counter()
    source = make_source(cfg, model, docs, device, log)
    prep_s = time.perf_counter() - t0
    total = cfg.steps
    gb = cfg.batch_size * dist.world() * cfg.grad_accum
    if len(docs) < gb:
        raise ValueError(f"batch_size*grad_accum*world = {gb} exceeds the {len(docs)} training "
                         "documents; lower batch_size")
    if cfg.epochs is not None:
        total = max(1, math.ceil(cfg.epochs * len(docs) / gb))
    model.to(device).train()
    recipe = RECIPES[cfg.recipe](cfg, total)
    recipe.check(model)
    t1 = time.perf_counter()
    used = torch.cat([batch_indices(len(source), s, a, cfg)
                      for s in range(total) for a in range(cfg.grad_accum)])
    recipe.setup(model, source, device, used)
    setup_s = time.perf_counter() - t1
    opt = make_optimizer(model, cfg)
    start = 0
    if cfg.resume and has_checkpoint(out):
        start = load_checkpoint(out, model, opt, recipe)
        log({"event": "resume", "step": start})
    return _run(cfg, model, opt, recipe, source, device, start, total, log,
                {"feature_seconds": prep_s, "setup_seconds": setup_s, "docs": len(docs)})


def _run(cfg, model, opt, recipe, source, device, start, total, log, info) -> dict:
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
            idx = batch_indices(len(source), step, micro, cfg)
            feats = source.get(idx, model).to(device)
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
            _save(cfg, model, opt, step + 1, recipe)
    train_s = time.perf_counter() - t0
    _save(cfg, model, opt, max(end, start), recipe)
    if dist.rank() == 0 and end >= total:
        save_model(model, cfg.out_dir)
    summary = {"recipe": cfg.recipe, "steps": total, "start_step": start, "end_step": end,
               "losses": losses,
               "train_seconds": train_s, "out_dir": cfg.out_dir, **info}
    log({"event": "done", **{k: v for k, v in summary.items() if k != "losses"}})
    return summary


def _save(cfg, model, opt, step, recipe) -> None:
    if dist.rank() == 0:
        save_checkpoint(cfg.out_dir, model, opt, step, cfg.to_dict(), recipe)
    dist.barrier()
