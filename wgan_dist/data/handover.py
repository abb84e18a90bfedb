"""How a batch crosses from a loader worker to the training process: through shared memory
that is written in place and reused, with only a slot number crossing the loader's queue.

A DataLoader worker normally returns every batch as a new tensor: a new shared-memory segment
whose pages the kernel zero-fills as the worker writes them and the training process faults in
again, and a file descriptor passed over a Unix socket (``torch.multiprocessing``'s
``resource_sharer``). At 128 px that cost more than the copy itself many times over
(benchmarks/README.md, "hand-over"). Here each worker decodes a batch straight into one *slot*
of its own ring of shared buffers. A slot's buffer crosses once, the first time it is used;
after that a batch is a ``Handed`` message of a few numbers.

Who may write a slot is one byte per slot in shared memory (``FREE`` / ``BUSY``): the worker
takes a FREE slot and marks it BUSY; the training process marks it FREE again once nothing
references the batch it handed out from it. Every tensor and view of that batch shares one
numpy view of the slot (``torch.from_numpy``), so a weak reference to that view says when the
last of them is gone. A consumer that keeps its batches (``list(loader)``) stays correct: when
a worker finds no free slot it sends a fresh buffer, as a plain DataLoader would.

With ``pin_memory`` (CUDA) the loader's pin thread calls ``Handed.pin_memory``: the batch is
copied into page-locked memory (torch's caching host allocator, which keeps a block until the
``non_blocking`` copy that reads it has run) and its slot is free at once.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import get_worker_info

FREE, BUSY = 0, 1
SLOTS = 16
"""Slots per worker at most (buffers are made on first use). A loop that drops each batch
before the next uses prefetch_factor + 2 (DataLoader's 4 in flight, one being written, the
one still bound to the loop variable); the rest is room for a consumer that holds a few."""

_RECEIVERS: "weakref.WeakValueDictionary[str, Receiver]" = weakref.WeakValueDictionary()


@dataclass
class Handed:
    """A batch of ``shape`` (B, H, W, C) uint8 in slot ``slot`` of worker ``worker``'s ring
    (slot -1: in ``buffer``, used once). Layout: B int64 labels, then the images, row-major."""
    token: str
    worker: int
    slot: int
    shape: tuple[int, int, int, int]
    buffer: torch.Tensor | None = None
    """The slot's buffer, sent with the slot's first batch only (or a one-off buffer)."""
    state: torch.Tensor | None = None
    """The worker's slot states, sent with its first batch only."""

    def pin_memory(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by the DataLoader's pin thread (``pin_memory=True``)."""
        return _RECEIVERS[self.token].hand_out(self, pin=True)


def batch_bytes(batch: int, resolution: int, channels: int) -> int:
    return 8 * batch + batch * resolution * resolution * channels


class Ring:
    """One worker's slots: buffers made on first use, their states in shared memory."""

    def __init__(self, token: str, nbytes: int) -> None:
        self.token, self.nbytes = token, nbytes
        self.worker = get_worker_info().id  # made inside a loader worker
        self.state = torch.zeros(SLOTS, dtype=torch.uint8).share_memory_()
        self.flags = self.state.numpy()
        self.buffers: list[torch.Tensor | None] = [None] * SLOTS
        self.sent = [False] * SLOTS  # the slot's buffer has crossed: the trainer keeps it mapped
        self.sent_state = False

    def take(self) -> tuple[int, np.ndarray]:
        """(slot, its bytes as a writable array) for the next batch; slot -1: a one-off
        buffer (every slot still held by the training process)."""
        free = np.flatnonzero(self.flags == FREE)
        if len(free) == 0:
            self._one_off = torch.empty(self.nbytes, dtype=torch.uint8)
            return -1, self._one_off.numpy()
        slot = int(free[0])  # the lowest: a few slots stay in use, mapped on both sides
        self.flags[slot] = BUSY
        if self.buffers[slot] is None:
            self.buffers[slot] = torch.empty(self.nbytes, dtype=torch.uint8).share_memory_()
        return slot, self.buffers[slot].numpy()

    def message(self, slot: int, shape: tuple[int, int, int, int]) -> Handed:
        """What crosses the loader's queue for the batch just written into ``slot``."""
        msg = Handed(self.token, self.worker, slot, shape)
        if slot < 0:
            msg.buffer = self._one_off
        elif not self.sent[slot]:
            msg.buffer, self.sent[slot] = self.buffers[slot], True
        if not self.sent_state:
            msg.state, self.sent_state = self.state, True
        return msg


class Receiver:
    """The training process's side: the rings' buffers it has been sent, and the batches it
    handed out that still hold a slot."""

    def __init__(self) -> None:
        self.token = os.urandom(8).hex()
        _RECEIVERS[self.token] = self
        self.reset()

    def reset(self) -> None:
        """Forget the rings of a finished iterator (its workers are gone)."""
        self.states: dict[int, np.ndarray] = {}
        self.buffers: dict[tuple[int, int], np.ndarray] = {}
        self.out: list[tuple[int, int, weakref.ref]] = []

    def release(self) -> None:
        """Mark FREE every slot whose batch nothing references any more. Called before the
        loader is asked for the next batch, i.e. before it sends a worker the next request."""
        held = []
        for worker, slot, alive in self.out:
            if alive() is None:
                self.states[worker][slot] = FREE
            else:
                held.append((worker, slot, alive))
        self.out = held

    def hand_out(self, msg: Handed, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images (B, C, H, W), int64 labels) of a message. The images are a view of
        (B, H, W, C) memory, as the collate of a plain loader gave them; pinned copies with
        ``pin`` (the slot is then free at once)."""
        if msg.state is not None:
            self.states[msg.worker] = msg.state.numpy()
        if msg.slot >= 0 and msg.buffer is not None:
            self.buffers[(msg.worker, msg.slot)] = msg.buffer.numpy()
        flat = msg.buffer.numpy() if msg.slot < 0 else self.buffers[(msg.worker, msg.slot)]
        view = flat[:batch_bytes(msg.shape[0], msg.shape[1], msg.shape[3])]  # the batch's own object
        images, labels = unpack(torch.from_numpy(view), msg.shape)
        if pin:
            images, labels = images.pin_memory(), labels.pin_memory()  # copies
            if msg.slot >= 0:
                self.states[msg.worker][msg.slot] = FREE
        else:
            labels = labels.clone()  # tiny; the slot's lifetime is then the images' alone
            if msg.slot >= 0:
                self.out.append((msg.worker, msg.slot, weakref.ref(view)))
        return images.permute(0, 3, 1, 2), labels


def unpack(flat: torch.Tensor, shape: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (B, H, W, C), int64 labels (B,)): views of a batch's bytes."""
    b = shape[0]
    return flat[8 * b:8 * b + b * shape[1] * shape[2] * shape[3]].view(shape), flat[:8 * b].view(torch.int64)
