"""The shard set format (``wgan_dist-shards/1``): the one place that knows it.

Everything that reads or writes shards goes through here: the writer (``write``), the
training pipeline (``pipeline``), ``--explore``, the evaluation and domain-classifier
loaders (``metrics``) and the tests.

A shard set is a directory holding ``shard-000000.tar``, ``shard-000001.tar``, ... (WebDataset
tar files written with ``webdataset.TarWriter``) and ``manifest.json``, written last.

Each sample in a tar:

- ``__key__``: the global sample index as 9 zero-padded digits (``"000000042"``).
- exactly one image entry, by encoding: ``png`` (lossless, mode "L" for 1 channel, "RGB" for
  3), ``jpg`` (JPEG at the manifest's quality) or ``u8`` (raw uint8 bytes, shape (H, W, C)
  row-major, H = W = ``resolution``, C = ``channels``);
- ``cls``: the integer label as ASCII decimal bytes (``b"3"``), only when the set is labelled;
- ``src``: UTF-8 bytes naming the input it came from (a path, ``path#row`` or ``path:line``).

``manifest.json``::

    {"format": "wgan_dist-shards/1", "resolution": 28, "channels": 1,
     "encoding": "png" | "jpeg" | "raw", "jpeg_quality": 95 or null,
     "labelled": true, "class_names": ["apple", ...],   # label i is class_names[i]
     "inputs": 16012,                                     # inputs seen = total + len(skipped)
     "total": 16000, "per_class": {"apple": 2000, ...},
     "shards": [{"name": "shard-000000.tar", "count": 1000, "sha256": "<hex>"}, ...],
     "skipped": [{"input": "<path, path:line or path#row>", "reason": "<one line>"}, ...],
     "source": {"kind": "builtin" | "folder" | "quickdraw" | "celeba", "paths": [...], ...},
     "seed": 0, "created": "<ISO-8601 UTC>"}

Pixel values are uint8 0..255; QuickDraw-style data keeps bright strokes on a 0 background.

**Reading a tar.** Local, uncompressed ustar shards (what our writer makes) are scanned by
our own header parser (``TarBytes``: the file in one read, or a ``pread`` a piece past 64 MB;
never mmap, whose SIGBUS on a shard truncated under a run ends the process without a word). Anything else (``pipe:`` and
http URLs, compressed or pax/GNU-header tars) goes through webdataset's
``tarfile_to_samples``; both give the same samples in the same order (tested). Why keep our
scanner: end to end, images/s into the trainer at 28 px (png, 1 loader worker, the whole
pipeline), it delivered 9,695 against webdataset's reader's 5,032 images/s: **1.90x** wall
clock, 1.69x per CPU-second (median of 3 interleaved rounds on the 2-core CPU, 2026-12-03,
``python benchmarks/bench_loader.py --reader-only``). The bar to keep it is 1.5x; below it,
delete ``scan_plain_tar`` and read everything with webdataset. Python's tarfile spends ~60 us
of CPU on each member header (3 members a sample), more than decoding a 28 px PNG.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from .names import check_class_names, class_name_problem

FORMAT = "wgan_dist-shards/1"
MANIFEST = "manifest.json"
ENC_EXT = {"png": "png", "jpeg": "jpg", "raw": "u8"}  # encoding -> entry extension
IMAGE_EXTS = ("png", "jpg", "jpeg", "u8")  # entry extensions that hold the image
REQUIRED = {"format": str, "resolution": int, "channels": int, "encoding": str,
            "labelled": bool, "class_names": list, "total": int, "shards": list}


class DataError(ValueError):
    """Shards that cannot be read as configured; the message names the file and the problem."""


# ---------------------------------------------------------------------------------- manifest
def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and check a ``manifest.json`` (or the one in a shard directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (not a shard set, or an unfinished one)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: not a shard manifest (a JSON object is expected)")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    for key, typ in REQUIRED.items():
        if not isinstance(manifest.get(key), typ):
            raise DataError(f"{path}: field {key!r} missing or not a {typ.__name__}")
    _check_fields(path, manifest)
    for s in manifest["shards"]:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str)):
            raise DataError(f"{path}: a shard entry has no name ({s!r})")
        if class_name_problem(s["name"]):  # a shard lies next to its manifest, nowhere else
            raise DataError(f"{path}: shard name {s['name'][:80]!r} is not a file name in "
                            f"the manifest's folder")
    counted = sum(int(s.get("count", 0)) for s in manifest["shards"])
    if counted != manifest["total"]:
        raise DataError(f"{path}: claims {manifest['total']} samples but its shards list "
                        f"{counted}; the manifest does not describe these shards (re-shard)")
    return manifest


def _check_fields(path: Path, manifest: dict[str, Any]) -> None:
    """Values a writer could not have written: a damaged or hand-made manifest, named as
    such (a hint to set ``data.channels=0`` would only fail again)."""
    if manifest["resolution"] < 1:
        raise DataError(f"{path}: resolution {manifest['resolution']} is not a size (damaged "
                        f"manifest; re-shard)")
    if manifest["channels"] not in (1, 3):
        raise DataError(f"{path}: channels {manifest['channels']} is not 1 or 3 (damaged "
                        f"manifest; re-shard)")
    try:
        check_class_names(manifest["class_names"], str(path))
    except ValueError as e:
        raise DataError(f"{e} (re-shard, or fix class_names in the manifest)") from None


def shard_paths(manifest_path: str | Path, manifest: dict[str, Any]) -> list[Path]:
    """The shard files a manifest lists, next to it."""
    base = Path(manifest_path)
    base = base if base.is_dir() else base.parent
    return [base / s["name"] for s in manifest["shards"]]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------- samples
def image_entry(sample: dict[str, Any]) -> tuple[str, Any]:
    """(extension, bytes) of a sample's image entry; a DataError naming shard and key if none."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')} has no png, jpg or "
                    f"u8 entry (keys: {sorted(k for k in sample if not k.startswith('__'))})")


def label_of(sample: dict[str, Any]) -> int:
    """The sample's integer label, or -1 when it has none."""
    return int(sample["cls"]) if "cls" in sample else -1


def encode_image(image: np.ndarray, encoding: str, quality: int = 95) -> bytes:
    """uint8 ``(H, W, C)`` -> the bytes of one shard entry (``png``/``jpeg``/``raw``)."""
    if encoding == "raw":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    img = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image,
                          "L" if image.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    if encoding == "png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: Any, ext: str, resolution: int | None, channels: int | None) -> np.ndarray:
    """An image entry -> a writable uint8 ``(H, W, C)`` array (the inverse of ``encode_image``).

    png/jpg are decoded by PIL (torchvision.io's decoders are deprecated since torchvision
    0.29) and converted to "L"/"RGB" only when their mode differs; ``channels`` None keeps
    the stored mode. ``u8`` needs ``resolution`` and ``channels``."""
    if ext == "u8":
        if resolution is None or channels is None:
            raise ValueError("raw (u8) entries need the manifest's resolution and channels")
        return np.frombuffer(data, dtype=np.uint8).reshape(resolution, resolution, channels).copy()
    with Image.open(io.BytesIO(data)) as pil:
        if channels is not None and pil.mode != ("L" if channels == 1 else "RGB"):
            pil = pil.convert("L" if channels == 1 else "RGB")
        arr = np.array(pil)
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


# ---------------------------------------------------------------------------------- tars
_TAR_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta pattern
_TAR_EXTENDED = frozenset(b"xgLKS")  # pax, GNU long-name and sparse headers: left to tarfile
_TAR_REGULAR = frozenset(b"0\x007")  # what tarfile counts as a regular file


def is_local(url: str) -> bool:
    """A plain file path, not a ``pipe:`` command or a ``scheme://`` URL."""
    return "://" not in url and not url.startswith("pipe:")


WHOLE_FILE_BYTES = 64 << 20  # shards up to this size are read with one call, larger by piece


class TarBytes:
    """A local tar read by offset: the whole file with one read when it is small (a snapshot:
    what is scanned is what is sliced), else one ``pread`` a piece. Never a memory map: a
    shard truncated or overwritten while mapped kills the reader with SIGBUS, while a short
    read is one line naming the shard."""

    def __init__(self, path: str, whole: bool) -> None:
        self.url, self.buf = path, None
        self.fd = os.open(path, os.O_RDONLY)
        if whole and (size := os.fstat(self.fd).st_size) <= WHOLE_FILE_BYTES:
            # Exactly the file's size: a larger request (it was WHOLE_FILE_BYTES + 1) makes a
            # buffer that big, always fresh pages from the kernel (above malloc's mmap
            # threshold), and faulting them in cost 3x the read (43 against 11 us a 128 px
            # raw image). A file that grows meanwhile is read as it was (a snapshot).
            self.buf = os.pread(self.fd, size, 0)

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file)."""
        if self.buf is not None:
            return self.buf[offset:offset + size]
        return os.pread(self.fd, size, offset)

    def read_exact(self, offset: int, size: int) -> bytes:
        data = self.read(offset, size)
        if len(data) != size:
            raise DataError(f"{self.url}: read {len(data)} of the {size} bytes of the member at "
                            f"byte {offset}: the shard shrank while it was being read "
                            f"(truncated or overwritten under the run; re-shard or restore it)")
        return data

    def close(self) -> None:
        os.close(self.fd)


def _scan(tar: TarBytes) -> list[tuple[str, int, int]] | None:
    members, off, buf = [], 0, tar.buf
    while True:
        if buf is not None:  # slice the snapshot in place (as cheap as the mmap was)
            h, o = buf, off
            if off + 512 > len(buf):  # truncated, or not a tar at all
                return None
        else:
            h, o = tar.read(off, 512), 0
            if len(h) < 512:
                return None
        if h[o] == 0:  # end-of-archive (zero) block
            return members
        kind = h[o + 156]
        if h[o + 257:o + 262] != b"ustar" or kind in _TAR_EXTENDED or h[o + 124] & 0x80:
            return None
        size = int(h[o + 124:o + 136].rstrip(b"\0 ") or b"0", 8)
        if kind in _TAR_REGULAR:
            nul = h.find(b"\0", o, o + 100)
            name = h[o:nul if nul >= 0 else o + 100].decode()
            if h[o + 345]:  # ustar prefix (long paths)
                name = h[o + 345:o + 500].rstrip(b"\0").decode() + "/" + name
            members.append((name, off + 512, size))
        off += 512 + (size + 511) // 512 * 512


def scan_plain_tar(path: str) -> list[tuple[str, int, int]] | None:
    """(name, offset, size) of every regular member of an uncompressed ustar file, or None
    when the file needs the general reader (no ustar magic -- e.g. compressed --, pax or GNU
    long-name headers, base-256 sizes, no end-of-archive block). Headers only (a pread
    each): no data is read. The header checksum is not recomputed (it cost more than the
    rest); a damaged header fails the magic or the octal size and goes to the general
    reader, which reports it."""
    tar = TarBytes(path, whole=False)
    try:
        return _scan(tar)
    finally:
        tar.close()


def _split_name(name: str) -> tuple[str | None, str | None]:
    """webdataset's (key, extension) split: key = the name up to the first dot of the base."""
    if "/" in name:
        import webdataset as wds

        return wds.tariterators.base_plus_ext(name)
    dot = name.find(".")  # the same split as base_plus_ext's regex, without the regex
    return (name[:dot], name[dot + 1:]) if dot > 0 else (None, None)


def _plain_tar_samples(tar: TarBytes, members: list[tuple[str, int, int]]) -> Iterator[dict]:
    """Group a scanned tar's members into samples by key, exactly as webdataset's
    ``group_by_keys`` does (lower-cased extension, ``__xxx__`` meta entries skipped, a
    repeated extension is an error)."""
    sample: dict | None = None
    url, buf = tar.url, tar.buf  # a snapshot that scanned whole holds every member whole
    for name, start, size in members:
        if name.startswith("__") and _TAR_META.match(name):
            continue
        key, ext = _split_name(name)
        if key is None:
            continue
        ext = ext.lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        if ext in sample:
            raise ValueError(f"{name}: duplicate file name in tar file {url}")
        sample[ext] = buf[start:start + size] if buf is not None else tar.read_exact(start, size)
    if sample is not None:
        yield sample


def count_samples(url: str) -> int:
    """Samples in a shard, from its headers only (no member is read); webdataset's reader
    for tars the scanner leaves to it. A damaged tar raises with the shard named."""
    members = scan_plain_tar(url) if is_local(url) else None
    if members is None:
        try:
            return sum(1 for _ in iter_samples(url, fast=False))
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{url}: not a readable tar (truncated or damaged: {type(e).__name__}: {e})") from None
    keys = {k for name, _, _ in members
            if not (name.startswith("__") and _TAR_META.match(name))
            for k in [_split_name(name)[0]] if k is not None}
    return len(keys)


def survey(url: str, limit: int | None = None) -> tuple[int, list[int], dict | None]:
    """(samples, sorted distinct labels, the first sample) of a shard that has no manifest,
    reading only ``cls`` entries and the first sample (pread scanner), or everything through
    webdataset for other tars (stopping after ``limit`` samples when given)."""
    members = scan_plain_tar(url) if is_local(url) else None
    if members is None:
        n, labels, first = 0, set(), None
        for sample in iter_samples(url, fast=False):
            first = first or sample
            n += 1
            if "cls" in sample:
                labels.add(label_of(sample))
            if limit and n >= limit:
                break
        return n, sorted(labels), first
    keys, labels = set(), set()
    tar = TarBytes(url, whole=False)
    try:
        for name, start, size in members:
            key, ext = _split_name(name)
            if key is None or (name.startswith("__") and _TAR_META.match(name)):
                continue
            keys.add(key)
            if ext.lower() == "cls":
                labels.add(int(tar.read_exact(start, size)))
    finally:
        tar.close()
    first = next(iter_samples(url), None)
    return len(keys), sorted(labels), first


def check_shard(url: str, count: int | None, sha256: str | None = None) -> None:
    """A shard against what its manifest says: sample count (headers only) and, given
    ``sha256``, its checksum (reads the file). DataError naming the shard otherwise."""
    if sha256 and file_sha256(url) != sha256:
        raise DataError(f"{url}: sha256 does not match the manifest (truncated, damaged or replaced "
                        f"shard; re-shard or restore it)")
    if count is not None:
        found = count_samples(url)
        if found != count:
            raise DataError(f"{url}: holds {found} samples but the manifest says {count} "
                            f"(truncated or replaced shard; re-shard or restore it)")


def iter_samples(url: str, fast: bool = True) -> Iterator[dict]:
    """The samples of one shard, ``{"__key__", "__url__", <ext>: bytes, ...}``, in tar order.

    ``fast``: scan local plain ustar files with pread (see the module docstring); otherwise,
    or for anything else, webdataset's reader."""
    if fast and is_local(url):
        try:
            tar = TarBytes(url, whole=True)
        except OSError:  # unreadable: let webdataset say why
            tar = None
        if tar is not None:
            try:
                members = _scan(tar)
                if members is not None:
                    yield from _plain_tar_samples(tar, members)
                    return
            finally:
                tar.close()
    import webdataset as wds

    try:
        yield from wds.tarfile_to_samples()(iter([{"url": url}]))
    except Exception as e:  # tarfile's ReadError and friends: one line naming the shard
        why = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        raise DataError(f"{url}: not a readable tar (truncated or damaged: "
                        f"{type(e).__name__}: {why})") from None
