"""The loader under every way a worker process can start (the pipeline must pickle), and the
hand-over of its batches through shared slots (the same batches as decoding sample by sample,
safe for a consumer that keeps them)."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import webdataset as wds

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


# ------------------------------------------------------------------ the batch hand-over
@pytest.fixture(scope="module")
def raw_rgb_shards(tmp_path_factory) -> Path:
    """Built-in drawings as raw uint8 RGB at 16 px: the copy-only path, three-channel flips."""
    from wgan_dist.data.write import write_shards

    out = tmp_path_factory.mktemp("raw") / "builtin-16px-c3-raw"
    write_shards(["builtin"], str(out), kind="builtin", resolution=16, channels=3, encoding="raw",
                 per_shard=16, builtin_per_class=8, workers=1, overwrite=True, progress=False)
    return out


def _reference(urls: list[str], res: int, ch: int, batch: int, skip: int, count: int) -> list[tuple]:
    """The batches by definition: the sample stages in this process, then each sample decoded
    by ``format.decode_image``, flipped by torch and stacked, as the loader did before it
    decoded into shared memory."""
    from wgan_dist.data.format import decode_image, image_entry, label_of

    stages = [data.ShardStream(urls, 0, 1, 3), data.ReadTar(), data.Shuffle(20, 3, 0),
              data.DrawFlips(True, 3, 0), data.SkipConsumed(skip, batch)]
    it = iter(wds.DataPipeline(*stages))
    out = []
    for _ in range(count):
        images, labels = [], []
        for s in [next(it) for _ in range(batch)]:
            img = torch.from_numpy(decode_image(image_entry(s)[1], image_entry(s)[0], res, ch).copy())
            images.append(img.flip(1) if s["__flip__"] else img)
            labels.append(label_of(s))
        out.append((torch.stack(images).permute(0, 3, 1, 2), torch.tensor(labels)))
    return out


@pytest.mark.parametrize("kind", ["png", "raw"])
def test_worker_batches_equal_the_per_sample_definition(builtin_shards, raw_rgb_shards, kind) -> None:
    """Decoded (and flipped) straight into a worker's shared slot and handed over as a slot
    number: the same pixels, labels, shape and memory layout as decoding sample by sample,
    also after a resume skip."""
    shards, res, ch = (builtin_shards, 28, 1) if kind == "png" else (raw_rgb_shards, 16, 3)
    urls = shardset.resolve_shards(str(shards), res, ch, log=lambda _: None).urls
    for skip in (0, 3):
        want = _reference(urls, res, ch, 8, skip, 5)
        loader = data.make_loader(urls, rank=0, world=1, seed=3, batch_size=8, resolution=res,
                                  channels=ch, num_batches=5, workers=1, shuffle_buffer=20,
                                  hflip=True, skip_batches=skip)
        got = list(loader.take(5))
        assert len(got) == 5
        for (x, y), (wx, wy) in zip(got, want):
            assert torch.equal(x, wx) and torch.equal(y, wy)
            assert x.stride() == wx.stride() and y.dtype == torch.long


def test_kept_batches_stay_intact_and_slots_are_reused(builtin_shards) -> None:
    """A consumer that keeps every batch (more than a worker has slots) gets them intact: the
    worker sends fresh buffers when no slot is free. One that drops each batch gets the same
    batches from a handful of slots, reused."""
    from wgan_dist.data import handover

    n = handover.SLOTS + 12

    def loader():
        return data.make_loader(_urls(builtin_shards), rank=0, world=1, seed=1, batch_size=4,
                                resolution=28, channels=1, num_batches=n, workers=1,
                                shuffle_buffer=20, hflip=True)
    kept = list(loader().take(n))
    dropping = loader()
    copies = [(x.clone(), y.clone()) for x, y in dropping.take(n)]
    assert len(kept) == len(copies) == n
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(kept, copies))
    slots = len(dropping.receiver.buffers)
    assert 0 < slots <= 4 + 2, f"{slots} slots for a consumer that keeps nothing"  # prefetch 4
