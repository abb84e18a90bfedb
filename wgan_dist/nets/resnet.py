"""The residual generator and critic of the WGAN-GP paper (Gulrajani et al., 2017; the CIFAR-10
model of its code), for 28 to 256 px, 1 or 3 channels.

Generator: z [+ label embedding] -> dense -> 4x4 map, then one *upsampling* residual block per
doubling (BN-ReLU-upsample-conv3x3-BN-ReLU-conv3x3; shortcut upsample-conv1x1), then
BN-ReLU-conv3x3-tanh. Channels halve per doubling, from g_width x 2^stages (capped) at 4x4 to
g_width at full size.

Critic: a first block without pre-activation (conv-ReLU-conv-pool; shortcut pool-conv1x1), then
*downsampling* residual blocks (norm-ReLU-conv-norm-ReLU-conv-pool) to 8x8, one block at 8x8
without resampling (the paper's CIFAR critic has two), ReLU, global mean pooling, and the linear
head (plus the projection and classifier heads of a conditional model). No BatchNorm in the
critic: the paper's CIFAR critic has no normalisation and its 64 px critic layer norm; here
``model.d_norm`` decides (layer by default; none is the CIFAR model).

At 28 px the generator makes 32 px and crops the centre, and the critic pads with the
background value, as the DCGAN models do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import CriticBase, GeneratorBase, check_resolution, critic_norm, stage_widths


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, batchnorm: bool) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batchnorm else (lambda c: nn.Identity())
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str, down: bool, first: bool = False) -> None:
        super().__init__()
        self.down, self.first = down, first
        # The first block sees pixels: no normalisation or activation before its first conv.
        self.norm1 = nn.Identity() if first else critic_norm(norm, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.Identity() if first else critic_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if (down or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(self.norm1(x))
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        if self.first:  # the paper's "optimized" first block: pool, then the 1x1 conv
            return F.avg_pool2d(h, 2) + self.shortcut(F.avg_pool2d(x, 2))
        s = self.shortcut(x)
        if self.down:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return h + s


class ResNetGenerator(GeneratorBase):
    """z (B, latent_dim) [, y (B,)] -> images (B, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, resolution: int = 32, channels: int = 3, latent_dim: int = 128,
                 width: int = 64, max_channels: int = 512, sync_bn: bool = False,
                 norm: str = "batch", num_classes: int = 0) -> None:
        super().__init__()
        stages = check_resolution(resolution, "resnet")
        if norm not in ("batch", "none"):
            raise ValueError(f"generator norm {norm!r} unknown; choose batch or none")
        self.resolution, self.channels = resolution, channels
        in_dim = self._init_condition(latent_dim, num_classes)
        ch = stage_widths(stages + 1, width, max_channels)  # 4x4 ... full size
        bn = norm == "batch"
        self.ch0 = ch[0]
        self.fc = nn.Linear(in_dim, 4 * 4 * ch[0])
        self.blocks = nn.Sequential(*[UpBlock(ch[i], ch[i + 1], bn) for i in range(stages)])
        self.out = nn.Sequential(nn.BatchNorm2d(ch[-1]) if bn else nn.Identity(), nn.ReLU(),
                                 nn.Conv2d(ch[-1], channels, 3, padding=1), nn.Tanh())
        if sync_bn:
            nn.SyncBatchNorm.convert_sync_batchnorm(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fc(self._input(z, y)).view(-1, self.ch0, 4, 4)
        x = self.out(self.blocks(x))
        if self.resolution == 28:
            x = x[:, :, 2:30, 2:30]
        return x


class ResNetCritic(CriticBase):
    """images (B, channels, resolution, resolution) [, y] -> one score per sample, (B,)."""

    def __init__(self, resolution: int = 32, channels: int = 3, width: int = 64,
                 max_channels: int = 512, norm: str = "layer", num_classes: int = 0,
                 cond: str = "projection") -> None:
        super().__init__()
        downs = check_resolution(resolution, "resnet") - 1  # (padded) resolution -> 8x8
        self.resolution, self.channels = resolution, channels
        ch = [min(width * 2 ** k, max_channels) for k in range(downs)]
        blocks = [DownBlock(channels, ch[0], norm, down=True, first=True)]
        blocks += [DownBlock(ch[k - 1], ch[k], norm, down=True) for k in range(1, downs)]
        blocks += [DownBlock(ch[-1], ch[-1], norm, down=False)]
        self.blocks = nn.Sequential(*blocks)
        self._init_heads(ch[-1], num_classes, cond)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU + global mean pooling of the last block: one vector of width ch[-1]."""
        if self.resolution == 28:
            x = F.pad(x, (2, 2, 2, 2), value=-1.0)
        return F.relu(self.blocks(x)).mean(dim=(2, 3))
