"""What the user gave (``-d DIR``, a shard directory, a pattern, ``builtin``) -> a ShardSet.

The built-in set and plain image folders are sharded on first use (into ``data.cache_dir``)
and reused afterwards; a shard directory is read through its manifest; a brace pattern or
``pipe:`` URL is taken as it is (no manifest: nothing is known about its contents).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import braceexpand

from .format import MANIFEST, DataError, check_shard, read_manifest, shard_paths


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
                    list(manifest["class_names"]), manifest["total"], Path(path), expected)


def _folder_cache(folder: Path, cache_dir: Path, resolution: int, channels: int) -> Path:
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    return cache_dir / f"{folder.name}-{key}-{resolution}px-c{channels}"


def resolve_shards(spec: str, resolution: int, channels: int, cache_dir: str = "shards",
                   builtin_per_class: int = 2000, seed: int = 0,
                   log: Callable[[str], None] = print) -> ShardSet:
    """Turn a data spec into a ShardSet, sharding the built-in set or an image folder if needed."""
    from . import write

    if spec == "builtin":
        out = Path(cache_dir) / f"builtin-{resolution}px-c{channels}"
        write.ensure_builtin_shards(str(out), resolution=resolution, channels=channels,
                                    per_class=builtin_per_class, seed=seed)
        return from_manifest(out / MANIFEST)
    path = Path(spec)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return from_manifest(path / MANIFEST)
        if any(path.glob("shard-*.tar")) or any(path.glob(".shard-*")):
            raise DataError(f"{path}: shard files but no {MANIFEST} -- an interrupted "
                            f"`python -m wgan_dist.shard`? Run it again with --overwrite")
        cache = _folder_cache(path, Path(cache_dir), resolution, channels)
        if not (cache / MANIFEST).is_file():
            log(f"sharding image folder {path} into {cache} (first use; reused afterwards)")
            write.write_shards([str(path)], str(cache), resolution=resolution,
                               channels=channels, overwrite=True, seed=seed)
        return from_manifest(cache / MANIFEST)
    if path.suffix == ".json" and path.is_file():
        return from_manifest(path)
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
