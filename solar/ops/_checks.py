"""Argument checks shared by every op (errors name the argument, never a deep stack trace), and
the one accumulation-dtype rule."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of inputs in ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tensor(name: str, t, ndim: int | None = None, floating: bool = True, allow_bool: bool = False):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if floating:
        ok = t.dtype in FLOAT_DTYPES or (allow_bool and t.dtype == torch.bool)
        if not ok:
            kinds = "bool or floating" if allow_bool else "floating"
            raise TypeError(f"{name} must be a {kinds} tensor, got dtype {t.dtype}")
    return t


def nonempty(name: str, t: torch.Tensor, dims=(0,)):
    for d in dims:
        if t.shape[d] == 0:
            raise ValueError(f"{name} must not be empty along dim {d}, got shape {tuple(t.shape)}")


def same_device(**tensors):
    devs = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devs.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise ValueError(f"all tensors must be on one device, got {desc}")


def same_size(what: str, **sizes):
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{n}={s}" for n, s in sizes.items())
        raise ValueError(f"{what} must match: {desc}")


def scalar(name: str, v, device) -> torch.Tensor:
    """A Python number or a 0-dim/1-element floating tensor, returned as a 0-dim tensor.

    Python numbers become float64 0-dim tensors: they keep full precision and, being 0-dim, do not
    change the dtype of the tensors they multiply."""
    if isinstance(v, bool):
        raise TypeError(f"{name} must be a number or a floating tensor, got bool")
    if isinstance(v, (int, float)):
        return torch.tensor(float(v), dtype=torch.float64, device=device)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a number or a 0-dim tensor, got {type(v).__name__}")
    if v.numel() != 1:
        raise ValueError(f"{name} must hold one value, got shape {tuple(v.shape)}")
    if v.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor, got dtype {v.dtype}")
    if v.device != device:
        raise ValueError(f"{name} is on {v.device} but the embeddings are on {device}")
    return v.reshape(())
