"""Document encoders: tower registry, adapters, fusion encoder, SolarModel and the score-fusion
baseline, plus ``load_model``.  Pretrained towers import their libraries only when built."""
from __future__ import annotations

from .base import DocFeatures, DocumentEncoder
from .config import PRESETS, ModelConfig, TowerConfig, preset
from .io import build_model, load_model, save_model
from .solar_model import IntersectionMasks, ScoreFusionModel, SolarModel
from .towers import TOWERS, Tower, TowerOutput, build_tower, register_tower

__all__ = [
    "DocFeatures", "DocumentEncoder", "ModelConfig", "TowerConfig", "PRESETS", "preset",
    "build_model", "load_model", "save_model", "SolarModel", "ScoreFusionModel",
    "IntersectionMasks", "TOWERS", "Tower", "TowerOutput", "build_tower", "register_tower",
]
