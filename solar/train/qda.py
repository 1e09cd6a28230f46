"""Running QDA thresholds and the annealed mask (docs/method.md, "Masks").

``RunningQDA`` keeps an exponential moving average of the mean and variance of the positive
(matching-pair) and negative (non-matching) score populations; the threshold is their
equal-density point from ``solar.qda_threshold_from_stats``.  Batch statistics are plain sums
(count, sum, sum of squares) so they can be all-reduced across ranks before the update.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from solar import ops

from . import dist


class RunningQDA:
    """EMA Gaussian statistics of one modality's positive and negative scores."""

    def __init__(self, momentum: float = 0.9, priors: Optional[tuple] = None):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.priors = priors
        self.stats = torch.full((4,), float("nan"), dtype=torch.float64)  # mu+, var+, mu-, var-

    @staticmethod
    def _moments(scores: torch.Tensor) -> torch.Tensor:
        v = scores.detach().reshape(-1).to(torch.float64)
        return torch.stack([torch.tensor(float(v.numel()), dtype=torch.float64, device=v.device),
                            v.sum(), (v * v).sum()])

    def update(self, pos: torch.Tensor, neg: torch.Tensor) -> None:
        """Fold in one batch of detached positive and negative scores (any shapes)."""
        m = dist.all_reduce_sum(torch.cat([self._moments(pos), self._moments(neg)])).cpu()
        batch = []
        for n, s, ss in (m[0:3], m[3:6]):
            if n < 2:
                return                                   # too few scores to estimate a spread
            mu = s / n
            batch += [mu, (ss / n - mu * mu).clamp_min(0.0)]
        batch = torch.stack(batch)
        if torch.isnan(self.stats).any():
            self.stats = batch
        else:
            self.stats = self.momentum * self.stats + (1.0 - self.momentum) * batch

    @property
    def ready(self) -> bool:
        return not torch.isnan(self.stats).any()

    def threshold(self) -> float:
        """The current threshold (NaN before the first update)."""
        if not self.ready:
            return float("nan")
        mp, vp, mn, vn = self.stats.tolist()
        return ops.qda_threshold_from_stats(mp, math.sqrt(vp), mn, math.sqrt(vn), self.priors)

    def summary(self, prefix: str) -> dict:
        mp, vp, mn, vn = self.stats.tolist()
        return {f"{prefix}_mu_pos": mp, f"{prefix}_sd_pos": math.sqrt(max(vp, 0.0)) if vp == vp else vp,
                f"{prefix}_mu_neg": mn, f"{prefix}_sd_neg": math.sqrt(max(vn, 0.0)) if vn == vn else vn}


def rho_schedule(step: int, total_steps: int, anneal_frac: float) -> float:
    """rho(step): 1 (no masking) at step 0, linearly to 0 (hard mask) at anneal_frac * total."""
    span = anneal_frac * total_steps
    if span <= 0:
        return 0.0
    return max(0.0, 1.0 - step / span)


def annealed_mask(hard: torch.Tensor, valid: torch.Tensor, rho: float) -> torch.Tensor:
    """M = rho + (1 - rho) * M_hat on valid positions, 0 on padding.  (B, L) float32."""
    m = rho + (1.0 - rho) * hard.to(torch.float32)
    return m * valid.to(torch.float32)
