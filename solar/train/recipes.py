"""The four training recipes: stage1, stage2 (SOLAR), gcl and clip (baselines).

Each registers itself by name (``solar.train.registry``); the loop looks recipes up there.

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
from .losses import (element_alignment, element_contrast, empty_cells, empty_rejection,
                     gla_hinge, gla_local_hinge, gla_smoothmax_hinge, global_distillation,
                     local_alignment, local_distillation)
from .mining import NegativeQueue, neighbour_pools, sample_negatives
from .mixing import mix_patches, mix_texts, token_owners
from .qda import RunningQDA, annealed_mask, rho_schedule
from .registry import register_recipe
from .views import StageOneMasks, build_views, segment_patches, segment_scores

G = dist.all_gather_grad


def _scale(model) -> torch.Tensor:
    return model.logit_scale.exp().clamp(max=100.0)


class Recipe:
    """Base: ``setup`` runs once before any resume; ``loss`` per micro-batch.

    ``arch``: the model class the recipe needs (None: any).  ``setup_per_batch``: ``setup``
    prepares state for the documents of the source it is given; on a stream the loop then calls
    it for every batch (a source of that batch alone).
    """
    arch = None
    setup_per_batch = False
    log = None                           # the run's event log (set by the loop), or None

    def __init__(self, cfg: TrainConfig, total_steps: int):
        self.cfg = cfg
        self.total_steps = total_steps

    def check(self, model) -> None:
        if self.arch is not None and not isinstance(model, self.arch):
            raise ValueError(f"recipe {self.cfg.recipe!r} needs a {self.arch.__name__}, got "
                             f"{type(model).__name__} (model={self.cfg.model!r})")

    def start_stream(self) -> None:
        """Called before training on a stream (no random access to the corpus): prepare for it,
        or raise ValueError when the recipe cannot train that way."""

    def setup(self, model, source, device, used=None) -> None:
        """``used``: indices of the documents the run's batches will contain."""

    def loss(self, model, feats, idx, step, source):
        raise NotImplementedError

    def state_tensors(self) -> dict:
        return {}

    def load_state_tensors(self, state: dict) -> None:
        pass


# --------------------------------------------------------------------------- stage 1
@register_recipe("stage1", default_model="solar-offline")
class Stage1(Recipe):
    """ITC on masked unimodal globals + lambda1 GLA + lambda2 GD + lambda3 LD (docs/method.md, "Stage 1")."""
    arch = SolarModel

    def __init__(self, cfg, total_steps):
        super().__init__(cfg, total_steps)
        self.qda = {m: RunningQDA(cfg.qda_momentum, cfg.qda_priors) for m in ("text", "image")}
        self.gen = torch.Generator().manual_seed(cfg.seed + 29)

    def _gla(self, loc, weights, partner, off):
        if self.cfg.gla_form == "local":
            return gla_local_hinge(loc, weights, partner, self.cfg.gla_margin, off)
        if self.cfg.gla_form == "smoothmax":
            return gla_smoothmax_hinge(loc, weights, partner, self.cfg.gla_margin,
                                       self.cfg.gla_temp, off)
        return gla_hinge(loc, weights, partner, self.cfg.gla_margin, off)[0]

    def _mixed_text_locals(self, model, source, idx, off):
        """Projected token locals of captions with another document's keywords appended
        (mixing.py): (locals (B, T', D), weights (B, T'), owner (B, T') rows + ``off``)."""
        texts = getattr(source, "texts", None)
        if texts is None:
            raise ValueError("mix_text needs the documents' texts from the training source")
        mixed, other, cut = mix_texts([texts[i] for i in idx.tolist()], self.cfg.mix_text, self.gen)
        with torch.no_grad():
            mf = model.tower_features(texts=mixed).trim_text(model.cfg.max_text_tokens)
        lm = model.project_locals(model.adapter_text(mf.text.tokens.float()))
        owner = token_owners(model.text_tower, mixed, cut, other, lm.shape[1], off)
        return lm, mf.text_weights.to(lm.device), owner.to(lm.device)

    def start_stream(self) -> None:
        if self.cfg.w_compose > 0:
            raise ValueError("w_compose builds composites from the training documents, which a "
                             "stream cannot reach at random: train stage 1 in memory "
                             "(--no-stream) or with w_compose=0")

    def setup(self, model, source, device, used=None) -> None:
        self.probe = None
        self.blank = None
        self.compose = None
        if self.cfg.w_empty > 0:
            self.blank = blank_cells(model)
        if self.cfg.w_compose > 0:
            from .composites import composite_store
            docs = getattr(source, "docs", None)
            if docs is None:
                raise ValueError("w_compose needs the training documents (an in-memory source)")
            self.compose = composite_store(model, docs, self.cfg, self.log)
        if self.cfg.mask_probe_every > 0 and dist.rank() == 0:
            from solar.eval.mask_metrics import case_features
            from solar.eval.masks import MaskBenchConfig, build_mask_benchmark
            bench = build_mask_benchmark(MaskBenchConfig(split="val",
                                                         max_cases=self.cfg.mask_probe_cases))
            self.probe = case_features(model, bench)

    def _probe(self, model, step) -> dict:
        """Mask-benchmark metrics on the val probe every ``mask_probe_every`` steps."""
        if self.probe is None or (step + 1) % self.cfg.mask_probe_every:
            return {}
        from solar.eval.mask_metrics import evaluate_model_masks
        r = evaluate_model_masks(model, self.probe)
        return {f"probe_{k}": r[k] for k in ("token_auc", "patch_auc", "token_f1", "patch_iou")}

    def _compose_loss(self, model, device):
        """Composite supervision (composites.py): (loss, metrics) on ``compose_batch`` composites;
        with ``compose_qda`` the running QDA is fed their intersection vs difference scores."""
        from .composites import compose_loss
        from solar.eval.mask_metrics import roc_auc
        store, tok_y, pat_y = self.compose
        idx = torch.randint(len(store), (self.cfg.compose_batch,), generator=self.gen)
        f = store.get(idx).to(device)
        t, p = model.diagonal_scores(f)                                   # (b, T'), (b, P)
        ty, py = tok_y[idx][:, : t.shape[1]].to(device), pat_y[idx].to(device)
        ty = ty.masked_fill(~f.text_weights, -1)
        loss = compose_loss(t, ty, p, py, self.cfg.compose_center, self.cfg.compose_temp)
        with torch.no_grad():
            if self.cfg.compose_qda:
                self.qda["text"].update(t[ty == 1].float(), t[ty == 0].float())
                self.qda["image"].update(p[py == 1].float(), p[py == 0].float())
            tn, pn = t.detach().float().cpu().numpy(), p.detach().float().cpu().numpy()
            tyn, pyn = ty.cpu().numpy(), py.cpu().numpy()
            m = {"compose": loss.item(),
                 "compose_token_auc": roc_auc(tn[tyn == 1], tn[tyn == 0]),
                 "compose_patch_auc": roc_auc(pn[pyn == 1], pn[pyn == 0])}
        return loss, m

    def _masks(self, name, s, weights, rho):
        """Update the modality's running QDA from detached (B, B, L) scores of locals against
        partners (unless ``compose_qda`` feeds it from composites); return (soft mask, tau,
        marked share)."""
        with torch.no_grad():
            s = s.float()
            B = s.shape[0]
            eye = torch.eye(B, dtype=torch.bool, device=s.device)
            diag = s[eye]                                                  # (B, L)
            if not self.cfg.compose_qda:
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
        lm, wlm, own_t = pl, wl, None          # text locals the local losses see
        vm, own_i = pv, None                   # image locals the local losses see
        if c.mix_text > 0:
            lm, wlm, own_t = self._mixed_text_locals(model, source, idx, off)
            gla_t = gla_local_hinge(lm, wlm, G(f_v), c.gla_margin, owner=own_t)
        else:
            gla_t = self._gla(pl, wl, G(f_v), off)
        if c.mix_image > 0:
            tok, own_i = mix_patches(feats.image.tokens, c.mix_image, self.gen, off)
            vm = model.project_locals(model.adapter_image(tok))
            gla_i = gla_local_hinge(vm, wv, G(f_l), c.gla_margin, owner=own_i)
        else:
            gla_i = self._gla(pv, wv, G(f_l), off)
        rho = rho_schedule(step, self.total_steps, c.anneal_frac)
        loss_compose, m_compose = None, {}
        if c.w_compose > 0:
            loss_compose, m_compose = self._compose_loss(model, pv.device)
        element = c.w_local > 0 and c.local_form != "pair"
        # Under local mask scores the masks' scores are the element loss's best matches: one
        # computation serves both (with gradient only when that loss uses it).
        shared = element and model.cfg.mask_scores == "local"
        with torch.set_grad_enabled(shared and torch.is_grad_enabled()):
            s_t = model.cross_scores(pl, pv, wv, f_v)                     # (B, B, T)
            s_i = model.cross_scores(pv, pl, wl, f_l)                     # (B, B, P)
        m_l, tau_t, frac_t = self._masks("text", s_t.detach(), wl, rho)
        m_v, tau_i, frac_i = self._masks("image", s_i.detach(), wv, rho)
        if element:
            tok = (element_contrast(s_t, wl, wv.any(dim=1), c.local_temp, None, c.local_form)
                   if shared and own_t is None else
                   element_alignment(lm, wlm, pv, wv, c.local_temp,
                                     None if own_t is None else own_t - off, c.local_form))
            pat = (element_contrast(s_i, wv, wl.any(dim=1), c.local_temp, None, c.local_form)
                   if shared and own_i is None else
                   element_alignment(vm, wv, pl, wl, c.local_temp,
                                     None if own_i is None else own_i - off, c.local_form))
            loss_local = 0.5 * (tok + pat)
        elif c.w_local > 0:
            loss_local = local_alignment(pl, wl, pv, wv, c.local_temp)
        loss_empty, empty_share = pv.sum() * 0.0, 0.0
        if c.w_empty > 0:
            empty = empty_cells(feats.image.tokens, self.blank, wv, c.empty_cos)
            loss_empty = empty_rejection(pv, empty, pl, wl, c.local_temp, c.empty_null)
            empty_share = empty.sum().item() / max(wv.sum().item(), 1)
        f_vm, f_lm = model.image_only(v, m_v), model.text_only(l, m_l)      # masked globals
        itc = ops.contrastive_loss(G(f_vm), G(f_lm), _scale(model), backend=None)
        gd = (global_distillation(G(f_v), G(feats.image.pooled))
              + global_distillation(G(f_l), G(feats.text.pooled)))
        ld = (local_distillation(pv, feats.image.tokens, wv)
              + local_distillation(pl, feats.text.tokens, wl))
        loss = itc + c.w_gla * (gla_t + gla_i) + c.w_gd * gd + c.w_ld * ld
        if c.w_local > 0:
            loss = loss + c.w_local * loss_local
        if c.w_empty > 0:
            loss = loss + c.w_empty * loss_empty
        if loss_compose is not None:
            loss = loss + c.w_compose * loss_compose
        model.thresholds.copy_(torch.tensor([tau_t, tau_i]))
        metrics = {"itc": itc.item(), "gla": (gla_t + gla_i).item(), "gd": gd.item(),
                   "ld": ld.item(), "rho": rho, "tau_text": tau_t, "tau_image": tau_i,
                   "mask_text": frac_t, "mask_image": frac_i,
                   "local": loss_local.item() if c.w_local > 0 else 0.0,
                   "empty": loss_empty.item(), "empty_cells": empty_share,
                   "logit_scale": _scale(model).item()}
        metrics.update(self.qda["text"].summary("text"))
        metrics.update(self.qda["image"].summary("image"))
        metrics.update(m_compose)
        metrics.update(self._probe(model, step))
        return loss, metrics

    def state_tensors(self) -> dict:
        return {**{f"qda_{k}": q.stats.clone() for k, q in self.qda.items()},
                "gen": self.gen.get_state()}

    def load_state_tensors(self, state: dict) -> None:
        for k, q in self.qda.items():
            q.stats = state[f"qda_{k}"].to(torch.float64)
        if "gen" in state:
            self.gen.set_state(state["gen"])


@torch.no_grad()
def blank_cells(model) -> torch.Tensor:
    """(P, d) the image tower's patch features of a blank white canvas (empty-cell rejection)."""
    from PIL import Image
    side = model.image_tower.cfg.image_size
    f = model.tower_features(images=[Image.new("RGB", (side, side), "white")])
    return f.image.tokens[0].float()


# --------------------------------------------------------------------------- stage 2
@register_recipe("stage2", default_model=None, default_lr=1e-4)
class Stage2(Recipe):
    """Multi-positive InfoNCE over mask-built views and mined negatives (docs/method.md, "Stage 2")."""
    arch = SolarModel
    setup_per_batch = True

    def __init__(self, cfg, total_steps):
        super().__init__(cfg, total_steps)
        self.gen = torch.Generator().manual_seed(cfg.seed + 17)
        self.queue = None                 # on a stream: the queue mined negatives come from

    def start_stream(self) -> None:
        """On a stream the mined negatives come from a queue of the last ``mine_queue`` documents
        (solar.train.mining.NegativeQueue) instead of the whole corpus."""
        if self.cfg.mine_k > 0:
            self.queue = NegativeQueue(self.cfg.mine_queue)

    @torch.no_grad()
    def setup(self, model, source, device, used=None) -> None:
        """Freeze the stage-1 masks (for the documents in ``used``, default all) and mine pools."""
        tau_t, tau_i = model.tau
        if not (math.isfinite(tau_t) and math.isfinite(tau_i)):
            raise ValueError(f"recipe {self.cfg.recipe!r} needs a stage-1 model (its thresholds "
                             "are not set): pass model= the stage-1 run folder")
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
                                      self.cfg.mine_window)
                      if self.cfg.mine_k > 0 and self.queue is None else None)
        model.train(was)

    def _view(self, wv, wl):
        """Random crop-like patch drop and token dropout of the "view" options (identity when
        both are 0): (B, P), (B, T) weights -> the same with elements removed."""
        c = self.cfg
        if c.crop_views > 0:
            wv = wv & crop_keep(wv.shape, c.crop_views, self.gen).to(wv.device)
        if c.token_drop > 0:
            drop = torch.rand(wl.shape, generator=self.gen).to(wl.device) < c.token_drop
            keep = wl & ~drop
            wl = torch.where(keep.any(dim=1, keepdim=True), keep, wl)   # never empty a text
        return wv, wl

    def loss(self, model, feats, idx, step, source):
        c, dev = self.cfg, feats.has_image.device
        v, l = model.locals(feats)
        wv0, wl0 = feats.image_weights, feats.text_weights
        av, al = self._view(wv0, wl0) if c.anchor_view else (wv0, wl0)
        anchors = model.joint(v, av, l, al)                                 # (B, D)
        wv, wl = self._view(wv0, wl0)
        m = self.masks
        sub = StageOneMasks(m.token_int[idx][:, : l.shape[1]], m.token_diff[idx][:, : l.shape[1]],
                            m.segments[idx], m.seg_int[idx], m.seg_diff[idx])
        vw = {k: t.to(dev) for k, t in build_views(sub, wl.cpu(), wv.cpu(), c.pos_ratio,
                                                    c.neg_ratio, c.area_cap, self.gen).items()}
        pos = torch.stack([model.joint(v, wv, l, vw["pos_text"]),
                           model.joint(v, vw["pos_image"], l, wl)], dim=1)  # (B, 2, D)
        negs, oks = [], []
        if c.neg_form in ("hide", "both"):
            negs += [model.joint(v, wv, l, vw["neg_text"]), model.joint(v, vw["neg_image"], l, wl)]
            oks.append(vw["neg_ok"] & hidden_share_ok(vw, wv0, wl0, c.neg_min_share))
        if c.neg_form in ("swap", "both"):
            p, swap_ok = swap_partners(feats, self.gen)
            negs += [model.joint(v, wv, l[p], wl[p]), model.joint(v[p], wv[p], l, wl)]
            oks.append(swap_ok)
        neg = torch.stack(negs, dim=1)                                      # (B, 2 or 4, D)
        neg_ok = torch.cat(oks, dim=1)
        mined = mined_ok = None
        doc_ids = idx                                     # what names a document across ranks
        if c.mine_k > 0 and self.queue is not None:                         # a stream
            doc_ids = source.ids.to(dev)
            mined, mined_idx, mined_ok = self.queue.mine(
                doc_ids, feats.image.pooled, feats.text.pooled, c.mine_skip, c.mine_window,
                c.mine_k, self.gen)
            if mined is None:                                               # empty queue
                B = len(doc_ids)
                mined = torch.zeros(B, c.mine_k, anchors.shape[1], device=dev)
                mined_idx = torch.full((B, c.mine_k), -1, dtype=torch.long, device=dev)
                mined_ok = torch.zeros(B, c.mine_k, dtype=torch.bool, device=dev)
        elif c.mine_k > 0:
            mined_idx = sample_negatives(self.pools, idx, c.mine_k, self.gen)   # (B, k)
            mf = source.get(mined_idx.flatten(), model).to(dev)
            mined = model.embed(mf).view(len(idx), mined_idx.shape[1], -1)     # (B, k, D)
        A = G(anchors)
        cg = ops.build_columns(A, G(pos), G(neg), None if mined is None else G(mined))
        valid = cg.valid.clone()
        valid[:, cg.slices["constructed_negatives"]] &= dist.all_gather_nograd(
            neg_ok).flatten()[None, :]
        if mined is not None:
            gidx = dist.all_gather_nograd(doc_ids.to(dev))
            gm = dist.all_gather_nograd(mined_idx.to(dev)).flatten()
            valid[:, cg.slices["mined_negatives"]] &= gm[None, :] != gidx[:, None]
            if mined_ok is not None:
                valid[:, cg.slices["mined_negatives"]] &= dist.all_gather_nograd(
                    mined_ok).flatten()[None, :]
        loss = ops.multi_positive_infonce(A, cg.candidates, cg.positives, valid, c.temperature,
                                          backend=None)
        docs = model.joint(v, wv0, l, wl0) if c.s2_distill > 0 or self.queue is not None else None
        if c.s2_distill > 0:
            loss = loss + c.s2_distill * global_distillation(G(docs), G(teacher_documents(feats)))
        if self.queue is not None:                        # after mining: never its own negative
            self.queue.push(doc_ids, feats.image.pooled, feats.text.pooled, docs)
        with torch.no_grad():
            sims = A @ cg.candidates.T
            metrics = {"pos_sim": sims[cg.positives].mean().item(),
                       "neg_view_sim": sims[:, cg.slices["constructed_negatives"]].mean().item(),
                       "neg_views_ok": neg_ok.float().mean().item()}
            if mined is not None:
                ms, mv = sims[:, cg.slices["mined_negatives"]], valid[:, cg.slices["mined_negatives"]]
                metrics["mined_sim"] = ms[mv].mean().item() if mv.any() else float("nan")
        return loss, metrics

    def state_tensors(self) -> dict:
        state = {"gen": self.gen.get_state()}
        if self.queue is not None:
            state.update(self.queue.state_tensors())
        return state

    def load_state_tensors(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        if self.queue is not None:
            self.queue.load_state_tensors(state)


def crop_keep(shape, max_frac: float, g: torch.Generator) -> torch.Tensor:
    """(B, P) bool keep-mask of square patch grids: per row, 1 .. ceil(max_frac * side) grid rows
    or columns removed from one random side (a crop on the feature grid)."""
    B, P = shape
    side = int(round(P ** 0.5))
    if side * side != P or side < 2:
        return torch.ones(B, P, dtype=torch.bool)
    keep = torch.ones(B, side, side, dtype=torch.bool)
    most = max(1, math.ceil(max_frac * side))
    k = torch.randint(1, most + 1, (B,), generator=g)
    which = torch.randint(0, 4, (B,), generator=g)
    for i in range(B):
        n = int(k[i])
        if which[i] == 0:
            keep[i, :n] = False
        elif which[i] == 1:
            keep[i, -n:] = False
        elif which[i] == 2:
            keep[i, :, :n] = False
        else:
            keep[i, :, -n:] = False
    return keep.view(B, P)


def hidden_share_ok(vw: dict, wv: torch.Tensor, wl: torch.Tensor, min_share: float) -> torch.Tensor:
    """(B, 2) bool: whether each constructed negative view (text, image) hides at least
    ``min_share`` of the valid elements of its modality."""
    if min_share <= 0:
        return torch.ones(wv.shape[0], 2, dtype=torch.bool, device=wv.device)
    st = 1 - vw["neg_text"].sum(1) / wl.sum(1).clamp_min(1)
    si = 1 - vw["neg_image"].sum(1) / wv.sum(1).clamp_min(1)
    return torch.stack([st >= min_share, si >= min_share], dim=1)


def swap_partners(feats, g: torch.Generator, same: float = 0.999):
    """The partners of the "swap" constructed negatives: (B,) index p (row i's partner is row
    (i + r) mod B for one random r in 1 .. B-1, so nobody is their own partner) and (B, 2) bool
    validity of the two negatives, (i's image, p's text) and (p's image, i's text).  A negative is
    invalid when the swapped-in part is the anchor's own in all but name (pooled tower vectors at
    cosine >= ``same``: a duplicate caption or picture) or when the batch has one document."""
    B, dev = feats.has_image.shape[0], feats.has_image.device
    if B < 2:
        return torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, 2, dtype=torch.bool,
                                                                          device=dev)
    r = int(torch.randint(1, B, (1,), generator=g))
    p = (torch.arange(B, device=dev) + r) % B
    ti = F.normalize(feats.text.pooled.float(), dim=-1)
    ii = F.normalize(feats.image.pooled.float(), dim=-1)
    text_differs = (ti * ti[p]).sum(-1) < same
    image_differs = (ii * ii[p]).sum(-1) < same
    ok_text = text_differs & (feats.has_text | feats.has_text[p])
    ok_image = image_differs & (feats.has_image | feats.has_image[p])
    return p, torch.stack([ok_text, ok_image], dim=1)


def teacher_documents(feats) -> torch.Tensor:
    """(B, d_v + d_l) the frozen towers' pooled vectors, each normalized (zero when missing):
    the teacher of the document embeddings' similarity structure."""
    i = F.normalize(feats.image.pooled.float(), dim=-1) * feats.has_image[:, None]
    t = F.normalize(feats.text.pooled.float(), dim=-1) * feats.has_text[:, None]
    return torch.cat([i, t], dim=-1)


# --------------------------------------------------------------------------- baselines
def three_embeddings(model, feats):
    """(e_image, e_text, e_fused), each (B, D) normalized.

    ScoreFusionModel: e_fused = normalize(e_i + e_t) (docs/method.md, "Model").  SolarModel: the image-only,
    text-only and joint passes of the fusion encoder (a bridge between the two methods).
    """
    if isinstance(model, ScoreFusionModel):
        e_i, e_t = model.modal_embeddings(feats)
        e_i, e_t = F.normalize(e_i, dim=-1), F.normalize(e_t, dim=-1)
        return e_i, e_t, F.normalize(e_i + e_t, dim=-1)
    v, l = model.locals(feats)
    wv, wl = feats.image_weights, feats.text_weights
    return model.image_only(v, wv), model.text_only(l, wl), model.joint(v, wv, l, wl)


@register_recipe("gcl", default_model="score-fusion-offline")
class GCL(Recipe):
    """GCL's 3N x 3N loss over [e_i; e_t; e_it] (docs/method.md, "Baselines")."""

    def loss(self, model, feats, idx, step, source):
        e_i, e_t, e_it = three_embeddings(model, feats)
        loss = ops.gcl_loss(G(e_i), G(e_t), G(e_it), _scale(model), backend=None)
        return loss, {"logit_scale": _scale(model).item()}


@register_recipe("clip", default_model="score-fusion-offline")
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

