"""What the user gave (``-d DIR``, a shard directory, a pattern, ``builtin``) -> a ShardSet.

The built-in set and plain image folders are sharded on first use (into ``data.cache_dir``)
and reused afterwards; a shard directory is read through its manifest; a brace pattern or
``pipe:`` URL is taken as it is (no manifest: nothing is known about its contents).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import braceexpand

from ..cache import builtin_dir, shards_cache
from .format import (MANIFEST, DataError, check_shard, decode_image, image_entry, is_local,
                     read_manifest, shard_paths, survey)


@dataclass
class ShardSet:
    urls: list[str]
    resolution: int | None
    channels: int | None
    class_names: list[str]
    total: int | None
    manifest_path: Path | None
    expected: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    """url -> (sample count, sha256) from the manifest; empty without one."""
    encoding: str | None = None
    """png, jpeg or raw (the manifest's); None without one."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check(self) -> None:
        """Every shard holds the samples its manifest lists (tar headers only: cheap)."""
        for url, (count, _) in self.expected.items():
            check_shard(url, count)


def from_manifest(path: Path) -> ShardSet:
    manifest = read_manifest(path)
    if not manifest["shards"]:
        raise DataError(f"{path}: lists no shards")
    urls = [str(p) for p in shard_paths(path, manifest)]
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise DataError(f"{path}: shard files missing: {', '.join(missing[:3])}")
    expected = {u: (int(e["count"]), e.get("sha256")) for u, e in zip(urls, manifest["shards"])
                if "count" in e}
    return ShardSet(urls, manifest["resolution"], manifest["channels"],
                    list(manifest["class_names"]), manifest["total"], Path(path), expected,
                    manifest.get("encoding"))


def folder_key(folder: Path) -> str:
    """A key of a folder's contents: every visible file's relative path, size and mtime. Add,
    remove, replace or touch an image and the key changes (and its cached shards are rebuilt)."""
    from .records import visible_files

    h = hashlib.sha256()
    for f in visible_files(str(folder)):
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def foreign_shards(urls: list[str], log: Callable[[str], None],
                   class_names: list[str] | None = None) -> ShardSet:
    """Shards written by another tool (e.g. ``webdataset.ShardWriter``), without a manifest:
    what can be inferred is, and said. Classes come from the samples' ``cls`` entries (names
    from ``class_names``, else the label numbers), size and channels from the first image;
    ``pipe:`` and remote URLs are only looked at through their first shard."""
    local = all(is_local(u) for u in urls)
    total, labels, first = 0, set(), None
    for url in (urls if local else urls[:1]):
        n, found, sample = survey(url, limit=None if local else 2000)
        total, first = total + n, first or sample
        labels.update(found)
    if first is None:
        raise DataError(f"{urls[0]}: no samples in {len(urls)} shard(s) (an empty tar?)")
    ext, data = image_entry(first)
    resolution = channels = None
    if ext != "u8":
        img = decode_image(data, ext, None, None)
        if img.shape[0] == img.shape[1]:
            resolution = img.shape[0]
        channels = 1 if img.shape[2] == 1 else 3
    names = _class_names(labels, class_names, urls[0])
    where = f"{len(urls)} shard(s)" + ("" if local else f" (only {urls[0]} looked at)")
    log(f"no manifest.json: {where}, {total if local else '?'} samples; "
        + (f"{resolution}x{resolution} px, {channels} channel(s) from the first image; "
           if resolution else "size and channels from the config (raw or non-square images); ")
        + (f"{len(names)} classes from the cls entries ({', '.join(names[:8])}"
           f"{', ...' if len(names) > 8 else ''})" if names else "unlabelled (no cls entries)")
        + "; evaluation needs a manifest and is skipped")
    return ShardSet(urls, resolution, channels, names, total if local else None, None)


def _class_names(labels: set[int], given: list[str] | None, where: str) -> list[str]:
    if not labels:
        if given:
            raise DataError(f"{where}: data.class_names is set but the samples have no cls entries")
        return []
    k = max(labels) + 1
    if min(labels) < 0:
        raise DataError(f"{where}: negative class label {min(labels)} in the cls entries")
    if given:
        if len(given) < k:
            raise DataError(f"{where}: labels go up to {k - 1} but data.class_names names "
                            f"{len(given)} classes")
        return list(given)
    return [str(i) for i in range(k)]


def _folder_cache(folder: Path, cache_dir: str, resolution: int, channels: int) -> Path:
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    return shards_cache(cache_dir) / f"{folder.name}-{key}-{resolution}px-c{channels}"


def _cached_folder(path: Path, cache_dir: str, resolution: int, channels: int, seed: int,
                   log: Callable[[str], None]) -> ShardSet:
    """An image folder's shards from the cache, (re)built when missing, stale or empty."""
    from . import write

    cache, key = _folder_cache(path, cache_dir, resolution, channels), folder_key(path)
    why = "first use"
    if (cache / MANIFEST).is_file():
        try:
            m = read_manifest(cache)
            if m["source"].get("content_key") == key and m["total"] > 0:
                return from_manifest(cache / MANIFEST)
            why = "the folder changed" if m["total"] > 0 else "the cached set is empty"
        except DataError:
            why = "the cached set is damaged"
    log(f"sharding image folder {path} into {cache} ({why}; reused until its files change)")
    write.write_shards([str(path)], str(cache), resolution=resolution, channels=channels,
                       overwrite=True, seed=seed, source_info={"content_key": key})
    return from_manifest(cache / MANIFEST)


def resolve_shards(spec: str, resolution: int, channels: int, cache_dir: str = "",
                   builtin_per_class: int = 2000, seed: int = 0,
                   log: Callable[[str], None] = print,
                   class_names: list[str] | None = None) -> ShardSet:
    """Turn a data spec into a ShardSet, sharding the built-in set or an image folder if needed."""
    from . import write

    if spec == "builtin":
        out = builtin_dir(cache_dir, resolution, channels)
        write.ensure_builtin_shards(str(out), resolution=resolution, channels=channels,
                                    per_class=builtin_per_class, seed=seed)
        return from_manifest(out / MANIFEST)
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return from_manifest(path / MANIFEST)
        if any(path.glob(".shard-*.tar.tmp")):
            raise DataError(f"{path}: unfinished shards of `python -m wgan_dist.shard` and no "
                            f"{MANIFEST} (the writer was interrupted); run it again with --overwrite")
        if any(path.glob("*.tar")):
            return foreign_shards(sorted(str(p) for p in path.glob("*.tar")), log, class_names)
        return _cached_folder(path, cache_dir, resolution, channels, seed, log)
    if path.suffix == ".json" and path.is_file():
        return from_manifest(path)
    urls = list(braceexpand.braceexpand(spec)) if "{" in spec else spec.split("::")
    if not spec.startswith("pipe:"):
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise DataError(f"data.shards={spec!r}: no such file or directory: {missing[0]}")
    return foreign_shards(urls, log, class_names)


def check_shape(shards: ShardSet, resolution: int, channels: int) -> None:
    where = shards.manifest_path or "shards"
    if shards.resolution is not None and shards.resolution != resolution:
        raise DataError(f"{where}: images are {shards.resolution}px but data.resolution="
                        f"{resolution}; re-shard or set data.resolution={shards.resolution}")
    if shards.channels is not None and shards.channels != channels:
        raise DataError(f"{where}: images have {shards.channels} channel(s) but data.channels="
                        f"{channels}; set data.channels={shards.channels}")
