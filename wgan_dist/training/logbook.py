"""What a run reports: per-tick statistics in the field's units, on the console, in
``log.txt`` and in TensorBoard.

Statistics arrive from the phases as device tensors and are summed here without being read;
a tick reduces them over ranks and reads them once (one host sync per tick).
"""
from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..ranks import append_line, main_print, reduce_mean

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
    "ac_accuracy": "Critic/ac_accuracy_real",
}


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


class Logbook:
    """Sums a tick's statistics, then reports them (every rank calls ``tick`` together)."""

    def __init__(self, acc: Accelerator, writer: Any, run_dir: Path, tick_every: int,
                 steps: int) -> None:
        self.acc, self.writer, self.log_path = acc, writer, Path(run_dir) / "log.txt"
        self.tick_every, self.steps = tick_every, steps
        self.sums: dict[str, torch.Tensor] = {}
        self.start(0)

    def say(self, text: str) -> None:
        """Print on the main process and keep it in log.txt."""
        main_print(self.acc, text)
        append_line(self.acc, self.log_path, text)

    def start(self, nimg: int) -> None:
        self.sums, self.t0, self.nimg0 = {}, time.time(), nimg

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
        self.say(status_line(step, self.steps, stats))
        self.start(nimg)
        return stats
