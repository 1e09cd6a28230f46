"""The four training recipes: stage1, stage2 (SOLAR), gcl and clip (baselines).

A recipe turns one micro-batch of DocFeatures into (loss, metrics).  Contrastive losses go
through the ``solar`` ops (``contrastive_loss``, ``gcl_loss``, ``multi_positive_infonce``) and the
embeddings they compare are all-gathered with gradients, so denominators span the global batch.
Ops are called with ``backend=None``: automatic choice, or ``$SOLAR_BACKEND`` when set.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from solar import ops
from solar.model.solar_model import ScoreFusionModel, SolarModel

from . import dist
from .config import TrainConfig
from .losses import gla_hinge, global_distillation, local_distillation
from .mining import neighbour_pools, sample_negatives
from .qda import RunningQDA, annealed_mask, rho_schedule
from .views import StageOneMasks, build_views, segment_patches, segment_scores

G = dist.all_gather_grad


def _scale(model) -> torch.Tensor:
    return model.logit_scale.exp().clamp(max=100.0)


class Recipe:
    """Base: ``setup`` runs once before any resume; ``loss`` per micro-batch."""
    arch = None

    def __init__(self, cfg: TrainConfig, total_steps: int):
        self.cfg = cfg
        self.total_steps = total_steps

    def check(self, model) -> None:
        if self.arch is not None and not isinstance(model, self.arch):
            raise ValueError(f"recipe {self.cfg.recipe!r} needs a {self.arch.__name__}, got "
                             f"{type(model).__name__} (model={self.cfg.model!r})")

    def setup(self, model, source, device, used=None) -> None:
        """``used``: indices of the documents the run's batches will contain."""

    def loss(self, model, feats, idx, step, source):
        raise NotImplementedError

    def state_tensors(self) -> dict:
        return {}

    def load_state_tensors(self, state: dict) -> None:
        pass


# --------------------------------------------------------------------------- stage 1
class Stage1(Recipe):
    """ITC on masked unimodal globals + lambda1 GLA + lambda2 GD + lambda3 LD (spec 1.3(g))."""
    arch = SolarModel

    def __init__(self, cfg, total_steps):
        super().__init__(cfg, total_steps)
        self.qda = {m: RunningQDA(cfg.qda_momentum, cfg.qda_priors) for m in ("text", "image")}

    def _masks(self, name, loc, partner, weights, rho):
        """Update the modality's running QDA from detached scores; return (soft mask, stats)."""
        with torch.no_grad():
            s = torch.einsum("itd,jd->ijt", loc.float(), partner.float())  # (B, B, L)
            B = s.shape[0]
            eye = torch.eye(B, dtype=torch.bool, device=s.device)
            diag = s[eye]                                                  # (B, L)
            pos = diag[weights]
            neg = s[(~eye)[:, :, None] & weights[:, None, :].expand(B, B, -1)]
            self.qda[name].update(pos, neg)
            tau = self.qda[name].threshold()
            hard = (diag > tau) & weights if math.isfinite(tau) else weights.clone()
            frac = hard.sum().item() / max(weights.sum().item(), 1)
        return annealed_mask(hard, weights, rho), tau, frac

    def loss(self, model, feats, idx, step, source):
        c = self.cfg
        v, l = model.locals(feats)
        wv, wl = feats.image_weights, feats.text_weights
        f_v, f_l = model.image_only(v, wv), model.text_only(l, wl)        # unmasked globals
        pv, pl = model.project_locals(v), model.project_locals(l)
        off = dist.rank() * len(idx)
        gla_t, _ = gla_hinge(pl, wl, G(f_v), c.gla_margin, off)
        gla_i, _ = gla_hinge(pv, wv, G(f_l), c.gla_margin, off)
        rho = rho_schedule(step, self.total_steps, c.anneal_frac)
        m_l, tau_t, frac_t = self._masks("text", pl, f_v, wl, rho)
        m_v, tau_i, frac_i = self._masks("image", pv, f_l, wv, rho)
        f_vm, f_lm = model.image_only(v, m_v), model.text_only(l, m_l)      # masked globals
        itc = ops.contrastive_loss(G(f_vm), G(f_lm), _scale(model), backend=None)
        gd = (global_distillation(G(f_v), G(feats.image.pooled))
              + global_distillation(G(f_l), G(feats.text.pooled)))
        ld = (local_distillation(pv, feats.image.tokens, wv)
              + local_distillation(pl, feats.text.tokens, wl))
        loss = itc + c.w_gla * (gla_t + gla_i) + c.w_gd * gd + c.w_ld * ld
        model.thresholds.copy_(torch.tensor([tau_t, tau_i]))
        metrics = {"itc": itc.item(), "gla": (gla_t + gla_i).item(), "gd": gd.item(),
                   "ld": ld.item(), "rho": rho, "tau_text": tau_t, "tau_image": tau_i,
                   "mask_text": frac_t, "mask_image": frac_i,
                   "logit_scale": _scale(model).item()}
        metrics.update(self.qda["text"].summary("text"))
        metrics.update(self.qda["image"].summary("image"))
        return loss, metrics

    def state_tensors(self) -> dict:
        return {f"qda_{k}": q.stats.clone() for k, q in self.qda.items()}

    def load_state_tensors(self, state: dict) -> None:
        for k, q in self.qda.items():
            q.stats = state[f"qda_{k}"].to(torch.float64)


# --------------------------------------------------------------------------- stage 2
class Stage2(Recipe):
    """Multi-positive InfoNCE over mask-built views and mined negatives (spec 1.4, 3.1.13)."""
    arch = SolarModel

    def __init__(self, cfg, total_steps):
        super().__init__(cfg, total_steps)
        self.gen = torch.Generator().manual_seed(cfg.seed + 17)

    @torch.no_grad()
    def setup(self, model, source, device, used=None) -> None:
        """Freeze the stage-1 masks (for the documents in ``used``, default all) and mine pools."""
        tau_t, tau_i = model.tau
        if not (math.isfinite(tau_t) and math.isfinite(tau_i)):
            raise ValueError("recipe 'stage2' needs a stage-1 model (its thresholds are not set): "
                             "pass model= the stage-1 run folder")
        was = model.training
        model.eval()
        N, T, K = len(source), model.text_tower.num_tokens, self.cfg.segments
        P = model.image_tower.num_tokens
        used = torch.arange(N) if used is None else torch.unique(used)
        m = StageOneMasks(torch.zeros(N, T, dtype=torch.bool), torch.zeros(N, T, dtype=torch.bool),
                          torch.full((N, P), -1, dtype=torch.long),
                          torch.zeros(N, K, dtype=torch.bool), torch.zeros(N, K, dtype=torch.bool))
        for s in range(0, len(used), 256):
            idx = used[s:s + 256]
            feats = source.get(idx, model).to(device)
            v, _ = model.locals(feats)
            tok, pat = model.diagonal_scores(feats)
            wl, wv = feats.text_weights, feats.image_weights
            L = tok.shape[1]
            m.token_int[idx, :L] = ((tok > tau_t) & wl).cpu()
            m.token_diff[idx, :L] = ((tok <= tau_t) & wl).cpu()
            vn, wvn = v.float().cpu().numpy(), wv.cpu().numpy()
            labels = torch.from_numpy(np.stack([segment_patches(vn[i], wvn[i], K)
                                                for i in range(len(idx))]))
            seg = segment_scores(labels, pat.float().cpu(), K)
            m.segments[idx] = labels
            m.seg_int[idx] = seg > tau_i                  # NaN (empty segment) is False
            m.seg_diff[idx] = seg <= tau_i
        self.masks = m
        self.pools = (neighbour_pools(*source.pooled(model), self.cfg.mine_skip,
                                      self.cfg.mine_window) if self.cfg.mine_k > 0 else None)
        model.train(was)

    def loss(self, model, feats, idx, step, source):
        c, dev = self.cfg, feats.has_image.device
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
        mined = None
        if c.mine_k > 0:
            mined_idx = sample_negatives(self.pools, idx, c.mine_k, self.gen)   # (B, k)
            mf = source.get(mined_idx.flatten(), model).to(dev)
            mined = model.embed(mf).view(len(idx), mined_idx.shape[1], -1)     # (B, k, D)
        A = G(anchors)
        cg = ops.build_columns(A, G(pos), G(neg), None if mined is None else G(mined))
        valid = cg.valid.clone()
        valid[:, cg.slices["constructed_negatives"]] &= dist.all_gather_nograd(
            vw["neg_ok"]).flatten()[None, :]
        if mined is not None:
            gidx = dist.all_gather_nograd(idx.to(dev))
            gm = dist.all_gather_nograd(mined_idx.to(dev)).flatten()
            valid[:, cg.slices["mined_negatives"]] &= gm[None, :] != gidx[:, None]
        loss = ops.multi_positive_infonce(A, cg.candidates, cg.positives, valid, c.temperature,
                                          backend=None)
        with torch.no_grad():
            sims = A @ cg.candidates.T
            metrics = {"pos_sim": sims[cg.positives].mean().item(),
                       "neg_view_sim": sims[:, cg.slices["constructed_negatives"]].mean().item(),
                       "neg_views_ok": vw["neg_ok"].float().mean().item()}
            if mined is not None:
                metrics["mined_sim"] = sims[:, cg.slices["mined_negatives"]].mean().item()
        return loss, metrics

    def state_tensors(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_tensors(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


# --------------------------------------------------------------------------- baselines
def three_embeddings(model, feats):
    """(e_image, e_text, e_fused), each (B, D) normalized.

    ScoreFusionModel: e_fused = normalize(e_i + e_t) (spec 2.2).  SolarModel: the image-only,
    text-only and joint passes of the fusion encoder (the spec's optional bridge, 3.1.18).
    """
    if isinstance(model, ScoreFusionModel):
        e_i, e_t = model.modal_embeddings(feats)
        e_i, e_t = F.normalize(e_i, dim=-1), F.normalize(e_t, dim=-1)
        return e_i, e_t, F.normalize(e_i + e_t, dim=-1)
    v, l = model.locals(feats)
    wv, wl = feats.image_weights, feats.text_weights
    return model.image_only(v, wv), model.text_only(l, wl), model.joint(v, wv, l, wl)


class GCL(Recipe):
    """GCL's 3N x 3N loss over [e_i; e_t; e_it] (spec 2.3)."""

    def loss(self, model, feats, idx, step, source):
        e_i, e_t, e_it = three_embeddings(model, feats)
        loss = ops.gcl_loss(G(e_i), G(e_t), G(e_it), _scale(model), backend=None)
        return loss, {"logit_scale": _scale(model).item()}


class CLIP(Recipe):
    """Plain image-text InfoNCE on e_i, e_t (the "+CL" baseline); documents use e_it."""

    def loss(self, model, feats, idx, step, source):
        if isinstance(model, ScoreFusionModel):
            e_i, e_t = model.modal_embeddings(feats)
            e_i, e_t = F.normalize(e_i, dim=-1), F.normalize(e_t, dim=-1)
        else:
            e_i, e_t, _ = three_embeddings(model, feats)
        loss = ops.contrastive_loss(G(e_i), G(e_t), _scale(model), backend=None)
        return loss, {"logit_scale": _scale(model).item()}


RECIPES = {"stage1": Stage1, "stage2": Stage2, "gcl": GCL, "clip": CLIP}
