"""The run's real images: the shard set it reads, this process's batch size, and the batches
that reach the training device.

Only the main process writes shards (the built-in set, ``-d`` folders); the others wait for
it. Every rank checks the shard set (headers only), so every rank stops alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate import Accelerator

from ..config import Config, ConfigError
from ..data import cache, pipeline
from ..data.shardset import ShardSet, check_shape, resolve_shards


class Inputs:
    def __init__(self, acc: Accelerator, cfg: Config, say: Callable[[str], None]) -> None:
        world = acc.num_processes
        if cfg.train.batch_size % world:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is the global batch and "
                             f"must divide by the {world} processes")
        self.acc, self.cfg, self.device = acc, cfg, acc.device
        self.batch = cfg.train.batch_size // world
        """Images per process per critic step."""
        micro = cfg.train.micro_batch
        if 0 < micro < self.batch and self.batch % micro:
            fits = [m for m in range(2, self.batch) if self.batch % m == 0]
            raise ConfigError(f"train.micro_batch={micro} does not divide the per-process batch "
                              f"{self.batch} (train.batch_size={cfg.train.batch_size} over {world} "
                              f"processes): the last micro-batch would hold {self.batch % micro}; "
                              f"choose one of {', '.join(map(str, fits)) or '0 (no split)'}")
        d = cfg.data
        with acc.main_process_first():
            self.shards: ShardSet = resolve_shards(
                d.shards, d.resolution, d.channels, d.cache_dir, d.builtin_per_class,
                cfg.train.seed, log=say,
                class_names=[c.strip() for c in d.class_names.split(",") if c.strip()])
        check_shape(self.shards, d.resolution, d.channels)
        self.shards.check()
        encoded = sum(Path(u).stat().st_size for u in self.shards.expected)
        self.plan = cache.plan(d.cache, self.shards.total or 0, encoded, self.shards.encoding or "",
                               acc.process_index, world, d.resolution, d.channels, self.device)
        self.cache = None if self.plan.mode == "none" else cache.ImageCache(
            self.shards.urls, self.shards.expected, acc.process_index, world, d.resolution,
            d.channels, self.device, self.plan.mode, say)

    def settle(self, cfg: Config) -> list[str]:
        """data.cache as this run holds its images; the settings chosen for the machine."""
        chosen = ["data.cache"] if cfg.data.cache == "auto" else []
        cfg.data.cache = self.plan.mode
        return chosen

    @property
    def loader_workers(self) -> int:
        """Loader worker processes this run starts (none with a cache)."""
        return self.cfg.data.workers if self.cache is None else 0

    def batches(self, skip: int, count: int) -> pipeline.Taken | cache.CachedBatches:
        """``count`` batches, the first ``skip`` of the run's stream already consumed; its
        ``close()`` shuts the loader's workers down."""
        cfg, acc = self.cfg, self.acc
        if self.cache is not None:
            return cache.CachedBatches(
                self.cache, seed=cfg.train.seed, rank=acc.process_index, world=acc.num_processes,
                total=self.shards.total or 0, batch_size=self.batch, skip=skip, count=count,
                hflip=cfg.data.hflip)
        loader = pipeline.make_loader(
            self.shards.urls, rank=acc.process_index, world=acc.num_processes,
            seed=cfg.train.seed, batch_size=self.batch, resolution=cfg.data.resolution,
            channels=cfg.data.channels, num_batches=count, workers=cfg.data.workers,
            shuffle_buffer=cfg.data.shuffle_buffer, hflip=cfg.data.hflip, skip_batches=skip,
            pin_memory=self.device.type == "cuda", expected=self.shards.expected)
        return loader.take(count)

    def next(self, batches: Iterator, labelled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next real batch on the device, in the model's range [-1, 1] (and its labels)."""
        fmt = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        images, labels = next(batches)
        real = pipeline.to_model_range(images.to(self.device, non_blocking=True), fmt)
        return real, labels.to(self.device, non_blocking=True) if labelled else None
