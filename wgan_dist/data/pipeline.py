"""The reading pipeline: WebDataset shards -> batches of images, one readable stage at a time.

    shard list -> this rank's / worker's shards, resampled with a fixed seed
               -> tar records -> shuffle buffer -> flip coins -> (resume: skip what was
               consumed) -> full batches only -> decode (and flip) into the batch (uint8)
    -> handed to the training process through shared memory (``handover``)
    then, on the device: scale to [-1, 1].

Every rank takes exactly the number of batches the run needs: the shard stream is resampled
(it never runs dry, even with fewer shards than ranks x workers, which hangs DDP otherwise:
webdataset#188), and every worker's epoch has the same fixed length. Every random choice
(shard order, shuffle, flips) has an explicit seed derived from (seed, rank, worker), so a run
is reproducible and a resumed run reads exactly what the uninterrupted one would have read.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import UnidentifiedImageError
from torch.utils.data import DataLoader, get_worker_info

from ..compat import shuffle_samples, shutdown_loader_workers
from ..ranks import seed_for
from . import handover
from .format import DataError, check_shard, decode_image, image_entry, iter_samples, label_of


# ----------------------------------------------------------------------------------------
# Stages. Each is a function from an iterator to an iterator, run inside a loader worker.

def _worker(rotate: int = 0) -> tuple[int, int]:
    """(logical worker id, workers). A DataLoader takes batches round-robin starting at worker
    0; a loader resumed after k batches must start where the old one would have continued, so
    physical worker w plays logical worker (w + k) % workers."""
    info = get_worker_info()
    if info is None:
        return 0, 1
    return (info.id + rotate) % info.num_workers, info.num_workers


@dataclass(frozen=True)
class ShardStream:
    """This rank's and worker's shards, resampled forever from a seeded RNG.

    Split by node, then by worker, when there are enough shards for every (rank, worker) to
    own at least one; otherwise every reader samples from all shards with its own seed (never
    an empty reader, never a hang). Resampling means no reader ever runs out.

    (The stages are small classes, not closures, so that the pipeline pickles: loader workers
    started by spawn or forkserver -- macOS, Python 3.14 -- receive it pickled.)
    """
    urls: list[str]
    rank: int
    world: int
    seed: int
    rotate: int = 0

    def __call__(self) -> Iterator[dict]:
        worker, workers = _worker(self.rotate)
        urls = self.urls
        mine = urls[self.rank::self.world][worker::workers] if len(urls) >= self.world * workers else urls
        rng = random.Random(seed_for(self.seed, "shards", self.rank, worker))
        while True:
            yield {"url": mine[rng.randrange(len(mine))]}


@dataclass(frozen=True)
class ReadTar:
    """Shard URLs -> samples {"__key__", "__url__", "png" | "jpg" | "u8", "cls", ...}, read by
    ``format.iter_samples`` (``fast``: the pread scanner for local plain tars).

    With ``expected`` (url -> (count, sha256) from the manifest) every shard is checked the
    first time this worker opens it (its sha256) and every time it is read through (its
    sample count): a damaged shard stops the run with its name, never silently shrinks."""
    fast: bool = True
    expected: dict | None = None

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        verified: set[str] = set()
        for source in src:
            url = source["url"]
            count, sha = (self.expected or {}).get(url, (None, None))
            if sha and url not in verified:
                check_shard(url, None, sha)
                verified.add(url)
            n = 0
            for sample in iter_samples(url, self.fast):
                n += 1
                yield sample
            if count is not None and n != count:
                raise DataError(f"{url}: read {n} samples but the manifest says {count} "
                                f"(truncated or replaced shard; re-shard or restore it)")


@dataclass(frozen=True)
class Shuffle:
    """A seeded shuffle buffer of ``bufsize`` samples."""
    bufsize: int
    seed: int
    rank: int
    rotate: int = 0

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        worker, _ = _worker(self.rotate)
        rng = random.Random(seed_for(self.seed, "shuffle", self.rank, worker))
        return shuffle_samples(src, self.bufsize, min(self.bufsize, 100), rng)


@dataclass(frozen=True)
class DrawFlips:
    """Decide each sample's flip *before* the resume skip, so the coin stream stays aligned."""
    enabled: bool
    seed: int
    rank: int
    rotate: int = 0

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        worker, _ = _worker(self.rotate)
        rng = random.Random(seed_for(self.seed, "flip", self.rank, worker))
        for sample in src:
            sample["__flip__"] = self.enabled and rng.random() < 0.5
            yield sample


@dataclass(frozen=True)
class SkipConsumed:
    """On resume, drop the samples this worker already delivered (before decoding: cheap).

    A DataLoader takes batches from its workers round-robin, so of the first k batches worker
    w delivered len(range(w, k, workers)).
    """
    batches_consumed: int
    batch_size: int

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        worker, workers = _worker(self.batches_consumed)
        n = len(range(worker, self.batches_consumed, workers)) * self.batch_size
        for i, sample in enumerate(src):
            if i >= n:
                yield sample


def decode_sample(sample: dict, resolution: int, channels: int) -> np.ndarray:
    """A sample's image entry -> uint8 (H, W, C), unflipped; a DataError naming the shard and
    the sample if it cannot be decoded or has another size. A raw entry is a view of its bytes
    (no copy: it is copied once, into the batch)."""
    ext, data = image_entry(sample)
    try:
        if ext == "u8":
            pixels = np.frombuffer(data, dtype=np.uint8).reshape(resolution, resolution, channels)
        else:
            pixels = decode_image(data, ext, resolution, channels)
    except Exception as e:
        why = "not an image PIL can read" if isinstance(e, UnidentifiedImageError) else \
            f"{type(e).__name__}: {e}"
        raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')}: cannot "
                        f"decode its {ext} entry ({why})") from None
    if pixels.shape[:2] != (resolution, resolution):
        raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')} is "
                        f"{tuple(pixels.shape[:2])}, expected {resolution}x{resolution}")
    return pixels


def _mirror_into(out: np.ndarray, pixels: np.ndarray) -> None:
    """``out[:] = pixels`` mirrored left-right. numpy's reversed copy is fast for one channel
    but copies three-channel pixels one byte at a time: 257 us at 128 px against 38 for
    torch's flip kernel (measured on the 2-core CPU)."""
    if pixels.shape[2] == 1:
        out[:] = pixels[:, ::-1]
    else:
        out[:] = pixels
        hwc = torch.from_numpy(out)
        hwc.copy_(hwc.flip(1))


@dataclass(frozen=True)
class DecodeBatch:
    """A full batch of samples -> (uint8 images (B, C, H, W), int64 labels), each image decoded
    (and flipped if drawn so) straight into the batch's memory: no tensor per sample, no
    collate copy. In a loader worker that memory is a slot of the worker's shared ring and the
    batch crosses as a slot number (``handover``); the images are a (B, C, H, W) view of
    (B, H, W, C) memory, which ``to_model_range`` lays out on the device."""
    resolution: int
    channels: int
    token: str = ""

    def __call__(self, src: Iterator[list[dict]]) -> Iterator[Any]:
        r, c, ring = self.resolution, self.channels, None
        for samples in src:
            b = len(samples)
            shape, nbytes = (b, r, r, c), handover.batch_bytes(b, r, c)
            if ring is None and get_worker_info() is not None:
                ring = handover.Ring(self.token, nbytes)
            slot, flat = ring.take() if ring else (-1, np.empty(nbytes, dtype=np.uint8))
            labels, images = flat[:8 * b].view(np.int64), flat[8 * b:nbytes].reshape(shape)
            for i, sample in enumerate(samples):
                (_mirror_into if sample.get("__flip__") else np.copyto)(images[i], decode_sample(sample, r, c))
                labels[i] = label_of(sample)
            if ring is not None:
                yield ring.message(slot, shape)
            else:  # no worker: nothing to hand over
                hwc, labels = handover.unpack(torch.from_numpy(flat), shape)
                yield hwc.permute(0, 3, 1, 2), labels


class Batches:
    """Iterates a DataLoader of batches as (uint8 images (B, C, H, W), int64 labels); what
    loader workers send is handed out by a ``handover.Receiver`` (shared slots, reused)."""

    def __init__(self, loader: DataLoader, receiver: handover.Receiver) -> None:
        self.loader, self.receiver = loader, receiver
        self._it: Any = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.take(None)

    def take(self, count: int | None) -> "Taken":
        """An iterator of at most ``count`` batches. The loader's iterator (its workers, its
        seed) is made here, not at the first ``next()``: inside the training loop it would be a
        host read on the first step. A previous iterator's workers are shut down first."""
        self.close()
        self.receiver.reset()
        self._it = iter(self.loader)
        return Taken(self, count)

    def close(self) -> None:
        """Shut the loader's workers down now, instead of whenever the iterator is collected:
        after an error the traceback keeps it alive, and at interpreter exit multiprocessing
        would wait on workers blocked on their queues."""
        it, self._it = self._it, None
        if it is not None:
            shutdown_loader_workers(it)


class Taken:
    """``Batches.take``: ``close()`` shuts the workers down, also when iteration never began."""

    def __init__(self, batches: Batches, count: int | None) -> None:
        self.batches, self.left = batches, count

    def __iter__(self) -> "Taken":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        it = self.batches._it
        if it is None or self.left == 0:
            self.close()
            raise StopIteration
        receiver = self.batches.receiver
        receiver.release()  # before the loader asks a worker for more: slots it may reuse
        try:
            batch = next(it)
        except BaseException:
            self.close()
            raise
        if self.left is not None:
            self.left -= 1
        # a worker's batch arrives as a slot (pinned copies come from the pin thread)
        return receiver.hand_out(batch) if isinstance(batch, handover.Handed) else batch

    def close(self) -> None:
        self.batches.close()


def build_pipeline(urls: list[str], *, rank: int, world: int, seed: int, batch_size: int,
                   resolution: int, channels: int, shuffle_buffer: int = 2000,
                   hflip: bool = False, batches_per_worker: int,
                   skip_batches: int = 0, fast_tar: bool = True,
                   expected: dict | None = None, token: str = "") -> wds.DataPipeline:
    """The stages, in order. batch_size is per process; ``fast_tar``: format's pread reader
    (else webdataset's, for the benchmark that justifies keeping ours); ``token``: the
    ``handover.Receiver`` that takes the workers' batches."""
    k = skip_batches
    return wds.DataPipeline(
        ShardStream(urls, rank, world, seed, k),      # shards of this rank/worker, resampled
        ReadTar(fast_tar, expected),                  # tar entries -> {"__key__", "png", "cls"}
        Shuffle(shuffle_buffer, seed, rank, k),       # seeded shuffle buffer
        DrawFlips(hflip, seed, rank, k),              # flip coins, drawn before any skip
        SkipConsumed(skip_batches, batch_size),       # resume: drop what was already used
        wds.batched(batch_size, collation_fn=None, partial=False),  # full batches only
        DecodeBatch(resolution, channels, token),     # bytes -> uint8 batch, in shared memory
    ).with_epoch(batches_per_worker)                  # fixed length: equal steps on every rank


WORKER_TERM_GRACE = 60.0  # seconds a loader worker lives on after a SIGTERM
PARENT_POLL = 0.5  # seconds between a loader worker's looks at whether its trainer is alive


def _worker_signals(_worker_id: int) -> None:
    """Loader workers leave stopping to the trainer. Slurm and torchrun signal whole process
    groups; a worker that died at once on SIGTERM/SIGINT would crash the trainer before it
    could write its stop checkpoint. So SIGINT and SIGUSR1 are ignored, and a SIGTERM only
    starts a clock: the worker exits WORKER_TERM_GRACE seconds later whatever happens, so it
    can never hold up the trainer's exit for good. A worker also exits within PARENT_POLL
    seconds of its trainer's death (a killed rank: the DataLoader's own watchdog looks only
    every 5 s), and when the trainer closes the loader. Both clocks are daemon threads: a
    worker's interpreter does not wait for them at exit (the SIGTERM clock, as a plain
    thread, kept an orphaned worker alive for its whole 60 s)."""
    import signal
    import threading

    def on_term(signum, frame) -> None:
        timer = threading.Timer(WORKER_TERM_GRACE, os._exit, args=(0,))
        timer.daemon = True
        timer.start()

    def watch_parent(parent: int) -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(0)  # the trainer is gone: nobody will read what this worker makes

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=watch_parent, args=(os.getppid(),), name="parent-watch",
                     daemon=True).start()


def make_loader(urls: list[str], *, rank: int, world: int, seed: int, batch_size: int,
                resolution: int, channels: int, num_batches: int, workers: int = 1,
                shuffle_buffer: int = 2000, hflip: bool = False, skip_batches: int = 0,
                pin_memory: bool = False, mp_context: str | None = None,
                fast_tar: bool = True, expected: dict | None = None) -> Batches:
    """An iterable of at least ``num_batches`` (uint8 images, int64 labels) batches.

    One pass is all a run reads (the stream is resampled and cut to the run's length), so
    persistent workers would buy nothing; each worker keeps 4 batches prefetched, copied into
    pinned memory by the loader's pin thread when ``pin_memory`` (``handover.Handed``). ``mp_context``: how workers start (None:
    the platform's default; every stage pickles, so ``spawn``/``forkserver`` work too)."""
    readers, receiver = max(1, workers), handover.Receiver()
    pipeline = build_pipeline(
        urls, rank=rank, world=world, seed=seed, batch_size=batch_size, resolution=resolution,
        channels=channels, shuffle_buffer=shuffle_buffer, hflip=hflip,
        # +1: after a resume a worker may owe one batch more than the even share.
        batches_per_worker=math.ceil(num_batches / readers) + 1,
        skip_batches=skip_batches, fast_tar=fast_tar, expected=expected, token=receiver.token,
    )
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=4,
                      worker_init_fn=_worker_signals, multiprocessing_context=mp_context)
    return Batches(DataLoader(pipeline, batch_size=None, num_workers=workers,
                              pin_memory=pin_memory, **kwargs), receiver)


def to_model_range(images: torch.Tensor,
                   memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] in ``memory_format``. Done after the transfer: 4x fewer
    bytes to move, and the one conversion also lays the batch out (it arrives channels-last
    in memory, see ``DecodeBatch``), which on a GPU costs nothing extra."""
    return images.to(torch.float32, memory_format=memory_format).mul_(2.0 / 255.0).sub_(1.0)
