"""The evaluate CLI, and evaluation under 2 processes equal to 1 process for the same samples."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import PY, REPO, tiny_overrides
from test_train import run_trainer


def test_evaluate_cli(builtin_shards, tmp_path):
    run = tmp_path / "r"
    run_trainer(tiny_overrides(builtin_shards, run))
    out = tmp_path / "m.json"
    r = subprocess.run([PY, "-m", "wgan_dist.evaluate", "--checkpoint", str(run), "--num", "64",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    row = json.loads(out.read_text())
    assert row["step"] == 6 and row["num_fake"] == 64 and row["swd_avg"] > 0
    assert 0 < row["div_ratio"]
    r = subprocess.run([PY, "-m", "wgan_dist.evaluate", "--checkpoint", str(run), "--fid",
                        "--inception-weights", str(tmp_path / "missing.pth"), "--num", "8"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "missing.pth" in r.stderr


@pytest.mark.parametrize("cond", [False, True])
def test_two_process_evaluation_equals_one_process(builtin_shards, tmp_path, cond):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    extra = ["cond"] if cond else []
    env = {**os.environ, "WGAN_DIST_CACHE": str(tmp_path / "cache")}  # the classifier, once
    subprocess.run([PY, "tests/_eval_worker.py", str(builtin_shards), str(one), *extra], cwd=REPO,
                   check=True, timeout=300, env=env)
    subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    "--master_port=29531", "tests/_eval_worker.py", str(builtin_shards), str(two),
                    *extra], cwd=REPO, check=True, timeout=300, env=env)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a.pop("world"), b.pop("world")) == (1, 2)
    assert a.keys() == b.keys() and "swd_avg" in a
    # a conditional model is scored on the classes it was asked for
    assert ("cls_acc" in a) == cond
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k
