"""The loader under every way a worker process can start: the pipeline must pickle."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from wgan_dist.data import pipeline as data
from wgan_dist.data import shardset


def _urls(shards: Path) -> list[str]:
    return shardset.resolve_shards(str(shards), 28, 1, log=lambda _: None).urls


def _batches(shards: Path, mp_context: str | None, skip: int = 0) -> list[tuple]:
    loader = data.make_loader(_urls(shards), rank=0, world=1, seed=3, batch_size=8,
                              resolution=28, channels=1, num_batches=6, workers=2,
                              shuffle_buffer=20, hflip=True, skip_batches=skip,
                              mp_context=mp_context)
    return [(x.clone(), y.clone()) for x, y in loader][:6]


def test_pipeline_pickles(builtin_shards: Path) -> None:
    pipe = data.build_pipeline(_urls(builtin_shards), rank=1, world=2, seed=0, batch_size=4,
                               resolution=28, channels=1, hflip=True, batches_per_worker=3,
                               skip_batches=5)
    again = pickle.loads(pickle.dumps(pipe))
    assert [x.shape for x, _ in again][:3] == [torch.Size([4, 1, 28, 28])] * 3


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_spawned_workers_give_the_same_batches(builtin_shards: Path, context: str) -> None:
    """Spawn is macOS's default and forkserver Python 3.14's on Linux: same batches as fork."""
    forked = _batches(builtin_shards, "fork")
    other = _batches(builtin_shards, context)
    assert len(forked) == len(other) == 6
    for (xa, ya), (xb, yb) in zip(forked, other):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # and the resume skip still lines up: skipping 2 batches continues where batch 2 was
    resumed = _batches(builtin_shards, context, skip=2)
    assert torch.equal(resumed[0][0], forked[2][0])
