"""Measurement hooks for the benchmarks, off unless ``WGAN_DIST_INSTRUMENT`` names a file.

When on, a run counts (1) the bytes every all-reduce sends, by phase (``comm.CommMeter``),
and (2) the host reads of tensors inside the hot loop -- between ticks, outside reporting --
and writes them per rank to ``$WGAN_DIST_INSTRUMENT.rank<r>.json`` at the end.

A host read is what makes the host wait for the device: ``.item()``, ``.tolist()``,
``.cpu()``, ``.numpy()``, ``bool()`` / ``float()`` / ``int()`` of a tensor, and ``.to()`` a
CPU device (from another device). They are counted on every tensor (the stop vote reads its
result from a NumPy buffer, never from a tensor: ``ranks.StopVote``) but those in the host's
shared memory: the loader's batches and slot states (``data.handover``), which live on the
host on every machine, so reading them never waits for a device. On a CPU run
the device *is* the host, but the same code runs on a GPU, so a read counted here is a sync
there.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Iterator

import torch

from .comm import INSTRUMENT_ENV as ENV
from .comm import CommMeter
HOST_SIDE = ("flip_on_host",)
"""Functions that run only when the device is the host (``data.cache``'s CPU flips): their
reads are no syncs on any machine."""
_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


class SyncCounter:
    def __init__(self) -> None:
        self.hot = False
        self.count = 0
        self.where: dict[str, int] = {}
        self._saved: dict[str, object] = {}

    def install(self) -> None:
        import traceback

        def wrap(name, real):
            def counted(t, *args, **kwargs):
                if self.hot and not _host_only(t) and (
                        name != "to" or (t.device.type != "cpu" and _to_cpu(args, kwargs))):
                    frame = traceback.extract_stack(limit=2)[0]  # the reader itself
                    if frame.name in HOST_SIDE:
                        return real(t, *args, **kwargs)
                    self.count += 1
                    key = f"{os.path.basename(frame.filename)}:{frame.lineno} {name}"
                    self.where[key] = self.where.get(key, 0) + 1
                return real(t, *args, **kwargs)
            return counted
        for name in (*_READS, "to"):
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, wrap(name, self._saved[name]))

    def uninstall(self) -> None:
        for name, real in self._saved.items():
            setattr(torch.Tensor, name, real)
        self._saved = {}


def _host_only(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.is_shared()


def _to_cpu(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


class Instruments:
    """The trainer's measurement hooks; every method is a no-op when off."""

    def __init__(self, rank: int) -> None:
        self.path = os.environ.get(ENV) or None
        self.rank = rank
        self.comm = CommMeter() if self.path else None
        self.syncs = SyncCounter() if self.path else None
        self.steps = 0
        self.per_step: list[dict[str, int]] = []  # cumulative bytes by phase after each step
        if self.path:
            self.comm.install()
            self.syncs.install()

    @property
    def on(self) -> bool:
        return self.path is not None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Inside the hot loop: bytes go to ``name`` (critic, generator, step), host reads are
        counted."""
        if not self.on:
            yield
            return
        self.comm.phase, self.syncs.hot = name, True
        try:
            yield
        finally:
            self.comm.phase, self.syncs.hot = "other", False

    def step_done(self) -> None:
        if self.on:
            self.steps += 1
            self.per_step.append(dict(self.comm.bytes))

    def close(self) -> None:
        if not self.on:
            return
        self.comm.uninstall()
        self.syncs.uninstall()
        with open(f"{self.path}.rank{self.rank}.json", "w") as f:
            json.dump({"steps": self.steps, "bytes": self.comm.bytes, "calls": self.comm.calls,
                       "bytes_after_step": self.per_step,
                       "host_syncs": self.syncs.count, "sync_sites": self.syncs.where}, f, indent=1)
