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
        wait_for(log, "CollectiveTimeout", proc, timeout=120)
        took = time.time() - t0
        # rank 0 has ended; torchrun would give the stopped rank 30 s to take a SIGTERM it cannot
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=120)
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
    assert proc.returncode != 0 and took < 8 + 30, (took, out[-3000:])
    line = [x for x in out.splitlines() if "CollectiveTimeout" in x]
    assert line and "rank 0:" in line[0] and "train.collective_timeout=8s" in line[0], out[-4000:]
    assert "Traceback" not in out.split(line[0])[0][-2000:]


# ------------------------------------------------------------------------------ 6. divergence
def _spiked(builtin_shards: Path, run: Path, spike: str, log: Path, **extra) -> tuple[int, str]:
    args = tiny_overrides(builtin_shards, run, **{"train.steps": 30, "log.tick_every": 2,
                                                  "log.ckpt_every": 4, "log.keep_checkpoints": 2,
                                                  "log.sample_every": 1000, **extra})
    e = env()
    e["WGAN_DIST_FAULT_LR_SPIKE"] = spike
    proc = subprocess.Popen([PY, "-m", "wgan_dist.train", *args], cwd=REPO, env=e,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    return finish(proc, log, timeout=240)


def test_a_run_made_to_diverge_rolls_back_and_ends_finite(builtin_shards, tmp_path):
    run = tmp_path / "run"
    code, out = _spiked(builtin_shards, run, "10:1e12", tmp_path / "a.log")
    assert code == 0, out[-3000:]
    assert "fault injected: learning rates x1e+12 at step 10" in out
    assert "WARNING step 14: diverged:" in out, out[-3000:]
    assert ("rolled back from step 14 to step-00000008.pt (step 8): learning rates halved to "
            "G 5e-05, D 5e-05, noise stream 1; rollback 1 of 3") in out, out[-3000:]
    state = ckpt.load_checkpoint(run)
    assert state["step"] == 30 and state["rollbacks"] == 1 and state["healthy"]
    for net in ("G", "D", "G_ema"):
        assert all(torch.isfinite(v).all() for v in state[net].values() if v.is_floating_point())
    assert state["opt_D"]["param_groups"][0]["lr"] == 5e-5
    last = [x for x in out.splitlines() if x.startswith("step     30/")][0]
    assert "nan" not in last and "inf" not in last
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "logs")).Reload()
    assert [e.value for e in events.Scalars("Events/rollbacks")] == [1.0]
    # a resumed run keeps its rollbacks: the halved rates and its noise stream
    code, out = finish(start(["--run-dir", str(run), "--resume", "train.steps=32"],
                             tmp_path / "b.log"), tmp_path / "b.log")
    assert code == 0, out[-3000:]
    assert ckpt.load_checkpoint(run)["opt_G"]["param_groups"][0]["lr"] == 5e-5


def test_divergence_stops_with_one_line_keeping_the_healthy_checkpoint(builtin_shards, tmp_path):
    for name, spike, extra, why, healthy in (
            ("stop", "10:1e12", {"train.on_divergence": "stop"}, "train.on_divergence=stop", 8),
            ("limit", "10:1e12,16:1e12", {"train.max_rollbacks": 1},
             "1 rollback(s) already (train.max_rollbacks=1)", 16)):
        run = tmp_path / name
        code, out = _spiked(builtin_shards, run, spike, tmp_path / f"{name}.log", **extra)
        assert code == 1, out[-3000:]
        (line,) = error_lines(out)
        assert line.startswith("error: Diverged: step ") and why in line, line
        path = run / "checkpoints" / f"step-{healthy:08d}.pt"
        assert f"the newest healthy checkpoint is {path}" in line
        state = ckpt.load_checkpoint(path)
        assert state["healthy"] and state["step"] == healthy


def test_a_run_diverged_from_the_start_says_so_and_stops(builtin_shards, tmp_path):
    """optim.lr_d=1e30: every critic step is skipped; the run used to go on with nan in its
    tick lines (and then crash in TensorBoard's histogram before its final checkpoint)."""
    run = tmp_path / "run"
    code, out = finish(start(tiny_overrides(builtin_shards, run, **{
        "optim.lr_d": 1e30, "train.steps": 20, "log.tick_every": 2, "log.sample_every": 1000}),
        tmp_path / "a.log"), tmp_path / "a.log")
    assert code == 1, out[-3000:]
    (line,) = error_lines(out)
    assert "skipped as non-finite" in line and "no healthy checkpoint to go back to" in line


def test_a_collapse_induced_on_the_toy_is_rolled_back(tmp_path):
    """The same guard on the toy benchmark: a total collapse induced at step 600 stays collapsed
    without it (0 of 8 modes) and is rolled back with it (all 8 modes at the end)."""
    from wgan_dist.toybench.run import run_toy

    plain = run_toy("ring", 0, 1500, reject=0, collapse_at=600)
    rescued = run_toy("ring", 0, 1500, reject=0, collapse_at=600, rescue_every=50)
    assert plain["modes"] <= 1 and plain["rescue"] == {}
    assert rescued["modes"] == 8 and rescued["rescue"]["rollbacks"] == 1, rescued["rescue"]
    (event,) = rescued["rescue"]["events"]
    assert event.startswith("step 700: collapsed: the mode-collapse alarm fired at 2 checks")
    assert "rolled back to step 600, learning rates x0.5, noise stream 1" in event
    r = subprocess.run([PY, "-m", "wgan_dist.toy", "--dataset", "ring", "--seed", "0", "--steps",
                        "1500", "--reject", "0", "--collapse-at", "600", "--rescue-every", "50",
                        "--out", str(tmp_path)], cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "ring seed 0: step 700: collapsed" in r.stdout, r.stderr[-2000:]


def test_a_read_only_run_dir_is_one_line(builtin_shards, tmp_path):
    """A run dir on a read-only mount (as root a plain chmod does not stop a write)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a read-only bind mount (CI runs as root)")
    run = tmp_path / "run"
    run.mkdir()
    subprocess.run(["mount", "--bind", str(run), str(run)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(run)], check=True)
        code, out = finish(start(tiny_overrides(builtin_shards, run, **{"train.steps": 2}),
                                 tmp_path / "a.log"), tmp_path / "a.log")
    finally:
        subprocess.run(["umount", str(run)], check=True)
    assert code == 2, out[-3000:]
    (line,) = error_lines(out)
    assert f"{run}: the run directory cannot be written (Read-only file system)" in line
    assert "Traceback" not in out
