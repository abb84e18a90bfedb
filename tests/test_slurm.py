"""The Slurm scripts, run for real on a single-node Slurm cluster on this machine.

The cluster: `bash .ci/slurm_cluster.sh start` (as root). When it is not up, the fixture starts
it if we are root (WGAN_SLURM_AUTOSTART=0 turns that off), and stops it again after the session,
checking that none of the daemons it started is left; a cluster that was already up is used and
left alone. Otherwise these tests fail with that hint. They never skip: CI must exercise the
launchers. (The two-node cluster and its tests: tests/test_slurm_multinode.py.)

The jobs run the real scripts with environment overrides: 2 CPU processes, the built-in data
set (small), a tiny model, a few steps, a temporary run dir. sbatch options that a CPU cluster
cannot satisfy (--gres=gpu:8, 2 nodes) are overridden on the sbatch command line, as a user
would. Covered: a plain job of each script (a real 2-process group, checkpoint, samples,
TensorBoard events); the time-limit warning through each script (checkpoint, requeue, resume
with the step count continuing); a crash inside a job (the script relaunches, the run resumes);
the dry-run commands. Jobs are submitted with --parsable and scontrol is polled every second:
`sbatch --wait` polls with growing sleeps and added ~30 s to a 12 s job here.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from wgan_dist.training import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent
JOB_TIMEOUT = 420  # seconds per job, requeue included; a healthy one takes 15-70 s
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE")
START_HINT = "start it with `bash .ci/slurm_cluster.sh start` (as root)"
# The scripts' settings: never inherited from the environment pytest runs in.
SCRIPT_VARS = ("CONFIG", "SHARDS", "RUN_DIR", "NPROC", "GPUS_PER_NODE", "MASTER_ADDR",
               "MASTER_PORT", "OVERRIDES", "LAUNCHER", "MAX_RESTARTS", "STOP_TIMEOUT", "REQUEUE",
               "ACCELERATE_CONFIG", "PYTHON", "REPO_DIR", "DRY_RUN", "NNODES", "NODE_RANK",
               "WORLD_SIZE", "RANK", "LOCAL_RANK", "BACKEND", "DEEPSPEED_CONFIG", "HOSTFILE")


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS
            and not k.startswith(("SLURM_", "SBATCH_", "PET_", "ACCELERATE_"))}


def client_env(conf: str | None = None) -> dict[str, str]:
    """The environment of sinfo/scontrol/scancel: SLURM_CONF=conf picks a cluster; without
    one, /etc/slurm/slurm.conf (the single-node cluster's, which the jobs use too: job_env
    drops SLURM_* variables)."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    return {**env, "SLURM_CONF": conf} if conf else env


def cluster_is_up(conf: str | None = None, nodes: int = 1) -> bool:
    """sinfo answers and at least `nodes` nodes are usable."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True,
                           timeout=60, env=client_env(conf))
    except subprocess.TimeoutExpired:
        return False
    usable = {line.split()[0] for line in r.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1] in ("idle", "mixed", "allocated")}
    return r.returncode == 0 and len(usable) >= nodes


DAEMONS = ("slurmctld", "slurmscriptd", "slurmd", "slurmstepd", "munged")


def daemon_pids() -> dict[int, str]:
    """pid -> name of every Slurm or munge daemon on this machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name in DAEMONS:
                found[int(entry.name)] = name
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextmanager
def started_cluster(script: str, is_up: Callable[[], bool], hint: str) -> Iterator[None]:
    """A usable cluster for the duration of the block. One that is already up is used and left
    alone. Otherwise, as root (WGAN_SLURM_AUTOSTART=0 turns that off), `bash SCRIPT start`
    starts it, and `bash SCRIPT stop` stops it at the end; then every daemon it started (the
    pids its `status` reported, and any slurmctld/slurmd/slurmstepd/munged that appeared
    meanwhile) must be gone. Without root the tests fail with `hint`."""
    if is_up():
        yield
        return
    if os.geteuid() != 0 or os.environ.get("WGAN_SLURM_AUTOSTART", "1") == "0":
        pytest.fail(f"the Slurm cluster is not up: {hint}", pytrace=False)
    before = daemon_pids()
    run = lambda action, timeout: subprocess.run(["bash", str(REPO / script), action],
                                                 capture_output=True, text=True, timeout=timeout)
    r = run("start", 900)
    log = r.stdout + r.stderr
    status = run("status", 120).stdout
    started = {int(p) for p in re.findall(r"running \(pid (\d+)\)", status)} - set(before)
    try:
        if r.returncode != 0 or not is_up():
            pytest.fail(f"{script} start did not give a usable cluster: {hint}\n{log}",
                        pytrace=False)
        yield
    finally:
        stop = run("stop", 300)
        time.sleep(0.5)  # a daemon's last exit
        left = {pid: name for pid, name in daemon_pids().items()
                if pid not in before and alive(pid)}
        left.update({pid: "daemon" for pid in started if alive(pid) and pid not in left})
        assert stop.returncode == 0 and not left, (
            f"{script} stop (exit {stop.returncode}) left daemons it started running: {left}\n"
            f"{stop.stdout}{stop.stderr}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[None]:
    """A usable single-node Slurm cluster (.ci/slurm_cluster.sh), for the whole session: started
    when it is not up (as root), stopped again at the end, checked to leave nothing running."""
    with started_cluster(".ci/slurm_cluster.sh", cluster_is_up, START_HINT):
        yield


def job_env(builtin_shards: Path, run_dir: Path, steps: int, **extra: str) -> dict[str, str]:
    """The submitting environment: the scripts read their settings from it."""
    per_class = json.loads((builtin_shards / "manifest.json").read_text())["source"]["per_class"]
    overrides = {
        # The celeba128 preset is 128 px RGB; the built-in sketches are 28 px grayscale.
        "data.resolution": 28, "data.channels": 1, "data.hflip": "false",
        "data.cache_dir": builtin_shards.parent, "data.builtin_per_class": per_class,
        "data.workers": 0, "data.shuffle_buffer": 50,
        "model.g_width": 8, "model.d_width": 8, "model.latent_dim": 16,
        "train.batch_size": 8, "optim.n_critic": 2, "train.steps": steps,
        "log.tick_every": 2, "log.sample_every": steps, "log.ckpt_every": steps,
        "log.grid_size": 16, "eval.num": 64,
    }
    overrides.update(extra.pop("overrides", {}))
    env = base_env()
    env.update(PYTHON=sys.executable, REPO_DIR=str(REPO), OMP_NUM_THREADS="1",
               NPROC="2", GPUS_PER_NODE="2", SHARDS="builtin", RUN_DIR=str(run_dir),
               OVERRIDES=" ".join(f"{k}={v}" for k, v in overrides.items()))
    env.update(extra)
    return env


def submit(script: str, env: dict[str, str], out_dir: Path, *sbatch_args: str) -> str:
    """sbatch with the job environment `env` (its SLURM_CONF, if any, picks the cluster)."""
    r = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--gres=none", "--time=15",
                        f"--output={out_dir}/job-%j.out", *sbatch_args, script],
                       cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"sbatch {script} failed: {r.stderr}"
    return r.stdout.strip().split(";")[0]


def job_info(job: str, conf: str | None = None) -> dict[str, str]:
    r = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True,
                       env=client_env(conf))
    return dict(re.findall(r"(\w+)=(\S*)", r.stdout))


def job_output(job: str, out_dir: Path) -> str:
    path = out_dir / f"job-{job}.out"
    return path.read_text() if path.is_file() else ""


def wait_job(job: str, out_dir: Path, restarts: int = 0, timeout: float = JOB_TIMEOUT,
             conf: str | None = None) -> str:
    """Poll until the job has finished (after `restarts` requeues); return its output."""
    deadline, ended_early = time.time() + timeout, None
    while time.time() < deadline:
        info = job_info(job, conf)
        if info.get("JobState") in FINAL:
            out = job_output(job, out_dir)
            if int(info.get("Restarts", 0)) >= restarts:
                assert info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0", \
                    f"job {job}: {info.get('JobState')} exit {info.get('ExitCode')}\n{out[-6000:]}"
                return out
            ended_early = ended_early or time.time()
            assert time.time() - ended_early < 15, \
                f"job {job} ended without being requeued: {info.get('JobState')}\n{out[-6000:]}"
        time.sleep(1)
    subprocess.run(["scancel", job], env=client_env(conf))
    pytest.fail(f"job {job} did not finish in {timeout} s: {job_info(job, conf).get('JobState')}\n"
                f"{job_output(job, out_dir)[-6000:]}")


def check_run_dir(run: Path, steps: int) -> dict:
    final = ckpt.load_checkpoint(run)
    assert (final["step"], final["world_size"]) == (steps, 2)
    assert final["nimg"] == steps * 8 * 2  # global batch 8 x 2 critic steps, no step lost
    assert (run / "samples" / f"step-{steps:08d}.png").is_file()
    assert list((run / "logs").glob("events.out.tfevents.*")), "no TensorBoard events"
    return final


# --------------------------------------------------------------------------------------------

def test_job_trains_on_two_processes_with_deepspeed(cluster, builtin_shards, tmp_path):
    """A plain job of `BACKEND=deepspeed sbatch slurm/celeba_8gpu.sh` (DeepSpeed ZeRO-2).
    The DDP jobs of both scripts run inside the crash and time-limit tests below: one job
    less on a 2-core machine."""
    run, steps = tmp_path / "run", 4
    job = submit("slurm/celeba_8gpu.sh", job_env(builtin_shards, run, steps, BACKEND="deepspeed"),
                 tmp_path)
    out = wait_job(job, tmp_path)
    assert "accelerate.commands.launch" in out  # the script echoes the command it runs
    assert re.search(r"processes\s+2 on cpu, .*DeepSpeed ZeRO-2", out), \
        f"not a 2-process ZeRO-2 group:\n{out[-4000:]}"
    assert f"done at step {steps}" in out
    check_run_dir(run, steps)


@pytest.mark.parametrize("script,workers", [("slurm/celeba_8gpu.sh", 1), ("slurm/multinode.sh", 0)])
def test_time_limit_warning_checkpoints_requeues_and_resumes(cluster, builtin_shards, tmp_path,
                                                             script, workers):
    """The warning signal (sent as --signal=B:USR1@300 would) stops, saves, requeues, resumes.

    The celeba script runs the launcher in the batch step and signals it directly; the
    multinode script signals through srun. One loader worker on the celeba path checks that the
    stop signal does not kill the data pipeline.
    """
    run, steps = tmp_path / "run", 200  # long enough that the signal lands mid-run
    env = job_env(builtin_shards, run, steps, overrides={"data.workers": workers,
                                                        "log.ckpt_every": 1000})
    job = submit(script, env, tmp_path)
    deadline = time.time() + JOB_TIMEOUT
    while not started(run):
        info = job_info(job)
        if info.get("JobState") in FINAL or time.time() > deadline:
            subprocess.run(["scancel", job], env=client_env())
            pytest.fail(f"job {job} never started training: {info.get('JobState')}\n"
                        f"{job_output(job, tmp_path)[-5000:]}")
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, env=client_env())
    out = wait_job(job, tmp_path, restarts=1)

    stopped = re.search(r"stop requested: saved \S+step-(\d{8})\.pt at step (\d+)", out)
    assert stopped, f"no checkpoint on the stop signal:\n{out[-5000:]}"
    k = int(stopped.group(2))
    assert 0 < k < steps, f"stopped at step {k} of {steps}"
    assert f"requeueing job {job}" in out and "start 2" in out
    assert re.search(rf"resumed from \S+step-{k:08d}\.pt at step {k} ", out), out[-5000:]
    assert len(re.findall(r"processes\s+2 on cpu", out)) == 2  # both starts: a 2-process group
    assert torch.load(run / "checkpoints" / f"step-{k:08d}.pt", weights_only=True)["step"] == k
    check_run_dir(run, steps)
    assert job_info(job).get("Restarts") == "1"
    # The status lines continue from the stop step: ticks after k appear once the job resumed.
    ticks = [int(m) for m in re.findall(r"^step\s+(\d+)/", (run / "log.txt").read_text(), re.M)]
    assert ticks[-1] == steps and any(t <= k for t in ticks) and any(t > k for t in ticks)


def started(run: Path) -> bool:
    """The first status line is in the run log: training has started (the log itself is
    written as soon as the run dir exists)."""
    log = run / "log.txt"
    return log.is_file() and re.search(r"^step\s+\d+/", log.read_text(), re.M) is not None


def worker_of(run: Path, rank: int) -> int | None:
    """The pid of the training process of `rank` whose command line names this run dir."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(run).encode() in cmdline and f"RANK={rank}".encode() in environ \
                and b"wgan_dist.train" in cmdline:
            return int(entry.name)
    return None


def test_crash_inside_the_job_relaunches_and_resumes(cluster, builtin_shards, tmp_path):
    """slurm/multinode.sh, 1 node: a training process dies (SIGKILL), srun ends the step, the
    batch script relaunches it, the new processes resume from the newest checkpoint, and the
    job completes with the full step count on a 2-process group."""
    run, steps = tmp_path / "run", 20
    env = job_env(builtin_shards, run, steps, MAX_RESTARTS="1",
                  overrides={"log.ckpt_every": 5, "log.tick_every": 1})
    job = submit("slurm/multinode.sh", env, tmp_path)
    deadline = time.time() + JOB_TIMEOUT
    victim = None
    while victim is None:
        if (run / "checkpoints" / "step-00000005.pt").is_file():
            victim = worker_of(run, 1)
        if job_info(job).get("JobState") in FINAL or time.time() > deadline:
            subprocess.run(["scancel", job], env=client_env())
            pytest.fail(f"job {job}: no checkpoint of step 5 and rank 1 to kill\n"
                        f"{job_output(job, tmp_path)[-5000:]}")
        time.sleep(0.2)
    os.kill(victim, signal.SIGKILL)
    out = wait_job(job, tmp_path)
    assert "torch.distributed.run" in out and "--rdzv-backend=c10d" in out
    assert "srun failed" in out and "relaunch 1 of 1" in out, out[-5000:]
    assert len(re.findall(r"processes\s+2 on cpu", out)) == 2, out[-5000:]
    assert f"done at step {steps}" in out
    resumed = re.search(r"resumed from \S+step-(\d{8})\.pt at step (\d+)", out)
    assert resumed and int(resumed.group(2)) >= 5, out[-5000:]
    check_run_dir(run, steps)


def test_dry_run_prints_the_launch_and_reads_the_environment(tmp_path):
    """DRY_RUN=1 (no cluster needed): the defaults, and every override reaching the command."""
    def dry(script: str, *args: str, **env: str) -> str:
        r = subprocess.run(["bash", script, *args], cwd=REPO, capture_output=True, text=True,
                           env={**base_env(), "DRY_RUN": "1", **env})
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = dry("slurm/celeba_8gpu.sh")
    assert "--config_file launch/accelerate_8gpu.yaml --num_processes 8" in out
    assert "-m wgan_dist.train --config celeba128 --run-dir runs/celeba128 --resume auto" in out
    out = dry("slurm/celeba_8gpu.sh", "train.steps=7", NPROC="4", CONFIG="configs/x.yaml",
              SHARDS="shards/y", RUN_DIR="runs/z", OVERRIDES="a.b=1 c.d=2", MASTER_PORT="1234")
    assert "--num_processes 4 --max_restarts 0 --main_process_port 1234" in out
    assert "--config configs/x.yaml --run-dir runs/z --resume auto data.shards=shards/y a.b=1 c.d=2 train.steps=7" in out
    out = dry("slurm/celeba_8gpu.sh", BACKEND="deepspeed", OVERRIDES="a.b=1")
    assert "--resume auto train.backend=deepspeed train.deepspeed_config=launch/deepspeed_zero2.json a.b=1" in out
    out = dry("slurm/multinode.sh", BACKEND="deepspeed", DEEPSPEED_CONFIG="ds.yaml", SLURM_NNODES="2")
    assert "train.backend=deepspeed train.deepspeed_config=ds.yaml" in out
    r = subprocess.run(["bash", "slurm/celeba_8gpu.sh"], cwd=REPO, capture_output=True, text=True,
                       env={**base_env(), "DRY_RUN": "1", "BACKEND": "zero"})
    assert r.returncode == 2 and "BACKEND=zero: choose ddp or deepspeed" in r.stderr

    out = dry("slurm/multinode.sh", SLURM_JOB_ID="4321", SLURM_NNODES="3",
              SLURM_JOB_NODELIST="", MASTER_ADDR="node7")
    assert "srun --nodes=3 --ntasks-per-node=1" in out
    assert "--nnodes=3 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=node7:29821 --rdzv-id=4321" in out
    assert "--max-restarts=0" in out  # the script relaunches after a crash, not torchrun
    out = dry("slurm/multinode.sh", LAUNCHER="accelerate", GPUS_PER_NODE="4", SLURM_NNODES="2",
              MASTER_ADDR="node7", MASTER_PORT="999")
    assert "--config_file launch/accelerate_multinode.yaml --num_machines 2 --num_processes 8" in out
    assert "--main_process_ip node7 --main_process_port 999" in out and "SLURM_NODEID" in out

    out = dry("launch/torchrun.sh", "--config", "celeba128", NPROC="2")
    assert "--standalone --nproc-per-node=2 --max-restarts=3" in out
    assert "-m wgan_dist.train --resume auto --config celeba128" in out
    out = dry("launch/torchrun.sh", NPROC="8", NNODES="2", MASTER_ADDR="n0", MASTER_PORT="29400",
              MAX_RESTARTS="0")
    assert "--nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=n0:29400 --rdzv-id=wgan_dist" in out
    assert "--nproc-per-node=8 --max-restarts=0" in out
    out = dry("launch/torchrun.sh", NNODES="2", NODE_RANK="1", MASTER_ADDR="n0", RDZV_BACKEND="static")
    assert "--nnodes=2 --node-rank=1 --master-addr=n0 --master-port=29500" in out

    out = dry("launch/torchrun.sh", BACKEND="deepspeed", NPROC="2")
    assert "-m wgan_dist.train --resume auto train.backend=deepspeed train.deepspeed_config=" in out
    out = dry("launch/deepspeed.sh", "a.b=1", NPROC="4")
    assert "-m deepspeed.launcher.runner --num_gpus 4 --master_port 29500 --module wgan_dist.train" in out
    assert "--resume auto train.backend=deepspeed train.deepspeed_config=" in out and "a.b=1" in out
    assert "--hostfile hosts" in dry("launch/deepspeed.sh", HOSTFILE="hosts")

    for script in ("slurm/celeba_8gpu.sh", "slurm/multinode.sh"):
        header = re.findall(r"^#SBATCH (\S+)", (REPO / script).read_text(), re.M)
        for opt in ("--requeue", "--open-mode=append", "--gres=gpu:8"):
            assert opt in header, f"{script}: no #SBATCH {opt}"
        assert any(re.fullmatch(r"--signal=B:USR1@\d+", o) for o in header), script


@pytest.mark.parametrize("script", ["launch/torchrun.sh", "launch/deepspeed.sh",
                                    "slurm/celeba_8gpu.sh", "slurm/multinode.sh"])
def test_help_prints_the_scripts_usage_and_exits_0(script):
    """--help (or -h, anywhere among the arguments) prints the script's own comment block, its
    usage and environment variables, and exits 0 without launching anything (no cluster
    needed): an interpreter that fails and a repository dir that does not exist would show."""
    text = (REPO / script).read_text()
    documented = re.findall(r"^#   ([A-Z][A-Z_]+)\s", text, re.M)
    assert len(documented) >= 5, documented
    env = {**base_env(), "PYTHON": "false", "REPO_DIR": "/nonexistent"}
    for args in (["--help"], ["-h"], ["train.steps=5", "--help"]):
        r = subprocess.run(["bash", script, *args], cwd=REPO, capture_output=True, text=True,
                           env=env, timeout=30)
        assert r.returncode == 0 and r.stderr == "", (args, r.returncode, r.stderr)
        out = r.stdout
        first = text.splitlines()[1].removeprefix("# ")
        assert out.splitlines()[0] == first, out[:300]
        for var in documented:
            assert re.search(rf"^  {var}\s", out, re.M), f"{script} --help: no {var}\n{out}"
        assert not re.search(r"^#SBATCH --|^set -euo", out, re.M), out  # only the comment block
        assert f"bash {script} --help" in out
