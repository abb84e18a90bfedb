"""The objective, as pure functions.

Nothing here owns a schedule: the trainer decides *when* a critic or a generator step
happens; these functions decide *what* is minimised. Every function takes critic outputs or
modules and returns a scalar tensor, so the same code serves images and the 2-D toy benchmark.

Conventions: the critic outputs one real number per sample (shape ``(B,)`` or ``(B, 1)``);
higher means "more real".
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# A norm of exactly zero has an infinite derivative of the square root (pytorch#2534);
# the epsilon inside the norm keeps the double backward finite.
NORM_EPS = 1e-12


def _f32(x: Tensor) -> Tensor:
    """Upcast half types to fp32 for reductions; leave fp32/fp64 as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """WGAN critic loss E[D(fake)] - E[D(real)] (the critic minimises it)."""
    return _f32(d_fake).mean() - _f32(d_real).mean()


def generator_loss(d_fake: Tensor) -> Tensor:
    """WGAN generator loss -E[D(fake)]."""
    return -_f32(d_fake).mean()


def wasserstein_estimate(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """E[D(real)] - E[D(fake)]: the critic's estimate of the Wasserstein-1 distance."""
    return _f32(d_real).mean() - _f32(d_fake).mean()


def drift_penalty(d_real: Tensor, weight: float) -> Tensor:
    """weight * E[D(real)^2] (Karras et al., 2018): keeps the critic output from drifting."""
    return weight * _f32(d_real).square().mean()


def ns_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """The DCGAN (non-saturating) discriminator loss on logits: -log s(D(x)) - log(1 - s(D(G(z))))."""
    return F.softplus(-_f32(d_real)).mean() + F.softplus(_f32(d_fake)).mean()


def ns_generator_loss(d_fake: Tensor) -> Tensor:
    """The non-saturating generator loss -log s(D(G(z)))."""
    return F.softplus(-_f32(d_fake)).mean()


def interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """x_hat = alpha * real + (1 - alpha) * fake, alpha of shape (B,) broadcast per sample."""
    alpha = alpha.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))
    return torch.lerp(fake, real, alpha)


def penalty_gradient_norms(
    critic: Callable[[Tensor], Tensor],
    x_hat: Tensor,
    scale: float | Tensor = 1.0,
) -> Tensor:
    """Per-sample ||dD/dx||_2 at ``x_hat``, differentiable (create_graph=True).

    ``scale`` is the AMP loss scale: under fp16 the gradient is taken of the *scaled* output
    (so small gradients do not underflow) and divided by the scale before the norm, which is
    computed in fp32 (PyTorch AMP examples, "Gradient penalty"). Pass 1.0 without a scaler.
    """
    x_hat = x_hat.detach().requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(
        outputs=out.sum() * scale, inputs=x_hat, create_graph=True
    )
    grad = _f32(grad).flatten(1)
    if not (isinstance(scale, float) and scale == 1.0):
        grad = grad / scale
    return torch.sqrt(grad.square().sum(dim=1) + NORM_EPS)


def gradient_penalty(grad_norms: Tensor, weight: float = 10.0, one_sided: bool = False) -> Tensor:
    """weight * E[(||grad D(x_hat)|| - 1)^2] (Gulrajani et al., 2017), in fp32.

    ``one_sided``: penalise only norms above 1, weight * E[max(0, ||grad D|| - 1)^2] (the
    Lipschitz penalty, WGAN-LP, Petzka et al., 2018): the critic may be flatter than unit
    slope, e.g. where real and fake samples already overlap.
    The mean is over the local batch; under DDP the gradient all-reduce averages it over the
    global batch, exactly as one process with the whole batch would.
    """
    excess = _f32(grad_norms) - 1.0
    if one_sided:
        excess = excess.clamp(min=0.0)
    return weight * excess.square().mean()


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of an auxiliary classifier (AC-GAN, Odena et al., 2017), in fp32.

    The critic minimises it on real (and optionally fake) images with their labels; the
    generator minimises it on its fakes with the labels it was asked for.
    """
    return F.cross_entropy(_f32(logits), labels.long())
