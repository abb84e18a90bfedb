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
        "model.g_width": 8, "model.d_width": 8, "model.latent_dim": 16,
        "train.batch_size": 8, "optim.n_critic": 2, "train.steps": 6,
        "log.tick_every": 2, "log.sample_every": 3, "log.ckpt_every": 3, "log.grid_size": 16,
        "log.run_dir": str(run_dir),
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]
