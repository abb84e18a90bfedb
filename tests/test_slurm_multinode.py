"""slurm/multinode.sh across two real Slurm nodes on this one machine.

The cluster: `bash .ci/slurm_two_nodes.sh start` (as root): one slurmctld and one munged in the
root network namespace, two slurmd (nodes wgn1 and wgn2), each in its own network namespace
(and host name), joined by veth pairs on a bridge (10.77.0.0/24, nothing leaves the machine).
Its clients need SLURM_CONF=/tmp/wgan_slurm2/slurm.conf; it runs beside the single-node cluster
of .ci/slurm_cluster.sh without touching it. When it is not up, the fixture starts it if we are
root (WGAN_SLURM_AUTOSTART=0 turns that off) and stops it after the session, checking that the
daemons and namespaces it made are gone; one that was already up is used and left alone.

One job, to keep the time down on 2 cores: `sbatch -N 2 slurm/multinode.sh` with one training
process per node (GPUS_PER_NODE=1), torchrun's c10d rendezvous on wgn1, gloo between the
namespaces. It must train as a 2-process group whose ranks run on different nodes (different
node names, host names and network namespaces), stop on the warning signal with a checkpoint,
requeue, and resume on both nodes with the step count continuing.

The settings a resumed run may not change (model.*, data.resolution, data.channels) are in a
small YAML config (CONFIG=<path>), the rest are overrides: the requeued job must resume as the
run it is. (Resuming with those settings given as overrides beside the celeba128 preset is what
tests/test_slurm.py does.)
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from test_slurm import (FINAL, JOB_TIMEOUT, check_run_dir, client_env, cluster_is_up, job_env,
                        job_info, job_output, started_cluster, submit, wait_job, worker_of)

DIR = Path(os.environ.get("SLURM2_CI_DIR", "/tmp/wgan_slurm2"))
CONF = str(DIR / "slurm.conf")
NODES = ("wgn1", "wgn2")
HINT = ("start it with `bash .ci/slurm_two_nodes.sh start` (as root); "
        f"its clients use SLURM_CONF={CONF}")


def namespaces() -> set[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


@pytest.fixture(scope="session")
def two_nodes() -> Iterator[str]:
    """A usable two-node cluster for the session; yields its SLURM_CONF."""
    up = lambda: Path(CONF).is_file() and cluster_is_up(CONF, nodes=len(NODES))
    ours = not up()
    with started_cluster(".ci/slurm_two_nodes.sh", up, HINT):
        yield CONF
    if ours:  # the network went with the daemons
        assert not namespaces() & set(NODES), f"namespaces left: {namespaces()}"


def node_of(pid: int) -> tuple[str, str, int]:
    """(SLURMD_NODENAME, host name, network namespace inode) of a process."""
    environ = dict(kv.split("=", 1) for kv in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    host = subprocess.run(["nsenter", f"--uts=/proc/{pid}/ns/uts", "hostname"],
                          capture_output=True, text=True).stdout.strip()
    return environ.get("SLURMD_NODENAME", ""), host, os.stat(f"/proc/{pid}/ns/net").st_ino


FROZEN = ("data.resolution", "data.channels", "data.hflip", "model.")


def tiny_config(env: dict[str, str], path: Path) -> dict[str, str]:
    """Move the model and image settings of job_env's OVERRIDES into a YAML config at `path`."""
    frozen, rest = {}, []
    for item in env["OVERRIDES"].split():
        key, value = item.split("=", 1)
        if key.startswith(FROZEN):
            section, field = key.split(".")
            frozen.setdefault(section, []).append(f"  {field}: {value}")
        else:
            rest.append(item)
    path.write_text("name: tiny28\n" + "".join(f"{s}:\n" + "\n".join(v) + "\n"
                                             for s, v in frozen.items()))
    return {**env, "CONFIG": str(path), "OVERRIDES": " ".join(rest)}


def test_two_nodes_train_stop_requeue_and_resume(two_nodes, builtin_shards, tmp_path):
    conf = two_nodes
    run, steps = tmp_path / "run", 150  # long enough that the signal lands mid-run
    env = job_env(builtin_shards, run, steps, NPROC="1", GPUS_PER_NODE="1",
                  overrides={"log.ckpt_every": 1000})
    env = tiny_config(env, tmp_path / "tiny28.yaml")
    env["SLURM_CONF"] = conf  # the job's own scontrol (requeue) and srun use it too
    job = submit("slurm/multinode.sh", env, tmp_path, "--nodes=2")

    # Training has started (the first status line): find rank 0 and rank 1 and where they run.
    deadline, ranks = time.time() + JOB_TIMEOUT, {}
    while len(ranks) < 2:
        if (run / "log.txt").is_file():
            ranks = {r: pid for r in (0, 1) if (pid := worker_of(run, r))}
        info = job_info(job, conf)
        if info.get("JobState") in FINAL or time.time() > deadline:
            subprocess.run(["scancel", job], env=client_env(conf))
            pytest.fail(f"job {job} never started training on 2 ranks: {info.get('JobState')}\n"
                        f"{job_output(job, tmp_path)[-5000:]}")
        time.sleep(0.2)
    where = {r: node_of(pid) for r, pid in ranks.items()}
    assert info.get("NodeList") == "wgn[1-2]" and info.get("NumNodes") == "2", info
    assert {where[0][0], where[1][0]} == set(NODES), where  # one rank per node
    assert where[0][:2] == ("wgn1", "wgn1") and where[1][:2] == ("wgn2", "wgn2"), where
    netns = {n: os.stat(f"/run/netns/{n}").st_ino for n in NODES}
    assert where[0][2] == netns["wgn1"] and where[1][2] == netns["wgn2"], (where, netns)

    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True,
                   env=client_env(conf))
    out = wait_job(job, tmp_path, restarts=1, conf=conf)

    assert "2 node(s) x 1 processes, rendezvous wgn1:" in out, out[-5000:]
    assert "torch.distributed.run" in out and "--rdzv-backend=c10d" in out
    assert len(re.findall(r"processes\s+2 on cpu", out)) == 2, out[-5000:]  # both starts
    stopped = re.search(r"stop requested: saved \S+step-(\d{8})\.pt at step (\d+)", out)
    assert stopped, f"no checkpoint on the stop signal:\n{out[-5000:]}"
    k = int(stopped.group(2))
    assert 0 < k < steps, f"stopped at step {k} of {steps}"
    assert f"requeueing job {job}" in out and "start 2" in out
    assert re.search(rf"resumed from \S+step-{k:08d}\.pt at step {k} ", out), out[-5000:]
    assert f"done at step {steps}" in out
    assert torch.load(run / "checkpoints" / f"step-{k:08d}.pt", weights_only=True)["step"] == k
    check_run_dir(run, steps)  # world size 2, no image lost across the requeue
    info = job_info(job, conf)
    assert info.get("Restarts") == "1" and info.get("NodeList") == "wgn[1-2]", info
    ticks = [int(m) for m in re.findall(r"^step\s+(\d+)/", (run / "log.txt").read_text(), re.M)]
    assert ticks[-1] == steps and any(t <= k for t in ticks) and any(t > k for t in ticks)
