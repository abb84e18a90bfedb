"""The image trainer's divergence guard (``training.guard``) on a toy run, for showing -- and
testing -- a collapse that the run rescues itself from.

Every ``every`` generator steps the raw generator's spread is compared with the data's (the
diversity ratio of ``metrics.CollapseAlarm``) and the last step's statistics are judged by the
same ``DivergenceGuard`` as the image trainer's ticks. A healthy check keeps a snapshot of the
whole run in memory (networks, EMA, optimizers, data stream); a collapse or a divergence goes
back to it with both learning rates halved and a new noise stream, as the image trainer does
from its newest healthy checkpoint.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from ..metrics import CollapseAlarm
from ..ranks import generator_for
from ..training.guard import Diverged, DivergenceGuard, learning_rate_scale
from .data import sample_latent, sample_real


class ToyRescue:
    def __init__(self, run: Any, dataset: str, seed: int, every: int, collapse_checks: int = 2,
                 max_rollbacks: int = 3, threshold: float = 0.5) -> None:
        self.run, self.seed, self.every, self.max_rollbacks = run, seed, every, max_rollbacks
        self.guard = DivergenceGuard(ticks=2, bound=1e4, collapse_checks=collapse_checks)
        self.alarm = CollapseAlarm(threshold, patience=1)
        gen = generator_for(torch.device("cpu"), seed, "toy", "rescue")
        self.z = sample_latent(2000, run.cfg, gen)
        self.real_spread = float(sample_real(dataset, 2000, gen).std(0).mean()) / run.scale
        self.snapshot: tuple[int, dict] | None = None
        self.rollbacks = 0
        self.events: list[str] = []

    def ratio(self) -> float:
        """Spread of the raw generator's points over the data's (1: as spread out as the data)."""
        with torch.no_grad():
            return float(self.run.g(self.z).std(0).mean()) / max(self.real_spread, 1e-12)

    def after_step(self, step: int, last: dict[str, torch.Tensor]) -> int:
        """Check every ``every`` steps; the step to go on from (``step``, or the snapshot's)."""
        if step % self.every:
            return step
        ratio = self.ratio()
        stats = {"wasserstein": float(last["w"]), **({"gradient_penalty": float(last["gp"])}
                                                      if "gp" in last else {})}
        verdict = self.guard.observe(stats, 1, self.alarm.update({"ratio": ratio}))
        if verdict is None:
            if self.guard.healthy:
                self.snapshot = (step, self.run.state())
            return step
        if self.snapshot is None or self.rollbacks >= self.max_rollbacks:
            raise Diverged(f"toy step {step}: {verdict}; stopping after {self.rollbacks} rollback(s)")
        self.rollbacks += 1
        back, state = self.snapshot
        self.run.load(copy.deepcopy(state), self.rollbacks)
        self.guard.reset()
        self.alarm.reset()
        self.events.append(f"step {step}: {verdict} (diversity ratio {ratio:.3f}); rolled back to "
                           f"step {back}, learning rates x{learning_rate_scale(self.rollbacks):g}, "
                           f"noise stream {self.rollbacks}")
        return back

    def summary(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks, "events": list(self.events),
                "final_ratio": round(self.ratio(), 4), "every": self.every}


def collapse(run: Any) -> None:
    """Induce a total mode collapse: every layer of the generator forgets its input (weights
    zeroed, biases kept), so every latent maps to one point, and every sample's gradient is
    the same, which keeps it there."""
    with torch.no_grad():
        for m in run.g.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.zero_()
