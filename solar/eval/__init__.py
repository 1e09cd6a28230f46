"""Evaluation: the symmetric MM2MM benchmark built from offline data, metrics, search, reports.

Light to import: rendering, models and Milvus load when used.  See docs/benchmark.md.
"""
from __future__ import annotations

from .construct import BenchmarkConfig, build_benchmark
from .manifest import ASYM_TASKS, Benchmark, Doc, Query, Triplet, load_benchmark
from .metrics import precision, recall_at_k, sym_summary, target_ranks

__all__ = ["BenchmarkConfig", "build_benchmark", "Benchmark", "Doc", "Query", "Triplet",
           "load_benchmark", "ASYM_TASKS", "precision", "recall_at_k", "sym_summary",
           "target_ranks", "evaluate"]


def evaluate(*args, **kwargs):
    """See ``solar.eval.evaluate.evaluate``."""
    from .evaluate import evaluate as _evaluate
    return _evaluate(*args, **kwargs)
