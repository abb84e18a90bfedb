"""The objective against closed forms: the penalty on analytic critics, and the loss signs."""
from __future__ import annotations

import math

import pytest
import torch

from wgan_dist.objective import losses


def _penalty(critic, real, fake, alpha, weight=10.0):
    norms = losses.penalty_gradient_norms(critic, losses.interpolate(real, fake, alpha))
    return losses.gradient_penalty(norms, weight), norms


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_critic_penalty_is_exact_whatever_the_interpolation(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)
    critic = lambda x: (x * w).flatten(1).sum(1)  # D(x) = <w, x>
    real = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    fake = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
    for alpha in (torch.zeros(16, dtype=torch.float64), torch.ones(16, dtype=torch.float64),
                  torch.rand(16, generator=g, dtype=torch.float64)):
        gp, norms = _penalty(critic, real, fake, alpha)
        expected = 10.0 * (w.norm().item() - 1.0) ** 2
        assert gp.item() == pytest.approx(expected, rel=1e-9)
        assert torch.allclose(norms.double(), w.norm().expand(16), rtol=1e-9)


def test_unit_norm_linear_critic_has_zero_penalty():
    w = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    w = w / w.norm()
    critic = lambda x: (x * w).flatten(1).sum(1)
    gp, _ = _penalty(critic, torch.randn(8, 1, 4, 4, dtype=torch.float64),
                     torch.randn(8, 1, 4, 4, dtype=torch.float64), torch.rand(8, dtype=torch.float64))
    assert gp.item() == pytest.approx(0.0, abs=1e-12)


def test_quadratic_critic_penalty_matches_closed_form():
    # D(x) = 1/2 x^T A x with A symmetric: grad D(x) = A x, so the penalty is known exactly.
    g = torch.Generator().manual_seed(3)
    n = 12
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = (m + m.T) / 2
    critic = lambda x: 0.5 * torch.einsum("bi,ij,bj->b", x, a, x)
    real = torch.randn(10, n, generator=g, dtype=torch.float64)
    fake = torch.randn(10, n, generator=g, dtype=torch.float64)
    alpha = torch.rand(10, generator=g, dtype=torch.float64)
    gp, norms = _penalty(critic, real, fake, alpha, weight=7.0)
    x_hat = alpha[:, None] * real + (1 - alpha[:, None]) * fake
    grad_norm = (x_hat @ a).norm(dim=1)
    assert torch.allclose(norms.double(), grad_norm, rtol=1e-9)
    assert gp.item() == pytest.approx(7.0 * ((grad_norm - 1) ** 2).mean().item(), rel=1e-9)


def test_one_sided_penalty_only_charges_slopes_above_one():
    # Quadratic critic again: the interpolates' norms straddle 1, so both cases occur.
    g = torch.Generator().manual_seed(4)
    a = torch.eye(6, dtype=torch.float64) * 0.8
    critic = lambda x: 0.5 * torch.einsum("bi,ij,bj->b", x, a, x)
    x = 0.5 * torch.randn(64, 6, generator=g, dtype=torch.float64)
    norms = losses.penalty_gradient_norms(critic, x)
    n = (x @ a).norm(dim=1)
    assert (n < 1).any() and (n > 1).any()
    lp = losses.gradient_penalty(norms, 3.0, one_sided=True)
    assert lp.item() == pytest.approx(3.0 * ((n - 1).clamp(min=0) ** 2).mean().item(), rel=1e-9)
    assert 0 < lp.item() < losses.gradient_penalty(norms, 3.0).item()
    # All slopes below one: no penalty at all (the two-sided one would still charge them).
    flat = losses.penalty_gradient_norms(critic, x / (10 * n.max()))
    assert losses.gradient_penalty(flat, 3.0, one_sided=True).item() == 0.0
    assert losses.gradient_penalty(flat, 3.0).item() > 2.0


def test_penalty_is_differentiable_with_respect_to_critic_parameters():
    # The double backward must reach the critic's weights: d/dw of 10 (||w|| - 1)^2.
    w = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    critic = lambda x: (x * w).sum(1)
    gp, _ = _penalty(critic, torch.randn(4, 2, dtype=torch.float64),
                     torch.randn(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64))
    gp.backward()
    expected = 10 * 2 * (5.0 - 1.0) * w.detach() / 5.0
    assert torch.allclose(w.grad, expected, rtol=1e-9)


def test_zero_gradient_gives_finite_penalty_gradient():
    # A constant critic has a zero input gradient; sqrt'(0) is infinite without the epsilon.
    w = torch.zeros(1, 2, requires_grad=True)
    critic = lambda x: (x * w).sum(1)
    gp, _ = _penalty(critic, torch.randn(4, 2), torch.randn(4, 2), torch.rand(4))
    gp.backward()
    assert gp.item() == pytest.approx(10.0, abs=1e-4)  # sqrt(eps) = 1e-6 away from 0
    assert torch.isfinite(w.grad).all()


def test_scaled_output_recipe_gives_the_unscaled_norm():
    w = torch.randn(1, 2, 4, 4)
    critic = lambda x: (x * w).flatten(1).sum(1)
    x = torch.randn(5, 2, 4, 4)
    plain = losses.penalty_gradient_norms(critic, x)
    scaled = losses.penalty_gradient_norms(critic, x, scale=torch.tensor(65536.0))
    assert torch.allclose(plain, scaled, rtol=1e-6)


def test_loss_signs():
    d_real, d_fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, -3.0])
    # A critic that scores reals higher has a negative loss and a positive W estimate.
    assert losses.critic_loss(d_real, d_fake).item() == pytest.approx(-5.0)
    assert losses.wasserstein_estimate(d_real, d_fake).item() == pytest.approx(5.0)
    # The generator wants D(fake) up: its loss falls as D(fake) rises.
    assert losses.generator_loss(d_fake).item() == pytest.approx(2.0)
    assert losses.generator_loss(d_fake + 1).item() < losses.generator_loss(d_fake).item()
    assert losses.drift_penalty(d_real, 1e-3).item() == pytest.approx(1e-3 * 10.0)
    # Non-saturating DCGAN losses: -log sigmoid on logits.
    zero = torch.zeros(3)
    assert losses.ns_critic_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert losses.ns_generator_loss(zero).item() == pytest.approx(math.log(2))
    assert losses.ns_generator_loss(zero + 5).item() < losses.ns_generator_loss(zero).item()


def test_interpolate_endpoints():
    real, fake = torch.ones(3, 1, 2, 2), -torch.ones(3, 1, 2, 2)
    out = losses.interpolate(real, fake, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(out[0], fake[0]) and torch.equal(out[2], real[2])
    assert torch.allclose(out[1], torch.zeros(1, 2, 2))


def test_config_one_sided_reaches_the_image_objective():
    """loss.one_sided=true: the critic phase charges only slopes above 1 (a linear critic
    with ||w|| = 0.5 pays nothing one-sided, 10 * 0.25 two-sided)."""
    from wgan_dist.config import LossConfig
    from wgan_dist.objective import critic_phase

    w = torch.full((1, 1, 2, 2), 0.25, dtype=torch.float64)  # ||w|| = 0.5
    critic = lambda x: (x * w).flatten(1).sum(1)
    real, fake = torch.randn(4, 1, 2, 2, dtype=torch.float64), torch.randn(4, 1, 2, 2, dtype=torch.float64)
    alpha = torch.rand(4, dtype=torch.float64)
    _, two = critic_phase(critic, real, fake, alpha, LossConfig(gp_weight=10.0))
    _, one = critic_phase(critic, real, fake, alpha, LossConfig(gp_weight=10.0, one_sided=True))
    assert float(two["gradient_penalty"]) == pytest.approx(2.5, rel=1e-6)
    assert float(one["gradient_penalty"]) == 0.0
