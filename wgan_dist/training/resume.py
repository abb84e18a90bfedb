"""Every run resumes as itself: the config of a resumed run is the one stored in its
checkpoint, with only the settings given explicitly on the command line applied on top --
and only those that cannot break it.

What cannot change on resume (refused with the reason): the networks' shapes and kind
(every ``model.*`` setting) and the images they see (``data.resolution``, ``data.channels``).
Everything else may (more steps, another batch size, another data path, logging, evaluation).
A preset given with ``--config`` next to ``--resume`` must agree with the run on those same
settings; its other values are the run's own already.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import Config, ConfigError, apply_values, config_from_dict, parse_overrides, validate
from ..config.load import to_dict
from . import checkpoint as ckpt
from .backends import label
from .settle import MACHINE

FROZEN_SECTIONS = ("model",)
FROZEN_KEYS = ("data.resolution", "data.channels")


@dataclass
class Resume:
    """A checkpoint to continue from, read once: where it is, its state, the run's own config
    (built once from it)."""
    path: Path
    state: dict[str, Any]
    config: Config

    @classmethod
    def of(cls, state: dict[str, Any] | None) -> "Resume | None":
        return None if state is None else cls(Path(state["path"]), state, config_from_dict(state["config"]))


def _flat(values: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _frozen(key: str) -> bool:
    return key.split(".")[0] in FROZEN_SECTIONS or key in FROZEN_KEYS


def frozen_differences(run: Config, other: Config) -> list[str]:
    """The settings that may not change on resume and differ, as 'key: run X, given Y'."""
    a, b = _flat(to_dict(run)), _flat(to_dict(other))
    # num_classes 0 means "from the manifest": the run's filled-in value is what it asked for.
    if b.get("model.num_classes") == 0:
        b["model.num_classes"] = a.get("model.num_classes")
    return [f"{k}: the run has {a[k]!r}, given {b[k]!r}" for k in sorted(a)
            if _frozen(k) and a[k] != b.get(k)]


def open_resume(run_dir: Path, resume: str, log: Callable[[str], None]) -> Resume | None:
    """The checkpoint ``--resume`` means, read: a path (a file, a run dir or its checkpoints/),
    or the newest that verifies in the run dir ("latest"; "auto": None when there is none)."""
    if resume not in ("latest", "auto"):
        path = Path(resume)
        if path.is_dir():
            return Resume.of(ckpt.find_resume(path.parent if path.name == "checkpoints" else path,
                                              "latest", False, log))
        return Resume.of(ckpt.load_checkpoint(path))
    return Resume.of(ckpt.find_resume(run_dir, resume, False, log))


def file_run_dir(path: Path) -> Path | None:
    """The run a checkpoint file belongs to (``RUN/checkpoints/step-N.pt``), if it is in one."""
    path = Path(path)
    if path.is_dir():
        return path.parent if path.name == "checkpoints" else path
    return path.parent.parent if path.parent.name == "checkpoints" else None


def target_run_dir(given: Config, resume: str, explicit: list[str]) -> Path:
    """Where a resumed run continues: the run dir given explicitly (``--run-dir`` /
    ``log.run_dir=``), else the run the checkpoint named by ``--resume PATH`` belongs to, else
    the config's run dir."""
    if any(o.split("=", 1)[0].strip() == "log.run_dir" for o in explicit):
        return given.run_dir
    if resume not in ("latest", "auto"):
        return file_run_dir(Path(resume)) or given.run_dir
    return given.run_dir


def _check_not_another_run(found: Resume, run_dir: Path) -> None:
    """A checkpoint resumed into a run dir that is not its own: that dir must hold no
    checkpoints, or rotation would delete another run's."""
    own = file_run_dir(found.path)
    if own is not None and own.resolve() == Path(run_dir).resolve():
        return
    theirs = ckpt.list_checkpoints(run_dir)
    home = own or "the checkpoint's own run dir"
    if theirs:
        raise ConfigError(f"cannot resume {found.path} into {run_dir}: it holds checkpoints of "
                          f"another run (newest {theirs[-1].name}), which this run's rotation would "
                          f"delete; resume into {home} or an empty "
                          f"log.run_dir")


def _machine_defaults(cfg: Config, state: dict[str, Any], typed: set[str]) -> None:
    """Settings the run chose for its machine (``settle.MACHINE``) are chosen again here,
    unless the command line gives them."""
    fresh = _flat(to_dict(Config()))
    reset = {k: fresh[k] for k in state.get("chosen_for_machine", []) if k in MACHINE and k not in typed}
    for key, value in reset.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)


def config_for_resume(given: Config, preset: Config | None, explicit: list[str], resume: str,
                      log: Callable[[str], None] = print,
                      run_dir: Path | None = None) -> tuple[Config, Resume | None]:
    """The config a resumed run continues with (``given`` when there is nothing to resume), and
    the checkpoint it continues from, read once.

    ``given``: preset + explicit overrides, as a fresh start would use (it names the run dir);
    ``preset``: the preset alone, when one was given; ``explicit``: the dotted overrides the
    user typed (flags included); ``run_dir``: where the run continues (``target_run_dir``)."""
    run_dir = Path(run_dir or target_run_dir(given, resume, explicit))
    found = open_resume(run_dir, resume, log)
    if found is None:
        return given, None  # --resume auto on a run with no checkpoint: a fresh start
    _check_not_another_run(found, run_dir)
    run = found.config
    cfg = copy.deepcopy(run)
    typed = set(_flat(parse_overrides(explicit)))
    _machine_defaults(cfg, found.state, typed)
    apply_values(cfg, parse_overrides(explicit))
    cfg.log.run_dir = str(run_dir)
    validate(cfg)
    bad = frozen_differences(run, cfg)
    if preset is not None:
        # A preset value the command line overrides is not what the run is given.
        typed |= {x.split(":")[0] for x in bad}
        bad += [f"{b} (by the preset)" for b in frozen_differences(run, preset)
                if b.split(":")[0] not in typed]
    if bad:
        raise ConfigError(f"cannot resume {found.path} with a different model or image size ("
                          + "; ".join(bad) + "); start a new run instead (log.run_dir=...)")
    before = _flat(to_dict(run))
    changed = [k for k, v in _flat(to_dict(cfg)).items()
               if before.get(k) != v and k != "log.run_dir" and k not in MACHINE]
    log(f"resuming {found.path} with the run's own config"
        + (f"; changed on the command line: {', '.join(changed)}" if changed else ""))
    return cfg, found


def check_resume_classes(found: Resume, names: list[str], where: Any) -> None:
    """A conditional model's labels are its classes: it continues on the same ones, in the same
    order, or not at all (the checkpoint's names must not be put on another set's labels)."""
    saved = list(found.state.get("class_names") or [])
    if saved and saved != list(names):
        def shown(names: list[str]) -> str:
            return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ConfigError(f"cannot resume {found.path}: the conditional model was trained on "
                          f"{len(saved)} classes ({shown(saved)}) but {where} has {len(names)} "
                          f"({shown(list(names))}): each label would mean another class; resume "
                          f"with the data it was trained on, or start a new run (log.run_dir=...)")


def resume_message(state: dict[str, Any], old: Config, cfg: Config, world: int, batch: int) -> str:
    """What resuming ``state`` (saved with config ``old``) under ``cfg`` on ``world``
    processes changes, in one line."""
    msg = (f"resumed from {state['path']} at step {state['step']} "
           f"({state['nimg'] / 1000:.1f} kimg)")
    if state["world_size"] != world:
        msg += (f"; processes {state['world_size']} -> {world}: global batch stays "
                f"{cfg.train.batch_size}, per-process batch is now {batch}; "
                f"the data order differs from an uninterrupted run")
    before, now = label(old), label(cfg)
    if before != now:  # the optimizer state is torch Adam's whole layout under every backend
        msg += f"; backend {before} -> {now}"
    if old.train.batch_size != cfg.train.batch_size:
        msg += f"; global batch changed {old.train.batch_size} -> {cfg.train.batch_size}"
    return msg
