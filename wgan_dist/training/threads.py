"""torch's intra-op threads: how many a process starts with, and, when the choice is left to
the run, how many it keeps, by measuring its own steps.

On a CPU the right count depends on what else runs on the machine: measured on the 2-core
machine (benchmarks/bench_threads.py), two threads give ~2x the images/s of one when the
machine is quiet, and a third or less of it when another process takes a core (OpenMP's
barriers wait for a thread the OS has descheduled: 32 against 110 img/s). No count chosen at
start-up is right in both cases, so ``ThreadTuner`` times the generator steps (host clock:
on a CPU the device is the host) with one thread and with the most the process may use,
keeps the faster, and looks again every ``reprobe`` steps, or at once when its steps get
slower by half. Fixed counts (``train.threads`` or $OMP_NUM_THREADS) are never changed: a run
that must be bitwise repeatable sets one (a different thread count may sum in another order).
"""
from __future__ import annotations

import os
import statistics

import torch


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int, loader_workers: int) -> tuple[int, str]:
    """torch intra-op threads for this process, and why.

    ``requested`` > 0 is taken as it is. 0 (auto): $OMP_NUM_THREADS when set (the user's or
    the launcher's choice), else this process's share of the cores (cores / processes on
    this node) minus its loader workers, at least 1 (and ``ThreadTuner`` may use fewer)."""
    if requested > 0:
        return requested, "train.threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, local = usable_cores(), int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    n = max(1, cores // max(local, 1) - loader_workers)
    return n, f"{cores} cores / {local} process(es) - {loader_workers} loader worker(s)"


class ThreadTuner:
    """Keeps the faster of ``most`` threads and one, measured on the run's own steps.

    At the start one thread runs ``settle`` + ``window`` steps (the first ``settle`` not
    counted: the run's first steps and a new pool warm up), then ``most`` threads the same
    way; the lower median step time wins. A count under trial that is ``give_up`` times
    slower than the other on any one step, warm-up included, is dropped at once (on the
    2-core machine one thread is ~1.6x slower than two when it is quiet, and two ~3x slower
    than one beside a busy process: a full window of the loser cost a 30-step run a fifth of
    its time). The windows are short for the same reason: on a quiet machine the first
    probe, at one thread, is itself the loser. Then, every ``reprobe`` steps -- or at once when the
    last ``window`` steps are half as slow again as the winner's own median -- the other
    count is tried the same way against the winner's latest ``window`` steps. Off
    (``active`` False) when there is nothing to choose."""

    def __init__(self, most: int, active: bool, window: int = 4, settle: int = 1,
                 reprobe: int = 400, give_up: float = 1.5) -> None:
        self.active = active and most > 1
        self.most, self.window, self.settle, self.reprobe = most, window, settle, reprobe
        self.give_up = give_up
        self.samples: list[float] = []
        self.results: dict[int, float] = {}
        self.queue = [1, most] if self.active else []
        self.reference = 0.0  # the chosen count's median step time
        self.since = 0
        self.current = torch.get_num_threads()
        self._start(self.queue[0] if self.queue else self.current)

    def _start(self, n: int) -> None:
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        self.current, self.samples = n, []

    def observe(self, seconds: float) -> None:
        """One generator step's wall time at the current count."""
        if not self.active:
            return
        self.samples.append(seconds)
        if self.queue:  # probing self.current
            counted = self.samples[self.settle:]
            rival = min(self.results.values(), default=0.0)
            if rival and seconds > self.give_up * rival:  # hopeless (even warming up): no window
                self.results[self.current] = seconds
                self._next()
            elif len(counted) >= self.window:
                self.results[self.current] = statistics.median(counted)
                self._next()
            return
        self.since += 1
        recent = self.samples[-self.window:]
        slower = len(recent) == self.window and statistics.median(recent) > 1.5 * self.reference
        if self.since >= self.reprobe or slower:
            if len(recent) == self.window:
                self.results = {self.current: statistics.median(recent)}
                self.queue = [1 if self.current == self.most else self.most]
            else:
                self.results, self.queue = {}, [1, self.most]
            self._start(self.queue[0])

    def _next(self) -> None:
        """The probe of self.current is done: the next count in the queue, or the winner."""
        self.queue.pop(0)
        if self.queue:
            self._start(self.queue[0])
        else:
            best = min(self.results, key=self.results.get)
            self.reference, self.since = self.results[best], 0
            self._start(best)
