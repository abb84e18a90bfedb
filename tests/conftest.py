"""Shared fixtures: small real shard sets written by the project's own shard writer."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

# Tests run several processes at once on 2 cores; one thread each keeps them from thrashing.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def builtin_shards(tmp_path_factory) -> Path:
    """The built-in sketch dataset, 40 drawings per class, 28 px, in real WebDataset shards."""
    from wgan_dist.data.write import ensure_builtin_shards

    out = tmp_path_factory.mktemp("shards") / "builtin-28px-c1"
    ensure_builtin_shards(str(out), resolution=28, channels=1, per_class=40, seed=0)
    return out


def tiny_overrides(shards: Path, run_dir: Path, **extra) -> list[str]:
    """A model small enough that a few steps take a second or two on one CPU core."""
    values = {
        "data.shards": str(shards), "data.workers": 0, "data.shuffle_buffer": 50,
        "data.cache": "none",  # the streaming loader; tests/test_cache.py runs the caches
        "model.g_width": 8, "model.d_width": 8, "model.latent_dim": 16,
        "train.batch_size": 8, "optim.n_critic": 2, "train.steps": 6,
        "log.tick_every": 2, "log.sample_every": 3, "log.ckpt_every": 3, "log.grid_size": 16,
        "log.run_dir": str(run_dir),
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def save_quickdraw_npy(out_dir, n_per_class: int, seed: int = 0, prefix: str = "") -> list[str]:
    """Write the built-in drawings as ``<prefix><category>.npy`` (N, 784) uint8 per category,
    QuickDraw's bitmap form (``prefix="full_numpy_bitmap_"``: the downloadable files' names)."""
    import numpy as np

    from wgan_dist.data.builtin import CATEGORIES, render_sample

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for c, name in enumerate(CATEGORIES):
        rows = np.stack([render_sample(c, i, seed, 28).reshape(784) for i in range(n_per_class)])
        path = os.path.join(os.fspath(out_dir), f"{prefix}{name}.npy")
        np.save(path, rows.astype(np.uint8))
        paths.append(path)
    return paths
