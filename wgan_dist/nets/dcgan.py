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

import torch
from torch import nn

from .common import CriticBase, GeneratorBase, check_resolution, critic_norm, stage_widths


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
        stages = check_resolution(resolution)
        self.resolution, self.channels = resolution, channels
        in_dim = self._init_condition(latent_dim, num_classes)
        ch = stage_widths(stages, width, max_channels)
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
        stages = check_resolution(resolution)
        self.resolution, self.channels = resolution, channels
        ch = stage_widths(stages, width, max_channels)[::-1]  # width ... widest
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

