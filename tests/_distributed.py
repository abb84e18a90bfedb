"""Helpers of the distributed tests: a 1-shard set, tiny configs, launches with a hard timeout.

Every launch runs in its own session and is killed as a group when it overruns, so a hang
fails the test (with the output so far) instead of blocking CI.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_ddp_worker.py"
LAUNCH_TIMEOUT = 240  # seconds; a healthy 2-rank launch takes 15-30 s on a loaded 2-core machine


def write_one_shard(out: Path, count: int = 64, resolution: int = 28) -> Path:
    """A labelled grayscale shard set with exactly one shard, written by the project's writer
    from an image folder (class subfolders ``even`` / ``odd``) beside it."""
    from PIL import Image

    from wgan_dist.data.write import write_shards

    images = out.parent / f"{out.name}-images"
    rng = np.random.default_rng(0)
    for i in range(count):
        img = np.zeros((resolution, resolution), np.uint8)
        r = 4 + i % 8  # a bright square of varying size: easy to see in a grid
        img[r:resolution - r, r:resolution - r] = rng.integers(128, 256)
        folder = images / ("even", "odd")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"{i:04d}.png")
    write_shards([str(images)], str(out), resolution=resolution, channels=1, per_shard=count,
                 progress=False)
    return out


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    return write_one_shard(tmp_path_factory.mktemp("one-shard"))


def tiny(shards: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides for a model that steps in milliseconds.

    model.g_norm=none: the DCGAN generator's BatchNorm normalises with the statistics of the
    *local* batch, so B/2 on each of 2 ranks is a different function from B on 1 rank, and no
    equivalence can hold. SyncBatchNorm would fix that on GPUs, but torch 2.14 refuses it on CPU
    (DDP: "SyncBatchNorm layers only work with GPU modules"; forward: "SyncBatchNorm expected
    input tensor to be on GPU or XPU"). Without BatchNorm every remaining op is per sample.
    lr 1e-3 so that 3 iterations move the parameters visibly.
    """
    values = {
        "data.shards": str(shards), "data.workers": 0, "data.shuffle_buffer": 32,
        "model.g_width": 8, "model.d_width": 8, "model.latent_dim": 16, "model.g_norm": "none",
        "train.batch_size": 8, "optim.n_critic": 2, "optim.lr_g": 1e-3, "optim.lr_d": 1e-3,
        "log.run_dir": str(run_dir), "log.grid_size": 16,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables (pytest may itself run under one)."""
    drop = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith("ACCELERATE_")}
    # CUDA_VISIBLE_DEVICES="": these are CPU/gloo tests, also on a CI machine with a GPU.
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env or clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = LAUNCH_TIMEOUT) -> str:
    """Wait for a launch; on overrun kill its whole process group and fail."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"launch hung: killed after {timeout} s\n{' '.join(proc.args)}\n"
                    f"{output[-4000:]}")
    assert proc.returncode == 0, \
        f"launch failed ({proc.returncode}): {' '.join(proc.args)}\n{output[-6000:]}"
    return output


def worker_cmd(scenario: str, out: Path, world: int, overrides: list[str]) -> list[str]:
    args = [str(WORKER), scenario, str(out), str(world), *overrides]
    if world == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={world}", *args]


def launch(scenario: str, out: Path, world: int, overrides: list[str]) -> str:
    return finish(start(worker_cmd(scenario, out, world, overrides)))


def load_ranks(out: Path, world: int) -> list[dict]:
    recs = [torch.load(out / f"rank{r}.pt") for r in range(world)]
    for r, rec in enumerate(recs):
        assert (rec["rank"], rec["world"]) == (r, world), "not the process group launched"
    return recs


def assert_overflow_skipped_everywhere(a: dict, b: dict) -> None:
    """The ``overflow`` scenario of _ddp_worker.py, ranks ``a`` and ``b`` (the poisoned last):
    a non-finite loss or gradient on one rank skips that step on every rank (nothing moves,
    everything stays finite, the ranks agree), and the next step trains."""
    kinds = [(e["phase"], e["kind"]) for e in a["events"]]
    assert kinds == [("critic", "loss"), ("critic", "ok"), ("critic", "grad"), ("critic", "ok"),
                     ("generator", "grad"), ("generator", "ok")]
    for ea, eb in zip(a["events"], b["events"]):
        part = "D" if ea["phase"] == "critic" else "G"
        expect_skip = ea["kind"] != "ok"
        for e in (ea, eb):
            assert e["skipped"] == float(expect_skip), (e["phase"], e["kind"])
            moved = not torch.equal(e["after"][part], e["before"][part])
            assert moved != expect_skip, (e["phase"], e["kind"])
            assert torch.isfinite(e["after"][part]).all() and torch.isfinite(e["after"]["G"]).all()
        assert torch.equal(ea["after"]["D"], eb["after"]["D"])
        assert torch.equal(ea["after"]["G"], eb["after"]["G"])
    # The poisoned loss was on the last rank only: rank 0 saw a finite loss and still skipped.
    assert torch.isfinite(torch.tensor(a["events"][0]["loss"]))
    assert not torch.isfinite(torch.tensor(b["events"][0]["loss"]))
