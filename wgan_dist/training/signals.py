"""Stop signals: Ctrl-C, SIGTERM and SIGUSR1 (Slurm's time-limit warning) ask the loop to
checkpoint at the end of the current step and stop (exit code 75, ``exits.STOPPED``).

A stop signal always ends the process:

- a second stop signal ends it at once (exit 128 + signal number, no checkpoint). Signals
  within ``BURST`` seconds of the first are the same request, not a second one: a Ctrl-C
  reaches every process of the terminal's group, launcher included, and the launcher passes
  it on (``accelerate launch`` as SIGTERM, torchrun as the signal it got) milliseconds later;
  counting that as a second Ctrl-C stopped every such run without its checkpoint;
- if the run has not finished stopping ``grace`` seconds after the first signal (a rank stuck
  in a collective whose peer died, a step that never ends), it is ended the same way.

Both are done by a watchdog thread that hears every signal through ``signal.set_wakeup_fd``,
so they work even while the main thread is blocked inside a C call (a gloo all-reduce, a
DataLoader wait), where Python signal handlers cannot run.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
BURST = 1.0  # seconds after the first stop signal in which more are the same request


class StopSignals:
    """Installs the handlers; ``requested`` turns True when one arrives (this rank only:
    the loop makes every rank agree before acting on it)."""

    def __init__(self, rank: int = 0, grace: float = 120.0) -> None:
        self.rank, self.grace = rank, grace
        self.requested = False
        self.first: int | None = None  # the first stop signal's number
        self._installed: dict[int, object] = {}
        self._sock: tuple[socket.socket, socket.socket] | None = None
        self._done = threading.Event()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread (e.g. some test runners)
        for sig in STOP_SIGNALS:
            self._installed[sig] = signal.signal(sig, self._handle)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._sock = (reader, writer)
        threading.Thread(target=self._watch, name="stop-watchdog", daemon=True).start()

    def uninstall(self) -> None:
        """Back to the previous handlers (the run is over; nothing left to checkpoint)."""
        self._done.set()
        if self._sock is None:
            return
        signal.set_wakeup_fd(-1)
        for sig, old in self._installed.items():
            signal.signal(sig, old)
        for s in self._sock:
            s.close()
        self._sock = None

    def _say(self, text: str) -> None:
        print(f"[rank {self.rank}] {text}", file=sys.stderr, flush=True)

    def _handle(self, signum: int, frame) -> None:
        if not self.requested:
            self.requested, self.first = True, signum
            self._say(f"signal {signal.Signals(signum).name}: checkpointing at the end of this "
                      f"step (another signal, {BURST:g} s or more later, stops at once)")

    def _watch(self) -> None:
        reader = self._sock[0]
        deadline, seen, first_at = None, 0, 0.0
        while not self._done.is_set():
            reader.settimeout(1.0 if deadline is None else max(0.05, min(1.0, deadline - time.time())))
            try:
                data = reader.recv(64)
            except socket.timeout:
                data = b""
            except OSError:
                return  # closed by uninstall()
            for signum in data:
                if signum in STOP_SIGNALS:
                    seen += 1
                    if seen == 1:
                        first_at = time.time()
                        deadline = first_at + self.grace
                    elif time.time() - first_at > BURST:
                        self._exit(signum, "second stop signal: stopping now, without a checkpoint")
            if deadline is not None and time.time() > deadline and not self._done.is_set():
                self._exit(self.first or signal.SIGTERM,
                           f"not stopped {self.grace:g} s after the signal (train.stop_grace): "
                           f"stopping now, without a checkpoint")

    def _exit(self, signum: int, why: str) -> None:
        self._say(why)
        os._exit(128 + int(signum))
