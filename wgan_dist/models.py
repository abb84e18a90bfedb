"""DCGAN-family generator and critic for 28, 32, 64, 128 and 256 px, 1 or 3 channels.

The generator follows DCGAN (Radford et al., 2016): a dense layer to a 4x4 feature map, then
transposed convolutions that double the resolution, BatchNorm and ReLU, and tanh at the end.
At 28 px it does what the QuickDraw seed does: dense -> 4x4xC, up to 32x32, then crop to 28.

The critic mirrors it with strided convolutions and LeakyReLU(0.2) and **no BatchNorm**: the
gradient penalty is per sample, and BatchNorm couples the samples of a batch (and breaks under
DDP when the critic is called twice before one backward, pytorch#22095). The WGAN-GP paper uses
layer norm instead; we offer layer, instance, group or none.
"""
from __future__ import annotations

import math

import torch
from torch import nn

SUPPORTED_RESOLUTIONS = (28, 32, 64, 128, 256)


def _check_resolution(resolution: int) -> int:
    """Number of 2x stages between 4x4 and the (padded) resolution."""
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise ValueError(
            f"resolution {resolution} has no DCGAN architecture; "
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


class Generator(nn.Module):
    """z (B, latent_dim) -> images (B, channels, resolution, resolution) in [-1, 1]."""

    def __init__(
        self,
        resolution: int = 28,
        channels: int = 1,
        latent_dim: int = 100,
        width: int = 64,
        max_channels: int = 512,
        sync_bn: bool = False,
    ) -> None:
        super().__init__()
        stages = _check_resolution(resolution)
        self.resolution, self.channels, self.latent_dim = resolution, channels, latent_dim
        ch = _widths(stages, width, max_channels)
        self.fc = nn.Linear(latent_dim, 4 * 4 * ch[0], bias=False)
        self.fc_norm = nn.BatchNorm1d(4 * 4 * ch[0])
        blocks: list[nn.Module] = []
        for i in range(stages - 1):
            blocks += [
                nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(ch[i + 1]),
                nn.ReLU(inplace=True),
            ]
        # The last stage maps straight to pixels, as in DCGAN.
        blocks += [nn.ConvTranspose2d(ch[stages - 1], channels, 4, stride=2, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        self.ch0 = ch[0]
        if sync_bn:
            nn.SyncBatchNorm.convert_sync_batchnorm(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc_norm(self.fc(z))).view(-1, self.ch0, 4, 4)
        x = self.blocks(x)
        if self.resolution == 28:
            x = x[:, :, 2:30, 2:30]  # 32 -> 28, centre crop like the QuickDraw seed
        return x


class Critic(nn.Module):
    """images (B, channels, resolution, resolution) -> one score per sample, shape (B,)."""

    def __init__(
        self,
        resolution: int = 28,
        channels: int = 1,
        width: int = 64,
        max_channels: int = 512,
        norm: str = "layer",
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
        self.head = nn.Linear(4 * 4 * ch[stages - 1], 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened last feature map (used by the diversity measures)."""
        if self.resolution == 28:
            # 28 -> 32 with the background value (-1 = black), as the generator crops 32 -> 28.
            x = nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
        return self.trunk(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


def build_models(model_cfg, resolution: int, channels: int) -> tuple[Generator, Critic]:
    """Build (G, D) from a ModelConfig and the data's resolution and channels."""
    if model_cfg.arch != "dcgan":
        raise ValueError(f"architecture {model_cfg.arch!r} unknown; available: dcgan")
    g = Generator(
        resolution, channels, model_cfg.latent_dim, model_cfg.g_width,
        model_cfg.max_channels, model_cfg.sync_bn,
    )
    d = Critic(resolution, channels, model_cfg.d_width, model_cfg.max_channels, model_cfg.d_norm)
    return g, d


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
