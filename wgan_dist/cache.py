"""The one place wgan_dist keeps what it makes for itself: ``$WGAN_DIST_CACHE``, by default
``~/.cache/wgan_dist``.

    shards/        the built-in set and image folders given with -d, sharded on first use
                   (``data.cache_dir`` puts these elsewhere)
    classifiers/   domain classifiers trained for evaluation, one per shard set
    quickdraw/     QuickDraw categories downloaded by ``shard quickdraw:NAME``
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "WGAN_DIST_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "wgan_dist")


def shards_cache(cache_dir: str = "") -> Path:
    """Where sharded image folders and the built-in set go: ``data.cache_dir`` if set."""
    return Path(cache_dir) if cache_dir else cache_root() / "shards"


def builtin_dir(cache_dir: str, resolution: int, channels: int) -> Path:
    return shards_cache(cache_dir) / f"builtin-{resolution}px-c{channels}"
