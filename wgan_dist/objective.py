"""The objective of one phase, composed from the pure loss functions.

The trainer walks phases (critic x n_critic, then generator) and calls these; it never
computes a loss term itself. Each returns the scalar to back-propagate and a dict of detached
statistics (tensors, no host sync) for logging.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import losses
from .config import LossConfig

Tensor = torch.Tensor
Stats = dict[str, Tensor]


def critic_phase(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    alpha: Tensor,
    cfg: LossConfig,
    scale: float | Tensor = 1.0,
) -> tuple[Tensor, Stats]:
    """Critic loss (+ gradient penalty + drift) for one batch of reals and detached fakes.

    Reals and fakes go through the critic in one forward: the critic has no batch-coupled
    layers, so this is the same function at half the launches. The penalty takes its own
    forward on the interpolates with create_graph=True, and all terms meet in one backward.
    """
    fake = fake.detach()
    scores = critic(torch.cat([real, fake]))
    d_real, d_fake = scores[: real.shape[0]], scores[real.shape[0]:]
    stats: Stats = {"wasserstein": losses.wasserstein_estimate(d_real, d_fake).detach(),
                    "d_real": d_real.detach().float().mean(), "d_fake": d_fake.detach().float().mean()}
    if cfg.kind == "ns":
        loss = losses.ns_critic_loss(d_real, d_fake)
    else:
        loss = losses.critic_loss(d_real, d_fake)
    stats["critic_loss"] = loss.detach()
    if cfg.gp_weight > 0:
        norms = losses.penalty_gradient_norms(critic, losses.interpolate(real, fake, alpha), scale)
        gp = losses.gradient_penalty(norms, cfg.gp_weight)
        loss = loss + gp
        stats["gradient_penalty"] = gp.detach()
        stats["grad_norm_mean"] = norms.detach().mean()
    if cfg.drift_weight > 0:
        drift = losses.drift_penalty(d_real, cfg.drift_weight)
        loss = loss + drift
        stats["drift"] = drift.detach()
    return loss, stats


def generator_phase(
    critic: Callable[[Tensor], Tensor], fake: Tensor, cfg: LossConfig
) -> tuple[Tensor, Stats]:
    """Generator loss on fakes that carry the generator's graph."""
    d_fake = critic(fake)
    loss = losses.ns_generator_loss(d_fake) if cfg.kind == "ns" else losses.generator_loss(d_fake)
    return loss, {"generator_loss": loss.detach()}
