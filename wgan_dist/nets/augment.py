"""Differentiable augmentation for small datasets (DiffAugment, Zhao et al., 2020).

With a few hundred images the critic memorises the reals and its gradients stop being useful
to the generator. DiffAugment shows the critic only augmented images -- reals and fakes alike,
in the critic phase *and* in the generator phase -- and every operation is differentiable, so
the generator's gradient flows back through the augmentation. Because reals and fakes go
through the same distribution of transforms, matching T(G(z)) to T(x) matches G(z) to x; the
generator never learns to produce the augmentations.

Policy: a comma list of ``color`` (brightness, saturation, contrast), ``translation`` (up to
1/8 of the side, zero fill) and ``cutout`` (a square of half the side set to 0), applied in that
order, as in the paper's code.

Parameters are drawn per sample from a ``torch.Generator`` the caller gives (the trainer uses its
counter-based streams, so a resumed run draws what the uninterrupted one drew), then applied:
``sample`` once, ``apply`` to the reals and to the fakes with the *same* parameters, so pair i
(real_i, fake_i) sees one transform. For fixed parameters every operation is affine in the image,
hence ``lerp(T(real), T(fake), a) == T(lerp(real, fake, a))``: the gradient penalty's
interpolates between augmented reals and fakes are augmented interpolates, and the penalty is
taken with respect to the image the critic actually sees.
"""
from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor
Params = dict[str, Tensor]

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """'translation,cutout,color' -> the known names in application order; '' -> ()."""
    names = [p.strip() for p in (policy.split(",") if isinstance(policy, str) else policy)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(POLICIES)} (comma-separated)")
    return tuple(p for p in POLICIES if p in names)


class DiffAugment:
    """A DiffAugment policy: ``sample`` per-sample parameters, ``apply`` them to a batch."""

    def __init__(self, policy: str | Sequence[str], translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5) -> None:
        self.policy = parse_policy(policy)
        self.translation_ratio, self.cutout_ratio = translation_ratio, cutout_ratio

    def __bool__(self) -> bool:
        return bool(self.policy)

    def sample(self, n: int, height: int, width: int, generator: torch.Generator,
               device: torch.device | str = "cpu") -> Params:
        """Parameters for n samples, drawn from ``generator`` on its own device (the trainer
        gives it one on the training device: no host-to-device copy per phase)."""
        p: Params = {}
        gd = generator.device
        rand = lambda: torch.rand(n, generator=generator, device=gd)  # noqa: E731
        randint = lambda lo, hi: torch.randint(lo, hi, (n,), generator=generator, device=gd)  # noqa: E731
        if "color" in self.policy:
            p["brightness"] = rand() - 0.5      # x + b
            p["saturation"] = rand() * 2.0      # grey + s (x - grey)
            p["contrast"] = rand() + 0.5        # mean + c (x - mean)
        if "translation" in self.policy:
            sy, sx = int(height * self.translation_ratio + 0.5), int(width * self.translation_ratio + 0.5)
            p["shift"] = torch.stack([randint(-sy, sy + 1), randint(-sx, sx + 1)], 1)
        if "cutout" in self.policy:
            ch, cw = int(height * self.cutout_ratio + 0.5), int(width * self.cutout_ratio + 0.5)
            # Centres as in the paper: the square may reach over the border (then it is smaller).
            p["cutout"] = torch.stack([randint(0, height + (1 - ch % 2)),
                                       randint(0, width + (1 - cw % 2))], 1)
        return {k: v.to(device) for k, v in p.items()}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        """The transform of ``params`` applied to x (B, C, H, W); differentiable in x."""
        if "color" in self.policy:
            x = color(x, params["brightness"], params["saturation"], params["contrast"])
        if "translation" in self.policy:
            x = translate(x, params["shift"])
        if "cutout" in self.policy:
            x = cutout(x, params["cutout"], self.cutout_ratio)
        return x

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(x, self.sample(x.shape[0], x.shape[-2], x.shape[-1], generator, x.device))


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x.dtype).view(-1, 1, 1, 1)


def color(x: Tensor, brightness: Tensor, saturation: Tensor, contrast: Tensor) -> Tensor:
    """Brightness shift, then saturation about the per-pixel channel mean, then contrast about
    the image mean. On 1-channel images saturation is the identity."""
    x = x + _per_sample(brightness, x)
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * _per_sample(saturation, x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * _per_sample(contrast, x)


def translate(x: Tensor, shift: Tensor) -> Tensor:
    """Shift sample i by shift[i] = (dy, dx) pixels; pixels shifted in from outside are 0."""
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None] - shift[:, :1]   # source row of each output row
    cols = torch.arange(w, device=x.device)[None] - shift[:, 1:]
    inside = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices around a slice: the result is (B, H, W, C).
    out = x[batch, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    return out.permute(0, 3, 1, 2) * inside[:, None].to(x.dtype)


def cutout(x: Tensor, centre: Tensor, ratio: float = 0.5) -> Tensor:
    """Set a square of side ratio * size around centre[i] = (cy, cx) to 0 in sample i."""
    _, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top, left = centre[:, :1] - ch // 2, centre[:, 1:] - cw // 2
    rows, cols = torch.arange(h, device=x.device)[None], torch.arange(w, device=x.device)[None]
    in_rows = (rows >= top) & (rows < top + ch)
    in_cols = (cols >= left) & (cols < left + cw)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)
