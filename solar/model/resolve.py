"""Towers by name or folder: what ``--image-tower`` / ``--text-tower`` accept.

A name is one of the built-in kinds ("efficientnet-lite0", "minilm-l6": the offline pretrained
towers from pip packages; "tiny-image", "tiny-text": random test towers).  A path is a local
Hugging Face model folder; its family comes from ``model_type`` in its config.json ("clip",
"siglip", "dinov2", "vit", "bert", "xlm-roberta", ...), and a CLIP or SigLIP folder serves as either
tower.  Nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .config import ModelConfig, TowerConfig

NAMES = {"image": ("efficientnet-lite0", "tiny-image"), "text": ("minilm-l6", "tiny-text")}
# Families that have only one modality (anything else is tried as the tower asked for).
IMAGE_ONLY = ("dinov2", "dinov2_with_registers", "vit", "vit_mae", "deit", "beit", "convnext",
              "swin", "efficientnet", "resnet")
TEXT_ONLY = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta",
             "deberta-v2", "modernbert", "nomic_bert", "t5", "e5")


def folder_family(path: str) -> str:
    """The model family of a local Hugging Face folder (``model_type``, "_vision_model" and
    "_text_model" suffixes dropped)."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"tower {path!r}: no config.json (a local Hugging Face model "
                                "folder is expected; nothing is downloaded)")
    name = str(json.loads(cfg_file.read_text()).get("model_type", "")).lower()
    for suffix in ("_vision_model", "_text_model"):
        name = name.removesuffix(suffix)
    return name


def tower_config(spec: str, modality: str, base: Optional[TowerConfig] = None) -> TowerConfig:
    """The TowerConfig for a tower name or folder (``base``: the tower it replaces, whose sizes
    are kept when the kind stays the same)."""
    if spec in NAMES[modality]:
        if base is not None and base.kind == spec:
            return base
        return TowerConfig(spec, image_size=32 if spec == "tiny-image" else 224,
                           max_length=16 if spec == "tiny-text" else 64)
    other = "text" if modality == "image" else "image"
    if spec in NAMES[other]:
        raise ValueError(f"{spec!r} is a {other} tower, not a {modality} tower")
    if not Path(spec).exists():
        raise ValueError(f"{modality} tower {spec!r}: not a local folder, nor one of "
                         f"{', '.join(NAMES[modality])}")
    family = folder_family(spec)
    if family in (TEXT_ONLY if modality == "image" else IMAGE_ONLY):
        raise ValueError(f"{spec!r} is a {family} model, which has no {modality} tower")
    keep = base is not None and base.kind == f"hf-{modality}"
    return TowerConfig(f"hf-{modality}", path=str(Path(spec).resolve()), family=family,
                       max_length=base.max_length if keep else 64,
                       pooling=base.pooling if keep else None)


# LoRA targets of the random test towers (the defaults name attention projections of real towers).
# (The tiny text tower's transformer layers read their weights directly, so its word embedding
# carries the adapter.)
TINY_LORA_TARGETS = {"tiny-image": ("mlp.1",), "tiny-text": ("embed",)}


def with_towers(cfg: ModelConfig, image: Optional[str] = None, text: Optional[str] = None,
                lora_rank: Optional[int] = None, freeze: Optional[bool] = None,
                text_context: Optional[str] = None) -> ModelConfig:
    """``cfg`` with its towers replaced and their training set: LoRA of ``lora_rank``, full
    training (``freeze=False``) or frozen (the default); ``text_context`` sets the text tower's
    ``context``."""
    it = tower_config(image, "image", cfg.image_tower) if image else cfg.image_tower
    tt = tower_config(text, "text", cfg.text_tower) if text else cfg.text_tower
    if text_context is not None:
        tt = TowerConfig(**{**tt.__dict__, "context": text_context})
    if lora_rank is not None or freeze is not None:
        mode = "lora" if lora_rank is not None else "frozen" if freeze else "full"
        it, tt = (_trainable(t, mode, lora_rank) for t in (it, tt))
    return cfg.replace(image_tower=it, text_tower=tt)


def _trainable(t: TowerConfig, mode: str, lora_rank: Optional[int]) -> TowerConfig:
    kw = {**t.__dict__, "trainable": mode}
    if mode == "lora":
        kw["lora_rank"] = lora_rank
        kw["lora_targets"] = TINY_LORA_TARGETS.get(t.kind, t.lora_targets)
    return TowerConfig(**kw)
