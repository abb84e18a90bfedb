"""Making the gradient penalty visible: where the critic's gradient lives, and how big it is.

WGAN-GP pushes ||dD/dx_hat|| towards 1 on real/fake interpolates. The per-sample norms
(a TensorBoard histogram) show whether the constraint holds; the per-pixel maps show
*where* the critic looks (a map concentrated on the background or one corner is a hint of
a shortcut).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..objective.losses import interpolate, penalty_gradient_norms

Tensor = torch.Tensor
Critic = Callable[[Tensor], Tensor]


def _alpha(alpha: float | Tensor | None, n: int, device: torch.device) -> Tensor:
    if alpha is None:
        return torch.rand(n, device=device)
    if isinstance(alpha, Tensor):
        return alpha.to(device).flatten().expand(n) if alpha.numel() == 1 else alpha.to(device).flatten()
    return torch.full((n,), float(alpha), device=device)


def gradient_norm_maps(critic: Critic, real: Tensor, fake: Tensor, alpha: float | Tensor | None = None) -> Tensor:
    """Per-pixel |dD/dx_hat| (L2 over channels) at x_hat = alpha*real + (1-alpha)*fake.

    Returns ``(N, 1, H, W)`` in [0, 1], each image divided by its own maximum (not min-max
    scaled, so the map stays proportional to the gradient magnitude), ready for
    ``torchvision.utils.make_grid``. ``alpha``: per-sample ``(N,)``, a scalar, or None for
    uniform random as in training.
    """
    x_hat = interpolate(real.detach(), fake.detach(), _alpha(alpha, real.shape[0], real.device))
    x_hat = x_hat.detach().requires_grad_(True)
    # Works under an outer no_grad (evaluation code) too; only x_hat receives a gradient,
    # the critic's parameter .grad fields are left alone.
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
    mag = grad.float().square().sum(dim=1, keepdim=True).sqrt()
    peak = mag.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return (mag / peak.clamp_min(1e-12)).detach()


def grad_norms(critic: Critic, x_hat: Tensor) -> Tensor:
    """Per-sample ||dD/dx|| at ``x_hat`` (detached ``(N,)``), the quantity the penalty uses."""
    with torch.enable_grad():
        return penalty_gradient_norms(critic, x_hat).detach()


def log_gradient_visuals(
    writer: Any, critic: Critic, real: Tensor, fake: Tensor, step: int,
    *, tag: str = "gp", max_images: int = 16, alpha: float | Tensor | None = None,
) -> dict[str, float]:
    """Write the map grid and the norm histogram to a TensorBoard ``SummaryWriter``.

    Returns summary numbers (mean norm, fraction of norms within [0.9, 1.1]) for scalars.
    """
    from torchvision.utils import make_grid

    real, fake = real[:max_images], fake[:max_images]
    a = _alpha(alpha, real.shape[0], real.device)
    maps = gradient_norm_maps(critic, real, fake, a)
    norms = grad_norms(critic, interpolate(real.detach(), fake.detach(), a)).float().cpu()
    # A diverged critic gives NaN/Inf gradients. Logging must never end a run: TensorBoard's
    # histogram raises on values that are all non-finite ("The histogram is empty"), and
    # images are cast to uint8 with a warning. Non-finite map pixels show as 0; the
    # histogram holds the finite norms, and the share of non-finite ones, when there are
    # any, is a scalar.
    finite = torch.isfinite(norms)
    writer.add_image(f"{tag}/grad_maps", make_grid(torch.nan_to_num(maps.cpu(), 0.0, 0.0, 0.0),
                                                   nrow=min(8, maps.shape[0])), step)
    if bool(finite.any()):
        writer.add_histogram(f"{tag}/grad_norms", norms[finite], step)
    if not bool(finite.all()):
        writer.add_scalar(f"{tag}/fraction_norm_nonfinite", float((~finite).float().mean()), step)
    return {"grad_norm_mean": float(norms.mean()),
            "grad_norm_near1": float(((norms - 1).abs() <= 0.1).float().mean())}
