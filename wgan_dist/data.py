"""The reading pipeline: WebDataset shards -> batches of images, one readable stage at a time.

    shard list -> this rank's / worker's shards, resampled with a fixed seed
               -> tar records -> shuffle buffer -> (resume: skip what was consumed)
               -> decode -> optional horizontal flip -> full batches only (uint8)
    then, on the device: scale to [-1, 1].

Every rank takes exactly the number of batches the run needs: the shard stream is resampled
(it never runs dry, even with fewer shards than ranks x workers, which hangs DDP otherwise:
webdataset#188), and every worker's epoch has the same fixed length. Every random choice
(shard order, shuffle, flips) has an explicit seed derived from (seed, rank, worker), so a run
is reproducible and a resumed run reads exactly what the uninterrupted one would have read.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, default_collate, get_worker_info

from .dist import seed_for


class DataError(ValueError):
    """Shards that cannot be read as configured; the message names the file and the problem."""


@dataclass
class ShardSet:
    urls: list[str]
    resolution: int | None
    channels: int | None
    class_names: list[str]
    total: int | None
    manifest_path: Path | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------------------
# Resolving what the user gave (-d DIR, a shard dir, a pattern, "builtin") to shard URLs.

def _read_manifest(path: Path) -> ShardSet:
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    shards = manifest.get("shards") or []
    if not shards:
        raise DataError(f"{path}: lists no shards")
    urls = [str(path.parent / s["name"]) for s in shards]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise DataError(f"{path}: shard files missing: {', '.join(missing[:3])}")
    return ShardSet(urls, manifest.get("resolution"), manifest.get("channels"),
                    list(manifest.get("class_names") or []), manifest.get("total"), path)


def _folder_cache(folder: Path, cache_dir: Path, resolution: int, channels: int) -> Path:
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    return cache_dir / f"{folder.name}-{key}-{resolution}px-c{channels}"


def resolve_shards(spec: str, resolution: int, channels: int, cache_dir: str = "shards",
                   builtin_per_class: int = 2000, seed: int = 0,
                   log: Callable[[str], None] = print) -> ShardSet:
    """Turn a data spec into a ShardSet, sharding the built-in set or an image folder if needed."""
    if spec == "builtin":
        from . import shard as shard_writer

        out = Path(cache_dir) / f"builtin-{resolution}px-c{channels}"
        shard_writer.ensure_builtin_shards(str(out), resolution=resolution, channels=channels,
                                           per_class=builtin_per_class, seed=seed)
        return _read_manifest(out / "manifest.json")
    path = Path(spec)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return _read_manifest(path / "manifest.json")
        if any(path.glob("shard-*.tar")) or any(path.glob(".shard-*")):
            raise DataError(f"{path}: shard files but no manifest.json -- an interrupted "
                            f"`python -m wgan_dist.shard`? Run it again with --overwrite")
        cache = _folder_cache(path, Path(cache_dir), resolution, channels)
        if not (cache / "manifest.json").is_file():
            from . import shard as shard_writer

            log(f"sharding image folder {path} into {cache} (first use; reused afterwards)")
            shard_writer.write_shards([str(path)], str(cache), resolution=resolution,
                                      channels=channels, overwrite=True, seed=seed)
        return _read_manifest(cache / "manifest.json")
    if path.suffix == ".json" and path.is_file():
        return _read_manifest(path)
    urls = list(braceexpand.braceexpand(spec)) if "{" in spec else spec.split("::")
    if not spec.startswith("pipe:"):
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise DataError(f"data.shards={spec!r}: no such file or directory: {missing[0]}")
    return ShardSet(urls, None, None, [], None, None)


def check_shape(shards: ShardSet, resolution: int, channels: int) -> None:
    where = shards.manifest_path or "shards"
    if shards.resolution is not None and shards.resolution != resolution:
        raise DataError(f"{where}: images are {shards.resolution}px but data.resolution="
                        f"{resolution}; re-shard or set data.resolution={shards.resolution}")
    if shards.channels is not None and shards.channels != channels:
        raise DataError(f"{where}: images have {shards.channels} channel(s) but data.channels="
                        f"{channels}; set data.channels={shards.channels}")


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
class shard_stream:
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


_TAR_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta pattern
_TAR_EXTENDED = frozenset(b"xgLKS")  # pax, GNU long-name and sparse headers: left to tarfile
_TAR_REGULAR = frozenset(b"0\x007")  # what tarfile counts as a regular file


def _scan_plain_tar(path: str) -> list[tuple[str, int, int]] | None:
    """(name, offset, size) of every regular member of an uncompressed ustar file, or None
    when the file needs the general reader (no ustar magic -- e.g. compressed --, pax or GNU
    long-name headers, base-256 sizes, no end-of-archive block). Headers only: no data is
    copied. The header checksum is not recomputed (it cost more than the rest); a damaged
    header fails the magic or the octal size and goes to the general reader, which reports it."""
    members = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        off, end = 0, len(mm)
        while True:
            if off + 512 > end:  # truncated, or not a tar at all
                return None
            if mm[off] == 0:  # end-of-archive (zero) block
                break
            kind = mm[off + 156]
            if mm[off + 257:off + 262] != b"ustar" or kind in _TAR_EXTENDED or mm[off + 124] & 0x80:
                return None
            size = int(mm[off + 124:off + 136].rstrip(b"\0 ") or b"0", 8)
            if kind in _TAR_REGULAR:
                nul = mm.find(b"\0", off, off + 100)
                name = mm[off:nul if nul >= 0 else off + 100].decode()
                if mm[off + 345]:  # ustar prefix (long paths)
                    name = mm[off + 345:off + 500].rstrip(b"\0").decode() + "/" + name
                members.append((name, off + 512, size))
            off += 512 + (size + 511) // 512 * 512
    return members


def _plain_tar_samples(url: str, members: list[tuple[str, int, int]]) -> Iterator[dict]:
    """Group a scanned tar's members into samples by key, exactly as webdataset's
    ``group_by_keys`` does (key = name up to the first dot of the base name, lower-cased
    extension, ``__xxx__`` meta entries skipped, a repeated extension is an error)."""
    sample: dict | None = None
    with open(url, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for name, start, size in members:
            if name.startswith("__") and _TAR_META.match(name):
                continue
            if "/" in name:
                key, ext = wds.tariterators.base_plus_ext(name)
            else:  # the same split as base_plus_ext's regex, without the regex
                dot = name.find(".")
                key, ext = (name[:dot], name[dot + 1:]) if dot > 0 else (None, None)
            if key is None:
                continue
            ext = ext.lower()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            if ext in sample:
                raise ValueError(f"{name}: duplicate file name in tar file {url}")
            sample[ext] = mm[start:start + size]
    if sample is not None:
        yield sample


def read_tar(src: Iterator[dict]) -> Iterator[dict]:
    """Shard URLs -> samples {"__key__", "__url__", "png" | "jpg" | "u8", "cls", ...}: the same
    samples in the same order as ``wds.tarfile_to_samples()``, at 12 instead of 171 us of
    CPU a sample (benchmarks/README.md).

    Python's tarfile spends ~60 us on each member header (3 members a sample), more than
    decoding a 28 px PNG. Local uncompressed ustar shards (what our writer makes) are read
    through mmap with header slicing instead; anything else (pipe: and http URLs, compressed
    or pax-header tars) goes through webdataset's reader.
    """
    general = wds.tarfile_to_samples()
    for source in src:
        url = source["url"]
        members = None
        if "://" not in url and not url.startswith("pipe:"):
            try:
                members = _scan_plain_tar(url)
            except (OSError, ValueError):  # unreadable or not a tar: let webdataset say why
                members = None
        if members is None:
            yield from general(iter([dict(source)]))
        else:
            yield from _plain_tar_samples(url, members)


@dataclass(frozen=True)
class shuffle:
    """A seeded shuffle buffer of ``bufsize`` samples."""
    bufsize: int
    seed: int
    rank: int
    rotate: int = 0

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        worker, _ = _worker(self.rotate)
        rng = random.Random(seed_for(self.seed, "shuffle", self.rank, worker))
        return wds.filters._shuffle(src, self.bufsize, min(self.bufsize, 100), rng=rng)


@dataclass(frozen=True)
class draw_flips:
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
class skip_consumed:
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


@dataclass(frozen=True)
class decode_sample:
    """png/jpg via PIL, raw uint8 via numpy -> uint8 tensor (C, H, W) and a label.

    (torchvision.io's decoders are deprecated since torchvision 0.29; PIL is the stable path.)"""
    resolution: int | None
    channels: int | None

    def __call__(self, sample: dict) -> dict:
        resolution, channels = self.resolution, self.channels
        mode = "L" if channels == 1 else "RGB"
        if "u8" in sample:
            arr = np.frombuffer(sample["u8"], dtype=np.uint8).reshape(resolution, resolution, channels)
            img = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        else:
            data = sample.get("png", sample.get("jpg"))
            if data is None:
                raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no "
                                f"png, jpg or u8 entry (keys: {sorted(sample)})")
            pil = Image.open(io.BytesIO(data))
            if pil.mode != mode:
                pil = pil.convert(mode)
            arr = np.array(pil)  # writable copy for torch.from_numpy
            img = torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1)
        if img.shape[-1] != resolution or img.shape[-2] != resolution:
            raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')} is "
                            f"{tuple(img.shape[-2:])}, expected {resolution}x{resolution}")
        if sample.get("__flip__"):
            img = img.flip(-1)
        label = int(sample["cls"]) if "cls" in sample else -1
        return {"image": img, "label": label}


def collate(samples: list[dict]) -> tuple[torch.Tensor, list[int]]:
    """(uint8 images (B, C, H, W), labels as a list).

    Decoded images are (C, H, W) views of (H, W, C) memory, so they are stacked in that
    layout -- a plain copy, not a transposing one (10x cheaper at 128 px RGB) -- and, by
    ``default_collate`` in a loader worker, straight into the shared memory the batch
    crosses to the training process in (one copy fewer). The batch is a (B, C, H, W) view
    of (B, H, W, C) memory; ``to_model_range`` lays it out on the device. ``Batches`` makes
    the labels a tensor after the hand-over (see there why)."""
    hwc = default_collate([s["image"].permute(1, 2, 0) for s in samples])
    return hwc.permute(0, 3, 1, 2), [s["label"] for s in samples]


class Batches:
    """Iterates a DataLoader of (images, label list) as (images, int64 labels tensor).

    Every tensor a loader worker hands over costs a shared-memory segment and a file
    descriptor passed over a socket: 1.3-1.6 ms of CPU for a second, tiny tensor a batch,
    as much as decoding a dozen 28 px PNGs (benchmarks/README.md). 64 labels are not worth
    it."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            yield images, torch.tensor(labels, dtype=torch.long)


def build_pipeline(urls: list[str], *, rank: int, world: int, seed: int, batch_size: int,
                   resolution: int, channels: int, shuffle_buffer: int = 2000,
                   hflip: bool = False, batches_per_worker: int,
                   skip_batches: int = 0) -> wds.DataPipeline:
    """The stages, in order. batch_size is per process."""
    k = skip_batches
    return wds.DataPipeline(
        shard_stream(urls, rank, world, seed, k),     # shards of this rank/worker, resampled
        read_tar,                                     # tar entries -> {"__key__", "png", "cls"}
        shuffle(shuffle_buffer, seed, rank, k),       # seeded shuffle buffer
        draw_flips(hflip, seed, rank, k),             # flip coins, drawn before any skip
        skip_consumed(skip_batches, batch_size),      # resume: drop what was already used
        wds.map(decode_sample(resolution, channels)), # bytes -> uint8 (C, H, W)
        wds.batched(batch_size, collation_fn=collate, partial=False),  # full batches only
    ).with_epoch(batches_per_worker)                  # fixed length: equal steps on every rank


def _ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers leave stopping to the trainer. Slurm and torchrun signal whole process
    groups; a worker that died on SIGTERM/SIGINT would crash the trainer before it could write
    its stop checkpoint. Workers still exit when the trainer does (the loader's watchdog)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def make_loader(urls: list[str], *, rank: int, world: int, seed: int, batch_size: int,
                resolution: int, channels: int, num_batches: int, workers: int = 1,
                shuffle_buffer: int = 2000, hflip: bool = False, skip_batches: int = 0,
                pin_memory: bool = False, mp_context: str | None = None) -> Batches:
    """An iterable of at least ``num_batches`` (uint8 images, int64 labels) batches.

    One pass is all a run reads (the stream is resampled and cut to the run's length), so
    persistent workers would buy nothing; each worker keeps 4 batches prefetched, pinned
    by the loader's pin thread when ``pin_memory``. ``mp_context``: how workers start (None:
    the platform's default; every stage pickles, so ``spawn``/``forkserver`` work too)."""
    readers = max(1, workers)
    pipeline = build_pipeline(
        urls, rank=rank, world=world, seed=seed, batch_size=batch_size, resolution=resolution,
        channels=channels, shuffle_buffer=shuffle_buffer, hflip=hflip,
        # +1: after a resume a worker may owe one batch more than the even share.
        batches_per_worker=math.ceil(num_batches / readers) + 1,
        skip_batches=skip_batches,
    )
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=4,
                      worker_init_fn=_ignore_stop_signals, multiprocessing_context=mp_context)
    return Batches(DataLoader(pipeline, batch_size=None, num_workers=workers,
                              pin_memory=pin_memory, **kwargs))


def to_model_range(images: torch.Tensor,
                   memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] in ``memory_format``. Done after the transfer: 4x fewer
    bytes to move, and the one conversion also lays the batch out (it arrives channels-last
    in memory, see ``collate``), which on a GPU costs nothing extra."""
    return images.to(torch.float32, memory_format=memory_format).mul_(2.0 / 255.0).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (for grids and files)."""
    return ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
