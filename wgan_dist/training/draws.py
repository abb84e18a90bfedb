"""Every random draw of a training step, counter-based, made where it is used.

A draw is a function of (seed, purpose, rank, step, phase) only -- never of a running RNG
state -- so a resumed run draws exactly what the uninterrupted run would have drawn at the
same step, and every rank draws its own fakes (``ranks.seed_for``). Draws are generated on
the training device by a generator seeded there (seeding is host-side state, no sync): no
host-to-device copy per phase, which from pageable memory would make the host wait for the
device. (A GPU's generator gives other numbers than the CPU's for the same seed; a run and
its resumption use the same device, so resuming stays exact.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nets.augment import DiffAugment
from ..ranks import generator_for


@dataclass
class Augmenter:
    """DiffAugment with one phase's parameters drawn: one transform per (real_i, fake_i)."""
    augment: DiffAugment
    params: dict

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.augment.apply(x, self.params)

    def sliced(self, sl: slice) -> "Augmenter":
        """The transforms of samples ``sl`` (a micro-batch)."""
        return Augmenter(self.augment, {k: v[sl] for k, v in self.params.items()})


class Draws:
    """Noise, interpolation coefficients, fake labels and augmentation parameters."""

    def __init__(self, seed: int, rank: int, device: torch.device, batch: int, latent_dim: int,
                 num_classes: int = 0, augment: DiffAugment | None = None,
                 resolution: int = 0) -> None:
        self.seed, self.rank, self.device, self.batch = seed, rank, device, batch
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.augment, self.resolution = augment, resolution
        self.stream = 0
        """0, or the number of rollbacks: a rolled-back run draws from a new stream."""

    def _gen(self, purpose: str, step: int, phase: int) -> torch.Generator:
        key = purpose if not self.stream else f"{purpose}#{self.stream}"
        return generator_for(self.device, self.seed, key, self.rank, step, phase)

    def noise(self, purpose: str, *shape: int, step: int, phase: int = 0) -> torch.Tensor:
        """Normal noise (uniform for ``alpha``) of ``shape`` for this (purpose, step, phase)."""
        fn = torch.rand if purpose == "alpha" else torch.randn
        return fn(*shape, generator=self._gen(purpose, step, phase), device=self.device)

    def latents(self, purpose: str, step: int, phase: int = 0) -> torch.Tensor:
        return self.noise(purpose, self.batch, self.latent_dim, step=step, phase=phase)

    def labels(self, purpose: str, step: int, phase: int = 0) -> torch.Tensor | None:
        """Uniform class labels for the fakes (None for an unconditional model)."""
        if not self.num_classes:
            return None
        g = self._gen(purpose, step, phase)
        return torch.randint(self.num_classes, (self.batch,), generator=g, device=self.device)

    def augmenter(self, purpose: str, step: int, phase: int = 0) -> Augmenter | None:
        """This phase's DiffAugment with its parameters drawn (one transform per real/fake
        pair); None when data.diffaug is off."""
        if self.augment is None:
            return None
        params = self.augment.sample(self.batch, self.resolution, self.resolution,
                                     self._gen(purpose, step, phase), self.device)
        return Augmenter(self.augment, params)

    def critic(self, step: int, phase: int) -> dict:
        """Everything a critic phase draws: z, alpha, the fakes' labels, the augmentation."""
        return {"z": self.latents("z_d", step, phase),
                "alpha": self.noise("alpha", self.batch, step=step, phase=phase),
                "y_fake": self.labels("y_d", step, phase),
                "augment": self.augmenter("aug_d", step, phase)}

    def generator(self, step: int) -> dict:
        """Everything a generator phase draws: z, labels, the augmentation."""
        return {"z": self.latents("z_g", step), "y": self.labels("y_g", step),
                "augment": self.augmenter("aug_g", step)}
