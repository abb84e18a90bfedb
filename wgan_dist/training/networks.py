"""One object per network -- its parameters, its forwards, its optimizer -- and what every
backend builds the same way (``backends`` wraps them for DDP or DeepSpeed).

A network is called three ways in a training step, each through its own forward:

- ``fwd``: its own phase -- the backend's wrapper (so the backward reduces its gradients
  over ranks), compiled when ``train.compile``;
- ``eager``: the critic's penalty forward, never compiled: the penalty differentiates the
  critic's input gradient (double backward), which AOTAutograd refuses ("torch.compile with
  aot_autograd does not currently support double backward");
- ``frozen``: the *other* network's phase, with its parameters frozen (``frozen_params``): the
  generator's loss flows through the critic, but the critic is not trained there.

``handle`` is what the backend steps and synchronises (the DDP wrapper, whose ``no_sync`` and
communication hooks it uses, or the DeepSpeed engine); nothing outside the backend uses it.
Compiled callables share the modules' parameters; the modules stay eager, so their
state_dict keys never change.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .. import compat
from ..config import Config
from ..nets import build_models
from ..ranks import seed_for
from .ema import EMA


@dataclass
class Network:
    raw: nn.Module
    """The module itself: state dicts, EMA, samples and diagnostics use it."""
    fwd: Callable
    """Forward for its own phase (the backend's wrapper, compiled if asked)."""
    eager: Callable
    """Forward for the penalty (never compiled)."""
    frozen: Callable
    """Forward for the other network's phase (no gradient reduction; use inside frozen_params)."""
    opt: Any
    """Its optimizer, with torch Adam's ``param_groups`` and ``state_dict`` layout."""
    handle: Any
    """What the backend steps and synchronises: the DDP wrapper or the DeepSpeed engine."""

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


def init_models(cfg: Config, device: torch.device) -> tuple[nn.Module, nn.Module, EMA]:
    """Generator, critic and the generator's EMA, initialised from the run's seed (the same
    on every rank and under every backend); the EMA on ``device``."""
    torch.manual_seed(seed_for(cfg.train.seed, "init"))
    g, d = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
    if cfg.train.channels_last:  # before the EMA copy, so samples run channels-last too
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    ema = EMA(g)
    ema.model.to(device)
    return g, d, ema


def use_fused_adam(cfg: Config, device: torch.device, say: Callable[[str], None]) -> bool:
    """train.fused_adam where this torch has the kernels for ``device`` (a note where not)."""
    fused = cfg.train.fused_adam and fused_adam_available(device)
    if cfg.train.fused_adam and not fused:
        say(f"note: train.fused_adam: torch {torch.__version__} has no fused Adam on "
            f"{device.type}; using the foreach Adam")
    return fused


def adam(module: nn.Module, lr: float, cfg: Config, fused: bool) -> torch.optim.Adam:
    # fused=None, not False: False means the for-loop Adam; None lets torch pick foreach.
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            fused=True if fused else None)


def compiled(cfg: Config, wrapped: Any, raw: nn.Module) -> tuple[Any, Any]:
    """(forward for its own phase, forward for the other phase) of one network: the wrapper
    and the module, or their compiled callables under train.compile."""
    if not cfg.train.compile:
        return wrapped, raw
    fwd = compile_module(wrapped)
    return fwd, (fwd if wrapped is raw else compile_module(raw))


def load_optimizer_state(opt: Any, saved: dict) -> None:
    """Load an optimizer's state but keep this run's implementation flags (fused, foreach):
    ``load_state_dict`` takes every group setting from the checkpoint, so a run resumed with
    train.fused_adam changed would silently keep the old implementation."""
    groups = [{**g, **{k: c[k] for k in ("fused", "foreach") if k in c}}
              for g, c in zip(saved["param_groups"], opt.param_groups)]
    opt.load_state_dict({**saved, "param_groups": groups})
