"""The generator's exponential moving average: what samples, evaluation and generate use."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..compat import foreach_lerp_


class EMA:
    """An exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        """ema <- beta * ema + (1 - beta) * model, in one multi-tensor kernel."""
        # .to: a no-op for fp32 weights; DeepSpeed bf16/fp16 weights are averaged in fp32.
        targets = list(self.model.parameters())
        foreach_lerp_(targets, [p.detach().to(t.dtype) for p, t in zip(model.parameters(), targets)],
                      1.0 - beta)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def ema_beta(half_life_kimg: float, rampup: float, nimg_g: int, batch: int) -> float:
    """beta = 0.5 ** (batch / half_life), the half-life (in images) at most ``rampup`` x the
    generator images so far (StyleGAN2-ADA): early on the average forgets the init faster."""
    half_life = half_life_kimg * 1000
    if rampup > 0:
        half_life = min(half_life, nimg_g * rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))
