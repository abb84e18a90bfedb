"""A heartbeat for long phases (classifier training, feature extraction, evaluation, the
first steps of a run): one line at most every ``every`` seconds -- ``$WGAN_DIST_HEARTBEAT``,
default 10 -- so nothing runs silent for minutes."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

Say = Callable[[str], None]


def heartbeat_seconds() -> float:
    return float(os.environ.get("WGAN_DIST_HEARTBEAT") or 10.0)


def to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Heartbeat:
    """``hb(done)`` says "<what>: done/total unit (p %), t s" when ``every`` seconds passed
    since the last line; ``hb.finish()`` says how long it took, if that was long."""

    def __init__(self, what: str, total: int | None = None, unit: str = "",
                 say: Say | None = None, every: float | None = None) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.say, self.every = say or to_stderr, heartbeat_seconds() if every is None else every
        self.t0 = self.last = time.time()

    def __call__(self, done: int) -> None:
        now = time.time()
        if now - self.last < self.every:
            return
        self.last = now
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * done / self.total:.0f} %)" if self.total else ""
        self.say(f"{self.what}: {done}{of} {self.unit}{pct}, {now - self.t0:.0f} s".replace("  ", " "))

    def finish(self) -> None:
        took = time.time() - self.t0
        if took >= self.every:
            self.say(f"{self.what}: done in {took:.0f} s")
