"""data.cache (issue 23): images held where the model runs, drawn by index.

The batch at position k is a function of k (exact resume), every rank holds a disjoint part
and takes the same number of batches, labels travel with their images, flips are drawn per
batch, the footprint is checked before anything is decoded, and the shards are verified as
the stream verifies them. Real shard sets written by the project's writer; real gloo
processes for the two-rank case."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from wgan_dist.compat import reset_accelerator_state

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _distributed import clean_env, finish, free_port, start  # noqa: E402

from conftest import PY, REPO, tiny_overrides  # noqa: E402
from wgan_dist.config import load_config  # noqa: E402
from wgan_dist.data import cache  # noqa: E402
from wgan_dist.data.format import DataError  # noqa: E402
from wgan_dist.data.shardset import resolve_shards  # noqa: E402
from wgan_dist.data.write import write_shards  # noqa: E402
from wgan_dist.training import checkpoint as ckpt  # noqa: E402
from wgan_dist.training.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> Path:
    """Real photos: 64 AFHQ cats at 32 px, JPEG-encoded, in 2 shards."""
    src = REPO.parent / "shared" / "data" / "afhq_cat" / "cat"
    if not src.is_dir():
        pytest.fail(f"{src} is missing (see ../shared/data)")
    out = tmp_path_factory.mktemp("cats") / "jpeg32"
    write_shards([str(src)], str(out), resolution=32, channels=3, per_shard=32, encoding="jpeg",
                 limit=64, progress=False)
    return out


def _cache(shards: Path, mode: str, rank: int = 0, world: int = 1, res: int = 28, ch: int = 1):
    s = resolve_shards(str(shards), res, ch)
    return cache.ImageCache(s.urls, s.expected, rank, world, res, ch, torch.device("cpu"), mode,
                            say=lambda m: None), s


def _batches(c, total: int, skip: int, count: int, rank: int = 0, world: int = 1, hflip=False):
    return list(cache.CachedBatches(c, seed=3, rank=rank, world=world, total=total, batch_size=8,
                                    skip=skip, count=count, hflip=hflip))


def test_the_batch_at_position_k_is_a_function_of_k(builtin_shards):
    c, s = _cache(builtin_shards, "memory")
    whole = _batches(c, s.total, 0, 90, hflip=True)  # 2 epochs and more (40 batches an epoch)
    later = _batches(c, s.total, 37, 53, hflip=True)
    for (a, la), (b, lb) in zip(whole[37:], later):
        assert torch.equal(a, b) and torch.equal(la, lb)
    first = torch.cat([x for x, _ in whole[:40]])
    assert len(first) == 320 and len({bytes(x.numpy()) for x in first}) >= 300  # an epoch: each once
    # flips: drawn per batch, about half, and a flipped image is the mirror of the stored one
    plain = _batches(c, s.total, 0, 40)
    flipped = [torch.equal(a.flip(-1), b) and not torch.equal(a, b)
               for (xa, _), (xb, _) in zip(plain, whole[:40]) for a, b in zip(xa, xb)]
    assert 0.35 < sum(flipped) / len(flipped) < 0.65


@pytest.mark.parametrize("shape", [(5, 3, 128, 128), (5, 1, 28, 28), (4, 3, 30, 30), (4, 3, 7, 9)])
def test_flips_on_the_host_mirror_exactly_the_images_drawn(shape):
    # Whole-word reversal + byte swap for widths divisible by 8, 4 or 2; bytes otherwise.
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    coin = torch.tensor([True, False, True, True, False][:shape[0]])
    want = torch.where(coin[:, None, None, None], images.flip(-1), images)
    cache.flip_on_host(images, coin)
    assert torch.equal(images, want)


def test_labels_travel_with_their_images(builtin_shards):
    """Against the stream's own reading of the same shards: every (image, label) pair the cache
    gives is one the shards hold."""
    from wgan_dist.data.format import decode_image, image_entry, iter_samples, label_of

    pairs = set()
    for url in sorted(str(p) for p in builtin_shards.glob("shard-*.tar")):
        for smp in iter_samples(url):
            ext, data = image_entry(smp)
            pairs.add((decode_image(data, ext, 28, 1).tobytes(), label_of(smp)))
    c, s = _cache(builtin_shards, "memory")
    for images, labels in _batches(c, s.total, 0, 10):
        for x, y in zip(images, labels):
            assert (x.permute(1, 2, 0).contiguous().numpy().tobytes(), int(y)) in pairs


def test_ranks_hold_disjoint_parts_and_take_equal_batches(builtin_shards):
    parts = [_cache(builtin_shards, "memory", rank=r, world=3) for r in range(3)]
    sizes = [len(c) for c, _ in parts]
    assert sum(sizes) == 320 and max(sizes) - min(sizes) <= 1
    seen = [{bytes(x.numpy()) for x in c.images} for c, _ in parts]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])
    its = [cache.CachedBatches(c, seed=0, rank=r, world=3, total=s.total, batch_size=8, skip=0,
                               count=30, hflip=False) for r, (c, s) in enumerate(parts)]
    assert [it.per_epoch for it in its] == [(320 // 3) // 8] * 3  # 107, 107 and 106 images
    assert [len(list(it)) for it in its] == [30, 30, 30]  # past an epoch: the same on every rank


def test_jpeg_bytes_decoded_per_batch_match_the_decoded_cache(jpeg_shards):
    enc, s = _cache(jpeg_shards, "encoded", res=32, ch=3)
    mem, _ = _cache(jpeg_shards, "memory", res=32, ch=3)
    for (a, la), (b, lb) in zip(_batches(enc, s.total, 0, 8, hflip=True),
                                _batches(mem, s.total, 0, 8, hflip=True)):
        assert torch.equal(la, lb) and a.shape == b.shape == (8, 3, 32, 32)
        # torchvision's decoder (libjpeg-turbo) against PIL's: the same pixels within rounding
        assert (a.int() - b.int()).abs().float().mean() < 1.0
    assert enc.bytes.dtype == torch.uint8 and enc.bytes.numel() < mem.images.numel()


def test_what_does_not_fit_is_refused_in_one_line_and_auto_falls_back(builtin_shards, jpeg_shards):
    kw = dict(total=320, encoded_bytes=100_000, encoding="png", rank=0, world=1, resolution=28,
              channels=1, device=torch.device("cpu"))
    real = cache.available_bytes
    try:
        cache.available_bytes = lambda device: 100_000
        with pytest.raises(DataError, match=r"data.cache=memory: this rank's 320000 images need "
                                            r"0\.24 GB, 0\.00 GB is free"):
            cache.plan("memory", **{**kw, "total": 320_000})
        assert cache.plan("auto", **kw).mode == "none"  # 253 kB of pixels > a quarter of 100 kB
        cache.available_bytes = lambda device: 2_000_000
        assert cache.plan("auto", **kw).mode == "memory"
        jpeg = {**kw, "total": 64, "resolution": 256, "channels": 3, "encoding": "jpeg",
                "encoded_bytes": 200_000}
        assert cache.plan("auto", **jpeg).mode == "encoded"  # 12.6 MB of pixels, 0.2 MB of JPEG
        with pytest.raises(DataError, match="data.cache=encoded keeps JPEG bytes, but these shards are png"):
            cache.plan("encoded", **kw)
    finally:
        cache.available_bytes = real


def test_a_run_with_a_cache_resumes_exactly(builtin_shards, tmp_path):
    """2 steps, then --resume to 4, equals 4 steps, with flips and labels (conditional).
    model.g_norm=none: the penalty visuals at a run's last step run the generator in train
    mode, which moves its BatchNorm statistics, so a run extended after it ended differs from
    an uninterrupted one in those statistics whatever the input path (a known difference, kept
    because the behaviour guard's recorded hashes include it)."""
    def run(run_dir: Path, steps: int, resume=None) -> Trainer:
        reset_accelerator_state()
        t = Trainer(load_config(None, tiny_overrides(builtin_shards, run_dir, **{
            "data.cache": "memory", "data.hflip": True, "model.conditional": True,
            "model.g_norm": "none", "train.steps": steps, "log.ckpt_every": 2})), resume=resume)
        t.train()
        t.close()
        return t

    assert run(tmp_path / "a", 4).inputs.cache is not None
    run(tmp_path / "b", 2)
    run(tmp_path / "b", 4, resume="latest")
    a, b = (ckpt.load_checkpoint(tmp_path / r) for r in "ab")
    for key in ("G", "D", "G_ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name}"


def test_the_default_run_takes_the_cache_and_every_core(builtin_shards, tmp_path):
    r = subprocess.run([PY, "-m", "wgan_dist.train", *tiny_overrides(builtin_shards, tmp_path / "run", **{
        "data.cache": "auto", "data.workers": 1, "train.steps": 2})], cwd=REPO,
        env=clean_env(OMP_NUM_THREADS=""), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cache          memory: 320 images" in r.stdout and "- 0 loader worker(s)" in r.stdout
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "cache: memory" in cfg


def test_a_damaged_shard_is_named_when_the_cache_reads_it(builtin_shards, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(builtin_shards, shards)
    m = json.loads((shards / "manifest.json").read_text())
    m["shards"][0]["sha256"] = "0" * 64
    (shards / "manifest.json").write_text(json.dumps(m))
    r = subprocess.run([PY, "-m", "wgan_dist.train", *tiny_overrides(shards, tmp_path / "run", **{
        "data.cache": "memory", "train.steps": 2})], cwd=REPO, env=clean_env(),
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "shard-000000.tar: sha256 does not match" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["memory", "encoded"])
def test_two_processes_hold_their_parts_and_resume_exactly(jpeg_shards, tmp_path, mode):
    """2 gloo processes: each holds half the set; 3 steps, then --resume to 6, equals 6 steps."""
    def launch(run: Path, *extra: str) -> str:
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "wgan_dist.train", *extra]
        return finish(start(cmd, clean_env(MASTER_PORT=str(free_port()))))

    base = tiny_overrides(jpeg_shards, tmp_path / "x", **{
        "data.cache": mode, "data.resolution": 32, "data.channels": 3, "data.hflip": True,
        "model.g_norm": "none", "log.ckpt_every": 3})
    out = launch(tmp_path / "a", *base, f"log.run_dir={tmp_path / 'a'}", "train.steps=6")
    assert f"cache: 32 images of this rank held in {mode}" in out
    launch(tmp_path / "b", *base, f"log.run_dir={tmp_path / 'b'}", "train.steps=3")
    launch(tmp_path / "b", "--run-dir", str(tmp_path / "b"), "--resume", "train.steps=6")
    a, b = (ckpt.load_checkpoint(tmp_path / r) for r in "ab")
    assert a["step"] == b["step"] == 6
    for key in ("G", "D", "G_ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name}"
