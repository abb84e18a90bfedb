"""A run that notices it has diverged or collapsed, and what it does then (``train.on_divergence``).

Each tick's statistics (already averaged over ranks, so every rank decides alike) are judged:

- a tick is *bad* when at least half of its optimizer steps were skipped as non-finite (a
  step with a NaN or Inf loss or gradient is always skipped, so a diverged run skips), or when
  the Wasserstein estimate or the penalty is finite but past ``train.divergence_bound`` (an
  explosion on its way to Inf);
- the run has *diverged* after ``train.divergence_ticks`` bad ticks in a row;
- it has *collapsed* after the mode-collapse alarm fired at ``train.collapse_rollback``
  consecutive checks (0: the alarm only warns).

Then, with ``rollback`` (the default), the run goes back to its newest checkpoint saved while
it was healthy, halves both learning rates, takes a new noise stream, logs the event and goes
on; after ``train.max_rollbacks`` it stops (exit 1), the healthy checkpoint kept. With
``stop`` it stops at the first. The toy benchmark uses the same guard (``toybench.run``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Mapping

EXPLOSIVE = ("wasserstein", "gradient_penalty", "critic_loss")
FAULT_ENV = "WGAN_DIST_FAULT_LR_SPIKE"
"""Fault injection for the tests (``LrSpike``)."""


class Diverged(RuntimeError):
    """The run diverged or collapsed and may not (or may no longer) roll back: exit 1."""


class DivergenceGuard:
    def __init__(self, ticks: int, bound: float, collapse_checks: int) -> None:
        self.ticks, self.bound, self.collapse_checks = ticks, bound, collapse_checks
        self.bad = self.collapsed = 0
        self.reason = ""

    @property
    def healthy(self) -> bool:
        """No bad tick and no collapse alarm pending: a checkpoint now is one to come back to."""
        return self.bad == 0 and self.collapsed == 0

    def _judge(self, stats: Mapping[str, float], steps: int) -> str:
        """Why this tick is bad ("" when it is not)."""
        if "skipped_steps" in stats:
            frac = stats["skipped_steps"] / max(2 * steps, 1)  # critic and generator, each up to 1
            if not frac < 0.5:
                return f"{frac:.0%} of the steps skipped as non-finite"
        else:  # a loop without the skip (the toy): non-finite is bad at once
            bad = [k for k in EXPLOSIVE if k in stats and not math.isfinite(stats[k])]
            if bad:
                return f"{bad[0]} is {stats[bad[0]]}"
        big = [k for k in EXPLOSIVE if k in stats and math.isfinite(stats[k]) and abs(stats[k]) > self.bound]
        return f"{big[0]} {stats[big[0]]:.3g} past train.divergence_bound={self.bound:g}" if big else ""

    def observe(self, stats: Mapping[str, float], steps: int, collapse_firing: bool) -> str | None:
        """Judge one tick of ``steps`` generator steps; the reason when the run must act."""
        why = self._judge(stats, steps)
        self.bad = self.bad + 1 if why else 0
        self.reason = why or self.reason
        self.collapsed = self.collapsed + 1 if collapse_firing else 0
        if why and self.bad >= self.ticks:
            return f"diverged: {why} ({self.bad} tick(s) in a row)"
        if self.collapse_checks and self.collapsed >= self.collapse_checks:
            return f"collapsed: the mode-collapse alarm fired at {self.collapsed} checks in a row"
        return None

    def reset(self) -> None:
        self.bad = self.collapsed = 0


@dataclass
class LrSpike:
    """The fault ``WGAN_DIST_FAULT_LR_SPIKE=STEP:FACTOR[,STEP:FACTOR...]`` (tests only; off when
    unset): each multiplies both learning rates by FACTOR once, the first time the run reaches
    generator step STEP."""
    at: dict[int, float] = field(default_factory=dict)
    fired: set[int] = field(default_factory=set)

    @classmethod
    def from_env(cls) -> "LrSpike":
        items = [x.split(":") for x in os.environ.get(FAULT_ENV, "").split(",") if x]
        return cls({int(step): float(factor) for step, factor in items})

    def maybe(self, step: int, optimizers: list) -> float | None:
        """The factor applied at ``step``, if a spike fired now."""
        if step not in self.at or step in self.fired:
            return None
        self.fired.add(step)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] *= self.at[step]
        return self.at[step]


def learning_rate_scale(rollbacks: int) -> float:
    """The learning rates' factor after ``rollbacks`` rollbacks (halved each time)."""
    return 0.5 ** rollbacks
