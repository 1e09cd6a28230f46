"""Training: recipes stage1 / stage2 (SOLAR), gcl and clip (baselines) and their ablations, one
registry of them by name, the loop, checkpoints, data from any ingest source (in memory or
streamed), feature cache and distributed helpers.  Entry point: ``train(TrainConfig)`` or
``solar-index train``; a recipe of your own: ``register_recipe`` (see solar.train.registry)."""
from __future__ import annotations

from .config import TrainConfig
from .loop import train
from .recipes import Recipe
from .registry import (RecipeSpec, recipe_class, recipe_names, recipe_spec, register_recipe,
                       unregister_recipe)

__all__ = ["TrainConfig", "train", "Recipe", "RecipeSpec", "register_recipe",
           "unregister_recipe", "recipe_spec", "recipe_class", "recipe_names"]
