"""What a run settles at start-up, before its config is validated and frozen.

A config as given leaves some settings to the run: which backend and ZeRO stage (the
launcher may choose them: ``backends.resolve``), where the images are held (``data.cache``
auto: the free memory, ``inputs``), how many torch threads (this machine's cores, less its
loader workers), how many classes (the shard manifest's). Each is resolved here, in a copy of the
config, which is then validated and frozen: config.yaml and every checkpoint say what ran.

Settings chosen for *this machine* (``MACHINE``) are chosen again when the run resumes
elsewhere (a Slurm requeue on another node): a checkpoint lists which of its settings were
chosen that way (``chosen_for_machine``), and ``resume`` resets them.
"""
from __future__ import annotations

import os
from typing import Any

from ..config import Config, ConfigError

MACHINE = ("train.threads", "data.cache")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int, loader_workers: int) -> tuple[int, str]:
    """torch intra-op threads for this process, and why.

    ``requested`` > 0 is taken as it is. 0 (auto): $OMP_NUM_THREADS when set (the user's or
    the launcher's choice), else this process's share of the cores (cores / processes on
    this node) minus its loader workers, at least 1. More threads than free cores is the
    trap: OpenMP's barriers wait for a thread the OS has descheduled, and a step runs many
    times slower (benchmarks/bench_threads.py measures it)."""
    if requested > 0:
        return requested, "train.threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, local = usable_cores(), int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    n = max(1, cores // max(local, 1) - loader_workers)
    return n, f"{cores} cores / {local} process(es) - {loader_workers} loader worker(s)"


def settle_threads(cfg: Config, loader_workers: int) -> tuple[str, list[str]]:
    """train.threads as this process will run it beside its ``loader_workers``; (why, the
    settings chosen for the machine)."""
    n, why = choose_threads(cfg.train.threads, loader_workers)
    chosen = [] if why == "train.threads" else ["train.threads"]
    cfg.train.threads = n
    return why, chosen


def settle_classes(cfg: Config, class_names: list[str], where: Any) -> int:
    """model.num_classes of a conditional model from the shards' classes (0 otherwise)."""
    m = cfg.model
    if not m.conditional:
        return 0
    if not class_names:
        raise ConfigError(f"model.conditional=true needs labelled shards, but {where} has no "
                          f"class labels (class subfolders, QuickDraw files or the built-in set "
                          f"give labels); or set model.conditional=false")
    if m.num_classes and m.num_classes != len(class_names):
        raise ConfigError(f"model.num_classes={m.num_classes} but {where} has {len(class_names)} "
                          f"classes ({', '.join(class_names)}); leave model.num_classes=0 to take "
                          f"them from the manifest")
    m.num_classes = len(class_names)  # stored with the config in every checkpoint
    return m.num_classes
