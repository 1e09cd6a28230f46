"""Low-rank adapters (LoRA) for tower fine-tuning, through Hugging Face ``peft``.

``apply_lora`` freezes a tower's backbone and injects peft LoRA layers into every ``nn.Linear``,
``nn.Conv2d`` (1x1, for convolutional towers) and ``nn.Embedding`` whose module name ends with
one of ``targets``: y = W x + (alpha / r) B A x, with B initialized to zero so the tower starts
exactly at the pretrained function.  Only A and B train; their state-dict keys contain
``lora_A`` / ``lora_B`` (the only tower tensors a LoRA checkpoint stores).
"""
from __future__ import annotations

import torch
from torch import nn


def _wrappable(module: nn.Module) -> bool:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return True
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.stride == (1, 1))


def apply_lora(model: nn.Module, targets: tuple, rank: int, alpha: float) -> int:
    """Freeze ``model`` and add LoRA to matching layers in place.  Returns how many were wrapped.

    Raises ValueError when no layer matches (a silent no-op would train nothing).
    """
    if rank <= 0:
        raise ValueError(f"lora_rank must be positive, got {rank}")
    for p in model.parameters():
        p.requires_grad_(False)
    found = [name for name, module in model.named_modules()
             if name and any(name.endswith(t) for t in targets) and _wrappable(module)]
    if not found:
        raise ValueError(f"lora_targets {targets} match no Linear, 1x1 Conv2d or Embedding layer "
                         f"of {type(model).__name__}")
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("LoRA towers need peft: pip install 'solar-mm[model]'") from err
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                     target_modules=found)
    # The factors draw from a forked RNG so adding LoRA leaves the rest of a model's init unchanged.
    with torch.random.fork_rng(devices=[]):
        inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return len(found)
