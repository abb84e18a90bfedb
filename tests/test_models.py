"""Model shapes for every resolution and channel count; no BatchNorm in the critic."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from wgan_dist.config import ModelConfig
from wgan_dist.nets import SUPPORTED_RESOLUTIONS, Critic, Generator, build_models


@pytest.mark.parametrize("resolution", SUPPORTED_RESOLUTIONS)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(resolution, channels):
    g = Generator(resolution, channels, latent_dim=100, width=8, max_channels=64)
    d = Critic(resolution, channels, width=8, max_channels=64)
    z = torch.randn(3, 100)
    x = g(z)
    assert x.shape == (3, channels, resolution, resolution)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    assert d(x).shape == (3,)


def test_latent_size_and_widths_are_configurable():
    g, d = build_models(ModelConfig(latent_dim=32, g_width=16, d_width=4), 64, 3)
    assert g(torch.randn(2, 32)).shape == (2, 3, 64, 64)
    assert d.trunk[0].out_channels == 4
    assert g.blocks[-2].in_channels == 16


@pytest.mark.parametrize("norm", ["layer", "instance", "group", "none"])
def test_critic_has_no_batchnorm(norm):
    d = Critic(64, 3, width=8, norm=norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())


def test_critic_is_per_sample():
    # Each sample's score depends only on that sample: the gradient penalty assumes it.
    d = Critic(32, 3, width=8)
    x = torch.randn(4, 3, 32, 32)
    alone = torch.stack([d(x[i:i + 1])[0] for i in range(4)])
    assert torch.allclose(d(x), alone, atol=1e-5)


def test_unknown_resolution_is_a_clear_error():
    with pytest.raises(ValueError, match="resolution 48 has no DCGAN architecture"):
        Generator(48, 3)
