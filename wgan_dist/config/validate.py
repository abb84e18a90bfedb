"""The allowed values of every setting, checked when a config is loaded: a bad value stops the
run before anything is built, with one line that names the setting and what is allowed."""
from __future__ import annotations

import operator
from typing import Any

from .schema import Config, ConfigError

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}

# setting -> bounds it must satisfy, each (operator, value).
RANGES: dict[str, tuple[tuple[str, float], ...]] = {
    "data.workers": ((">=", 0),), "data.shuffle_buffer": ((">=", 1),),
    "data.builtin_per_class": ((">=", 1),),
    "model.latent_dim": ((">=", 1),), "model.g_width": ((">=", 1),), "model.d_width": ((">=", 1),),
    "model.max_channels": ((">=", 1),), "model.num_classes": ((">=", 0),),
    "loss.gp_weight": ((">=", 0),), "loss.drift_weight": ((">=", 0),),
    "loss.ac_weight": ((">=", 0),),
    "optim.lr_g": ((">=", 0),), "optim.lr_d": ((">=", 0),),  # 0 freezes a network
    "optim.beta1": ((">=", 0), ("<", 1)), "optim.beta2": ((">=", 0), ("<", 1)),
    "optim.n_critic": ((">=", 1),),
    "train.batch_size": ((">=", 1),), "train.steps": ((">=", 1),), "train.seed": ((">=", 0),),
    "train.ema_kimg": ((">", 0),), "train.ema_rampup": ((">=", 0),),
    "train.stop_grace": ((">", 0),), "train.collective_timeout": ((">", 0),),
    "train.threads": ((">=", 0),), "train.max_rollbacks": ((">=", 0),),
    "train.divergence_ticks": ((">=", 1),), "train.divergence_bound": ((">", 0),),
    "train.collapse_rollback": ((">=", 0),),
    "train.bucket_mb": ((">", 0),), "train.powersgd_rank": ((">=", 1),),
    "train.powersgd_start": ((">=", 0),), "train.micro_batch": ((">=", 0),),
    "log.tick_every": ((">=", 1),), "log.sample_every": ((">=", 1),),
    "log.ckpt_every": ((">=", 1),), "log.keep_checkpoints": ((">=", 0),),
    "log.grid_size": ((">=", 1),),
    "eval.every": ((">=", 0),), "eval.num": ((">=", 2),), "eval.classifier_steps": ((">=", 1),),
    "eval.collapse_threshold": ((">=", 0),), "eval.collapse_patience": ((">=", 1),),
    "eval.collapse_warmup": ((">=", 0), ("<=", 1)),
}

# setting -> the values it may take.
CHOICES: dict[str, tuple[Any, ...]] = {
    "data.channels": (1, 3),
    "data.cache": ("auto", "none", "memory", "device", "encoded"),
    "model.d_norm": ("layer", "instance", "group", "none"),
    "model.g_norm": ("batch", "none"),
    "loss.kind": ("wgan-gp", "ns"),
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "train.grad_comm": ("fp32", "bf16", "fp16", "powersgd"),
    "train.on_divergence": ("rollback", "stop"),
}
# train.backend and its settings (train.zero_stage, train.deepspeed_config) are checked by the
# backend that reads them, once, when a run settles them (``training.backends.resolve``).

def get(cfg: Config, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def _check_ranges(cfg: Config) -> None:
    for key, bounds in RANGES.items():
        value = get(cfg, key)
        for op, bound in bounds:
            if not _OPS[op](value, bound):
                allowed = " and ".join(f"{o} {b:g}" for o, b in bounds)
                raise ConfigError(f"{key}={value!r}: must be {allowed}")
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            if key == "model.d_norm" and value == "batch":
                raise ConfigError("model.d_norm=batch: the critic must not use BatchNorm with a "
                                  "gradient penalty; choose layer, instance, group or none")
            raise ConfigError(f"{key}={value!r}: choose {', '.join(map(str, allowed))}")


MAX_SEED = 2**63  # torch.Generator.manual_seed takes a signed 64-bit integer


def check_combinations(cfg: Config) -> None:
    """Values each fine alone that fail only deep inside a run: refused here, naming the
    setting. (Per-process checks, which need the number of processes, are the trainer's.)"""
    t = cfg.train
    if not 0 <= t.seed < MAX_SEED:
        raise ConfigError(f"train.seed={t.seed}: must be >= 0 and < 2**63")
    if 0 < t.micro_batch < t.batch_size and t.batch_size % t.micro_batch:
        fits = [d for d in range(2, t.batch_size) if t.batch_size % d == 0]
        raise ConfigError(f"train.micro_batch={t.micro_batch} does not divide train.batch_size="
                          f"{t.batch_size}: the last micro-batch would hold "
                          f"{t.batch_size % t.micro_batch}; choose one of "
                          f"{', '.join(map(str, fits)) or '0 (no micro-batches)'}")
    if t.micro_batch == 1 and t.batch_size > 1 and cfg.model.g_norm == "batch":
        raise ConfigError("train.micro_batch=1 with model.g_norm=batch: BatchNorm needs more "
                          "than one image per micro-batch; use train.micro_batch >= 2 or "
                          "model.g_norm=none")
    if cfg.data.class_names:
        from ..data.names import check_class_names

        names = [c.strip() for c in cfg.data.class_names.split(",") if c.strip()]
        try:
            check_class_names(names, "data.class_names")
        except ValueError as e:
            raise ConfigError(str(e)) from None


def validate(cfg: Config) -> None:
    """Every value against RANGES and CHOICES, then the names from the registries."""
    from ..nets import ARCHITECTURES, CONDITIONINGS, SUPPORTED_RESOLUTIONS
    from ..nets.augment import parse_policy

    _check_ranges(cfg)
    check_combinations(cfg)
    if cfg.data.resolution not in SUPPORTED_RESOLUTIONS:
        raise ConfigError(f"data.resolution={cfg.data.resolution} has no {cfg.model.arch} "
                          f"architecture; choose one of {SUPPORTED_RESOLUTIONS}")
    if cfg.model.arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch={cfg.model.arch!r} unknown; available: {', '.join(ARCHITECTURES)}")
    if cfg.model.cond not in CONDITIONINGS:
        raise ConfigError(f"model.cond={cfg.model.cond!r}: choose {', '.join(CONDITIONINGS)}")
    try:
        parse_policy(cfg.data.diffaug)
    except ValueError as e:
        raise ConfigError(f"data.diffaug={cfg.data.diffaug!r}: {e}") from None
