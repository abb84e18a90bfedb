"""Write image and sketch datasets as shard sets (the format is in ``format``).

How a run goes: every input is enumerated first (paths, (npy file, row), (ndjson file,
line)) -- cheap, nothing decoded; the index list is shuffled with ``seed`` (so each shard
mixes classes), cut by ``limit_per_class`` (first N inputs per class, in enumeration order,
before the shuffle) and ``limit`` (first N after it); then inputs are decoded, converted
and encoded by a process pool in order, so the bytes written do not depend on ``workers``.
Shards are written as ``.shard-NNNNNN.tar.tmp`` and renamed at the end, and
``manifest.json`` is written last: a directory without ``manifest.json`` is incomplete.
Every input ends as a sample or as an entry of ``skipped`` (``inputs == total +
len(skipped)``); a skip reason reads ``"<input>: <kind>: <detail>"`` (e.g.
``"a/b.png: corrupt: cannot identify image file"``, ``"x.ndjson:7: not JSON: ..."``).
``overwrite`` removes the shard files, manifest and explore.png of an old set (manifest
first); other files in the directory are left alone.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

import numpy as np

from .format import ENC_EXT, FORMAT, MANIFEST, encode_image, file_sha256
from .records import DEFAULT_MAX_PIXELS
from .sources import (ConvertOptions, Group, Record, class_names_of, collect, load_item,
                      prepare_npz)

TAR_MTIME = 0  # fixed member mtime: identical inputs give byte-identical shards

class NoSamplesError(ValueError):
    """Nothing could be written: no inputs, or every input was skipped (``skipped`` says why)."""

    def __init__(self, message: str, skipped: list[dict]) -> None:
        super().__init__(message)
        self.skipped = skipped


class OutputNotEmptyError(FileExistsError):
    """The output directory holds files and ``overwrite`` was not given."""


# ---------------------------------------------------------------------------------------------
# Worker side: state is installed once per process, tasks are bare global indices
# ---------------------------------------------------------------------------------------------
_W: dict = {}


def _init_worker(groups: list[Group], opts: ConvertOptions, encoding: str, quality: int) -> None:
    _W.update(groups=groups, opts=opts, encoding=encoding, quality=quality,
              offsets=np.cumsum([0] + [g.count for g in groups]))


def _work(gidx: int) -> tuple[int, str, bytes | None, str]:
    """Global index -> (group index, src_id, encoded bytes or None, skip reason)."""
    gi = int(np.searchsorted(_W["offsets"], gidx, side="right")) - 1
    r = load_item(_W["groups"][gi], gidx - int(_W["offsets"][gi]), _W["opts"])
    if isinstance(r, Record):
        return gi, r.src_id, encode_image(r.image, _W["encoding"], _W["quality"]), ""
    return gi, r.src_id, None, r.reason


@contextmanager
def _results(order: np.ndarray, workers: int, initargs: tuple) -> Iterator[Iterator]:
    """Results of ``_work`` over ``order``, in order, from ``workers`` processes."""
    if workers <= 1:
        _init_worker(*initargs)
        yield map(_work, map(int, order))
        return
    # forkserver/spawn, not fork: the trainer may call us with torch's threads running, and
    # forking a threaded process can deadlock.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    chunk = max(1, min(256, len(order) // (workers * 8)))
    with mp.get_context(method).Pool(workers, _init_worker, initargs) as pool:
        yield pool.imap(_work, map(int, order), chunksize=chunk)


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------
class _ShardSink:
    """Rolls samples into ``per_shard``-sized tars under temporary names."""

    def __init__(self, out_dir: str, per_shard: int) -> None:
        from webdataset import TarWriter  # lazy: the CLI's --help should not pay for it
        self._tw_cls, self.out_dir, self.per_shard = TarWriter, out_dir, per_shard
        self.writer, self.count, self.shards, self.final_paths = None, 0, [], []

    def _tmp(self, i: int) -> str:
        return os.path.join(self.out_dir, f".shard-{i:06d}.tar.tmp")

    def add(self, sample: dict) -> None:
        if self.writer is None:
            self.writer = self._tw_cls(self._tmp(len(self.shards)), encoder=False, mtime=TAR_MTIME)
            self.count = 0
        self.writer.write(sample)
        self.count += 1
        if self.count == self.per_shard:
            self._close()

    def _close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        self.shards.append({"name": f"shard-{len(self.shards):06d}.tar", "count": self.count,
                            "sha256": file_sha256(self._tmp(len(self.shards)))})

    def finish(self) -> list[dict]:
        self._close()
        for i, s in enumerate(self.shards):
            final = os.path.join(self.out_dir, s["name"])
            os.replace(self._tmp(i), final)
            self.final_paths.append(final)
        return self.shards

    def abort(self) -> None:
        """Remove everything this run wrote (temporary or renamed): no half set remains."""
        try:
            if self.writer is not None:
                self.writer.close()
        except Exception:
            pass
        manifest_tmp = os.path.join(self.out_dir, MANIFEST + ".tmp")
        for p in [self._tmp(i) for i in range(len(self.shards) + 1)] + self.final_paths + [
                manifest_tmp]:
            if os.path.exists(p):
                os.remove(p)


def _prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    os.makedirs(out_dir, exist_ok=True)
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return
    if not overwrite:
        raise OutputNotEmptyError(
            f"output directory {out_dir} is not empty ({len(entries)} entries, e.g. "
            f"{entries[0]!r}); pass --overwrite to replace the shard set in it")
    ours = [MANIFEST] + [e for e in entries if e != MANIFEST and (
        e.startswith(("shard-", ".shard-")) and e.endswith((".tar", ".tar.tmp"))
        or e in (MANIFEST + ".tmp", "explore.png"))]
    for e in ours:  # the manifest goes first: from then on the old set reads incomplete
        if os.path.exists(os.path.join(out_dir, e)):
            os.remove(os.path.join(out_dir, e))


def _select(groups: list[Group], limit: int | None, limit_per_class: int | None,
            seed: int) -> np.ndarray:
    """Global indices to convert: per-class cut (enumeration order), shuffle, global cut."""
    offsets = np.cumsum([0] + [g.count for g in groups])
    taken: Counter = Counter()
    parts = []
    for gi, g in enumerate(groups):
        n = g.count
        if limit_per_class is not None and g.loader != "skip":
            n = max(0, min(n, limit_per_class - taken[g.cls]))
            taken[g.cls] += n
        parts.append(np.arange(offsets[gi], offsets[gi] + n, dtype=np.int64))
    chosen = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    order = np.random.default_rng(seed).permutation(chosen)
    return order[:limit] if limit is not None else order


def _check_args(resolution: int, channels: int, per_shard: int, encoding: str,
                jpeg_quality: int, workers: int, limits: tuple) -> None:
    if resolution < 1 or per_shard < 1 or workers < 1:
        raise ValueError("resolution, per_shard and workers must be >= 1")
    if any(x is not None and x < 0 for x in limits):
        raise ValueError("limit, limit_per_class and max_pixels must be >= 0")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if encoding not in ENC_EXT:
        raise ValueError(f"encoding must be one of {sorted(ENC_EXT)}, got {encoding!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")


def _write_samples(results: Iterator, n: int, sink: _ShardSink, ext: str, groups: list[Group],
                   index: dict[str, int] | None, progress: bool) -> tuple[list, Counter, int]:
    """Results in order -> samples in the sink; (skipped, per-class counts, samples written).
    ``index``: class name -> label, None for an unlabelled set."""
    from tqdm import tqdm

    skipped, per_class, total = [], Counter(), 0
    for gi, src, payload, reason in tqdm(results, total=n, disable=not progress, unit="img",
                                         desc="sharding", leave=False):
        if payload is None:
            skipped.append({"input": src, "reason": reason})
            continue
        sample = {"__key__": f"{total:09d}", ext: payload, "src": src.encode("utf-8")}
        if index is not None:
            sample["cls"] = str(index[groups[gi].cls]).encode("ascii")
            per_class[groups[gi].cls] += 1
        sink.add(sample)
        total += 1
    return skipped, per_class, total


def write_shards(sources: list[str], out_dir: str, *, kind: str = "auto", resolution: int = 28,
                 channels: int = 1, per_shard: int = 1000, encoding: str = "png",
                 jpeg_quality: int = 95, workers: int = 1, limit: int | None = None,
                 limit_per_class: int | None = None, seed: int = 0, overwrite: bool = False,
                 builtin_per_class: int = 2000, progress: bool = True,
                 crop: int | None = None, min_size: int | None = None,
                 source_info: dict | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict:
    """Convert ``sources`` into a shard set in ``out_dir``; returns the manifest written.
    ``max_pixels``: images larger than this (from their header) are skipped undecoded."""
    _check_args(resolution, channels, per_shard, encoding, jpeg_quality, workers,
                (limit, limit_per_class, max_pixels))
    kind, groups = collect(list(sources), kind, builtin_per_class)
    loadable = [g for g in groups if g.loader != "skip"]
    labelled = bool(loadable) and all(g.cls is not None for g in loadable)
    if loadable and not labelled and any(g.cls is not None for g in loadable):
        raise ValueError("some inputs are labelled and some are not; shard them separately")
    class_names = class_names_of(groups) if labelled else []
    index = {c: i for i, c in enumerate(class_names)}
    order = _select(groups, limit, limit_per_class, seed)
    if not len(order):
        raise NoSamplesError(f"no inputs in {', '.join(sources)} (expected image files, class "
                             f"subfolders of images, QuickDraw .npy/.npz/.ndjson files or "
                             f"'builtin'); nothing was written", [])
    prepare_npz(groups, order)  # the rows selected of each .npz, streamed: memory follows --limit
    created = not os.path.exists(out_dir)
    _prepare_out_dir(out_dir, overwrite)  # after enumeration: a bad path leaves no trace
    opts = ConvertOptions(resolution, channels, crop, min_size, seed, max_pixels)
    ext = ENC_EXT[encoding]
    sink = _ShardSink(out_dir, per_shard)
    try:
        with _results(order, workers, (groups, opts, encoding, jpeg_quality)) as results:
            skipped, per_class, total = _write_samples(results, len(order), sink, ext, groups,
                                                       index if labelled else None, progress)
        if total == 0:
            raise NoSamplesError(f"no samples written: all {len(order)} inputs of "
                                 f"{', '.join(sources)} were skipped", skipped)
        manifest = {
            "format": FORMAT, "resolution": resolution, "channels": channels,
            "encoding": encoding, "jpeg_quality": jpeg_quality if encoding == "jpeg" else None,
            "labelled": labelled, "class_names": class_names, "inputs": len(order),
            "total": total, "per_class": {c: per_class[c] for c in class_names},
            "shards": sink.finish(), "skipped": skipped,
            "source": {"kind": kind, "paths": list(sources), "limit": limit,
                       "limit_per_class": limit_per_class, "crop": crop, "min_size": min_size,
                       "max_pixels": max_pixels,
                       **({"per_class": builtin_per_class} if kind == "builtin" else {}),
                       **(source_info or {})},
            "seed": seed, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        tmp = os.path.join(out_dir, MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, os.path.join(out_dir, MANIFEST))
    except BaseException:
        sink.abort()
        if created and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)  # a failed run leaves nothing that looks like a set
        raise
    return manifest


def ensure_builtin_shards(out_dir: str, resolution: int = 28, channels: int = 1,
                          per_class: int = 2000, seed: int = 0, progress: bool = True,
                          workers: int = 1) -> dict:
    """The built-in set's manifest in ``out_dir``, (re)writing the set unless it matches.

    "Matches" means same format, resolution, channels, per_class and seed, no limits, and
    every shard file present (hashes are not re-checked: that is the reader's job).
    The bytes written do not depend on ``workers``, so any value gives the same set.
    """
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        try:
            with open(path) as f:
                m = json.load(f)
            src = m.get("source", {})
            if (m.get("format") == FORMAT and m.get("resolution") == resolution
                    and m.get("channels") == channels and m.get("seed") == seed
                    and src.get("kind") == "builtin" and src.get("per_class") == per_class
                    and src.get("limit") is None and src.get("limit_per_class") is None
                    and all(os.path.exists(os.path.join(out_dir, s["name"])) for s in m["shards"])):
                return m
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable manifest: rebuild
    return write_shards(["builtin"], out_dir, kind="builtin", resolution=resolution,
                        channels=channels, builtin_per_class=per_class, seed=seed,
                        overwrite=True, progress=progress, workers=workers)


def skip_kinds(manifest: dict) -> Counter:
    """Skip counts by kind, parsed from the ``"<input>: <kind>: <detail>"`` reasons."""
    kinds: Counter = Counter()
    for s in manifest["skipped"]:
        reason = s["reason"]
        rest = reason[len(s["input"]) + 2:] if reason.startswith(s["input"] + ": ") else reason
        kinds[rest.split(":")[0].strip()] += 1
    return kinds


def summary_line(manifest: dict, out_dir: str) -> str:
    """``wrote N samples in K shards to DIR (M skipped: 3 corrupt, 1 too small)``."""
    kinds = skip_kinds(manifest)
    detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    n_skip = len(manifest["skipped"])
    return (f"wrote {manifest['total']} samples in {len(manifest['shards'])} shards to {out_dir} "
            f"({n_skip} skipped{': ' + detail if detail else ''})")
