"""PacGAN's mode metrics, the JBT sampler, scatter plots and the mean over seeds.

A generated sample is *high quality* (HQ) if it lies within 3 std of its nearest mode; a mode
is *covered* if at least one HQ sample is nearest to it; the reverse KL is KL(P_gen ||
uniform) with P_gen the histogram of the HQ samples over the modes, normalised by the number
of HQ samples (0 log 0 = 0; the uniform target has no empty bins, so no smoothing is
needed); evaluated on 2,500 generated samples.

JBT (Jacobian-based truncation, Tanielian et al., 2020) rejects the latents where the
generator is steepest: a continuous generator of a unimodal latent must put some mass on
paths between disconnected modes, and that mass sits where dG/dz is largest.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .data import mode_centres, mode_std, sample_latent, sample_real

N_EVAL = 2500  # PacGAN's number of generated samples per evaluation
HQ_STDS = 3.0  # "within three standard deviations of the nearest mode"
SWISS_REF = 10_000  # real points the swiss-roll distance metric compares against


def _nearest_dist(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each row of ``a`` the Euclidean distance to its nearest row of ``b``."""
    at, bt = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    out = [torch.cdist(at[i : i + chunk], bt).min(dim=1).values for i in range(0, len(at), chunk)]
    return torch.cat(out).numpy()


def toy_metrics(points: np.ndarray, dataset: str) -> dict[str, Any]:
    """PacGAN's metrics for ``ring``/``grid``; nearest-neighbour distances for ``swissroll``.

    ring/grid keys: ``modes`` (covered modes), ``hq`` (fraction of HQ samples), ``reverse_kl``
    (nats; NaN when there is no HQ sample at all), ``mean_dist`` (mean distance to the
    nearest mode centre: not PacGAN's, a continuous diagnostic), ``n`` and ``histogram``
    (HQ samples per mode). swissroll keys: ``fake_to_real`` (mean distance of a
    generated point to the nearest of 10,000 real points: quality) and ``real_to_fake`` (mean
    distance of 2,500 real points to the nearest generated one: coverage), both against a
    fixed real sample (seed 0) so that runs are comparable.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if dataset == "swissroll":
        g = torch.Generator().manual_seed(0)
        ref = sample_real(dataset, SWISS_REF, g).double().numpy()
        return {
            "n": len(pts),
            "fake_to_real": float(_nearest_dist(pts, ref).mean()),
            "real_to_fake": float(_nearest_dist(ref[:N_EVAL], pts).mean()),
        }
    centres, std = mode_centres(dataset), mode_std(dataset)
    # Isotropic, equal std per mode: the nearest mode in std units is the Euclidean nearest.
    d = np.sqrt(((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
    nearest, dmin = d.argmin(axis=1), d.min(axis=1)
    hq = dmin < HQ_STDS * std  # strict, as PacGAN's MetricLogger (min_dis < dis_thre)
    hist = np.bincount(nearest[hq], minlength=len(centres))
    n_hq = int(hist.sum())
    if n_hq:
        p = hist[hist > 0] / n_hq
        kl = float(np.sum(p * np.log(p * len(centres))))
    else:
        kl = float("nan")
    return {
        "modes": int((hist > 0).sum()),
        "hq": n_hq / max(len(pts), 1),
        "reverse_kl": kl,
        "mean_dist": float(dmin.mean()) if len(pts) else float("nan"),
        "n": len(pts),
        "histogram": hist.tolist(),
    }


@torch.no_grad()
def jacobian_norms(g: nn.Module, z: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per row of ``z``, the Frobenius norm of the generator's Jacobian dG/dz (exact)."""
    import warnings

    from torch.func import jacfwd, vmap

    one = vmap(jacfwd(lambda v: g(v[None])[0]))
    with warnings.catch_warnings():
        # torch.func's first call scripts a helper with the deprecated torch.jit.script.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        return torch.cat([one(z[i : i + chunk]).flatten(1).norm(dim=1)
                          for i in range(0, len(z), chunk)])


def jbt_latents(g: nn.Module, n: int, reject: float, cfg: Any, gen: torch.Generator,
                calibrate: int = 10_000) -> torch.Tensor:
    """n latents of the Jacobian-based truncation sampler (JBT, Tanielian et al., 2020).

    A generator fed a unimodal Gaussian is continuous, so between two disconnected modes it
    must spend some latent mass on a path, and that is where it is steepest. JBT draws
    z ~ N(0, I) and keeps it iff ||dG/dz||_F <= tau, with tau the (1 - reject) quantile of
    the norm over ``calibrate`` draws: a fixed sampler (reject = 0.1 keeps 90 % of draws).
    """
    tau = torch.quantile(jacobian_norms(g, sample_latent(calibrate, cfg, gen)), 1.0 - reject)
    kept: list[torch.Tensor] = []
    while sum(len(k) for k in kept) < n:
        z = sample_latent(2 * n, cfg, gen)
        kept.append(z[jacobian_norms(g, z) <= tau])
    return torch.cat(kept)[:n]


def run_title(dataset: str, seed: int, m: dict[str, Any]) -> str:
    if dataset == "swissroll":
        return f"{dataset} seed {seed}: fake->real {m['fake_to_real']:.4f}"
    return (f"{dataset} seed {seed}: {m['modes']} modes, {100 * m['hq']:.1f}% HQ, "
            f"rev KL {m['reverse_kl']:.4f}")


def save_scatter(points: np.ndarray, dataset: str, path: str, title: str = "",
                 size: int = 512) -> None:
    """Scatter plot with PIL (no matplotlib): real modes/samples in red, generated in black."""
    from PIL import Image, ImageDraw

    lim = {"ring": 1.5, "grid": 5.5, "swissroll": 2.5}[dataset]
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)

    def px(xy: np.ndarray) -> np.ndarray:
        # Data y grows upwards, image rows grow downwards.
        u = (xy[:, 0] + lim) / (2 * lim) * (size - 1)
        v = (lim - xy[:, 1]) / (2 * lim) * (size - 1)
        return np.stack([u, v], axis=1)

    if dataset == "swissroll":
        for u, v in px(sample_real(dataset, 2000, torch.Generator().manual_seed(0)).numpy()):
            draw.point((float(u), float(v)), fill=(255, 170, 170))
    else:
        # The HQ disc of each mode (radius 3 std), at least 3 px so it stays visible.
        r = max(3.0, HQ_STDS * mode_std(dataset) / (2 * lim) * (size - 1))
        for u, v in px(mode_centres(dataset)):
            draw.ellipse((u - r, v - r, u + r, v + r), outline=(220, 0, 0), width=2)
    for u, v in px(np.asarray(points, dtype=np.float64)):
        draw.rectangle((u - 0.5, v - 0.5, u + 0.5, v + 0.5), fill=(0, 0, 0))
    if title:
        draw.text((6, 6), title, fill=(0, 0, 160))
    img.save(path)


def _mean_se(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return float(a.mean()), se


METRIC_KEYS = {"ring": ("modes", "hq", "reverse_kl"), "grid": ("modes", "hq", "reverse_kl"),
               "swissroll": ("fake_to_real", "real_to_fake")}


def summarise(runs: list[dict[str, Any]], jbt: bool = False) -> dict[str, Any]:
    """Mean and standard error (sample std / sqrt(n)) over seeds of each metric: of the
    generator's own samples, or with ``jbt`` of the JBT sampler's (``run["jbt"]``)."""
    keys = METRIC_KEYS[runs[0]["dataset"]] + (() if jbt else ("seconds",))
    rows = [r["jbt"] if jbt else r for r in runs]
    return {k: dict(zip(("mean", "se"), _mean_se([r[k] for r in rows]))) for k in keys}
