"""Loads the compiled csrc modules and registers the ``cpu`` and ``cuda`` backends."""
from __future__ import annotations

import importlib


def _try(name: str):
    try:
        return importlib.import_module(name), None
    except ImportError as err:
        return None, str(err)


cpu_module, cpu_error = _try("solar._csrc_cpu")
cuda_module, cuda_error = _try("solar._csrc_cuda")
