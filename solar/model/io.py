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


def load_state(model: DocumentEncoder, state: dict, name: str = "checkpoint") -> None:
    """Load stored tensors; every parameter that is stored must be present with its shape.
    Raises ValueError naming ``name`` and the first keys that differ."""
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{name} does not match its config: tensor shapes differ for "
                         f"{', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _skipped(model.cfg, k)]
    if missing or unexpected:
        raise ValueError(f"{name} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def read_weights(path: Union[str, Path]) -> dict:
    """The tensors of a safetensors file (never a pickle).  Raises ValueError naming the file
    when it is missing, empty, truncated, corrupt or not safetensors at all."""
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found (a checkpoint folder holds "
                         f"config.json and model.safetensors)")
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...: one clear message
        raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())}"
                         f"); the checkpoint is damaged or was not written by solar "
                         f"(save_model writes it)") from None


def read_config(path: Union[str, Path]) -> ModelConfig:
    """The ModelConfig in ``path``/config.json; ValueError naming the file for unreadable or
    invalid JSON, a wrong format, unknown keys or values of the wrong type."""
    cfg_file = Path(path) / "config.json"
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_file}: cannot read the model config ({err})") from None
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{cfg_file}: the model config is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{cfg_file}: the model config must be a JSON object, "
                         f"got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ValueError(f"{cfg_file} is not a solar model config (format {data.get('format')!r})")
    unknown = sorted(set(data) - {"format", "version", "model"})
    if unknown:
        raise ValueError(f"{cfg_file}: unknown keys {unknown} (expected format, version, model)")
    if "model" not in data:
        raise ValueError(f"{cfg_file}: the model config lacks the 'model' key")
    try:
        return ModelConfig.from_dict(data["model"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{cfg_file}: {err}") from None


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
    p = Path(str(path_or_name))
    if (p / "config.json").is_file():
        cfg = read_config(p)
        if overrides:
            raise ValueError("config overrides apply to presets only, not to checkpoints")
        state = read_weights(p / "model.safetensors")
        model = build_model(cfg)
        load_state(model, state, str(p / "model.safetensors"))
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
