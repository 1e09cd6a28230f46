"""Experiments: what trains models and then evaluates them, above ``solar.train`` and
``solar.eval`` (neither imports this layer, and ``solar.eval`` never imports ``solar.train``).

``table``: the results table (every method and ablation, for every seed):
``python -m solar.experiments.table --preset smoke`` or ``run_table(TableConfig(...))``.
"""
from __future__ import annotations

from .table import ABLATIONS, METHODS, PRESETS, TableConfig, render_tables, run_table

__all__ = ["TableConfig", "PRESETS", "METHODS", "ABLATIONS", "run_table", "render_tables"]
