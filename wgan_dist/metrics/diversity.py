"""Mode-collapse alarm: are the fakes as spread out as the reals?

The statistic is the mean pairwise L2 distance within the fake batch divided by the same
within a real batch. A healthy generator sits near 1; a collapsed one (every z mapped to
nearly the same image) goes towards 0 -- a collapse shows up long before FID is computed,
and costs one ``cdist`` on a few hundred samples.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .fid import extract_features

Tensor = torch.Tensor


def mean_pairwise_distance(x: Tensor, max_samples: int = 512) -> float:
    """Mean L2 distance over the distinct pairs of the first ``max_samples`` rows of ``x``."""
    x = x[:max_samples].flatten(1).double()
    n = x.shape[0]
    if n < 2:
        raise ValueError("need at least 2 samples for a pairwise distance")
    d = torch.cdist(x, x)
    # The diagonal is zero, so the sum over all ordered pairs / n(n-1) is the mean over pairs.
    return float(d.sum() / (n * (n - 1)))


def diversity_stats(
    fake: Tensor, real: Tensor, features: nn.Module | None = None, *, max_samples: int = 512
) -> dict[str, float]:
    """Pairwise-distance ratios fake / real in pixel space and, given ``features`` (e.g. the
    critic's trunk), in that feature space.

    ``ratio`` is the smaller of the available ratios: a collapse in either view counts.
    """
    fake, real = fake[:max_samples], real[:max_samples]
    d_fake, d_real = mean_pairwise_distance(fake, max_samples), mean_pairwise_distance(real, max_samples)
    stats = {"pixel_fake": d_fake, "pixel_real": d_real, "pixel_ratio": d_fake / max(d_real, 1e-12)}
    if features is not None:
        f_fake, f_real = extract_features(features, fake), extract_features(features, real)
        fd_fake = mean_pairwise_distance(f_fake, max_samples)
        fd_real = mean_pairwise_distance(f_real, max_samples)
        stats.update(feat_fake=fd_fake, feat_real=fd_real, feat_ratio=fd_fake / max(fd_real, 1e-12))
    stats["ratio"] = min(v for k, v in stats.items() if k.endswith("_ratio"))
    return stats


def _pick(stats: Mapping[str, float], *keys: str) -> float | None:
    for k in keys:
        if k in stats and stats[k] is not None:
            return float(stats[k])
    return None


class CollapseAlarm:
    """Trips when diversity (or class coverage) stays low for ``patience`` consecutive checks.

    ``update`` accepts the dict of :func:`diversity_stats` (``ratio``), the flat dict of
    ``evaluate_samples`` (``div_ratio``, ``cls_covered_frac``), and/or class-histogram stats
    (``covered_frac`` from ``class_histogram_stats``). A check is *bad* when the ratio is
    below ``threshold`` or the fraction of real classes covered is below ``min_covered_frac``.
    Once tripped it keeps returning True for every further bad check; one good check re-arms.
    """

    def __init__(self, threshold: float = 0.5, patience: int = 2, min_covered_frac: float = 0.5) -> None:
        self.threshold = threshold
        self.patience = patience
        self.min_covered_frac = min_covered_frac
        self.bad_streak = 0
        self.message: str | None = None
        self.messages: list[str] = []

    def update(self, stats: Mapping[str, float], class_stats: Mapping[str, float] | None = None) -> bool:
        merged = {**stats, **(class_stats or {})}
        ratio = _pick(merged, "ratio", "div_ratio")
        covered = _pick(merged, "covered_frac", "cls_covered_frac")
        reasons = []
        if ratio is not None and ratio < self.threshold:
            reasons.append(f"diversity ratio {ratio:.3f} < {self.threshold}")
        if covered is not None and covered < self.min_covered_frac:
            reasons.append(f"classes covered {covered:.0%} < {self.min_covered_frac:.0%} of the real ones")
        self.bad_streak = self.bad_streak + 1 if reasons else 0
        if self.bad_streak < self.patience:
            return False
        self.message = (f"mode collapse suspected for {self.bad_streak} consecutive checks: "
                        + "; ".join(reasons))
        self.messages.append(self.message)
        return True

    def reset(self) -> None:
        self.bad_streak = 0
        self.message = None
