"""Build, save and load document encoders (safetensors + JSON config; nothing is unpickled).

A checkpoint folder holds ``config.json`` ({"format": "solar-model", "model": ModelConfig}) and
``model.safetensors``.  Weights of frozen *pretrained* towers are not stored (they come from their
package or local folder named in the config); LoRA towers store only their LoRA factors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from .base import DocumentEncoder
from .config import PRESETS, ModelConfig, preset

FORMAT = "solar-model"
PRETRAINED_KINDS = ("efficientnet-lite0", "minilm-l6", "hf-image", "hf-text")


def build_model(cfg: ModelConfig, seed: int = 0) -> DocumentEncoder:
    """A fresh model for ``cfg`` with the trained parts initialized from ``seed``."""
    from .solar_model import ScoreFusionModel, SolarModel
    cls = SolarModel if cfg.arch == "solar" else ScoreFusionModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(cfg)


def _skipped(cfg: ModelConfig, key: str) -> bool:
    """Whether ``key`` belongs to tower weights that are not stored."""
    for prefix, tcfg in (("image_tower.", cfg.image_tower), ("text_tower.", cfg.text_tower)):
        if key.startswith(prefix) and tcfg.kind in PRETRAINED_KINDS:
            if tcfg.trainable == "frozen":
                return True
            if tcfg.trainable == "lora":
                return "lora_" not in key
    return False


def model_state(model: DocumentEncoder) -> dict:
    """The stored tensors (contiguous CPU copies)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not _skipped(model.cfg, k)}


def save_model(model: DocumentEncoder, path: Union[str, Path]) -> Path:
    """Write config.json + model.safetensors into folder ``path`` (created)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(model_state(model), str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"format": FORMAT, "version": 1,
                                                  "model": model.cfg.to_dict()}, indent=2))
    return path


def load_state(model: DocumentEncoder, state: dict) -> None:
    """Load stored tensors; every parameter that is stored must be present."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _skipped(model.cfg, k)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def read_config(path: Union[str, Path]) -> ModelConfig:
    cfg_file = Path(path) / "config.json"
    data = json.loads(cfg_file.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{cfg_file} is not a solar model config (format {data.get('format')!r})")
    return ModelConfig.from_dict(data["model"])


#: Trained checkpoints shipped inside the package (rebuild: scripts/build_clipart_model.sh).
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"


def shipped_models() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.glob("*") if (p / "config.json").is_file())


def load_model(path_or_name: Union[str, Path], device: Optional[Union[str, torch.device]] = None,
               *, seed: int = 0, **overrides) -> DocumentEncoder:
    """A model from a checkpoint folder (config.json + model.safetensors) or a preset name.

    Shipped trained checkpoints: ``shipped_models()``, e.g. "solar-clipart" (SOLAR stage 1+2 on
    the offline clip-art train split).  Presets (random init, seed 0):
    ``solar.model.config.PRESETS``, e.g. "solar-tiny-random".
    ``overrides`` replace fields of the model config (for example ``dim=128`` for a preset);
    ``seed`` initializes a preset's trained parts.
    The model is returned in eval mode.
    """
    from safetensors.torch import load_file
    p = Path(str(path_or_name))
    if (p / "config.json").is_file():
        cfg = read_config(p)
        if overrides:
            raise ValueError("config overrides apply to presets only, not to checkpoints")
        model = build_model(cfg)
        load_state(model, load_file(str(p / "model.safetensors")))
    elif (SHIPPED_DIR / str(path_or_name) / "config.json").is_file():
        return load_model(SHIPPED_DIR / str(path_or_name), device)
    elif str(path_or_name) in PRESETS:
        model = build_model(preset(str(path_or_name)).replace(**overrides), seed=seed)
    else:
        raise ValueError(f"{str(path_or_name)!r} is neither a checkpoint folder with config.json "
                         f"nor a shipped model {shipped_models()} nor a preset name; presets are "
                         f"{sorted(PRESETS)}")
    if device is not None:
        model = model.to(device)
    return model.eval()
