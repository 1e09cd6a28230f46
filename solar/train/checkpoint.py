"""Training checkpoints: safetensors + JSON only (no pickles), written atomically.

<run>/checkpoint/
    model.safetensors, config.json     the model (``solar.load_model`` reads this folder)
    trainer.safetensors                optimizer state tensors, RNG states, recipe tensors, extra
                                       loop tensors (``extra.*``: the stream position)
    trainer.json                       step, train config, optimizer hyper-parameters, scalars
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from solar.model.io import load_state, save_model


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(run_dir, model, opt, step: int, cfg_dict: dict, recipe,
                    extra: dict | None = None) -> Path:
    """Write <run_dir>/checkpoint atomically (a temporary folder renamed into place).

    ``extra``: more tensors to keep (read back with ``load_extra``)."""
    from safetensors.torch import save_file
    run_dir = Path(run_dir)
    final, tmp = run_dir / "checkpoint", run_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    tensors, opt_meta = _optimizer_tensors(opt)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for k, v in recipe.state_tensors().items():
        tensors[f"recipe.{k}"] = v.detach().cpu().contiguous()
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
    save_file(tensors, str(tmp / "trainer.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "train_config": cfg_dict,
                                                  "optimizer": opt_meta}, indent=1, default=str))
    old = run_dir / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def has_checkpoint(run_dir) -> bool:
    return (Path(run_dir) / "checkpoint" / "trainer.json").is_file()


def load_checkpoint(run_dir, model, opt, recipe) -> int:
    """Restore model, optimizer, RNG and recipe state; returns the step to continue from."""
    from safetensors.torch import load_file
    ck = Path(run_dir) / "checkpoint"
    load_state(model, load_file(str(ck / "model.safetensors")))
    tensors = load_file(str(ck / "trainer.safetensors"))
    meta = json.loads((ck / "trainer.json").read_text())
    _restore_optimizer(opt, tensors, meta["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    recipe.load_state_tensors({k[len("recipe."):]: v for k, v in tensors.items()
                               if k.startswith("recipe.")})
    return int(meta["step"])


def load_extra(run_dir) -> dict:
    """The ``extra`` tensors of the last checkpoint (empty when there are none)."""
    from safetensors.torch import load_file
    tensors = load_file(str(Path(run_dir) / "checkpoint" / "trainer.safetensors"))
    return {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
