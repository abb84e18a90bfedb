"""Stop signals: Ctrl-C, SIGTERM and SIGUSR1 (Slurm's time-limit warning) ask the loop to
checkpoint at the end of the current step and stop; a second Ctrl-C stops at once."""
from __future__ import annotations

import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Installs the handlers; ``requested`` turns True when one arrives (this rank only:
    the loop makes every rank agree before acting on it)."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self.requested = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            try:
                signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"[rank {self.rank}] signal {signal.Signals(signum).name}: checkpointing "
              f"at the end of this step", file=sys.stderr, flush=True)
