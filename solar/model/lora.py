"""Low-rank adapters (LoRA) for tower fine-tuning.

``apply_lora`` wraps every ``nn.Linear`` (and 1x1 ``nn.Conv2d``, for convolutional towers) whose
module name ends with one of ``targets``: y = W x + (alpha / r) B A x, with B initialized to zero
so the wrapped tower starts exactly at the pretrained function.  Only A and B train.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-r update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


class LoRAConv1x1(nn.Module):
    """A frozen 1x1 ``nn.Conv2d`` plus a trainable rank-r update."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Conv2d(base.in_channels, rank, 1, bias=False)
        self.lora_b = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_b(self.lora_a(x)) * self.scale


def _wrappable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.stride == (1, 1))


def apply_lora(model: nn.Module, targets: tuple, rank: int, alpha: float) -> int:
    """Freeze ``model`` and wrap matching layers with LoRA in place.  Returns how many were wrapped.

    Raises ValueError when no layer matches (a silent no-op would train nothing).
    """
    if rank <= 0:
        raise ValueError(f"lora_rank must be positive, got {rank}")
    for p in model.parameters():
        p.requires_grad_(False)
    found = []
    for name, module in model.named_modules():
        if any(name.endswith(t) for t in targets) and _wrappable(module):
            found.append(name)
    # The factors draw from a forked RNG so adding LoRA leaves the rest of a model's init unchanged.
    with torch.random.fork_rng(devices=[]):
        for name in found:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            base = getattr(parent, child)
            cls = LoRALinear if isinstance(base, nn.Linear) else LoRAConv1x1
            setattr(parent, child, cls(base, rank, alpha))
    if not found:
        raise ValueError(f"lora_targets {targets} match no Linear or 1x1 Conv2d layer of "
                         f"{type(model).__name__}")
    return len(found)
