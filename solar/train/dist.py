"""Distributed helpers for torchrun (no-ops in a single process).

``all_gather_grad`` concatenates a tensor from every rank with gradients flowing back to each
rank's own slice, so contrastive denominators span the global batch.  Each rank computes the same
global loss; the backward all-reduces the incoming gradient (summing the identical per-rank
contributions) and keeps its slice, and ``average_gradients`` then divides by the world size, which
gives exactly the gradient of the global loss.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def is_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def world() -> int:
    return tdist.get_world_size() if is_dist() else 1


def rank() -> int:
    return tdist.get_rank() if is_dist() else 0


def init_from_env() -> torch.device | None:
    """Initialize the process group when launched by torchrun; returns the local CUDA device."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1 or is_dist():
        return None
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        tdist.init_process_group("nccl")
        return torch.device("cuda", local)
    tdist.init_process_group("gloo")
    return None


class _GatherGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world())]
        tdist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        r = rank()
        return grad[r * ctx.n:(r + 1) * ctx.n]


def all_gather_grad(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) per rank -> (world * n, ...), differentiable; identity without a process group."""
    return _GatherGrad.apply(x) if world() > 1 else x


def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    if world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    tdist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if world() > 1:
        x = x.clone()
        tdist.all_reduce(x)
    return x


def average_gradients(params) -> None:
    """Average .grad over ranks (used instead of DDP so recipes may call any model method)."""
    if world() == 1:
        return
    for p in params:
        if p.grad is not None:
            tdist.all_reduce(p.grad)
            p.grad.div_(world())


def barrier() -> None:
    if world() > 1:
        tdist.barrier()
