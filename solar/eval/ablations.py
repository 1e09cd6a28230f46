"""Ablated SOLAR recipes for the results table, as subclasses of the training recipes.

* ``NoMaskStage1``: stage 1 with the intersection mask switched off: the masked ITC compares
  the unmasked unimodal globals (rho held at 1).  The QDA thresholds are still estimated, so a
  stage 2 can follow.
* ``NoConstructedStage2``: stage 2 without the difference-masked negative views (their columns
  are invalid in every row); positives and mined negatives are unchanged.
* ``NoMinedStage2``: stage 2 without the offline-mined negatives: ``Stage2`` with ``mine_k = 0``
  (no mined columns, no neighbour pools).

``ablated_training(name)`` runs ``solar.train.train`` with the ablated class standing in for its
recipe for the duration of the call.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from solar.train.recipes import Stage1, Stage2


class NoMaskStage1(Stage1):
    """Stage 1 whose masks stay all-ones on valid tokens/patches."""

    def _masks(self, name, scores, weights, rho):
        return super()._masks(name, scores, weights, 1.0)


class NoConstructedStage2(Stage2):
    """Stage 2 with no difference tokens or segments, hence no valid constructed negatives."""

    @torch.no_grad()
    def setup(self, model, source, device, *args, **kw) -> None:
        super().setup(model, source, device, *args, **kw)
        self.masks.token_diff.zero_()
        self.masks.seg_diff.zero_()


class NoMinedStage2(Stage2):
    """Stage 2 with positives, constructed negatives and in-batch anchors only (mine_k = 0)."""

    def __init__(self, cfg, total_steps):
        super().__init__(dataclasses.replace(cfg, mine_k=0), total_steps)


ABLATED = {"no_mask": ("stage1", NoMaskStage1),
           "no_constructed_negatives": ("stage2", NoConstructedStage2),
           "no_mined_negatives": ("stage2", NoMinedStage2)}


@contextlib.contextmanager
def ablated_training(name: str):
    """Within the block, ``solar.train.train`` runs the ablated class for its recipe."""
    from unittest import mock

    from solar.train import loop
    if name not in ABLATED:
        raise ValueError(f"unknown ablation {name!r}; ablations are {sorted(ABLATED)}")
    recipe, cls = ABLATED[name]
    with mock.patch.object(loop, "RECIPES", {**loop.RECIPES, recipe: cls}):
        yield
