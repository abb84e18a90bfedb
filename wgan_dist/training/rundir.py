"""One run per directory: a lock that a live run holds and a dead one cannot keep.

``RUN/.lock`` is locked with ``flock`` by the main process of the run for its whole life.
The kernel drops the lock when that process dies, however it dies (kill -9 included), so a
lock left by a dead process never blocks a resume on the same machine. The file also holds
who took it (host, pid, Slurm job, start time) and its modification time is a heartbeat,
touched every ``HEARTBEAT`` seconds while the run lives. That covers the filesystems where
``flock`` is not shared between hosts (some NFS and Lustre mounts): a record of another host
whose heartbeat is fresher than ``STALE`` seconds is taken as a live run there; an older one
is a lost node's, and is taken over with a note. A Slurm job requeued under its own job id
takes its own lock over at once.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

NAME = ".lock"
HEARTBEAT = 30.0
STALE = float(os.environ.get("WGAN_DIST_LOCK_STALE", "300"))


class RunDirBusy(FileExistsError):
    """Another live process holds the run directory (exit 2)."""


def _describe(rec: dict) -> str:
    job = f", Slurm job {rec['slurm_job_id']}" if rec.get("slurm_job_id") else ""
    return f"pid {rec.get('pid', '?')} on {rec.get('host', '?')}{job}, since {rec.get('started', '?')}"


class RunLock:
    """Hold ``run_dir`` for this process (``acquire`` ... ``release``)."""

    def __init__(self, run_dir: Path, say: Callable[[str], None] = print) -> None:
        self.run_dir, self.path, self.say = Path(run_dir), Path(run_dir) / NAME, say
        self.fd: int | None = None
        self.created_dir = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PermissionError(f"{self.run_dir}: the run directory cannot be written "
                                  f"({e.strerror}); choose another log.run_dir") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            rec = self._record()
            self._close(remove_dir=False)
            raise RunDirBusy(f"{self.run_dir} is in use by another run ({_describe(rec)}); wait "
                             f"for it to end or stop it, or choose another log.run_dir") from None
        rec, host = self._record(), socket.gethostname()
        if rec and not rec.get("released"):
            age = time.time() - os.stat(self.fd).st_mtime
            same_job = rec.get("slurm_job_id") and rec.get("slurm_job_id") == os.environ.get("SLURM_JOB_ID")
            if rec.get("host") != host and age < STALE and not same_job:
                self._close(remove_dir=False)
                raise RunDirBusy(
                    f"{self.run_dir} is in use by a run on another host ({_describe(rec)}; last "
                    f"heartbeat {age:.0f}s ago); if that host is gone, retry after {STALE:.0f}s "
                    f"without a heartbeat, or choose another log.run_dir")
            self.say(f"note: {self.run_dir}: taking over the lock of a run that is gone "
                     f"({_describe(rec)}; last heartbeat {age:.0f}s ago)")
        self._write({"pid": os.getpid(), "host": host,
                     "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self._thread = threading.Thread(target=self._beat, name="run-dir-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _write(self, rec: dict) -> None:
        data = json.dumps(rec).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Let the directory go. A directory this lock created and nothing else wrote into is
        removed again: a start that fails leaves nothing behind."""
        if self.fd is None:
            return
        self._stop.set()
        try:
            self._write({**self._record(), "released": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        except OSError:
            pass
        self._close(remove_dir=True)

    def _close(self, remove_dir: bool) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock
            self.fd = None
        if remove_dir and self.created_dir and [p.name for p in self.run_dir.iterdir()] == [NAME]:
            self.path.unlink(missing_ok=True)
            self.run_dir.rmdir()
