"""Behaviour did not move: a fixed-seed run of every setting spelled out ends with the same
weights, bit for bit, as before the package was reorganised into rooms.

The hashes were recorded from the pre-reorganisation code (commit 5d20df8) with one torch
thread (OMP_NUM_THREADS=1; torch 2.14.1, x86_64 with AVX-512): the same configs, the
built-in set at 40 drawings a class, 6 generator steps, one loader worker. Two runs: the
plain unconditional model, and a conditional one (projection + auxiliary classifier) with
DiffAugment and flips, so the label, augmentation and flip streams are pinned too.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

RECORDED = {
    "guard_plain": {
        "G": "b799bbeda1f87beea91a7f007d671922521a28925c5c1d9c9be1d21378863769",
        "D": "4af3b89ad32749fbffe1d0ca4885df9d7444027cd192be281fe619705bb807ef",
        "G_ema": "2f73acf634a0b6828aebca06c0b9426518c7721752b651a9b60dfe9b7c0f0b43",
    },
    "guard_cond": {
        "G": "ff6449f390e542770a5529e422fcd33c9a72da8ffab7fb1b0b3b4f9eccc0ed07",
        "D": "4e34f8b0111005d53c101c32736c1a8ed7e718815c7f9ad7362f41dea133f8af",
        "G_ema": "3b6aa27a620fa8880a8dc6186a40bc08446d8a17152ad076588a8ed452d7a3cb",
    },
}


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_fixed_seed_run_is_bit_identical(tmp_path, name):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "wgan_dist.train", "--config", str(REPO / "tests" / "data" / f"{name}.yaml"),
           f"data.cache_dir={tmp_path / 'shards'}", f"log.run_dir={run}"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "step-00000006.pt", weights_only=True)
    assert {k: weights_sha256(state[k]) for k in RECORDED[name]} == RECORDED[name]
