"""What is installed, built and runnable here (``solar-index info``)."""
from __future__ import annotations

import importlib.metadata as md
import platform


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    import torch

    from . import __version__
    from .ops import BACKENDS, OPS_FOR_INFO, backend_status

    cuda = torch.cuda.is_available()
    info = {
        "solar": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "none (CPU build)",
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "pymilvus": _version("pymilvus"),
        "milvus_lite": _version("milvus-lite"),
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "backends": {},
    }
    for b in BACKENDS:
        per_op = {op: backend_status(b, op) for op in OPS_FOR_INFO}
        built = any(v[0] for v in per_op.values())
        runnable = [op for op, (ok, why) in per_op.items() if ok and why is None]
        # Prefer the reasons of ops that are built ("no CUDA device") over "provides no op".
        reasons = (sorted({why for ok, why in per_op.values() if ok and why})
                   or sorted({why for ok, why in per_op.values() if why}))
        info["backends"][b] = {"built": built, "runs_here": bool(runnable), "ops": runnable,
                               "why_not": reasons[0] if reasons and not runnable else None}
    return info


def render(info: dict) -> str:
    lines = [f"{k:<13}{v}" for k, v in info.items() if k != "backends"]
    lines.append("backends:")
    for b, st in info["backends"].items():
        state = ("runs here" if st["runs_here"] else ("built, cannot run here" if st["built"]
                                                      else "not built"))
        lines.append(f"  {b:<7} {state}" + (f"  [{', '.join(st['ops'])}]" if st["ops"] else ""))
        if st["why_not"]:
            lines.append(f"          {st['why_not']}")
    return "\n".join(lines)
