"""The run's real images: the shard set it reads, this process's batch size, and the batches
that reach the training device.

Only the main process writes shards (the built-in set, ``-d`` folders); the others wait for
it. Every rank checks the shard set (headers only), so every rank stops alike.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from accelerate import Accelerator

from ..config import Config
from ..data import pipeline
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
        d = cfg.data
        with acc.main_process_first():
            self.shards: ShardSet = resolve_shards(
                d.shards, d.resolution, d.channels, d.cache_dir, d.builtin_per_class,
                cfg.train.seed, log=say,
                class_names=[c.strip() for c in d.class_names.split(",") if c.strip()])
        check_shape(self.shards, d.resolution, d.channels)
        self.shards.check()

    def batches(self, skip: int, count: int) -> pipeline.Taken:
        """``count`` batches, the first ``skip`` of the run's stream already consumed; its
        ``close()`` shuts the loader's workers down."""
        cfg, acc = self.cfg, self.acc
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
