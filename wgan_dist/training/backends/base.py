"""What a training backend is: the interface the loop calls, and the micro-batch bookkeeping
both backends share.

A training step reads, in the loop (``trainer.critic_step``):

    for mb in backend.micro_batches(D, batch):      # one piece unless train.micro_batch
        with mb.sync():                              # no gradient reduction but on the last
            loss, stats = critic_phase(...)          # the objective
            backend.backward(D, loss, mb)
        total.add(loss, stats, mb)
    backend.step(D, total.loss, total.stats)         # the step, or the agreed skip
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from accelerate import Accelerator

from ...config import Config
from ..ema import EMA
from ..networks import Network

Stats = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MicroBatch:
    """One piece of a process's batch: which samples, its share of the batch, and the context
    its forward and backward run in (``no_sync`` on all pieces but the last)."""
    slice: slice
    weight: float
    sync: Callable[[], AbstractContextManager] = nullcontext
    whole: bool = True
    """The whole batch in one piece: its loss is back-propagated as it is (no weighting)."""


def split(batch: int, micro: int, no_sync: Callable[[], AbstractContextManager]) -> list[MicroBatch]:
    """``batch`` samples in pieces of ``micro`` (0 or >= batch: one piece, the whole batch);
    every piece but the last runs under ``no_sync``."""
    if not micro or micro >= batch:
        return [MicroBatch(slice(None), 1.0)]
    cuts = list(range(0, batch, micro)) + [batch]
    last = len(cuts) - 2
    return [MicroBatch(slice(a, b), (b - a) / batch, nullcontext if k == last else no_sync, False)
            for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


@dataclass
class Accumulated:
    """The loss and statistics of a step's pieces, each weighted by its share of the batch (so
    the step's statistics are the whole batch's); a whole-batch piece is kept as it is."""
    loss: torch.Tensor | float = 0.0
    stats: Stats = field(default_factory=dict)

    def add(self, loss: torch.Tensor, stats: Stats, mb: MicroBatch) -> None:
        if mb.whole:
            self.loss, self.stats = loss, stats
            return
        self.loss = self.loss + loss.detach() * mb.weight
        for key, v in stats.items():
            self.stats[key] = self.stats[key] + v * mb.weight if key in self.stats else v * mb.weight


class Backend(Protocol):
    """How a loss becomes an optimizer step, and how a network's state is kept.

    Implementations: ``ddp.DDPBackend`` (Accelerate's DDP) and ``deepspeed.ZeroBackend``
    (DeepSpeed ZeRO-1/2). Both build the same models (``networks.init_models``) with the same
    torch Adam, and keep checkpoints in torch Adam's whole-network layout, so a run resumes
    under either."""

    acc: Accelerator
    """The process group and its books (rank, device, autocast, barriers, reductions)."""
    fused_adam: bool
    """Whether Adam runs fused (its step skips on the device, without a host sync)."""

    def build(self, cfg: Config, say: Callable[[str], None]) -> tuple[Network, Network, EMA]:
        """Generator, critic and the generator's EMA, on this process's device."""

    def loss_scale(self, net: Network) -> torch.Tensor | float:
        """The scale the penalty differentiates (fp16's loss scale, else 1)."""

    def micro_batches(self, net: Network, batch: int) -> list[MicroBatch]:
        """The pieces of a local batch of ``batch`` samples for a step of ``net``."""

    def backward(self, net: Network, loss: torch.Tensor, mb: MicroBatch) -> None:
        """Back-propagate one piece's loss into ``net``'s gradients."""

    def step(self, net: Network, loss: torch.Tensor, stats: Stats) -> None:
        """Step ``net``'s optimizer unless anything is non-finite on any rank (the same
        decision on every rank), zero the gradients; ``stats["skipped_steps"]`` is 1.0 for a
        skipped step (a device tensor, not read here)."""

    def describe(self) -> str:
        """The start-up line's words for the gradient reduction (empty for one process)."""

    def state_dict(self, G: Network, D: Network) -> dict[str, Any]:
        """Both networks' weights and optimizers (and a scaler) for a checkpoint, whole
        (gathered from every rank's partition where the backend partitions; a collective:
        every rank calls it)."""

    def load_state_dict(self, G: Network, D: Network, state: dict[str, Any], where: str) -> None:
        """The inverse of ``state_dict`` (every rank calls it)."""
