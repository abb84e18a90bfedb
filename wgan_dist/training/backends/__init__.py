"""Training backends: how a loss becomes an optimizer step, declared once (``base.Backend``).

- ``ddp``: DDP through Accelerate (the default, ``train.backend=ddp``);
- ``deepspeed``: DeepSpeed ZeRO-1/2, one engine per network (``train.backend=deepspeed``, or
  any `accelerate launch` with a DeepSpeed Accelerate config).

Everything a backend decides -- which one runs, its ZeRO stage and precision, what it refuses
-- is settled by ``resolve`` before the config is validated and frozen; nothing outside this
package imports DeepSpeed or branches on ``train.backend``.
"""
from __future__ import annotations

import os

from ...config import Config, ConfigError
from . import deepspeed
from .base import Accumulated, Backend, MicroBatch, Stats
from .ddp import DDPBackend
from .deepspeed import ZeroBackend

BACKENDS = {"ddp": DDPBackend, "deepspeed": ZeroBackend}
PRECISIONS = ("no", "bf16", "fp16")


def _launcher_precision(cfg: Config) -> list[str]:
    """`accelerate launch --mixed_precision X` (ACCELERATE_MIXED_PRECISION): taken when the
    config asks for none, refused when it asks for another; the trainer passes its own
    setting to the Accelerator, which would otherwise ignore the launcher's silently."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    t = cfg.train
    if launched in ("no", "") or launched == t.mixed_precision:
        return []
    if launched not in PRECISIONS:
        raise ConfigError(f"accelerate launch --mixed_precision {launched}: choose no, bf16 or fp16")
    if t.mixed_precision != "no":
        raise ConfigError(f"train.mixed_precision={t.mixed_precision} but the launcher asks for "
                          f"{launched} (accelerate launch --mixed_precision); make them agree")
    t.mixed_precision = launched
    return [f"note: mixed precision {launched} from the launcher (accelerate launch --mixed_precision)"]


def resolve(cfg: Config) -> list[str]:
    """Settle in ``cfg`` (in place, before it is validated and frozen) which backend runs and
    its settings, from the config and the launcher; the notes to print. One line
    (ConfigError) for anything refused."""
    if cfg.train.backend not in BACKENDS:
        raise ConfigError(f"train.backend={cfg.train.backend!r}: choose {', '.join(BACKENDS)}")
    notes = deepspeed.resolve(cfg, deepspeed.launcher_settings())
    if cfg.train.backend == "ddp" and cfg.train.zero_stage:
        # e.g. a DeepSpeed run resumed under DDP: what runs has no ZeRO stage.
        notes.append(f"note: train.zero_stage={cfg.train.zero_stage} applies to train.backend="
                     f"deepspeed only; this DDP run keeps whole optimizer state on every process")
        cfg.train.zero_stage = 0
    return notes + _launcher_precision(cfg)


def create(cfg: Config) -> Backend:
    """The backend ``cfg`` settled on (``resolve``), with its process group formed."""
    return BACKENDS[cfg.train.backend](cfg)


def label(cfg: Config) -> str:
    """A run's backend in a few words, for messages ("ddp", "deepspeed ZeRO-2")."""
    t = cfg.train
    return t.backend + (f" ZeRO-{t.zero_stage}" if t.zero_stage else "")


__all__ = ["Accumulated", "Backend", "MicroBatch", "Stats", "BACKENDS", "create", "label", "resolve"]
