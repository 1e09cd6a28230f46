"""Shared machinery of the microbenchmarks: size presets, providers, timed phases, peak memory,
roofline figures and the results files.

Preset: ``--preset tiny|cpu|gpu`` or ``SOLAR_BENCH_PRESET`` (default ``tiny``).  Results of the
``cpu`` and ``gpu`` presets go to ``bench/results/``; ``tiny`` is a smoke run whose numbers mean
nothing, so it writes to ``$SOLAR_BENCH_OUT`` or a temporary folder instead.
"""
from __future__ import annotations

import ctypes
import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

import solar
from solar.ops.registry import backend_status

ROOT = Path(__file__).resolve().parent
PRESETS = ("tiny", "cpu", "gpu")
PROVIDERS = ("solar-triton", "solar-cuda", "solar-cpu", "torch-eager", "torch-compile", "inf-cl")
PHASES = ("fwd", "bwd", "fwdbwd")


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    name: str
    device: str
    dtype: torch.dtype
    rounds: int
    warmup: int
    pool: tuple          # ((B, L, D, mask), ...) mask in {"soft", "hard"}
    loss: tuple          # ((B, D, k), ...) symmetric contrastive loss with k hard negatives
    gcl: tuple           # ((B, D), ...)


PRESET_TABLE = {
    "tiny": Preset("tiny", "cuda" if torch.cuda.is_available() else "cpu", torch.float32, 3, 1,
                   pool=((4, 33, 64, "soft"),), loss=((64, 32, 0), (64, 32, 2)), gcl=((32, 32),)),
    "cpu": Preset("cpu", "cpu", torch.float32, 5, 1,
                  pool=((256, 197, 384, "soft"), (256, 197, 384, "hard")),
                  loss=((4096, 384, 0), (4096, 384, 2)), gcl=((2048, 384),)),
    "gpu": Preset("gpu", "cuda", torch.bfloat16, 20, 3,
                  pool=((1024, 577, 768, "hard"), (1024, 577, 768, "soft")),
                  loss=tuple((B, 768, k) for B in (4096, 16384, 32768) for k in (0, 2)),
                  gcl=((16384, 768),)),
}


def preset_name(config=None) -> str:
    name = (config.getoption("--preset", None) if config is not None else None) \
        or os.environ.get("SOLAR_BENCH_PRESET", "tiny")
    if name not in PRESETS:
        raise pytest.UsageError(f"preset must be one of {PRESETS}, got {name!r}")
    return name


def current_preset() -> Preset:
    return PRESET_TABLE[os.environ.get("SOLAR_BENCH_PRESET", "tiny")]


# --------------------------------------------------------------------------- providers
def backend_for(provider: str) -> Optional[str]:
    return {"solar-triton": "triton", "solar-cuda": "cuda", "solar-cpu": "cpu"}.get(provider)


def skip_reason(provider: str, preset: Preset, op: str, *tensors) -> Optional[str]:
    """None when ``provider`` can run ``op`` on these inputs here, else why not."""
    if preset.device == "cuda" and not torch.cuda.is_available():
        return "preset needs a CUDA device"
    backend = backend_for(provider)
    if backend is not None:
        built, why = backend_status(backend, op)
        if not built or why:
            return why or f"backend {backend!r} not built"
        if backend == "triton" and preset.device == "cpu" and preset.name != "tiny":
            return "Triton on CPU runs only in the interpreter; timing it is meaningless"
        from solar.ops.registry import get_impl
        return get_impl(op, backend).supports(*tensors)
    if provider == "torch-compile" and preset.device == "cpu" and preset.name == "tiny":
        return "inductor's C++ compile does not fit the smoke budget; run preset 'cpu'"
    if provider == "inf-cl":
        try:
            import inf_cl  # noqa: F401
        except ImportError:
            return "inf-cl is not installed (pip install inf-cl on a GPU machine)"
        if op != "contrastive_loss" or preset.device != "cuda":
            return "inf-cl provides only the CLIP loss, on CUDA"
    return None


def compiled(fn: Callable) -> Callable:
    """torch.compile of a reference, cached per function."""
    cache = compiled.__dict__.setdefault("cache", {})
    if fn not in cache:
        cache[fn] = torch.compile(fn)
    return cache[fn]


# --------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def leaves(tensors, requires):
    return [t.detach().clone().requires_grad_(r) for t, r in zip(tensors, requires)]


def run_phase(benchmark, phase: str, fn: Callable, inputs, requires, upstream, device: str,
              preset: Preset) -> None:
    """Time one phase with pytest-benchmark; the device is synchronized inside every timed call.
    fn(*inputs) -> output; ``upstream`` is fed to output.backward (None for a scalar loss).
    Fresh leaves (and, for "bwd", the forward) are made in the untimed setup."""
    def fresh():
        return (leaves(inputs, requires),), {}

    def forward_done():
        out = fn(*leaves(inputs, requires))
        sync(device)
        return (out,), {}

    def fwd(args):
        fn(*args)
        sync(device)

    def bwd(out):
        out.backward(upstream)
        sync(device)

    def both(args):
        fn(*args).backward(upstream)
        sync(device)

    target, setup = {"fwd": (fwd, fresh), "bwd": (bwd, forward_done), "fwdbwd": (both, fresh)}[phase]
    benchmark.pedantic(target, setup=setup, rounds=preset.rounds, warmup_rounds=preset.warmup,
                       iterations=1)


def timing(benchmark) -> dict:
    """p20 / p50 / p80 in ms from pytest-benchmark's samples (empty when it is disabled)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return {}
    data = sorted(stats.stats.data)
    q = lambda p: data[min(len(data) - 1, int(round(p * (len(data) - 1))))] * 1e3  # noqa: E731
    return {"p20_ms": q(0.2), "p50_ms": q(0.5), "p80_ms": q(0.8), "rounds": len(data)}


# --------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    """Return freed memory to the OS: glibc's free lists and the cpu backend's reused scratch
    buffers (so a call's workspace counts in its own peak, not in the baseline)."""
    from solar.ops import _native
    if _native.cpu_module is not None:
        _native.cpu_module.release_workspace()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn: Callable, device: str) -> tuple[Optional[int], str]:
    """Extra peak memory of fn() in bytes, and how it was measured.

    CUDA: torch.cuda.max_memory_allocated above what was allocated before the call.  CPU: the
    peak resident set size sampled every 0.5 ms above the RSS before the call, after malloc_trim
    and after the cpu backend frees its scratch buffers (a lower bound: pages the allocator kept
    from earlier calls are not counted)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, "cuda max_memory_allocated delta"
    if not os.path.exists("/proc/self/statm"):
        return None, "unavailable"
    _trim()
    base = _rss_bytes()
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    peak[0] = max(peak[0], _rss_bytes())
    return peak[0] - base, "sampled peak RSS delta (lower bound)"


# --------------------------------------------------------------------------- correctness
def check_close(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> float:
    """Max error relative to the largest reference entry; fails above a dtype-dependent bound."""
    bound = {torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    err = ((g - w).abs().max() / w.abs().max().clamp_min(1e-12)).item()
    assert err <= bound, f"{name}: relative error {err:.3g} > {bound}"
    return err


# --------------------------------------------------------------------------- results
RECORDS: list[dict] = []


@dataclass
class Record:
    op: str
    provider: str
    phase: str
    shape: dict
    dtype: str
    timing: dict = field(default_factory=dict)
    peak_mem_bytes: Optional[int] = None
    mem_method: str = ""
    work: dict = field(default_factory=dict)   # {"bytes": ...} or {"flop": ...} for this phase
    max_rel_err: Optional[float] = None
    note: str = ""

    def figure(self) -> str:
        ms = self.timing.get("p50_ms")
        if not ms:
            return ""
        if "bytes" in self.work:
            return f"{self.work['bytes'] / ms / 1e6:.4g} GB/s"
        return f"{self.work['flop'] / ms / 1e9:.4g} TFLOP/s"


def record(rec: Record) -> None:
    RECORDS.append(asdict(rec) | {"figure": rec.figure()})


def environment() -> dict:
    env = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    env["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def results_dir(preset: str) -> Path:
    if preset == "tiny":
        return Path(os.environ.get("SOLAR_BENCH_OUT") or Path(tempfile.gettempdir(), "solar-bench"))
    return Path(os.environ.get("SOLAR_BENCH_OUT") or ROOT / "results")


def _markdown(env: dict, preset: str, records: list[dict]) -> str:
    lines = [f"# solar microbenchmarks, preset `{preset}`", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", "| op | shape | dtype | provider | phase | p50 ms | p20-p80 ms | figure | "
              "peak extra MB | max rel err |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        t = r["timing"]
        shape = " ".join(f"{k}={v}" for k, v in r["shape"].items())
        mem = "" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:.1f}"
        spread = f"{t['p20_ms']:.3f}-{t['p80_ms']:.3f}" if t else ""
        p50 = f"{t['p50_ms']:.3f}" if t else ""
        err = "" if r["max_rel_err"] is None else f"{r['max_rel_err']:.2g}"
        lines.append(f"| {r['op']} | {shape} | {r['dtype']} | {r['provider']} | {r['phase']} | "
                     f"{p50} | {spread} | {r['figure']} | {mem} | {err} |")
    methods = sorted({r["mem_method"] for r in records if r["mem_method"]})
    lines += ["", "Peak memory: " + "; ".join(methods) + ".  Memory is measured on one "
              "forward+backward and repeated on every phase row of that case."]
    return "\n".join(lines) + "\n"


def write_results(preset: str) -> Optional[Path]:
    if not RECORDS:
        return None
    env = environment()
    out = results_dir(preset)
    out.mkdir(parents=True, exist_ok=True)
    dev = env.get("gpu") or env["cpu"]
    stem = f"{preset}-{''.join(c if c.isalnum() else '_' for c in dev)[:40]}-" \
           f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    (out / f"{stem}.json").write_text(json.dumps({"env": env, "preset": preset,
                                                  "records": RECORDS}, indent=1))
    (out / f"{stem}.md").write_text(_markdown(env, preset, RECORDS))
    return out / f"{stem}.md"


# --------------------------------------------------------------------------- one benchmark case
@dataclass
class Case:
    """One (op, shape, provider) problem.  fn / ref map the inputs to the output (ref is the eager
    reference, used for the correctness check in fp32); work holds bytes or FLOPs per phase."""
    op: str
    provider: str
    shape: dict
    fn: Callable
    ref: Callable
    inputs: list
    requires: list
    work: dict
    upstream: Optional[torch.Tensor] = None
    note: str = ""


_CHECKED: dict = {}


def _fwd_bwd(fn, inputs, requires, upstream):
    ins = leaves(inputs, requires)
    out = fn(*ins)
    out.backward(upstream)
    return [out] + [t.grad for t, r in zip(ins, requires) if r]


def _check_and_measure(case: Case, preset: Preset) -> tuple:
    """Correctness (against the reference in fp32 from the same values) and peak memory, once per
    (op, shape, provider), outside the timed region."""
    key = (case.op, tuple(case.shape.items()), case.provider)
    if key not in _CHECKED:
        got = _fwd_bwd(case.fn, case.inputs, case.requires, case.upstream)
        want = _fwd_bwd(case.ref, [t.float() for t in case.inputs], case.requires,
                        None if case.upstream is None else case.upstream.float())
        err = max(check_close(f"{case.provider} output/grad {i}", g, w, preset.dtype)
                  for i, (g, w) in enumerate(zip(got, want)))
        del got, want
        ins = leaves(case.inputs, case.requires)     # input copies are not counted
        mem, how = peak_memory(lambda: case.fn(*ins).backward(case.upstream), preset.device)
        del ins
        _CHECKED[key] = (err, mem, how)
    return _CHECKED[key]


def bench_case(benchmark, case: Case, phase: str, preset: Preset) -> None:
    why = skip_reason(case.provider, preset, case.op, *case.inputs)
    if why:
        pytest.skip(why)
    err, mem, how = _check_and_measure(case, preset)
    run_phase(benchmark, phase, case.fn, case.inputs, case.requires, case.upstream,
              preset.device, preset)
    note = case.note
    if case.provider == "solar-triton" and os.environ.get("TRITON_INTERPRET") == "1":
        note = (note + "; " if note else "") + "Triton interpreter (not a GPU timing)"
    benchmark.extra_info.update(op=case.op, provider=case.provider, phase=phase, **case.shape)
    dtype = str(preset.dtype).replace("torch.", "")
    record(Record(case.op, case.provider, phase, case.shape, dtype, timing(benchmark), mem, how,
                  _work_for(case.work, phase), err, note))


def _work_for(work: dict, phase: str) -> dict:
    """work = {"bytes": {phase: n}} or {"flop": {phase: n}} -> {"bytes": n} for this phase."""
    return {kind: per_phase[phase] for kind, per_phase in work.items()}
