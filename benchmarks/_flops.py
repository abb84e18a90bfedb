"""FLOPs of one critic step and one generator step per image, counted on the real models and
the real objective (the penalty's double backward included) with torch's own per-op formulas
(``wgan_dist.compat.flop_counter``). Shared by scaling_model.py and gpu_check.py."""
from __future__ import annotations

import torch

from wgan_dist import compat
from wgan_dist.config import LossConfig
from wgan_dist.nets import build_models
from wgan_dist.objective import critic_phase, generator_phase


def flops_per_image(cfg, batch: int = 4) -> tuple[float, float]:
    """(critic step, generator step) FLOPs per image for ``cfg``'s models, on the CPU."""
    g, d = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
    real = torch.randn(batch, cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    z = torch.randn(batch, cfg.model.latent_dim)
    with compat.flop_counter() as fc:
        with torch.no_grad():
            fake = g(z)
        loss, _ = critic_phase(d, real, fake, torch.rand(batch), LossConfig())
        loss.backward()
    critic = fc.flops / batch
    d.requires_grad_(False)
    with compat.flop_counter() as fc:
        loss, _ = generator_phase(d, g(z), LossConfig())
        loss.backward()
    return critic, fc.flops / batch
