"""The config tree: one dataclass per section, a documented field each.

Loading (presets, overrides, types) is in ``load``, the allowed values in ``validate``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any


class Frozen:
    """A section that refuses changes once its run has validated it (``freeze``): what
    config.yaml says is what ran."""

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"the config is frozen once validated; {type(self).__name__}."
                                 f"{name} cannot change (settle it before validation)")
        object.__setattr__(self, name, value)


def freeze(cfg: Any) -> Any:
    """Freeze a config tree in place (every section); returns it."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            freeze(value)
    object.__setattr__(cfg, "_frozen", True)
    return cfg


def is_frozen(cfg: Any) -> bool:
    return getattr(cfg, "_frozen", False)



@dataclass
class DataConfig(Frozen):
    shards: str = "builtin"
    """Shard set: a directory with manifest.json, a brace pattern or `pipe:` URL, an image folder
    (sharded into the cache on first use, rebuilt when its files change), or `builtin` for
    the built-in sketch dataset."""
    resolution: int = 28
    """Image side in pixels; must match the shards (28, 32, 64, 128 or 256)."""
    channels: int = 1
    """1 (grayscale) or 3 (RGB); must match the shards."""
    cache: str = "auto"
    """Where the images are held: none (streamed from the shards by the loader), memory
    (decoded once into host memory), device (decoded once onto the training device), encoded
    (JPEG bytes on the device, decoded there per batch), auto (device on a GPU / memory on a
    CPU when the pixels take at most a quarter of the free memory there, else encoded when
    the JPEG bytes do, else none). Each process holds only its part (data/cache.py)."""
    workers: int = 1
    """DataLoader worker processes per training process (0 = read in the training process);
    with a cache there is no loader."""
    shuffle_buffer: int = 2000
    """Samples held in the shuffle buffer of each worker."""
    hflip: bool = False
    """Random horizontal flips of real images (off for drawings and text-like data)."""
    cache_dir: str = ""
    """Where image folders given with -d and the built-in dataset are sharded; empty:
    $WGAN_DIST_CACHE/shards (default ~/.cache/wgan_dist/shards)."""
    builtin_per_class: int = 2000
    """Drawings per category when the built-in dataset is generated."""
    class_names: str = ""
    """Comma list of class names for shards without a manifest (label i is the i-th name);
    empty: the label numbers."""
    diffaug: str = ""
    """Differentiable augmentation of everything the critic sees (DiffAugment, for small
    datasets): "" (off) or a comma list of translation, cutout, color."""


@dataclass
class ModelConfig(Frozen):
    arch: str = "dcgan"
    """Architecture family of generator and critic: dcgan, or resnet (the WGAN-GP paper's)."""
    latent_dim: int = 100
    """Size of the latent vector z (the seed projects use 100)."""
    g_width: int = 32
    """Generator channels at the last upsampling stage; doubles per stage towards 4x4.
    (32 keeps the built-in default run under 10 minutes on a 2-core CPU; presets use 64.)"""
    d_width: int = 32
    """Critic channels at the first stage; doubles per stage towards 4x4."""
    max_channels: int = 512
    """Cap on channels per layer, for both networks."""
    d_norm: str = "layer"
    """Critic normalisation: layer, instance, group or none (never BatchNorm)."""
    sync_bn: bool = False
    """Use SyncBatchNorm in the generator under DDP (batch statistics over all ranks; CUDA only:
    torch refuses SyncBatchNorm on CPU)."""
    g_norm: str = "batch"
    """Generator normalisation: batch (DCGAN) or none. With none a step does not depend on how
    the global batch is split over processes (BatchNorm statistics are per local batch)."""
    conditional: bool = False
    """Class-conditional G and D (the shards must be labelled)."""
    cond: str = "projection"
    """How the critic uses the label: projection (Miyato & Koyama), acgan (auxiliary
    classifier, weighted by loss.ac_weight) or both."""
    num_classes: int = 0
    """Classes of a conditional model; 0 = take them from the shard manifest."""


@dataclass
class LossConfig(Frozen):
    kind: str = "wgan-gp"
    """wgan-gp (Gulrajani et al.) or ns (the non-saturating DCGAN loss, the seeds' baseline)."""
    gp_weight: float = 10.0
    """lambda of the gradient penalty (0 disables it)."""
    one_sided: bool = False
    """Penalise only gradient norms above 1 (the Lipschitz penalty, WGAN-LP, Petzka et al.,
    2018) instead of every deviation from 1."""
    drift_weight: float = 0.0
    """epsilon_drift * E[D(real)^2] (Karras et al. use 1e-3); 0 disables it."""
    ac_weight: float = 1.0
    """lambda_AC: weight of the auxiliary classifier's cross-entropy (model.cond acgan or both)."""
    ac_fake: bool = False
    """Also train the critic's classifier on fakes with their requested labels (AC-GAN does;
    off by default, as in the WGAN-GP paper's conditional model: it rewards easy-to-classify fakes)."""


@dataclass
class OptimConfig(Frozen):
    lr_g: float = 1e-4
    """Adam learning rate of the generator."""
    lr_d: float = 1e-4
    """Adam learning rate of the critic."""
    beta1: float = 0.0
    """Adam beta1 (WGAN-GP paper: 0)."""
    beta2: float = 0.9
    """Adam beta2 (WGAN-GP paper: 0.9)."""
    n_critic: int = 5
    """Critic steps per generator step."""


@dataclass
class TrainConfig(Frozen):
    batch_size: int = 64
    """Global batch: per-process batch x processes. Constant when the process count changes."""
    steps: int = 300
    """Generator steps (each preceded by n_critic critic steps)."""
    seed: int = 0
    """Root seed; every rank and purpose derives its own stream from it."""
    mixed_precision: str = "no"
    """no, bf16 or fp16 (fp16 uses a GradScaler and the scaled-output penalty recipe)."""
    ema_kimg: float = 10.0
    """Half-life of the generator EMA in thousands of generator images."""
    ema_rampup: float = 0.05
    """EMA half-life is at most this fraction of images seen so far (None-like 0 disables)."""
    channels_last: bool = False
    """Keep G, D and the real batches in channels-last memory format (NHWC convolutions)."""
    fused_adam: bool = True
    """Fused Adam where torch has it for the device (CPU and CUDA since torch 2.4): one kernel,
    and a non-finite step is skipped on the device, without a host sync."""
    compile: bool = False
    """torch.compile G and the critic's plain forwards; the penalty's forward stays eager."""
    grad_comm: str = "fp32"
    """Gradient all-reduce under DDP: fp32, bf16, fp16 (16-bit compression) or powersgd."""
    bucket_mb: float = 25.0
    """DDP bucket size in MB (gradients are all-reduced bucket by bucket during backward)."""
    powersgd_rank: int = 1
    """Rank of PowerSGD's low-rank approximation (train.grad_comm=powersgd)."""
    powersgd_start: int = 10
    """Plain all-reduce iterations before PowerSGD starts compressing."""
    micro_batch: int = 0
    """Split each process's batch into micro-batches of this size, accumulating gradients
    (the same step as the whole batch, in less memory); 0: no split."""
    backend: str = "ddp"
    """ddp, or deepspeed (ZeRO-1/2, one DeepSpeed engine per network; docs/deepspeed.md). An
    `accelerate launch` with a DeepSpeed Accelerate config selects deepspeed."""
    zero_stage: int = 0
    """ZeRO stage under train.backend=deepspeed: 1 (Adam state partitioned over the processes)
    or 2 (gradients too); 3 is refused. 0: the Accelerate config's, else the DeepSpeed
    config file's, else 2."""
    deepspeed_config: str = ""
    """A DeepSpeed JSON or YAML config for train.backend=deepspeed (bf16 / fp16, bucket sizes,
    ...); the batch sizes, the ZeRO stage and Adam come from this config tree."""
    threads: int = 0
    """torch intra-op threads per process; 0: $OMP_NUM_THREADS if set, else this process's
    share of the cores minus its loader workers."""
    collective_timeout: float = 300.0
    """Seconds a process waits in a collective (all-reduce, barrier) for the other ranks before
    the job ends with one line naming the rank and the collective (exit 1), so that the
    launcher can restart it: a stopped, hung or lost rank must not hang everyone."""
    on_divergence: str = "rollback"
    """What a run does when it diverges (train.divergence_ticks bad ticks in a row) or collapses
    (train.collapse_rollback alarms in a row): rollback (to its newest healthy checkpoint, both
    learning rates halved, a new noise stream; at most train.max_rollbacks times, then stop)
    or stop (exit 1 at once). Either keeps the healthy checkpoint."""
    max_rollbacks: int = 3
    """Rollbacks a run may take before it stops with exit 1."""
    divergence_ticks: int = 2
    """Bad ticks in a row that make a divergence: at least half the steps skipped as non-finite,
    or the Wasserstein estimate or penalty past train.divergence_bound."""
    divergence_bound: float = 1.0e4
    """|Wasserstein estimate|, |critic loss| or penalty above this is an explosion."""
    collapse_rollback: int = 8
    """Consecutive checks at which the mode-collapse alarm fired that count as a collapse
    (0: the alarm only warns)."""
    stop_grace: float = 120.0
    """Seconds a run may take to checkpoint and exit after a stop signal before it is ended
    without one (a second signal ends it at once)."""


@dataclass
class LogConfig(Frozen):
    run_dir: str = ""
    """Run directory; empty means runs/<config name>."""
    tick_every: int = 25
    """Generator steps per tick: status line, TensorBoard scalars."""
    sample_every: int = 50
    """Generator steps between sample grids (PNG + TensorBoard)."""
    ckpt_every: int = 100
    """Generator steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept in rotation (oldest removed first; 0 keeps all)."""
    grid_size: int = 64
    """Images in a sample grid (fixed noise, EMA generator)."""


@dataclass
class EvalConfig(Frozen):
    every: int = 0
    """Generator steps between quality evaluations (0: only at the end of the run)."""
    num: int = 1000
    """Generated (and real) images per evaluation, split over all ranks."""
    fid: bool = False
    """FID/KID on Inception-v3 features (needs local weights: eval.inception_weights)."""
    inception_weights: str = ""
    """Path of the FID Inception weights (nothing is downloaded; env WGAN_DIST_INCEPTION_WEIGHTS)."""
    classifier: bool = False
    """Domain-classifier metrics for labelled data (trains and caches a small classifier once)."""
    classifier_steps: int = 2000
    """Training steps of the domain classifier (cached per shard set)."""
    collapse_threshold: float = 0.5
    """Mode-collapse alarm: fake/real diversity ratio below this at consecutive ticks warns."""
    collapse_patience: int = 2
    """Consecutive low-diversity ticks before the alarm is raised."""
    collapse_warmup: float = 0.1
    """Fraction of train.steps before the alarm is armed (a fresh generator is not diverse)."""
    gp_visuals: bool = True
    """With each sample grid: histogram of ||grad D(x_hat)|| and gradient-magnitude maps."""


@dataclass
class Config(Frozen):
    name: str = "default"
    """Name of the preset; the default run directory is runs/<name>."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.log.run_dir or f"runs/{self.name}")


class ConfigError(ValueError):
    """An impossible or unknown setting; the message says which and what is allowed."""
