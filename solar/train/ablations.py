"""Ablated SOLAR recipes (the ablation rows of the results table), registered by name.

* ``stage1-no-mask``: stage 1 with the intersection mask switched off: the masked ITC compares
  the unmasked unimodal globals (rho held at 1).  The QDA thresholds are still estimated, so a
  stage 2 can follow.
* ``stage2-no-constructed``: stage 2 without constructed negatives (difference-masked or
  swapped: their columns are invalid in every row); positives and mined negatives are unchanged.
* ``stage2-no-mined``: stage 2 without the offline-mined negatives: ``stage2`` with ``mine_k = 0``
  (no mined columns, no neighbour pools).

Train one like any recipe: ``TrainConfig(recipe="stage2-no-mined", model=<stage-1 run>)`` or
``solar-index train --recipe stage2-no-mined``.
"""
from __future__ import annotations

import dataclasses

import torch

from .recipes import Stage1, Stage2
from .registry import register_recipe


@register_recipe("stage1-no-mask", default_model="solar-offline")
class NoMaskStage1(Stage1):
    """Stage 1 whose masks stay all-ones on valid tokens/patches (ablation)."""

    def _masks(self, name, scores, weights, rho):
        return super()._masks(name, scores, weights, 1.0)


@register_recipe("stage2-no-constructed", default_model=None, default_lr=1e-4)
class NoConstructedStage2(Stage2):
    """Stage 2 with no difference tokens or segments, hence no constructed negatives (ablation;
    with ``neg_form`` "swap" or "both" the swapped negatives are dropped too)."""

    def __init__(self, cfg, total_steps):
        super().__init__(dataclasses.replace(cfg, neg_form="hide"), total_steps)

    @torch.no_grad()
    def setup(self, model, source, device, *args, **kw) -> None:
        super().setup(model, source, device, *args, **kw)
        self.masks.token_diff.zero_()
        self.masks.seg_diff.zero_()


@register_recipe("stage2-no-mined", default_model=None, default_lr=1e-4)
class NoMinedStage2(Stage2):
    """Stage 2 with positives, constructed negatives and in-batch anchors only (ablation)."""

    def __init__(self, cfg, total_steps):
        super().__init__(dataclasses.replace(cfg, mine_k=0), total_steps)
