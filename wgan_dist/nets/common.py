"""What every architecture shares: supported resolutions, stage widths, the critic's
normalisations, and class conditioning (label embedding in the generator; projection and
auxiliary-classifier heads in the critic).

An unconditional model (num_classes=0) creates none of the conditioning parameters, so its
initialisation and checkpoints do not depend on this code.
"""
from __future__ import annotations

import math

import torch
from torch import nn

SUPPORTED_RESOLUTIONS = (28, 32, 64, 128, 256)


def check_resolution(resolution: int, arch: str = "DCGAN") -> int:
    """Number of 2x stages between 4x4 and the (padded) resolution."""
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(
            f"resolution {resolution} has no {arch} architecture; "
            f"choose one of {SUPPORTED_RESOLUTIONS}"
        )
    padded = 32 if resolution == 28 else resolution
    return int(math.log2(padded // 4))


def stage_widths(stages: int, width: int, max_channels: int) -> list[int]:
    """Channel counts from the 4x4 map upwards, one per stage: width * 2^(stages-1) ... width."""
    return [min(width * 2 ** (stages - 1 - i), max_channels) for i in range(stages)]


def critic_norm(kind: str, channels: int) -> nn.Module:
    """A per-sample normalisation for the critic (never BatchNorm)."""
    if kind == "layer":
        # GroupNorm with one group normalises over (C, H, W) of each sample: layer norm.
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"critic norm {kind!r} unknown; choose layer, instance, group or none")


# ----------------------------------------------------------------------------------------
# Class conditioning, shared by every architecture. An unconditional model (num_classes=0)
# creates none of these parameters, so its initialisation and checkpoints are unchanged.

CONDITIONINGS = ("projection", "acgan", "both")


class GeneratorBase(nn.Module):
    """The label enters a generator as a learned embedding concatenated to z.

    Concatenation rather than conditional BatchNorm: it works the same in every architecture
    and with g_norm=none (conditional BatchNorm needs BatchNorm, and g_norm=none exists so a
    step does not depend on how the batch is split over processes), and the critic's
    projection and classifier heads carry most of the class signal anyway (Miyato & Koyama).
    """

    latent_dim: int
    num_classes: int = 0

    def _init_condition(self, latent_dim: int, num_classes: int) -> int:
        """Create the label embedding (same size as z); returns the width of the input."""
        self.latent_dim, self.num_classes = latent_dim, num_classes
        if not num_classes:
            return latent_dim
        self.embed = nn.Embedding(num_classes, latent_dim)  # N(0, 1) rows: the scale of z
        return 2 * latent_dim

    def _input(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.num_classes:
            if y is not None:
                raise ValueError("this generator is unconditional; it takes no labels")
            return z
        if y is None:
            # Label-agnostic callers (metrics, diversity checks) get the classes in turn:
            # balanced and deterministic.
            y = classes_in_turn(z.shape[0], self.num_classes, z.device)
        return torch.cat([z, self.embed(y).to(z.dtype)], dim=1)


def classes_in_turn(n: int, num_classes: int,
                    device: torch.device | str | None = None) -> torch.Tensor | None:
    """Labels 0, 1, ..., K-1, 0, 1, ... for n samples (None for an unconditional model): how
    label-agnostic callers (metrics, diversity checks, sample sets) draw a conditional model."""
    return torch.arange(n, device=device) % num_classes if num_classes else None


class CriticBase(nn.Module):
    """Score heads on the features phi(x) that a subclass's ``features`` computes.

    D(x) = psi(phi(x)) unconditionally; with projection (Miyato & Koyama, 2018)
    D(x, y) = psi(phi(x)) + <embed(y), phi(x)>; with an auxiliary classifier (AC-GAN) a linear
    head on phi(x) gives class logits as well (``forward(x, y, logits=True)``).
    """

    num_classes: int = 0

    def _init_heads(self, feat_dim: int, num_classes: int = 0, cond: str = "projection") -> None:
        self.head = nn.Linear(feat_dim, 1)
        self.num_classes = num_classes
        self.projects = bool(num_classes) and cond in ("projection", "both")
        self.classifies = bool(num_classes) and cond in ("acgan", "both")
        if num_classes and cond not in CONDITIONINGS:
            raise ValueError(f"conditioning {cond!r} unknown; choose {', '.join(CONDITIONINGS)}")
        if self.projects:
            # The scale of the linear head's initialisation, so neither term dominates at first.
            self.embed = nn.Embedding(num_classes, feat_dim)
            bound = 1.0 / math.sqrt(feat_dim)
            nn.init.uniform_(self.embed.weight, -bound, bound)
        if self.classifies:
            self.classifier = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,); with logits=True also the auxiliary classifier's (B, num_classes)."""
        phi = self.features(x)
        score = self.head(phi).squeeze(1)
        if self.projects:
            # Without labels: the mean of D(x, y) over a uniform y (D is linear in embed(y)),
            # which is what label-agnostic diagnostics (penalty maps) get.
            e = self.embed.weight.mean(0, keepdim=True) if y is None else self.embed(y)
            score = score + (e.to(phi.dtype) * phi).sum(1)
        if not logits:
            return score
        if not self.classifies:
            raise ValueError("this critic has no auxiliary classifier (model.cond=acgan or both)")
        return score, self.classifier(phi)

