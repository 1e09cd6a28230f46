"""solar: one embedding for a whole (image, text) document, for symmetric multimodal retrieval.

``import solar`` is light: it loads torch and the ops facade only.  Triton, the compiled csrc
modules, transformers and pymilvus load on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .ops import (BACKENDS, BackendUnavailable, ColumnGroups, available_backends, build_columns,
                  contrastive_loss, contrastive_loss_reference, gcl_loss, gcl_loss_reference,
                  masked_pool, masked_pool_reference, multi_positive_infonce,
                  multi_positive_infonce_reference, qda_threshold, qda_threshold_from_stats)

_LAZY = {"load_model": ("solar.model", "load_model"), "SolarModel": ("solar.model", "SolarModel")}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'solar' has no attribute {name!r}")


__all__ = [
    "__version__", "masked_pool", "contrastive_loss", "gcl_loss", "multi_positive_infonce",
    "qda_threshold", "qda_threshold_from_stats", "masked_pool_reference",
    "contrastive_loss_reference", "gcl_loss_reference", "multi_positive_infonce_reference",
    "ColumnGroups", "build_columns", "BACKENDS", "BackendUnavailable", "available_backends",
    "load_model", "SolarModel",
]
