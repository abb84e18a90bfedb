"""The networks: ``model.arch`` names a builder in ``ARCHITECTURES``.

``common`` holds what every architecture shares (resolutions, widths, critic norms, class
conditioning), ``dcgan`` and ``resnet`` the two families, ``augment`` DiffAugment (applied to
everything the critic sees).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .common import (CONDITIONINGS, SUPPORTED_RESOLUTIONS, CriticBase, GeneratorBase,
                     classes_in_turn)
from .dcgan import Critic, Generator
from .resnet import ResNetCritic, ResNetGenerator

__all__ = ["ARCHITECTURES", "CONDITIONINGS", "SUPPORTED_RESOLUTIONS", "Critic", "CriticBase",
           "Generator", "GeneratorBase", "ResNetCritic", "ResNetGenerator", "build_models",
           "classes_in_turn", "count_params", "num_classes_of"]


def num_classes_of(model_cfg) -> int:
    """Classes the models are conditioned on: 0 for an unconditional model."""
    return model_cfg.num_classes if model_cfg.conditional else 0


def _build_dcgan(model_cfg, resolution: int, channels: int) -> tuple[Generator, Critic]:
    k = num_classes_of(model_cfg)
    g = Generator(
        resolution, channels, model_cfg.latent_dim, model_cfg.g_width,
        model_cfg.max_channels, model_cfg.sync_bn, model_cfg.g_norm, num_classes=k,
    )
    d = Critic(resolution, channels, model_cfg.d_width, model_cfg.max_channels, model_cfg.d_norm,
               num_classes=k, cond=model_cfg.cond)
    return g, d


def _build_resnet(model_cfg, resolution: int, channels: int) -> tuple[GeneratorBase, CriticBase]:
    k = num_classes_of(model_cfg)
    g = ResNetGenerator(resolution, channels, model_cfg.latent_dim, model_cfg.g_width,
                        model_cfg.max_channels, model_cfg.sync_bn, model_cfg.g_norm, num_classes=k)
    d = ResNetCritic(resolution, channels, model_cfg.d_width, model_cfg.max_channels,
                     model_cfg.d_norm, num_classes=k, cond=model_cfg.cond)
    return g, d


# model.arch names an entry here; a builder takes (ModelConfig, resolution, channels).
ARCHITECTURES: dict[str, Callable[..., tuple[GeneratorBase, CriticBase]]] = {
    "dcgan": _build_dcgan,
    "resnet": _build_resnet,
}


def build_models(model_cfg, resolution: int, channels: int) -> tuple[GeneratorBase, CriticBase]:
    """Build (G, D) from a ModelConfig and the data's resolution and channels.

    A conditional config must carry ``num_classes`` (the trainer fills it in from the shard
    manifest; checkpoints store it)."""
    builder = ARCHITECTURES.get(model_cfg.arch)
    if builder is None:
        raise ValueError(f"architecture {model_cfg.arch!r} unknown; available: "
                         f"{', '.join(ARCHITECTURES)}")
    if model_cfg.conditional and model_cfg.num_classes < 1:
        raise ValueError("model.conditional=true needs model.num_classes >= 1 (the trainer "
                         "takes it from the shard manifest)")
    return builder(model_cfg, resolution, channels)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

