"""Experiments: what trains models and then evaluates them, above ``solar.train`` and
``solar.eval`` (neither imports this layer, and ``solar.eval`` never imports ``solar.train``).

``table``: the results table (every method and ablation, for every seed):
``python -m solar.experiments.table --preset smoke`` or ``run_table(TableConfig(...))``.
Names load on first use, so ``python -m solar.experiments.table`` runs the module once.
"""
from __future__ import annotations

import importlib

__all__ = ["TableConfig", "PRESETS", "METHODS", "ABLATIONS", "run_table", "render_tables"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".table", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
