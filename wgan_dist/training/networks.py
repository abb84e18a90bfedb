"""One object per network: its parameters, its views, its optimizer.

A network is used three ways in a training step, and each needs a different handle:

- ``fwd``: the training view for its own phase -- the DDP wrapper (so the backward
  all-reduces its gradients), compiled when ``train.compile``;
- ``eager``: the same wrapper never compiled, for the critic's penalty forward: the penalty
  differentiates the critic's input gradient (double backward), which AOTAutograd refuses
  ("torch.compile with aot_autograd does not currently support double backward");
- ``frozen``: the unwrapped module (no DDP reducer; compiled when asked), for the *other*
  network's phase, with its parameters frozen (``frozen_params``): the generator's loss flows
  through the critic, but the critic is not trained there.

Compiled callables share the modules' parameters; the modules stay eager, so their
state_dict keys never change.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from torch import nn

from .. import compat
from ..config import Config
from ..nets import build_models
from ..ranks import main_print, seed_for
from .checkpoint import load_module_state
from .ema import EMA


@dataclass
class Network:
    raw: nn.Module
    """The module itself: state dicts, EMA, samples and diagnostics use it."""
    fwd: Callable
    """Forward for its own phase (DDP wrapper, compiled if asked)."""
    eager: Callable
    """Forward for the penalty (DDP wrapper, never compiled)."""
    frozen: Callable
    """Forward for the other network's phase (no DDP reducer; use inside frozen_params)."""
    opt: Any
    """Its optimizer (Accelerate's wrapper around torch's Adam)."""

    def weights(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores of it (``zero.ZeroNetwork``: gathered fp32 master weights)."""
        return self.raw.state_dict()

    def load_weights(self, state: dict[str, torch.Tensor], what: str, where: str) -> None:
        load_module_state(self.raw, state, what, where)

    @contextmanager
    def frozen_params(self) -> Iterator[Callable]:
        """Parameters frozen (no gradients are computed for them) for the duration."""
        self.raw.requires_grad_(False)
        try:
            yield self.frozen
        finally:
            self.raw.requires_grad_(True)


def fused_adam_available(device: torch.device) -> bool:
    """Whether this torch has fused Adam kernels for ``device`` (CPU too since torch 2.4)."""
    return device.type in compat.fused_kernel_devices()


def compile_module(module: nn.Module) -> Any:
    """torch.compile (inductor). One place, so a test can swap in a backend without codegen."""
    return torch.compile(module)


def _adam(module: nn.Module, lr: float, cfg: Config, fused: bool) -> torch.optim.Adam:
    # fused=None, not False: False means the for-loop Adam; None lets torch pick foreach.
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            fused=True if fused else None)


def build_networks(acc: Accelerator, cfg: Config,
                   say: Callable[[str], None] | None = None) -> tuple[Network, Network, EMA, bool]:
    """(generator, critic, generator EMA, whether Adam is fused), on the accelerator's device.

    The same initialisation on every rank (seeded from the run's seed)."""
    torch.manual_seed(seed_for(cfg.train.seed, "init"))
    g, d = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
    if cfg.train.channels_last:  # before the EMA copy, so samples run channels-last too
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    ema = EMA(g)
    fused = cfg.train.fused_adam and fused_adam_available(acc.device)
    if cfg.train.fused_adam and not fused:
        (say or (lambda m: main_print(acc, m)))(
            f"note: train.fused_adam: torch {torch.__version__} has no fused Adam on "
            f"{acc.device.type}; using the foreach Adam")
    opt_g, opt_d = _adam(g, cfg.optim.lr_g, cfg, fused), _adam(d, cfg.optim.lr_d, cfg, fused)
    g_wrapped, d_wrapped, opt_g, opt_d = acc.prepare(g, d, opt_g, opt_d)
    ema.model.to(acc.device)
    g_raw, d_raw = acc.unwrap_model(g_wrapped), acc.unwrap_model(d_wrapped)
    g_fwd, d_fwd, d_frozen = g_wrapped, d_wrapped, d_raw
    if cfg.train.compile:
        g_fwd, d_fwd = compile_module(g_wrapped), compile_module(d_wrapped)
        d_frozen = d_fwd if d_wrapped is d_raw else compile_module(d_raw)
    G = Network(g_raw, g_fwd, g_wrapped, g_raw, opt_g)
    D = Network(d_raw, d_fwd, d_wrapped, d_frozen, opt_d)
    return G, D, ema, fused
