"""Training: recipes stage1 / stage2 (SOLAR), gcl and clip (baselines), the loop, checkpoints,
data from any ingest source (in memory or streamed), feature cache and distributed helpers.  Entry point: ``train(TrainConfig)`` or
``solar-index train``."""
from __future__ import annotations

from .config import RECIPES, TrainConfig
from .loop import train

__all__ = ["TrainConfig", "train", "RECIPES"]
