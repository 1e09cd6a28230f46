"""solar: one embedding for a whole (image, text) document, for symmetric multimodal retrieval.

``import solar`` is light: the ops facade (and torch with it) loads on first use of one of its
names (``solar.masked_pool``, ``solar.contrastive_loss``, ...), so the ``solar-index`` command
line starts without torch.  Triton, the compiled csrc modules, transformers and pymilvus load on
first use as well.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_OPS_NAMES = (
    "BACKENDS", "BackendUnavailable", "ColumnGroups", "available_backends", "build_columns",
    "contrastive_loss", "contrastive_loss_reference", "gcl_loss", "gcl_loss_reference",
    "masked_pool", "masked_pool_reference", "multi_positive_infonce",
    "multi_positive_infonce_reference", "qda_threshold", "qda_threshold_from_stats",
)
# name -> (module, attribute); a None attribute is the module itself.
_LAZY = {name: ("solar.ops", name) for name in _OPS_NAMES}
_LAZY.update({"load_model": ("solar.model", "load_model"), "SolarModel": ("solar.model", "SolarModel"),
              "ops": ("solar.ops", None)})


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        if attr is not None and module == "solar.ops":
            globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'solar' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__", "masked_pool", "contrastive_loss", "gcl_loss", "multi_positive_infonce",
    "qda_threshold", "qda_threshold_from_stats", "masked_pool_reference",
    "contrastive_loss_reference", "gcl_loss_reference", "multi_positive_infonce_reference",
    "ColumnGroups", "build_columns", "BACKENDS", "BackendUnavailable", "available_backends",
    "load_model", "SolarModel",
]
