"""Images held where the model runs (``data.cache``): decode this rank's part of the shard set
once, then draw every batch by index, with no loader and no per-batch decoding.

    none     stream from the shards (``pipeline``): any size of set, a loader worker decoding
    memory   decoded uint8 pixels in host memory (on a CPU: the training device itself)
    device   decoded uint8 pixels on the training device (a GPU holds 80 GB; CelebA at
             128 px is 10 GB, AFHQ at 64 px 0.2 GB)
    encoded  the JPEG bytes on the training device, each batch decoded there by
             ``torchvision.io.decode_jpeg`` (nvjpeg on CUDA; the same call on a CPU): for sets
             too large as pixels (JPEG shards only)
    auto     (the default) ``device`` on a GPU, ``memory`` on a CPU, when the pixels take at most
             ``FRACTION`` of the memory free there; else ``encoded`` when the JPEG bytes do;
             else ``none``. A quarter leaves the rest to the model, its activations and the
             penalty's double backward.

Under N processes rank r holds samples r, r + N, r + 2N, ... of the set (every rank reads the
shards' bytes, each decodes only its own), so N GPUs hold N times more. Every rank takes the
same number of batches per epoch (``(total // N) // batch``), a seeded permutation of its part
per (seed, rank, epoch), flips drawn per (seed, rank, batch): the batch at position k is a
function of k, so a resumed run reads exactly what the uninterrupted one read. The shards are
verified as the stream verifies them (sample counts, sha256).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..ranks import generator_for
from .format import DataError, check_shard, decode_image, image_entry, iter_samples, label_of

MODES = ("auto", "none", "memory", "device", "encoded")
FRACTION = 0.25


def available_bytes(device: torch.device) -> int:
    """Memory free for a cache on ``device``: the GPU's free memory, or the host's available
    memory (MemAvailable: free plus what the kernel can reclaim)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Plan:
    """The cache a run takes, and why."""
    mode: str
    images: int
    """Images this rank holds."""
    bytes: int
    available: int
    why: str

    def line(self) -> str:
        if self.mode == "none":
            return f"cache          none ({self.why})"
        return (f"cache          {self.mode}: {self.images} images, {self.bytes / 2**20:.0f} MB of "
                f"{self.available / 2**20:.0f} MB free ({self.why})")


def plan(mode: str, total: int, encoded_bytes: int, encoding: str, rank: int, world: int,
         resolution: int, channels: int, device: torch.device) -> Plan:
    """The cache ``mode`` resolves to for this rank, with its footprint. Raises DataError (one
    line, needed against available) when an explicit mode does not fit."""
    images = len(range(rank, total, world))
    pixels = images * channels * resolution * resolution + images * 8
    encoded = encoded_bytes // world + images * 8
    free = available_bytes(device if mode != "memory" else torch.device("cpu"))
    where = "device" if device.type != "cpu" else "memory"
    if mode == "none":
        return Plan("none", images, 0, free, "data.cache=none: streamed by the loader")
    if mode == "auto":
        if total == 0:
            return Plan("none", 0, 0, free, "auto: the set's size is unknown (no manifest)")
        if pixels <= FRACTION * free:
            return Plan(where, images, pixels, free, f"auto: the pixels take at most "
                                                     f"{FRACTION:.0%} of the free memory")
        if encoding == "jpeg" and encoded <= FRACTION * free:
            return Plan("encoded", images, encoded, free, f"auto: the pixels take more than "
                        f"{FRACTION:.0%} of the free memory, the JPEG bytes do not")
        return Plan("none", images, 0, free, f"auto: {pixels / 2**30:.1f} GB of pixels is more "
                    f"than {FRACTION:.0%} of the {free / 2**30:.1f} GB free")
    if total == 0:
        raise DataError(f"data.cache={mode} needs a shard set with a manifest (its size); use "
                        f"data.cache=none")
    if mode == "encoded" and encoding != "jpeg":
        raise DataError(f"data.cache=encoded keeps JPEG bytes, but these shards are {encoding}; "
                        f"shard with --encoding jpeg, or use data.cache=memory or device")
    need = encoded if mode == "encoded" else pixels
    if need > free:
        raise DataError(f"data.cache={mode}: this rank's {images} images need "
                        f"{need / 2**30:.2f} GB, {free / 2**30:.2f} GB is free; use "
                        f"data.cache=none (streamed) or more processes (each holds its part)")
    return Plan(mode, images, need, free, f"data.cache={mode}")


class ImageCache:
    """This rank's images (pixels or JPEG bytes) and labels, on ``device``."""

    def __init__(self, urls: list[str], expected: dict, rank: int, world: int, resolution: int,
                 channels: int, device: torch.device, mode: str,
                 say: Callable[[str], None] = print) -> None:
        self.device, self.mode, self.channels = device, mode, channels
        t0 = time.time()
        pixels: list[np.ndarray] = []
        blobs: list[bytes] = []
        labels: list[int] = []
        index = 0
        for url in urls:
            count, sha256 = expected.get(url, (None, None))
            check_shard(url, count, sha256)  # what the stream checks when it opens a shard
            for sample in iter_samples(url):
                mine, index = index % world == rank, index + 1
                if not mine:
                    continue
                ext, data = image_entry(sample)
                labels.append(label_of(sample))
                if mode == "encoded":
                    blobs.append(bytes(data))
                    continue
                try:
                    pixels.append(decode_image(data, ext, resolution, channels))
                except Exception as e:
                    raise DataError(f"{url}: sample {sample.get('__key__')}: cannot decode its "
                                    f"{ext} entry ({type(e).__name__}: {e})") from None
        # Indices are drawn where they are used: on the device for pixels; on the host for
        # JPEG bytes, whose spans the host slices (no device read per batch).
        self.index_device = torch.device("cpu") if mode == "encoded" else device
        self.labels = torch.tensor(labels, dtype=torch.long, device=self.index_device)
        if mode == "encoded":
            flat = np.frombuffer(b"".join(blobs), dtype=np.uint8)
            self.bytes = torch.from_numpy(flat.copy()).to(device)
            ends = np.cumsum([len(b) for b in blobs])
            self.spans = list(zip((ends - np.array([len(b) for b in blobs])).tolist(), ends.tolist()))
        else:
            hwc = (torch.from_numpy(np.stack(pixels)) if pixels else
                   torch.empty(0, resolution, resolution, channels, dtype=torch.uint8))
            self.images = hwc.permute(0, 3, 1, 2).contiguous().to(device)  # (N, C, H, W) uint8
        say(f"cache: {len(labels)} images of this rank held in {mode} ({device.type}), read in "
            f"{time.time() - t0:.1f}s")

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, C, H, W) and labels at ``idx``, on the device."""
        if self.mode != "encoded":
            return self.images.index_select(0, idx), self.labels.index_select(0, idx)
        from torchvision.io import ImageReadMode, decode_jpeg

        read = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
        chunks = [self.bytes[a:b] for a, b in (self.spans[i] for i in idx.tolist())]  # host idx
        images = torch.stack(decode_jpeg(chunks, mode=read, device=self.device))
        return images, self.labels.index_select(0, idx).to(self.device, non_blocking=True)


def flip_on_host(images: torch.Tensor, coin: torch.Tensor) -> None:
    """Mirror ``images[coin]`` (uint8 (B, C, H, W)) in place, for a batch in host memory.

    A row of W bytes is W/8 (or W/4, W/2) wider words: reversing the words and swapping the
    bytes inside each is the mirrored row, and both passes run on whole words, where NumPy's
    reversed copy of bytes goes one byte at a time (12 against 25 CPU-us an image at 128 px,
    torch's flip of uint8 ~110; measured 2026-12-07). Runs only when the device is the host,
    so its reads are no device syncs (``training.instrument`` knows this function by name)."""
    a = images.numpy()
    width = a.shape[-1]
    word = next(w for w in (np.uint64, np.uint32, np.uint16, np.uint8) if width % np.dtype(w).itemsize == 0)
    rows = a.view(word)
    for i in np.flatnonzero(coin.numpy()):
        rows[i] = rows[i][..., ::-1].byteswap()


class CachedBatches:
    """Batches ``skip`` .. ``skip + count - 1`` of a run drawn from an ``ImageCache``: an
    iterator of (uint8 images, int64 labels) on the device, like ``pipeline.Taken``."""

    def __init__(self, cache: ImageCache, *, seed: int, rank: int, world: int, total: int,
                 batch_size: int, skip: int, count: int, hflip: bool) -> None:
        self.cache, self.seed, self.rank, self.batch, self.hflip = cache, seed, rank, batch_size, hflip
        self.per_epoch = (total // world) // batch_size  # the same on every rank
        if self.per_epoch == 0:
            raise DataError(f"data.cache: {total} images over {world} process(es) is fewer than one "
                            f"batch of {batch_size} per process; use data.cache=none")
        self.k, self.end = skip, skip + count
        self._epoch, self._perm = -1, None

    def __iter__(self) -> "CachedBatches":
        return self

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            dev = self.cache.index_device
            g = generator_for(dev, self.seed, "cache", self.rank, epoch)
            self._perm = torch.randperm(len(self.cache), generator=g, device=dev)
            self._epoch = epoch
        return self._perm

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k >= self.end:
            raise StopIteration
        epoch, j = divmod(self.k, self.per_epoch)
        idx = self._order(epoch)[j * self.batch:(j + 1) * self.batch]
        images, labels = self.cache.gather(idx)
        if self.hflip:
            g = generator_for(self.cache.device, self.seed, "cache-flip", self.rank, self.k)
            coin = torch.rand(len(idx), generator=g, device=self.cache.device) < 0.5
            if images.device.type == "cpu":
                flip_on_host(images, coin)
            else:
                images = torch.where(coin[:, None, None, None], images.flip(-1), images)
        self.k += 1
        return images, labels

    def close(self) -> None:
        """Nothing to shut down (no loader workers); here for ``pipeline.Taken``'s interface."""
