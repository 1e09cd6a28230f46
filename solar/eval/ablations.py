"""Ablated SOLAR recipes for the results table, as subclasses of the training recipes.

* ``NoMaskStage1``: stage 1 with the intersection mask switched off: the masked ITC compares
  the unmasked unimodal globals (rho held at 1).  The QDA thresholds are still estimated, so a
  stage 2 can follow.
* ``NoConstructedStage2``: stage 2 without the difference-masked negative views (their columns
  are invalid in every row); positives and mined negatives are unchanged.
* ``NoMinedStage2``: stage 2 without the offline-mined negatives: the same loss with no mined
  columns (the loss body mirrors ``Stage2.loss`` with ``mined_negatives=None``).

``ablated_training(name)`` runs ``solar.train.train`` with the ablated class standing in for its
recipe for the duration of the call.
"""
from __future__ import annotations

import contextlib

import torch

from solar import ops
from solar.train import dist
from solar.train.recipes import Stage1, Stage2
from solar.train.views import StageOneMasks, build_views


class NoMaskStage1(Stage1):
    """Stage 1 whose masks stay all-ones on valid tokens/patches."""

    def _masks(self, name, loc, partner, weights, rho):
        return super()._masks(name, loc, partner, weights, 1.0)


class NoConstructedStage2(Stage2):
    """Stage 2 with no difference tokens or segments, hence no valid constructed negatives."""

    @torch.no_grad()
    def setup(self, model, source, device, *args, **kw) -> None:
        super().setup(model, source, device, *args, **kw)
        self.masks.token_diff.zero_()
        self.masks.seg_diff.zero_()


class NoMinedStage2(Stage2):
    """Stage 2 with positives, constructed negatives and in-batch anchors only."""

    def loss(self, model, feats, idx, step, source):
        c, dev = self.cfg, feats.has_image.device
        G = dist.all_gather_grad
        v, l = model.locals(feats)
        wv, wl = feats.image_weights, feats.text_weights
        anchors = model.joint(v, wv, l, wl)                                # (B, D)
        m = self.masks
        sub = StageOneMasks(m.token_int[idx][:, : l.shape[1]], m.token_diff[idx][:, : l.shape[1]],
                            m.segments[idx], m.seg_int[idx], m.seg_diff[idx])
        vw = {k: t.to(dev) for k, t in build_views(sub, wl.cpu(), wv.cpu(), c.pos_ratio,
                                                    c.neg_ratio, c.area_cap, self.gen).items()}
        pos = torch.stack([model.joint(v, wv, l, vw["pos_text"]),
                           model.joint(v, vw["pos_image"], l, wl)], dim=1)  # (B, 2, D)
        neg = torch.stack([model.joint(v, wv, l, vw["neg_text"]),
                           model.joint(v, vw["neg_image"], l, wl)], dim=1)  # (B, 2, D)
        A = G(anchors)
        cg = ops.build_columns(A, G(pos), G(neg), None)
        valid = cg.valid.clone()
        valid[:, cg.slices["constructed_negatives"]] &= dist.all_gather_nograd(
            vw["neg_ok"]).flatten()[None, :]
        loss = ops.multi_positive_infonce(A, cg.candidates, cg.positives, valid, c.temperature)
        with torch.no_grad():
            sims = A @ cg.candidates.T
            metrics = {"pos_sim": sims[cg.positives].mean().item(),
                       "neg_view_sim": sims[:, cg.slices["constructed_negatives"]].mean().item(),
                       "neg_views_ok": vw["neg_ok"].float().mean().item()}
        return loss, metrics


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
