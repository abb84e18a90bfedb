"""Faults round three, the run's own (issue 24, findings 2-4 and 6): one run per directory, a
resume from a file stays in its own run, a rank that stops answering ends the job in bounded
time, and a run that diverges rescues itself. Real processes, real files."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _distributed import clean_env, free_port  # noqa: E402
from test_fault_injection import env, error_lines, finish, start  # noqa: E402

from conftest import PY, REPO, tiny_overrides  # noqa: E402
from wgan_dist.training import checkpoint as ckpt  # noqa: E402


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"ended early ({proc.returncode}):\n{path.read_text()[-3000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {text!r} within {timeout}s:\n{path.read_text()[-3000:]}")


def long_run(shards: Path, run: Path, **extra) -> list[str]:
    return tiny_overrides(shards, run, **{"train.steps": 100000, "log.tick_every": 1,
                                          "log.ckpt_every": 2, "log.sample_every": 100000, **extra})


# ------------------------------------------------------------------------------ 2. the lock
def test_a_second_run_into_a_live_run_dir_is_refused(builtin_shards, tmp_path):
    run = tmp_path / "run"
    first = start(long_run(builtin_shards, run), tmp_path / "first.log")
    try:
        wait_for(tmp_path / "first.log", "step      2/", first)
        for name, args in (("second", long_run(builtin_shards, run, **{"optim.lr_g": 1e-3,
                                                                       "train.seed": 7})),
                           ("resume", ["--run-dir", str(run), "--resume"]),
                           ("overwrite", [*long_run(builtin_shards, run), "--overwrite"])):
            code, out = finish(start(args, tmp_path / f"{name}.log"), tmp_path / f"{name}.log")
            assert code == 2, out[-3000:]
            (line,) = error_lines(out)
            assert f"{run} is in use by another run (pid {first.pid} on {socket.gethostname()}" in line
        assert first.poll() is None  # the live run goes on, its files its own
        first.send_signal(signal.SIGTERM)
        code, out = finish(first, tmp_path / "first.log")
        assert code == 75, out[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    # the lock died with its holder: the run resumes
    code, out = finish(start(["--run-dir", str(run), "--resume", "train.steps=4"],
                             tmp_path / "again.log"), tmp_path / "again.log")
    assert code == 0, out[-3000:]


def test_a_lock_left_by_a_killed_run_does_not_block_its_resume(builtin_shards, tmp_path):
    run = tmp_path / "run"
    proc = start(long_run(builtin_shards, run), tmp_path / "a.log")
    wait_for(tmp_path / "a.log", "step      3/", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / ".lock").exists() and not json.loads((run / ".lock").read_text()).get("released")
    code, out = finish(start(["--run-dir", str(run), "--resume", "train.steps=4"],
                             tmp_path / "b.log"), tmp_path / "b.log")
    assert code == 0 and "taking over the lock of a run that is gone" in out, out[-3000:]


def test_a_lock_held_on_another_host_refuses_until_its_heartbeat_is_stale(builtin_shards, tmp_path):
    """A filesystem whose locks are not shared between hosts: the record and its heartbeat
    (the file's mtime) decide."""
    run = tmp_path / "run"
    run.mkdir()
    lock = run / ".lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "node-17", "slurm_job_id": "991",
                                "started": "2026-12-07T10:00:00+0000"}))
    args = tiny_overrides(builtin_shards, run, **{"train.steps": 2})
    code, out = finish(start(args, tmp_path / "a.log"), tmp_path / "a.log")
    assert code == 2 and "in use by a run on another host (pid 4242 on node-17, Slurm job 991" in out
    old = time.time() - 3600
    os.utime(lock, (old, old))  # node-17 is gone: no heartbeat for an hour
    code, out = finish(start(args, tmp_path / "b.log"), tmp_path / "b.log")
    assert code == 0 and "taking over the lock" in out, out[-3000:]


def test_a_start_refused_for_another_reason_leaves_no_run_dir(builtin_shards, tmp_path):
    run = tmp_path / "run"
    code, out = finish(start(tiny_overrides(builtin_shards, run, **{"model.conditional": True,
                                                                    "model.num_classes": 3}),
                             tmp_path / "a.log"), tmp_path / "a.log")
    assert code == 2 and "model.num_classes=3 but" in out and not run.exists(), out[-3000:]


# ------------------------------------------------------------------------------ 3. --resume FILE
def test_resume_from_a_file_continues_the_run_it_belongs_to(builtin_shards, tmp_path):
    """In a folder whose runs/default holds another run, ``--resume OTHER/checkpoints/step-N.pt``
    continues OTHER and leaves runs/default alone; into a run dir of another run it is refused."""
    other, here = tmp_path / "other", tmp_path / "work" / "runs" / "default"
    for run in (other, here):
        code, out = finish(start(tiny_overrides(builtin_shards, run, **{"train.steps": 3,
                                                                        "log.keep_checkpoints": 1}),
                                 tmp_path / "make.log"), tmp_path / "make.log")
        assert code == 0, out[-3000:]
    before = sorted(p.name for p in ckpt.list_checkpoints(here))
    target = other / "checkpoints" / "step-00000003.pt"
    cmd = [PY, "-m", "wgan_dist.train", "--resume", str(target), "train.steps=5"]
    r = subprocess.run(cmd, cwd=tmp_path / "work", env=env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(other)] == ["step-00000005.pt"]
    assert sorted(p.name for p in ckpt.list_checkpoints(here)) == before
    newest = other / "checkpoints" / "step-00000005.pt"
    r = subprocess.run([PY, "-m", "wgan_dist.train", "--resume", str(newest), "train.steps=7",
                        "--run-dir", str(here)], cwd=tmp_path / "work", env=env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(error_lines(r.stderr)) == 1, r.stderr
    assert "holds checkpoints of another run" in r.stderr
    assert sorted(p.name for p in ckpt.list_checkpoints(here)) == before


# ------------------------------------------------------------------------------ 4. a hung rank
def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _rank_pid(launcher: int, rank: int) -> int:
    for pid in _children(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"wgan_dist.train" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError(f"no rank {rank} under {launcher}")


def test_a_stopped_rank_ends_the_job_in_bounded_time(builtin_shards, tmp_path):
    run, log = tmp_path / "run", tmp_path / "launch.log"
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "wgan_dist.train", *long_run(builtin_shards, run, **{"train.collective_timeout": 8})]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(MASTER_PORT=str(free_port())),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    victim = None
    try:
        wait_for(log, "step      2/", proc, timeout=180)
        victim = _rank_pid(proc.pid, 1)
        os.kill(victim, signal.SIGSTOP)
        t0 = time.time()
        proc.wait(timeout=120)
        took = time.time() - t0
    finally:
        if victim is not None:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log.read_text()
    assert proc.returncode != 0 and took < 90, (took, out[-3000:])
    line = [x for x in out.splitlines() if "CollectiveTimeout" in x]
    assert line and "rank 0:" in line[0] and "train.collective_timeout=8s" in line[0], out[-4000:]
    assert "Traceback" not in out.split(line[0])[0][-2000:]
