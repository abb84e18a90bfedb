"""Fault tolerance without a scheduler, on 2 CPU processes.

(a) A rank dies (SIGKILL) in the middle of a torchrun job started by launch/torchrun.sh with one
    restart allowed: torchrun restarts the worker group, which resumes (--resume auto) from the
    newest checkpoint and finishes with the full step count.
(b) A checkpoint write that fails half way never replaces the last good checkpoint, and no half
    file ever carries a checkpoint's name.
(c) A run started on 2 processes is resumed on 1 with the same global batch, and says so.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wgan_dist.training import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 300  # seconds for one launch; a healthy one takes 15-40 s on a loaded 2-core machine


def tiny(builtin_shards: Path, run_dir: Path, **extra) -> list[str]:
    """The built-in data set (the session's small copy, reused, not rebuilt) and a tiny model."""
    per_class = json.loads((builtin_shards / "manifest.json").read_text())["source"]["per_class"]
    values = {
        "data.shards": "builtin", "data.cache_dir": builtin_shards.parent,
        "data.builtin_per_class": per_class, "data.workers": 0, "data.shuffle_buffer": 50,
        "model.g_width": 8, "model.d_width": 8, "model.latent_dim": 16,
        "train.batch_size": 8, "optim.n_critic": 2, "log.grid_size": 16,
        "log.tick_every": 1, "log.sample_every": 1000, "log.run_dir": run_dir, "eval.num": 64,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def launch_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's or scheduler's variables."""
    drop = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "NPROC", "NNODES", "NODE_RANK",
            "MAX_RESTARTS", "STOP_TIMEOUT", "DRY_RUN")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("ACCELERATE_", "PET_", "SLURM_", "SBATCH_"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHON=sys.executable)
    env.update(extra)
    return env


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Output goes to a file (no pipe to fill); own session, so cleanup can find everything."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=env or launch_env(), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    found = []
    for c in children(pid):
        found += [c, *descendants(c)]
    return found


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL a launch and everything under it (torchrun puts workers in their own sessions)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def finish(proc: subprocess.Popen, log: Path, timeout: float = TIMEOUT) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(proc)
        pytest.fail(f"launch hung, killed after {timeout} s: {proc.args}\n{log.read_text()[-5000:]}")
    out = log.read_text()
    assert proc.returncode == 0, f"launch failed ({proc.returncode}): {proc.args}\n{out[-6000:]}"
    return out


def rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def wait_for(predicate, proc: subprocess.Popen, log: Path, what: str, timeout: float = TIMEOUT):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                kill_all(proc)
            pytest.fail(f"never saw {what} (exit {proc.returncode})\n{log.read_text()[-5000:]}")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# (a) a killed rank under torchrun --max-restarts

def test_killed_rank_restarts_from_last_checkpoint(builtin_shards, tmp_path):
    run, log, steps = tmp_path / "run", tmp_path / "torchrun.log", 20
    proc = start(["bash", "launch/torchrun.sh",
                  *tiny(builtin_shards, run, **{"train.steps": steps, "log.ckpt_every": 5})],
                 log, launch_env(NPROC="2", MAX_RESTARTS="1", STOP_TIMEOUT="20"))
    try:
        # Kill rank 1 once a checkpoint exists and training has gone on past it.
        wait_for(lambda: (run / "checkpoints" / "step-00000005.pt").is_file(), proc, log,
                 "the checkpoint of step 5")
        victim = wait_for(lambda: next((p for p in descendants(proc.pid) if rank_of(p) == 1), None),
                          proc, log, "the rank-1 worker")
        killed_after = ckpt.latest_checkpoint(run)
        os.kill(victim, signal.SIGKILL)
        out = finish(proc, log)
    finally:
        if proc.poll() is None:
            kill_all(proc)
    assert int(killed_after.stem.split("-")[1]) < steps, "the run ended before the kill"
    resumed = re.findall(r"resumed from \S+step-(\d{8})\.pt at step (\d+)", out)
    assert resumed, f"the restarted workers did not resume:\n{out[-4000:]}"
    assert int(resumed[-1][1]) >= 5
    assert re.search(r"processes\s+2 on cpu", out)
    final = ckpt.load_checkpoint(run)
    assert (final["step"], final["world_size"]) == (steps, 2)
    assert final["nimg"] == steps * 8 * 2  # global batch x n_critic per step: no step lost


# --------------------------------------------------------------------------------------------
# (b) an interrupted checkpoint write

def _state(step: int) -> dict:
    return {"step": step, "weights": torch.full((4096,), float(step))}


@pytest.mark.parametrize("error", [OSError("No space left on device (simulated)"),
                                   KeyboardInterrupt()])
@pytest.mark.parametrize("same_name", [False, True])
def test_interrupted_checkpoint_write_keeps_last_good(tmp_path, monkeypatch, error, same_name):
    good = ckpt.save_checkpoint(_state(1), tmp_path, step=1, keep=3)
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half a checkpoint on disk...
        f.flush()
        raise error  # ...then the disk fills up, or Ctrl-C arrives

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    step = 1 if same_name else 2  # overwrite the good file's own name, or write the next one
    with pytest.raises(type(error)):
        ckpt.save_checkpoint(_state(7), tmp_path, step=step, keep=1)
    monkeypatch.undo()

    files = sorted(p.name for p in ckpt.checkpoint_dir(tmp_path).iterdir())
    assert files == [good.name], f"a half file was left behind: {files}"
    state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.equal(state["weights"], _state(1)["weights"])


def test_leftover_temporary_file_is_never_taken_for_a_checkpoint(tmp_path):
    """A process killed mid-write (SIGKILL: no cleanup runs) leaves its temporary file."""
    good = ckpt.save_checkpoint(_state(3), tmp_path, step=3, keep=3)
    (good.parent / ".step-00000009.pt.tmp-12345").write_bytes(b"\x80half")
    assert ckpt.list_checkpoints(tmp_path) == [good]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 3


# --------------------------------------------------------------------------------------------
# (c) 2 processes, then 1

def test_resume_on_fewer_processes_keeps_global_batch(builtin_shards, tmp_path):
    run, k = tmp_path / "run", 4
    log2, log1 = tmp_path / "two.log", tmp_path / "one.log"
    proc = start([sys.executable, "-m", "accelerate.commands.launch",
                  "--config_file", "launch/accelerate_cpu2.yaml", "-m", "wgan_dist.train",
                  *tiny(builtin_shards, run, **{"train.steps": k, "log.ckpt_every": k})], log2)
    out2 = finish(proc, log2)
    assert re.search(r"processes\s+2 on cpu", out2) and "8 = 4 per process x 2" in out2
    assert ckpt.load_checkpoint(run)["world_size"] == 2

    proc = start([sys.executable, "-m", "wgan_dist.train", "--resume", "auto",
                  *tiny(builtin_shards, run, **{"train.steps": 2 * k, "log.ckpt_every": k})], log1)
    out1 = finish(proc, log1)
    assert f"at step {k}" in out1 and "processes 2 -> 1" in out1, out1[-3000:]
    assert "global batch stays 8" in out1 and "8 = 8 per process x 1" in out1
    final = ckpt.load_checkpoint(run)
    assert (final["step"], final["world_size"]) == (2 * k, 1)
    assert final["nimg"] == 2 * k * 8 * 2  # the images seen continue at the same global batch
