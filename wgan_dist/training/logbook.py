"""What a run reports: per-tick statistics in the field's units, on the console, in
``log.txt`` and in TensorBoard.

Statistics arrive from the phases as device tensors and are summed here without being read;
a tick reduces them over ranks and reads them once (one host sync per tick).
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator

from ..config import Config
from ..progress import heartbeat_seconds
from ..ranks import NullWriter, append_line, main_print, on_main, reduce_mean

# Statistic -> TensorBoard tag; anything else goes under Other/.
TAGS = {
    "critic_loss": "Loss/critic", "generator_loss": "Loss/generator",
    "wasserstein": "Loss/wasserstein", "gradient_penalty": "Loss/gradient_penalty",
    "drift": "Loss/drift", "grad_norm_mean": "GP/grad_norm_mean",
    "d_real": "Critic/D_real", "d_fake": "Critic/D_fake", "lr_G": "LR/G", "lr_D": "LR/D",
    "images_per_sec": "Speed/images_per_sec", "sec_per_kimg": "Speed/sec_per_kimg",
    "kimg": "Progress/kimg", "peak_mem_gb": "Resources/peak_mem_gb",
    "skipped_steps": "Progress/skipped_steps", "ac_real": "Loss/ac_real",
    "ac_fake": "Loss/ac_fake", "ac_generator": "Loss/ac_generator",
    "ac_accuracy": "Critic/ac_accuracy_real", "threads": "Speed/torch_threads",
}


def make_writer(acc: Accelerator, log_dir: Path) -> Any:
    """The run's TensorBoard writer on the main process, a no-op ``NullWriter`` elsewhere."""
    def writer() -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(log_dir))
    return on_main(acc, writer) or NullWriter()


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def status_line(step: int, steps: int, s: dict[str, float]) -> str:
    nan = float("nan")
    penalty = (f"GP {s['gradient_penalty']:6.3f}  |grad| {s['grad_norm_mean']:5.2f}  "
               if "gradient_penalty" in s else "")  # no penalty (loss.kind=ns)
    return (f"step {step:>6}/{steps}  kimg {s['kimg']:8.1f}  img/s {s['images_per_sec']:7.1f}  "
            f"sec/kimg {s['sec_per_kimg']:6.2f}  W {s.get('wasserstein', nan):7.3f}  " + penalty
            + f"D {s.get('critic_loss', nan):7.3f}  G {s.get('generator_loss', nan):7.3f}  "
            f"mem {s['peak_mem_gb']:.2f}GB")


class RunLog:
    """Everything the console shows, also kept in the run's log.txt (main process only).

    Lines said before the run dir exists (resume notes, sharding) are kept and written when
    it is opened, so a failed start leaves no directory behind and a started one loses no
    line. ``beat`` prints a progress line when nothing was said for ``every`` seconds."""

    def __init__(self, acc: Accelerator, every: float | None = None) -> None:
        self.acc, self.every = acc, heartbeat_seconds() if every is None else every
        self.path: Path | None = None
        self.pending: list[str] = []
        self.last = time.time()

    def open(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "log.txt"
        for line in self.pending:
            append_line(self.acc, self.path, line)
        self.pending = []

    def record(self, text: str) -> None:
        """Into log.txt only (the console already has it, e.g. an error line on stderr)."""
        if self.path is None:
            self.pending.append(text)
        else:
            append_line(self.acc, self.path, text)

    def say(self, text: str) -> None:
        main_print(self.acc, text)
        self.record(text)
        self.last = time.time()

    def beat(self, text: Callable[[], str]) -> None:
        """Say ``text()`` if the console has been silent for ``every`` seconds (host clock
        only: no device sync)."""
        if time.time() - self.last >= self.every:
            self.say(text())


class Logbook:
    """Sums a tick's statistics, then reports them (every rank calls ``tick`` together)."""

    def __init__(self, acc: Accelerator, writer: Any, runlog: RunLog, tick_every: int,
                 steps: int) -> None:
        self.acc, self.writer, self.runlog = acc, writer, runlog
        self.tick_every, self.steps = tick_every, steps
        self.sums: dict[str, torch.Tensor] = {}
        self.start(0)

    def start(self, nimg: int) -> None:
        self.sums, self.t0, self.nimg0 = {}, time.time(), nimg

    def beat(self, step: int, nimg: int) -> None:
        """A line before the first tick and between slow ticks: the run is alive."""
        def line() -> str:
            ips = (nimg - self.nimg0) / max(time.time() - self.t0, 1e-9)
            nxt = (step // self.tick_every + 1) * self.tick_every
            return (f"... step {step}/{self.steps}, {ips:.1f} img/s so far this tick (next "
                    f"status line at step {min(nxt, self.steps)})")
        self.runlog.beat(line)

    def add(self, stats: dict[str, torch.Tensor], weight: float) -> None:
        for k, v in stats.items():
            v = v.detach().float() * weight
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def tick(self, step: int, nimg: int, lrs: dict[str, float], device: torch.device) -> dict[str, float]:
        """Reduce the tick's statistics over ranks, log and print them; start the next tick."""
        steps_in_tick = (step - 1) % self.tick_every + 1
        stats = reduce_mean(self.acc, {k: v / steps_in_tick for k, v in self.sums.items()})
        stats["skipped_steps"] = stats.get("skipped_steps", 0.0) * steps_in_tick
        ips = (nimg - self.nimg0) / max(time.time() - self.t0, 1e-9)
        stats.update({"images_per_sec": ips, "sec_per_kimg": 1000 / max(ips, 1e-9),
                      "kimg": nimg / 1000, **lrs, "peak_mem_gb": peak_memory_gb(device)})
        for k, v in stats.items():
            self.writer.add_scalar(TAGS.get(k, f"Other/{k}"), v, step)
        self.runlog.say(status_line(step, self.steps, stats))
        self.start(nimg)
        return stats


@dataclass(frozen=True)
class Plan:
    """What a run is about to do, for its start-up lines."""
    run_dir: Path
    shards: Any
    """The resolved shard set (``data.shardset.ShardSet``)."""
    world: int
    device: torch.device
    backend: str
    """The backend's own words (``Backend.describe``)."""
    threads_why: str
    per_process_batch: int
    remaining: int
    params: tuple[int, int]
    """Parameters of G and D."""
    augment: tuple[str, ...]
    cache: str
    """Where the images are held, and why (``data.cache.Plan.line``)."""


def plan_text(cfg: Config, p: Plan) -> str:
    """The start-up lines: where, what data, how many processes and threads, what a step is in
    images, the models."""
    n, gb, shards = cfg.optim.n_critic, cfg.train.batch_size, p.shards
    micro = (f", micro-batches of {cfg.train.micro_batch}"
             if 0 < cfg.train.micro_batch < p.per_process_batch else "")
    classes = cfg.model.num_classes if cfg.model.conditional else 0
    return "\n".join([
        f"run dir        {p.run_dir.resolve()}",
        f"data           {cfg.data.shards} -> {len(shards.urls)} shard(s), "
        f"{shards.total or '?'} images, {cfg.data.resolution}px x {cfg.data.channels}ch"
        + (f", {shards.num_classes} classes" if shards.num_classes else ""),
        p.cache,
        f"processes      {p.world} on {p.device.type}, mixed precision "
        f"{cfg.train.mixed_precision}{p.backend}",
        f"threads        {cfg.train.threads} torch thread(s) per process ({p.threads_why}; "
        f"train.threads to choose)",
        f"global batch   {gb} = {p.per_process_batch} per process x {p.world} process(es){micro}",
        f"per G step     {n} critic steps x {gb} real images = {n * gb} images",
        f"this run       {p.remaining} G steps = {p.remaining * n * gb / 1000:.1f} kimg "
        f"(total {cfg.train.steps * n * gb / 1000:.1f} kimg)",
        f"models         G {p.params[0] / 1e6:.2f}M params, "
        f"D {p.params[1] / 1e6:.2f}M params, {cfg.model.arch}, loss {cfg.loss.kind}"
        + (f", conditional on {classes} classes ({cfg.model.cond})" if classes else "")
        + (f", DiffAugment {','.join(p.augment)}" if p.augment else ""),
    ])
