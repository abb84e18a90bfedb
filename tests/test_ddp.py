"""The distributed mathematics, proven on CPU with real gloo process groups.

1. 2 ranks x B/2 == 1 rank x B: same samples and noise, 3 iterations of (n_critic critic steps +
   1 generator step) through the real Trainer. (DeepSpeed ZeRO against this: test_deepspeed.py.) Under DDP each rank's loss is a mean over its
   local B/2 samples (the gradient penalty included: a mean of per-sample terms) and DDP
   averages the gradients over ranks; the mean of 2 half-batch means is the full-batch mean, so
   the gradients must agree with the 1-rank run to fp32 rounding. The gradients are compared at
   every step because Adam is invariant to the scale of its gradient: a sum-instead-of-mean
   mistake would leave the parameters equal. The generator runs without BatchNorm here
   (``model.g_norm=none``, see ``_distributed.tiny`` for why).
2. An overflow (a non-finite loss, or a non-finite gradient) on one rank skips the step on
   every rank, and the next step trains.
3. 1 shard, 2 ranks, 2 loader workers each: `accelerate launch` of the real CLI completes.

Tolerances, measured on a 2-core x86 CPU: gradients max|g2 - g1| / max|g1| <= 2.1e-6 over all
9 steps (bound 1e-5); parameters after each iteration within rtol 1e-5 + atol 1e-5 (one of
19097 generator parameters moves 2.9e-6 differently: its gradient, 1.5e-8, is at Adam's eps,
where Adam turns fp32 rounding of the gradient into a visible difference of the update).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _distributed import (assert_overflow_skipped_everywhere, clean_env, finish,  # noqa: E402,F401
                          free_port, load_ranks, shard_set, start, tiny, worker_cmd)

from wgan_dist.training import checkpoint as ckpt  # noqa: E402

ITERS, N_CRITIC = 3, 2
GRAD_RTOL = 1e-5
PARAM_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def runs(shard_set, tmp_path_factory) -> dict[str, list[dict]]:
    """The 1-rank reference and the 2-rank run, launched side by side."""
    root = tmp_path_factory.mktemp("ddp")
    procs = {
        1: start(worker_cmd("equivalence", root / "w1", 1, tiny(shard_set, root / "run1"))),
        2: start(worker_cmd("overflow", root / "w2", 2, tiny(shard_set, root / "run2"))),
    }
    for proc in procs.values():
        finish(proc)
    return {"one": load_ranks(root / "w1", 1), "two": load_ranks(root / "w2", 2)}


def max_rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).abs().max() / ref.abs().max()).item()


def test_world_sizes(runs):
    assert [r["world"] for r in runs["one"]] == [1]
    assert [(r["rank"], r["world"]) for r in runs["two"]] == [(0, 2), (1, 2)]


def test_gradients_identical_across_ranks_after_every_step(runs):
    a, b = runs["two"]
    assert len(a["grads_D"]) >= ITERS * N_CRITIC and len(a["grads_G"]) >= ITERS
    for key in ("grads_D", "grads_G"):
        for step, (ga, gb) in enumerate(zip(a[key], b[key])):
            # Bitwise, the poisoned steps' inf/nan included: every rank holds the same sum.
            torch.testing.assert_close(ga, gb, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m: f"{key}[{step}] differs between ranks: {m}")


def test_two_ranks_half_batch_equal_one_rank_full_batch(runs):
    (one,), (two, _) = runs["one"], runs["two"]
    worst = 0.0
    for key, steps in (("grads_D", ITERS * N_CRITIC), ("grads_G", ITERS)):
        assert len(one[key]) == steps
        for step in range(steps):
            ref, got = one[key][step], two[key][step]
            assert ref.abs().max() > 0
            rel = max_rel(got, ref)
            worst = max(worst, rel)
            assert rel <= GRAD_RTOL, f"{key}[{step}]: {rel:.2e}"
    print(f"worst gradient difference 2 ranks vs 1: {worst:.2e} (bound {GRAD_RTOL})")
    assert len(one["params"]) == len(two["params"]) == ITERS + 1
    for it in range(1, ITERS + 1):
        for part in ("G", "D"):
            p1, p2 = one["params"][it][part], two["params"][it][part]
            torch.testing.assert_close(p2, p1, **PARAM_TOL, msg=lambda m: f"iter {it} {part}: {m}")
            # The runs trained: the parameters moved by far more than the tolerance.
            assert (p1 - one["params"][0][part]).abs().max() > 50 * PARAM_TOL["atol"]


def test_fakes_differ_across_ranks(runs):
    """Counter-based noise includes the rank: the ranks see different fakes (not N copies)."""
    a, b = runs["two"]
    assert a["own_fake"].shape == b["own_fake"].shape
    assert (a["own_fake"] - b["own_fake"]).abs().max() > 1e-3


def test_overflow_on_one_rank_is_skipped_on_every_rank(runs):
    assert_overflow_skipped_everywhere(*runs["two"])


def test_one_shard_two_ranks_two_workers_completes(shard_set, tmp_path):
    """A real `accelerate launch` of the CLI: 1 shard for 2 ranks x 2 workers = 4 readers.

    Without resampling, 3 of the 4 readers would have no shard and the job would hang
    (webdataset#188); the timeout turns a hang into a failure.
    """
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "wgan_dist.train",
           *tiny(shard_set, run, **{"data.workers": 2, "model.g_norm": "batch",
                                    "train.steps": 3, "log.tick_every": 1,
                                    "log.sample_every": 3, "log.ckpt_every": 3})]
    out = finish(start(cmd, clean_env(HF_HOME=str(tmp_path / "hf"))))
    assert "processes      2 on cpu" in out  # a real 2-process group, not the CPU trap
    assert "global batch   8 = 4 per process x 2 process(es)" in out
    assert "done at step 3." in out
    state = ckpt.load_checkpoint(run)
    assert (state["step"], state["world_size"]) == (3, 2)
    assert state["nimg"] == 3 * N_CRITIC * 8
    assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())
