"""SolarModel (adapters + fusion encoder) and ScoreFusionModel (the CLIP-SF / GCL baseline).

SolarModel (docs/method.md, "Model"):
    tower tokens -> adapters A_V, A_L -> V' (B, P, W), L' (B, T, W)
    fusion encoder over [CLS; V'; L'] (soft masks as log-bias) -> head -> f = normalize (B, D)
    unimodal passes [CLS; V'] / [CLS; L'] give f_V, f_L (and f_V^M, f_L^M under masks).
    Local scores: cos(normalize(head(L'_i[t])), f_V^j), the same for patches vs. f_L^j [I: the
    locals are read through the same head so both live in the joint space].
ScoreFusionModel (docs/method.md, "Model"): e_m = proj_m(masked mean of A_m(tokens)); document vector
    normalize(e_i + e_t) with a missing modality left out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from solar import ops

from .base import DocFeatures, DocumentEncoder
from .config import ModelConfig
from .fusion import Adapter, FusionEncoder
from .towers import check_context


@dataclass
class IntersectionMasks:
    """Per-document intersection scores, thresholds and masks (see SolarModel.intersection_masks).

    token_scores[i]: (T_i,) float32 scores of document i's text tokens (special tokens excluded);
    tokens[i]: the T_i token strings; token_masks[i]: (T_i,) bool, score > tau_text;
    patch_scores: (N, P) float32; patch_masks: (N, P) bool, score > tau_image; grid: (rows, cols)
    of the patch layout when square; tau_text, tau_image: the thresholds used;
    thresholds_source: "model" (set by stage-1 training) or "batch" (QDA on this batch).
    """
    token_scores: list
    tokens: list
    token_masks: list
    patch_scores: torch.Tensor
    patch_masks: torch.Tensor
    grid: Optional[tuple]
    tau_text: float
    tau_image: float
    thresholds_source: str


class SolarModel(DocumentEncoder):
    """SOLAR's symmetric document encoder.  See the module docstring for shapes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        it, tt = self.image_tower, self.text_tower
        try:
            check_context(tt, cfg.mask_context)
        except ValueError as err:
            raise ValueError(f"mask_context: {err}") from None
        self.adapter_image = Adapter(it.token_dim, cfg.adapter_hidden, cfg.width)
        self.adapter_text = Adapter(tt.token_dim, cfg.adapter_hidden, cfg.width)
        self.fusion = FusionEncoder(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                                    it.num_tokens, min(tt.num_tokens, cfg.max_text_tokens),
                                    cfg.dropout)
        self.head = nn.Linear(cfg.width, cfg.dim, bias=False)
        if cfg.readout == "cls+pooled":
            self.pool_image = nn.Linear(cfg.width, cfg.dim, bias=False)
            self.pool_text = nn.Linear(cfg.width, cfg.dim, bias=False)
            for p in (self.pool_image, self.pool_text):
                nn.init.orthogonal_(p.weight)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale_init)))
        # (tau_text, tau_image): the stage-1 QDA thresholds; NaN until trained.
        self.register_buffer("thresholds", torch.full((2,), float("nan")))

    # ------------------------------------------------------------------ building blocks
    def locals(self, feats: DocFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter outputs V' (B, P, W) and L' (B, T, W)."""
        return self.adapter_image(feats.image.tokens), self.adapter_text(feats.text.tokens)

    def readout(self, cls_out: torch.Tensor, v=None, v_weights=None, l=None,
                l_weights=None) -> torch.Tensor:
        """(B, W) CLS output -> (B, D) normalized embedding.  With readout "cls+pooled" the
        present modalities' pooled locals (B, P, W) / (B, T, W) under their weights join it."""
        f = self.head(cls_out)
        if self.cfg.readout == "cls":
            return F.normalize(f, dim=-1)
        f = F.normalize(f, dim=-1)
        for x, w, proj in ((v, v_weights, getattr(self, "pool_image", None)),
                           (l, l_weights, getattr(self, "pool_text", None))):
            if x is None:
                continue
            w = w.to(x.dtype)
            pooled = ops.masked_pool(x, w, normalize=False, backend=None)          # (B, W)
            present = (w.sum(dim=1) > 0).to(f.dtype)[:, None]
            f = f + F.normalize(proj(pooled), dim=-1) * present
        return F.normalize(f, dim=-1)

    def project_locals(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, W) locals -> (B, L, D) normalized, comparable with the embeddings."""
        return F.normalize(self.head(x), dim=-1)

    def joint(self, v, v_weights, l, l_weights) -> torch.Tensor:
        """[CLS; V'; L'] under (B, P) / (B, T) weights -> f (B, D)."""
        return self.readout(self.fusion(v, v_weights, l, l_weights), v, v_weights, l, l_weights)

    def image_only(self, v, v_weights) -> torch.Tensor:
        """[CLS; V'] -> f_V (B, D)."""
        return self.readout(self.fusion(v=v, v_weights=v_weights), v=v, v_weights=v_weights)

    def text_only(self, l, l_weights) -> torch.Tensor:
        """[CLS; L'] -> f_L (B, D)."""
        return self.readout(self.fusion(l=l, l_weights=l_weights), l=l, l_weights=l_weights)

    def embed(self, feats: DocFeatures) -> torch.Tensor:
        v, l = self.locals(feats)
        return self.joint(v, feats.image_weights, l, feats.text_weights)

    @property
    def tau(self) -> tuple[float, float]:
        """(tau_text, tau_image); NaN before stage-1 training."""
        return float(self.thresholds[0]), float(self.thresholds[1])

    def diagonal_scores(self, feats: DocFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of each document's own tokens/patches against its partner modality:
        token (B, T) and patch (B, P); see ``cross_scores`` for the two forms."""
        v, l = self.locals(feats)
        wv, wl = feats.image_weights, feats.text_weights
        pv, pl = self.project_locals(v), self.project_locals(l)
        if self.cfg.mask_scores == "local":
            return best_match(pl, pv, wv, diagonal=True), best_match(pv, pl, wl, diagonal=True)
        f_v, f_l = self.image_only(v, wv), self.text_only(l, wl)
        tok = torch.einsum("btd,bd->bt", pl, f_v)
        pat = torch.einsum("bpd,bd->bp", pv, f_l)
        return tok, pat

    def cross_scores(self, loc, partner_loc, partner_weights, partner_global) -> torch.Tensor:
        """(B, L, D) projected locals against B' partner documents -> (B, B', L) scores.

        mask_scores "global" (the paper's): cos(x_i[t], g_j) with the partner's global g_j;
        "local": max over the partner's valid locals y of cos(x_i[t], y) [I; docs/method.md]."""
        if self.cfg.mask_scores == "local":
            return best_match(loc, partner_loc, partner_weights)
        return torch.einsum("itd,jd->ijt", loc, partner_global)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def intersection_masks(self, images: Sequence, texts: Sequence,
                           batch_size: int = 32) -> IntersectionMasks:
        """Where image and text agree, per text token and per image patch.

        images: list of PIL images; texts: list of strings (both required for every document).
        Uses the stage-1 thresholds stored in the model; an untrained model (NaN thresholds)
        estimates them by QDA over this call's documents (at least 2 needed).
        """
        if images is None or texts is None or any(x is None for x in list(images) + list(texts)):
            raise ValueError("intersection_masks needs an image and a text for every document")
        was = self.training
        self.eval()
        try:
            tok_s, pat_s, toks, negs = [], [], [], ([], [])
            for s in range(0, len(images), batch_size):
                feats, tfeats = self.mask_features(images[s:s + batch_size],
                                                   texts[s:s + batch_size])
                t, p = self.mask_scores(feats, tfeats)
                tm = (tfeats or feats).text.mask
                tok_s += [t[i][tm[i]].float().cpu() for i in range(len(t))]
                pat_s.append(p.float().cpu())
                toks += self.token_strings(texts[s:s + batch_size], tm, self.cfg.mask_context)
                if not all(map(math.isfinite, self.tau)):
                    negs[0].append(self._negatives(tfeats or feats, text=True))
                    negs[1].append(self._negatives(feats, text=False))
        finally:
            self.train(was)
        patches = torch.cat(pat_s)
        tau_t, tau_i, source = *self.tau, "model"
        if not (math.isfinite(tau_t) and math.isfinite(tau_i)):
            tau_t, tau_i, source = self._batch_thresholds(tok_s, patches, negs)
        P = patches.shape[1]
        side = int(round(P ** 0.5))
        return IntersectionMasks(tok_s, toks, [t > tau_t for t in tok_s], patches, patches > tau_i,
                                 (side, side) if side * side == P else None, tau_t, tau_i, source)

    def mask_features(self, images: Sequence, texts: Sequence) -> tuple:
        """Tower features as the masks read them: (features, token features), the second None
        unless ``cfg.mask_context`` asks for another text context than the tower's; then it
        holds the same image features with the text under that context, and the token masks
        are read from it while the patch masks keep the tower's own text features."""
        feats = self.tower_features(images, texts)
        ctx = self.cfg.mask_context
        if ctx is None or ctx == self.text_tower.cfg.context:
            return feats, None
        txt = self.tower_features(None, list(texts), text_context=ctx)
        return feats, DocFeatures(feats.image, txt.text, feats.has_image, txt.has_text)

    def mask_scores(self, feats: DocFeatures, token_feats: Optional[DocFeatures] = None) -> tuple:
        """``diagonal_scores`` with the token scores taken from ``token_feats`` when given."""
        t, p = self.diagonal_scores(feats)
        if token_feats is not None:
            t = self.diagonal_scores(token_feats)[0]
        return t, p

    def _negatives(self, feats: DocFeatures, text: bool) -> torch.Tensor:
        """Scores of locals against other documents' partners (off-diagonal), flat."""
        v, l = self.locals(feats)
        pv, pl = self.project_locals(v), self.project_locals(l)
        wv, wl = feats.image_weights, feats.text_weights
        if text:
            s = self.cross_scores(pl, pv, wv, self.image_only(v, wv))
            w = wl
        else:
            s = self.cross_scores(pv, pl, wl, self.text_only(l, wl))
            w = wv
        off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
        keep = off[:, :, None] & w[:, None, :]
        return s[keep].float().cpu()

    def _batch_thresholds(self, tok_s, patches, negs):
        nt, ni = torch.cat(negs[0]), torch.cat(negs[1])
        if nt.numel() < 2 or ni.numel() < 2:
            raise ValueError("the model has no stage-1 thresholds; give at least 2 documents so "
                             "they can be estimated by QDA")
        tau_t = ops.qda_threshold(torch.cat(tok_s), nt)
        tau_i = ops.qda_threshold(patches.flatten(), ni)
        return tau_t, tau_i, "batch"

    def token_strings(self, texts, mask, context: Optional[str] = None) -> list:
        """Strings of each text's valid tokens, in order: ``mask`` (B, T) is the features' text
        mask (special tokens and padding excluded) under the text ``context`` the features were
        made with (None: the tower's own).  Hashed-word towers give the words."""
        tower = self.text_tower
        tok = getattr(tower, "tokenizer", None)
        if tok is None:
            import re
            words = [re.findall(r"\w+", t.lower()) for t in texts]
            return [[w for w, keep in zip(ws, mask[i].tolist()) if keep] for i, ws in enumerate(words)]
        ids = tower.token_ids(list(texts), context)[:, : mask.shape[1]]  # features cut to mask
        out = []
        for i in range(len(texts)):
            row = ids[i][mask[i].cpu()].tolist()
            out.append(tok.convert_ids_to_tokens(row))
        return out


def best_match(x: torch.Tensor, y: torch.Tensor, wy: torch.Tensor,
               diagonal: bool = False) -> torch.Tensor:
    """Best cosine of each local of x (B, L, D) among the valid locals of y (B', M, D), wy
    (B', M): (B, B', L), or (B, L) for each document against its own y when ``diagonal``.
    Partners without valid locals give -1."""
    if diagonal:
        s = torch.einsum("bld,bmd->blm", x, y).masked_fill(~wy[:, None, :], float("-inf"))
        return s.max(dim=2).values.clamp_min(-1.0)
    s = torch.einsum("ild,jmd->ijlm", x, y).masked_fill(~wy[None, :, None, :], float("-inf"))
    return s.max(dim=3).values.clamp_min(-1.0)


class ScoreFusionModel(DocumentEncoder):
    """CLIP-SF / GCL baseline on the same towers: e_m = proj_m(pool(A_m(tokens)))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        it, tt = self.image_tower, self.text_tower
        self.adapter_image = Adapter(it.token_dim, cfg.adapter_hidden, cfg.width)
        self.adapter_text = Adapter(tt.token_dim, cfg.adapter_hidden, cfg.width)
        self.proj_image = nn.Linear(cfg.width, cfg.dim, bias=False)
        self.proj_text = nn.Linear(cfg.width, cfg.dim, bias=False)
        for p in (self.proj_image, self.proj_text):
            nn.init.orthogonal_(p.weight)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale_init)))

    def modal_embeddings(self, feats: DocFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unnormalized) e_i (B, D) and e_t (B, D); zero rows for a missing modality."""
        wi, wt = feats.image_weights, feats.text_weights
        pi = ops.masked_pool(self.adapter_image(feats.image.tokens), wi, normalize=False, backend=None)
        pt = ops.masked_pool(self.adapter_text(feats.text.tokens), wt, normalize=False, backend=None)
        return self.proj_image(pi), self.proj_text(pt)

    def embed(self, feats: DocFeatures) -> torch.Tensor:
        e_i, e_t = self.modal_embeddings(feats)
        # UniIR convention: sum the raw projections of the present modalities, then normalize;
        # each modality is first scaled to unit norm so neither dominates by magnitude [I].
        e_i = F.normalize(e_i, dim=-1) * feats.has_image[:, None]
        e_t = F.normalize(e_t, dim=-1) * feats.has_text[:, None]
        return F.normalize(e_i + e_t, dim=-1)
