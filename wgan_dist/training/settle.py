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

from typing import Any

from ..config import Config, ConfigError
from .threads import choose_threads

MACHINE = ("train.threads", "data.cache")


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
