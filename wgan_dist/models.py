"""DCGAN-family generator and critic for 28, 32, 64, 128 and 256 px, 1 or 3 channels.

The generator follows DCGAN (Radford et al., 2016): a dense layer to a 4x4 feature map, then
transposed convolutions that double the resolution, BatchNorm and ReLU, and tanh at the end.
At 28 px it does what the QuickDraw seed does: dense -> 4x4xC, up to 32x32, then crop to 28.

The critic mirrors it with strided convolutions and LeakyReLU(0.2) and **no BatchNorm**: the
gradient penalty is per sample, and BatchNorm couples the samples of a batch (and breaks under
DDP when the critic is called twice before one backward, pytorch#22095). The WGAN-GP paper uses
layer norm instead; we offer layer, instance, group or none.

Class conditioning (``GeneratorBase``, ``CriticBase``) is shared by every architecture, and
``ARCHITECTURES`` maps ``model.arch`` to a builder: ``dcgan`` here, ``resnet`` in resnet.py.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

SUPPORTED_RESOLUTIONS = (28, 32, 64, 128, 256)


def _check_resolution(resolution: int, arch: str = "DCGAN") -> int:
    """Number of 2x stages between 4x4 and the (padded) resolution."""
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(
            f"resolution {resolution} has no {arch} architecture; "
            f"choose one of {SUPPORTED_RESOLUTIONS}"
        )
    padded = 32 if resolution == 28 else resolution
    return int(math.log2(padded // 4))


def _widths(stages: int, width: int, max_channels: int) -> list[int]:
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


class Generator(GeneratorBase):
    """z (B, latent_dim) -> images (B, channels, resolution, resolution) in [-1, 1]."""

    def __init__(
        self,
        resolution: int = 28,
        channels: int = 1,
        latent_dim: int = 100,
        width: int = 64,
        max_channels: int = 512,
        sync_bn: bool = False,
        norm: str = "batch",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        stages = _check_resolution(resolution)
        self.resolution, self.channels = resolution, channels
        in_dim = self._init_condition(latent_dim, num_classes)
        ch = _widths(stages, width, max_channels)
        if norm not in ("batch", "none"):
            raise ValueError(f"generator norm {norm!r} unknown; choose batch or none")
        # Without BatchNorm the layers get their biases back (BatchNorm's shift replaced them).
        bn = norm == "batch"
        self.fc = nn.Linear(in_dim, 4 * 4 * ch[0], bias=not bn)
        self.fc_norm = nn.BatchNorm1d(4 * 4 * ch[0]) if bn else nn.Identity()
        blocks: list[nn.Module] = []
        for i in range(stages - 1):
            blocks += [
                nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1, bias=not bn),
                nn.BatchNorm2d(ch[i + 1]) if bn else nn.Identity(),
                nn.ReLU(inplace=True),
            ]
        # The last stage maps straight to pixels, as in DCGAN.
        blocks += [nn.ConvTranspose2d(ch[stages - 1], channels, 4, stride=2, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        self.ch0 = ch[0]
        if sync_bn:
            nn.SyncBatchNorm.convert_sync_batchnorm(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.relu(self.fc_norm(self.fc(self._input(z, y)))).view(-1, self.ch0, 4, 4)
        x = self.blocks(x)
        if self.resolution == 28:
            x = x[:, :, 2:30, 2:30]  # 32 -> 28, centre crop like the QuickDraw seed
        return x


class Critic(CriticBase):
    """images (B, channels, resolution, resolution) [+ labels] -> one score per sample, (B,)."""

    def __init__(
        self,
        resolution: int = 28,
        channels: int = 1,
        width: int = 64,
        max_channels: int = 512,
        norm: str = "layer",
        num_classes: int = 0,
        cond: str = "projection",
    ) -> None:
        super().__init__()
        stages = _check_resolution(resolution)
        self.resolution, self.channels = resolution, channels
        ch = _widths(stages, width, max_channels)[::-1]  # width ... widest
        # First layer without normalisation (DCGAN), then norm + LeakyReLU per stage.
        layers: list[nn.Module] = [nn.Conv2d(channels, ch[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for i in range(stages - 1):
            layers += [
                nn.Conv2d(ch[i], ch[i + 1], 4, 2, 1),
                critic_norm(norm, ch[i + 1]),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        self.trunk = nn.Sequential(*layers)
        self._init_heads(4 * 4 * ch[stages - 1], num_classes, cond)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened last feature map (used by the diversity measures)."""
        if self.resolution == 28:
            # 28 -> 32 with the background value (-1 = black), as the generator crops 32 -> 28.
            x = nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
        return self.trunk(x).flatten(1)


def num_classes_of(model_cfg) -> int:
    """Classes the models are conditioned on: 0 for an unconditional model."""
    return model_cfg.num_classes if model_cfg.conditional else 0


def _build_dcgan(model_cfg, resolution: int, channels: int) -> tuple[Generator, Critic]:
    k = num_classes_of(model_cfg)
    g = Generator(
        resolution, channels, model_cfg.latent_dim, model_cfg.g_width,
        model_cfg.max_channels, model_cfg.sync_bn, model_cfg.g_norm, num_classes=k,
    )
    d = Critic(resolution, channels, model_cfg.d_width, model_cfg.max_channels, model_cfg.d_norm,
               num_classes=k, cond=model_cfg.cond)
    return g, d


def _build_resnet(model_cfg, resolution: int, channels: int) -> tuple[GeneratorBase, CriticBase]:
    from .resnet import ResNetCritic, ResNetGenerator

    k = num_classes_of(model_cfg)
    g = ResNetGenerator(resolution, channels, model_cfg.latent_dim, model_cfg.g_width,
                        model_cfg.max_channels, model_cfg.sync_bn, model_cfg.g_norm, num_classes=k)
    d = ResNetCritic(resolution, channels, model_cfg.d_width, model_cfg.max_channels,
                     model_cfg.d_norm, num_classes=k, cond=model_cfg.cond)
    return g, d


# model.arch names an entry here; a builder takes (ModelConfig, resolution, channels).
ARCHITECTURES: dict[str, Callable[..., tuple[GeneratorBase, CriticBase]]] = {
    "dcgan": _build_dcgan,
    "resnet": _build_resnet,
}


def build_models(model_cfg, resolution: int, channels: int) -> tuple[GeneratorBase, CriticBase]:
    """Build (G, D) from a ModelConfig and the data's resolution and channels.

    A conditional config must carry ``num_classes`` (the trainer fills it in from the shard
    manifest; checkpoints store it)."""
    builder = ARCHITECTURES.get(model_cfg.arch)
    if builder is None:
        raise ValueError(f"architecture {model_cfg.arch!r} unknown; available: "
                         f"{', '.join(ARCHITECTURES)}")
    if model_cfg.conditional and model_cfg.num_classes < 1:
        raise ValueError("model.conditional=true needs model.num_classes >= 1 (the trainer "
                         "takes it from the shard manifest)")
    return builder(model_cfg, resolution, channels)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
