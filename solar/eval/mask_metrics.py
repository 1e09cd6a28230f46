"""Scores of intersection masks against the truth of the mask benchmark (``solar.eval.masks``).

Per model, with its stage-1 thresholds (or, for a model without them, thresholds estimated by QDA
on the benchmark's own documents, as ``SolarModel.intersection_masks`` does):

* tokens: precision, recall and F1 of the mask (A's words are the positives, C's words the
  negatives; punctuation is not scored), micro-averaged over all scored tokens;
* patches: IoU of the marked patches with A's region (mean over cases), and the share of B's
  patches and of background patches that are marked;
* the ROC AUC of the raw scores, intersection vs. difference (tokens: A vs. C words; patches: A
  vs. B patches), pooled over all cases; it does not depend on the threshold.

Two references are always computed beside the models: the all-ones mask (everything marked) and
the same architecture untrained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from solar.data.composite import cell_labels, token_labels

from .masks import MaskBenchmark, render_case

COLUMNS = ("token_precision", "token_recall", "token_f1", "token_auc", "patch_iou",
           "patch_b_marked", "patch_bg_marked", "patch_auc", "token_marked", "patch_marked")


@dataclass
class CaseFeatures:
    """Tower outputs of every case for one pair of towers, with the truth on their grids."""
    feats: object            # DocFeatures, CPU float32, text trimmed to the model's positions
    token_truth: list        # per case: int8 array over the case's valid tokens
    patch_truth: np.ndarray  # (N, P) int8: 1 = A, 0 = B, -1 = background
    grid: tuple
    token_feats: object = None   # DocFeatures of the token masks (the model's mask_context), or None


def _join(parts: list):
    """DocFeatures of several batches in one, the text padded to the longest."""
    from solar.model.base import DocFeatures
    from solar.model.towers import TowerOutput
    T = max(p.text.tokens.shape[1] for p in parts)

    def pad(o, L):
        n = L - o.tokens.shape[1]
        return TowerOutput(torch.nn.functional.pad(o.tokens, (0, 0, 0, n)),
                           torch.nn.functional.pad(o.mask, (0, n)), o.pooled)
    return DocFeatures(TowerOutput(*(torch.cat([getattr(p.image, k) for p in parts])
                                     for k in ("tokens", "mask", "pooled"))),
                       TowerOutput(*(torch.cat([getattr(pad(p.text, T), k) for p in parts])
                                     for k in ("tokens", "mask", "pooled"))),
                       torch.cat([p.has_image for p in parts]), torch.cat([p.has_text for p in parts]))


def case_features(model, bench: MaskBenchmark, batch_size: int = 32) -> CaseFeatures:
    """Render every case once and run the model's towers over it."""
    P = model.image_tower.num_tokens
    side = int(round(P ** 0.5))
    if side * side != P:
        raise ValueError(f"the mask benchmark needs a square patch grid; the image tower gives {P}")
    parts, tparts, tok_truth, patch_truth = [], [], [], []
    was = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(bench.cases), batch_size):
            cases = bench.cases[s:s + batch_size]
            rendered = [render_case(c, with_masks=True) for c in cases]
            f, tf = model.mask_features([r[0] for r in rendered], [c.text for c in cases])
            f = f.trim_text(model.cfg.max_text_tokens)
            tf = tf.trim_text(model.cfg.max_text_tokens) if tf is not None else None
            strings = model.token_strings([c.text for c in cases], (tf or f).text.mask,
                                          model.cfg.mask_context)
            for c, toks, (_, masks) in zip(cases, strings, rendered):
                tok_truth.append(np.array(token_labels(c.text, c.spans, toks), dtype=np.int8))
                patch_truth.append(cell_labels(masks, (side, side)))
            parts.append(f.to("cpu"))
            if tf is not None:
                tparts.append(tf.to("cpu"))
    model.train(was)
    return CaseFeatures(_join(parts), tok_truth, np.stack(patch_truth), (side, side),
                        _join(tparts) if tparts else None)


@torch.no_grad()
def case_scores(model, cf: CaseFeatures, batch_size: int = 64) -> dict:
    """Raw scores and thresholds of ``model`` on the cases: {"tokens": [per case array],
    "patches": (N, P) array, "tau_text", "tau_image", "thresholds_source"}."""
    from solar import ops
    was = model.training
    model.eval()
    dev = model.device
    toks, pats, negs_t, negs_i = [], [], [], []
    need = not all(map(math.isfinite, model.tau))
    f = cf.feats
    for s in range(0, len(f), batch_size):
        idx = torch.arange(s, min(len(f), s + batch_size))
        part = _slice(f, idx).to(dev)
        tpart = _slice(cf.token_feats, idx).to(dev) if cf.token_feats is not None else None
        t, p = model.mask_scores(part, tpart)
        m = (tpart or part).text_weights
        toks += [t[i][m[i]].float().cpu().numpy() for i in range(len(idx))]
        pats.append(p.float().cpu().numpy())
        if need and len(idx) > 1:
            negs_t.append(model._negatives(tpart or part, text=True).numpy())
            negs_i.append(model._negatives(part, text=False).numpy())
    model.train(was)
    patches = np.concatenate(pats)
    if need:
        tau_t = ops.qda_threshold(torch.from_numpy(np.concatenate(toks)),
                                  torch.from_numpy(np.concatenate(negs_t)))
        tau_i = ops.qda_threshold(torch.from_numpy(patches.reshape(-1)),
                                  torch.from_numpy(np.concatenate(negs_i)))
        source = "batch"
    else:
        (tau_t, tau_i), source = model.tau, "model"
    return {"tokens": toks, "patches": patches, "tau_text": float(tau_t),
            "tau_image": float(tau_i), "thresholds_source": source}


def _slice(f, idx):
    from solar.model.base import DocFeatures
    from solar.model.towers import TowerOutput
    cut = lambda o: TowerOutput(o.tokens[idx], o.mask[idx], o.pooled[idx])  # noqa: E731
    return DocFeatures(cut(f.image), cut(f.text), f.has_image[idx], f.has_text[idx])


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (NaN if a side is
    empty)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    from sklearn.metrics import roc_auc_score
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def score_masks(token_scores: list, token_truth: list, token_marks: list,
                patch_scores: np.ndarray, patch_truth: np.ndarray,
                patch_marks: np.ndarray) -> dict:
    """The metrics of the module docstring from scores, truth (1 / 0 / -1) and boolean marks.

    token_*: lists with one 1-D array per case (the same length per case); patch_*: (N, P)."""
    ts = np.concatenate(token_scores) if token_scores else np.zeros(0)
    tt = np.concatenate(token_truth) if token_truth else np.zeros(0, dtype=np.int8)
    tm = np.concatenate(token_marks).astype(bool) if token_marks else np.zeros(0, dtype=bool)
    lab = tt >= 0
    tp = int((tm & (tt == 1)).sum())
    marked, pos = int((tm & lab).sum()), int((tt == 1).sum())
    prec = tp / marked if marked else 0.0
    rec = tp / pos if pos else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    a, b, bg = patch_truth == 1, patch_truth == 0, patch_truth == -1
    pm = patch_marks.astype(bool)
    inter, union = (pm & a).sum(axis=1), (pm | a).sum(axis=1)
    has_a = a.any(axis=1)
    iou = float(np.mean(inter[has_a] / union[has_a])) if has_a.any() else float("nan")
    share = lambda sel: float((pm & sel).sum() / sel.sum()) if sel.any() else float("nan")  # noqa
    return {"token_precision": prec, "token_recall": rec, "token_f1": f1,
            "token_auc": roc_auc(ts[tt == 1], ts[tt == 0]),
            "patch_iou": iou, "patch_b_marked": share(b), "patch_bg_marked": share(bg),
            "patch_auc": roc_auc(patch_scores[a], patch_scores[b]),
            "token_marked": float(tm[lab].mean()) if lab.any() else float("nan"),
            "patch_marked": float(pm.mean()) if pm.size else float("nan"),
            "tokens_scored": int(lab.sum()), "patches_a": int(a.sum()), "patches_b": int(b.sum())}


def evaluate_model_masks(model, cf: CaseFeatures) -> dict:
    """Metrics of one model on precomputed case features, with its thresholds."""
    sc = case_scores(model, cf)
    marks_t = [s > sc["tau_text"] for s in sc["tokens"]]
    _check_lengths(sc["tokens"], cf.token_truth)
    r = score_masks(sc["tokens"], cf.token_truth, marks_t, sc["patches"], cf.patch_truth,
                    sc["patches"] > sc["tau_image"])
    r.update({k: sc[k] for k in ("tau_text", "tau_image", "thresholds_source")})
    return r


def all_ones_reference(cf: CaseFeatures) -> dict:
    """The all-ones mask (every token and patch marked): AUCs are 0.5 by definition."""
    marks = [np.ones(len(t), dtype=bool) for t in cf.token_truth]
    zeros = [np.zeros(len(t)) for t in cf.token_truth]
    return score_masks(zeros, cf.token_truth, marks, np.zeros(cf.patch_truth.shape),
                       cf.patch_truth, np.ones(cf.patch_truth.shape, dtype=bool))


def _check_lengths(scores: list, truth: list) -> None:
    for i, (s, t) in enumerate(zip(scores, truth)):
        if len(s) != len(t):
            raise ValueError(f"case {i}: {len(s)} token scores for {len(t)} truth labels")


def evaluate_masks(models: dict, bench: MaskBenchmark, untrained: Optional[object] = None,
                   batch_size: int = 32, log=None) -> dict:
    """{label: metrics} for ``models`` ({label: SolarModel}) plus "all-ones mask" and, when
    ``untrained`` (a model) is given, "untrained".  Tower features are computed once per pair of
    towers (models of one tower configuration share them)."""
    from .embed import _tower_key
    rows, cache = {}, {}

    def feats_for(m):
        key = (_tower_key(m.image_tower), _tower_key(m.text_tower), m.cfg.mask_context)
        if key not in cache:
            cache[key] = case_features(m, bench, batch_size)
        return cache[key]
    first = None
    for label, m in models.items():
        cf = feats_for(m)
        first = first or cf
        rows[label] = evaluate_model_masks(m, cf)
        if log:
            log(f"masks {label}: token F1 {rows[label]['token_f1']:.3f}, token AUC "
                f"{rows[label]['token_auc']:.3f}, patch IoU {rows[label]['patch_iou']:.3f}, "
                f"patch AUC {rows[label]['patch_auc']:.3f}")
    if untrained is not None:
        rows["untrained"] = evaluate_model_masks(untrained, feats_for(untrained))
    if first is not None:
        rows["all-ones mask"] = all_ones_reference(first)
    return rows


def masks_table(rows: dict) -> str:
    """A markdown table of ``evaluate_masks`` rows."""
    cols = ("token_precision", "token_recall", "token_f1", "token_auc", "patch_iou",
            "patch_b_marked", "patch_bg_marked", "patch_auc")
    head = "| model | " + " | ".join(c.replace("_", " ") for c in cols) + " |"
    out = [head, "|---" * (len(cols) + 1) + "|"]
    for label, r in rows.items():
        out.append(f"| {label} | " + " | ".join(f"{r[c]:.3f}" if r[c] == r[c] else "–"
                                                 for c in cols) + " |")
    return "\n".join(out)
