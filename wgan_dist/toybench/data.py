"""The 2-D toy datasets of PacGAN (Lin et al., 2018, Sec. 5.1) and WGAN-GP's swiss roll.

* ring: 8 Gaussians, means (cos 2*pi*i/8, sin 2*pi*i/8), std 0.01;
* grid: 25 Gaussians, means {-4,-2,0,2,4}^2, std 0.05;
* swiss roll: sklearn-style noise 0.25, then divided by 7.5 (the WGAN-GP toy).
"""
from __future__ import annotations

import math

import numpy as np
import torch

DATASETS = ("ring", "grid", "swissroll")
SWISS_NOISE = 0.25  # the WGAN-GP toy swiss roll: sklearn-style noise 0.25, then / 7.5
SWISS_SCALE = 7.5
# Per-coordinate std of each dataset (ring: 1/sqrt 2, grid: sqrt 8, swiss roll: measured).
# Training happens in units of it, so one set of learning rates fits all three datasets.
DATA_SCALE = {"ring": math.sqrt(0.5), "grid": math.sqrt(8.0), "swissroll": 0.9}


def mode_centres(dataset: str) -> np.ndarray:
    """(K, 2) mixture means of ``ring`` or ``grid``."""
    if dataset == "ring":
        ang = 2.0 * math.pi * np.arange(8) / 8
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if dataset == "grid":
        vals = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
        return np.array([(x, y) for x in vals for y in vals])
    raise ValueError(f"{dataset!r} has no modes (expected 'ring' or 'grid')")


def mode_std(dataset: str) -> float:
    return {"ring": 0.01, "grid": 0.05}[dataset]


def sample_real(dataset: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points from the dataset, drawn fresh (an infinite training set)."""
    if dataset == "swissroll":
        t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=gen, dtype=torch.float64))
        xy = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
        xy = xy + SWISS_NOISE * torch.randn(n, 2, generator=gen, dtype=torch.float64)
        return (xy / SWISS_SCALE).float()
    centres = torch.from_numpy(mode_centres(dataset)).float()
    idx = torch.randint(len(centres), (n,), generator=gen)
    return centres[idx] + mode_std(dataset) * torch.randn(n, 2, generator=gen)


def sample_latent(n: int, cfg, gen: torch.Generator) -> torch.Tensor:
    """n generator inputs z ~ N(0, I_latent_dim) (``cfg.latent_dim``)."""
    return torch.randn(n, cfg.latent_dim, generator=gen)
