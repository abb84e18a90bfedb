"""DiffAugment: differentiable, the same transform for reals and fakes, and what each op does."""
from __future__ import annotations

import pytest
import torch

from wgan_dist.objective import losses
from wgan_dist.nets.augment import DiffAugment, cutout, parse_policy, translate
from wgan_dist.config import LossConfig
from wgan_dist.objective import critic_phase, generator_phase

FULL = "translation,cutout,color"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", FULL])
def test_gradients_reach_the_input(policy):
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    out = DiffAugment(policy)(x, _gen(0))
    assert out.shape == x.shape
    (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_same_seed_same_parameters_for_reals_and_fakes():
    aug = DiffAugment(FULL)
    a, b = aug.sample(6, 16, 16, _gen(7)), aug.sample(6, 16, 16, _gen(7))
    assert a.keys() == b.keys() == {"brightness", "saturation", "contrast", "shift", "cutout"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["brightness"], aug.sample(6, 16, 16, _gen(8))["brightness"])
    # Parameters differ per sample within a batch (not one transform for the whole batch).
    assert a["shift"].unique(dim=0).shape[0] > 1
    real, fake = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16)
    # Applying one parameter set to reals and to fakes is one transform per pair: as every op is
    # affine in the image, augmenting an interpolate equals interpolating the augmented pair.
    alpha = torch.rand(6)
    lhs = aug.apply(losses.interpolate(real, fake, alpha), a)
    rhs = losses.interpolate(aug.apply(real, a), aug.apply(fake, b), alpha)
    assert torch.allclose(lhs, rhs, atol=1e-5)


def test_translation_moves_pixels_and_fills_with_zero():
    x = torch.zeros(2, 1, 8, 8)
    x[:, :, 3, 3] = 1.0
    out = translate(x, torch.tensor([[2, -1], [-5, 0]]))
    assert out[0, 0, 5, 2] == 1.0 and out[0].sum() == 1.0
    assert out[1].sum() == 0.0  # shifted out of the image
    filled = translate(torch.ones(1, 1, 8, 8), torch.tensor([[0, 3]]))
    assert filled[0, 0, :, :3].abs().sum() == 0 and filled[0, 0, :, 3:].eq(1).all()


def test_cutout_zeroes_one_square_of_half_the_side():
    out = cutout(torch.ones(1, 2, 8, 8), torch.tensor([[4, 4]]), 0.5)
    assert out[0, 0, 2:6, 2:6].abs().sum() == 0
    assert out.eq(0).sum() == 2 * 16


def test_color_keeps_grayscale_grayscale_and_contrast_keeps_the_mean():
    aug = DiffAugment("color")
    x = torch.rand(4, 1, 8, 8)
    p = aug.sample(4, 8, 8, _gen(1))
    p["brightness"].zero_()
    out = aug.apply(x, p)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)


def test_policy_names_are_checked():
    assert parse_policy("cutout, translation") == ("translation", "cutout")
    assert parse_policy("") == () and not DiffAugment("")
    with pytest.raises(ValueError, match="unknown augmentation 'flip'; choose from color, translation, cutout"):
        parse_policy("translation,flip")


def test_critic_and_generator_phases_see_augmented_images_only():
    # A critic that records its inputs: every image it sees must be an augmented one.
    torch.manual_seed(0)
    seen: list[torch.Tensor] = []
    w = torch.randn(3 * 8 * 8)

    def critic(x):
        seen.append(x.detach())
        return x.flatten(1) @ w

    aug = DiffAugment(FULL)
    params = aug.sample(4, 8, 8, _gen(3))
    real, fake, alpha = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.rand(4)
    loss, stats = critic_phase(critic, real, fake, alpha, LossConfig(),
                               augment=lambda x: aug.apply(x, params))
    ar, af = aug.apply(real, params), aug.apply(fake, params)
    assert torch.equal(seen[0], torch.cat([ar, af]))
    assert torch.allclose(seen[1], losses.interpolate(ar, af, alpha))  # augmented interpolates
    expected = losses.critic_loss(ar.flatten(1) @ w, af.flatten(1) @ w)
    assert torch.allclose(stats["critic_loss"], expected)
    seen.clear()
    fake = fake.requires_grad_(True)
    g_loss, _ = generator_phase(critic, fake, LossConfig(), augment=lambda x: aug.apply(x, params))
    assert torch.allclose(seen[0], af)
    (grad,) = torch.autograd.grad(g_loss, fake)  # the generator's gradient passes the augmentation
    assert grad.abs().sum() > 0
