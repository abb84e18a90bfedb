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

from pathlib import Path
from typing import Callable

from ..config import Config, ConfigError, apply_values, config_from_dict, parse_overrides, validate
from ..config.load import to_dict
from . import checkpoint as ckpt

FROZEN_SECTIONS = ("model",)
FROZEN_KEYS = ("data.resolution", "data.channels")


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


def checkpoint_to_resume(run_dir: Path, resume: str, log: Callable[[str], None]) -> Path | None:
    """The checkpoint ``--resume`` means: a path, or the newest that verifies in the run dir."""
    if resume not in ("latest", "auto"):
        path = Path(resume)
        if path.is_dir():
            path = ckpt.select_resume(path.parent if path.name == "checkpoints" else path,
                                      "latest", False, log)
        return path
    return ckpt.select_resume(run_dir, resume, False, log)


def config_for_resume(given: Config, preset: Config | None, explicit: list[str], resume: str,
                      log: Callable[[str], None] = print) -> Config:
    """The config a resumed run continues with (``given`` when there is nothing to resume).

    ``given``: preset + explicit overrides, as a fresh start would use (it names the run dir);
    ``preset``: the preset alone, when one was given; ``explicit``: the dotted overrides the
    user typed (flags included)."""
    path = checkpoint_to_resume(given.run_dir, resume, log)
    if path is None:
        return given  # --resume auto on a run with no checkpoint: a fresh start
    state = ckpt.load_checkpoint(path, log=log)
    run = config_from_dict(state["config"])
    cfg = config_from_dict(state["config"])
    apply_values(cfg, parse_overrides(explicit))
    cfg.log.run_dir = str(given.run_dir)  # where it was found is where it continues
    validate(cfg)
    bad = frozen_differences(run, cfg)
    if preset is not None:
        # A preset value the command line overrides is not what the run is given.
        typed = set(_flat(parse_overrides(explicit))) | {x.split(":")[0] for x in bad}
        bad += [f"{b} (by the preset)" for b in frozen_differences(run, preset)
                if b.split(":")[0] not in typed]
    if bad:
        raise ConfigError(f"cannot resume {path} with a different model or image size ("
                          + "; ".join(bad) + "); start a new run instead (log.run_dir=...)")
    changed = [k for k, v in _flat(to_dict(cfg)).items()
               if _flat(to_dict(run)).get(k) != v and k != "log.run_dir"]
    log(f"resuming {path} with the run's own config"
        + (f"; changed on the command line: {', '.join(changed)}" if changed else ""))
    return cfg
