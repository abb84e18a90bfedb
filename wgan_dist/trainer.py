"""The training loop: it owns the schedule, nothing else.

Per generator step: n_critic critic phases (each with its own real batch, fresh noise and
interpolation coefficients), then one generator phase, then the EMA update. Losses come from
``objective``; rank decisions from ``dist``; files from ``checkpoint``.
"""
from __future__ import annotations

import copy
import math
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torchvision.utils import make_grid, save_image

from . import checkpoint as ckpt
from . import data as data_mod
from . import dist
from .config import Config, config_from_dict, dump_yaml, to_dict
from .models import build_models, count_params
from .monitor import QualityMonitor
from .objective import critic_phase, generator_phase


class EMA:
    """An exponential moving average of the generator, used for samples and saved."""

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        ema_p = list(self.model.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - beta)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def ema_beta(cfg: Config, nimg_g: int, batch: int) -> float:
    """beta = 0.5 ** (batch / half_life), half-life ramped up early in training (StyleGAN2-ADA)."""
    half_life = cfg.train.ema_kimg * 1000
    if cfg.train.ema_rampup > 0:
        half_life = min(half_life, nimg_g * cfg.train.ema_rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.acc = dist.make_accelerator(cfg.train.mixed_precision)
        self.device = self.acc.device
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.run_dir = cfg.run_dir
        self.stop_requested = False
        self._setup_run_dir(resume, overwrite)
        self._setup_data()
        self._setup_models()
        self.step, self.nimg = 0, 0
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.writer = dist.make_writer(self.acc, self.run_dir / "logs")
        manifest = self.shards.manifest_path
        self.monitor = QualityMonitor(self.acc, cfg, self.writer, self.run_dir,
                                      manifest.parent if manifest is not None else None)
        self.fixed_z = torch.randn(cfg.log.grid_size, cfg.model.latent_dim,
                                   generator=dist.generator_for(torch.device("cpu"), cfg.train.seed, "fixed")
                                   ).to(self.device)

    # ------------------------------------------------------------------ setup
    def _setup_run_dir(self, resume: str | None, overwrite: bool) -> None:
        existing = ckpt.latest_checkpoint(self.run_dir)
        self.resume_from: Path | None = None
        if resume in ("latest", "auto"):
            if existing is None and resume == "latest":
                raise FileNotFoundError(f"--resume: no checkpoint in {ckpt.checkpoint_dir(self.run_dir)}")
            self.resume_from = existing
        elif resume:
            self.resume_from = Path(resume)
        elif existing is not None and not overwrite:
            raise FileExistsError(
                f"{self.run_dir} already holds checkpoints (newest {existing.name}); pass --resume "
                f"to continue it, --overwrite to start over, or log.run_dir=... for a new run")
        if self.acc.is_main_process:
            for sub in ("logs", "samples", "checkpoints"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            if overwrite and self.resume_from is None:
                for p in ckpt.list_checkpoints(self.run_dir):
                    p.unlink()
            (self.run_dir / "config.yaml").write_text(dump_yaml(self.cfg))
        self.acc.wait_for_everyone()

    def _setup_data(self) -> None:
        cfg = self.cfg
        if cfg.train.batch_size % self.world:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is the global batch and "
                             f"must divide by the {self.world} processes")
        self.batch = cfg.train.batch_size // self.world
        # Only the main process writes shards (built-in set, -d folders); the others wait.
        with self.acc.main_process_first():
            self.shards = data_mod.resolve_shards(
                cfg.data.shards, cfg.data.resolution, cfg.data.channels, cfg.data.cache_dir,
                cfg.data.builtin_per_class, cfg.train.seed,
                log=lambda m: dist.main_print(self.acc, m))
        data_mod.check_shape(self.shards, cfg.data.resolution, cfg.data.channels)

    def make_batches(self, skip: int, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        loader = data_mod.make_loader(
            self.shards.urls, rank=self.rank, world=self.world, seed=cfg.train.seed,
            batch_size=self.batch, resolution=cfg.data.resolution, channels=cfg.data.channels,
            num_batches=count, workers=cfg.data.workers, shuffle_buffer=cfg.data.shuffle_buffer,
            hflip=cfg.data.hflip, skip_batches=skip, pin_memory=self.device.type == "cuda")
        for i, batch in enumerate(loader):
            if i >= count:
                break
            yield batch

    def _setup_models(self) -> None:
        cfg = self.cfg
        torch.manual_seed(dist.seed_for(cfg.train.seed, "init"))  # same init on every rank
        g, d = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
        self.ema = EMA(g)
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.optim.lr_g, betas=betas)
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.optim.lr_d, betas=betas)
        self.G, self.D, self.opt_g, self.opt_d = self.acc.prepare(g, d, opt_g, opt_d)
        self.ema.model.to(self.device)
        self.G_raw, self.D_raw = self.acc.unwrap_model(self.G), self.acc.unwrap_model(self.D)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        scaler = self.acc.scaler
        return {
            "G": self.G_raw.state_dict(), "D": self.D_raw.state_dict(),
            "G_ema": self.ema.model.state_dict(),
            "opt_G": self.opt_g.state_dict(), "opt_D": self.opt_d.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "step": self.step, "nimg": self.nimg, "world_size": self.world,
            "config": to_dict(self.cfg), "class_names": list(self.shards.class_names),
            "rng_torch": torch.get_rng_state(),
        }

    def _load(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, map_location="cpu")
        where = state["path"]
        ckpt.load_module_state(self.G_raw, state["G"], "generator", where)
        ckpt.load_module_state(self.D_raw, state["D"], "critic", where)
        ckpt.load_module_state(self.ema.model, state["G_ema"], "generator EMA", where)
        self.opt_g.load_state_dict(state["opt_G"])
        self.opt_d.load_state_dict(state["opt_D"])
        if self.acc.scaler is not None and state["scaler"]:
            self.acc.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_torch"])
        self.step, self.nimg = int(state["step"]), int(state["nimg"])
        old = config_from_dict(state["config"])
        msg = f"resumed from {where} at step {self.step} ({self.nimg / 1000:.1f} kimg)"
        if state["world_size"] != self.world:
            msg += (f"; processes {state['world_size']} -> {self.world}: global batch stays "
                    f"{self.cfg.train.batch_size}, per-process batch is now {self.batch}; "
                    f"the data order differs from an uninterrupted run")
        if old.train.batch_size != self.cfg.train.batch_size:
            msg += f"; global batch changed {old.train.batch_size} -> {self.cfg.train.batch_size}"
        dist.main_print(self.acc, msg)

    def save(self) -> Path | None:
        self.acc.wait_for_everyone()
        path = None
        if self.acc.is_main_process:
            path = ckpt.save_checkpoint(self.state_dict(), self.run_dir, self.step,
                                        self.cfg.log.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    # ------------------------------------------------------------------ steps
    def _draw(self, purpose: str, *shape: int, step: int, phase: int = 0) -> torch.Tensor:
        """Counter-based noise: a function of (seed, purpose, rank, step, phase) only."""
        g = dist.generator_for(torch.device("cpu"), self.cfg.train.seed, purpose, self.rank, step, phase)
        fn = torch.rand if purpose == "alpha" else torch.randn
        return fn(*shape, generator=g).to(self.device, non_blocking=True)

    def critic_step(self, real: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor) -> dict:
        with torch.no_grad(), self.acc.autocast():
            fake = self.G(z)
        scaler = self.acc.scaler
        scale = scaler._get_scale_async() if scaler is not None else 1.0
        if scale is None:  # the scaler builds its scale tensor lazily, at its first scale()
            scale = scaler.get_scale()
        with self.acc.autocast():
            loss, stats = critic_phase(self.D, real, fake, alpha, self.cfg.loss, scale)
        self._apply(loss, self.opt_d, stats)
        return stats

    def generator_step(self, z: torch.Tensor) -> dict:
        # The generator's loss flows through the critic, but the critic is not trained here:
        # use the unwrapped critic with frozen parameters (no DDP reducer, no critic grads).
        self.D_raw.requires_grad_(False)
        with self.acc.autocast():
            loss, stats = generator_phase(self.D_raw, self.G(z), self.cfg.loss)
        self._apply(loss, self.opt_g, stats)
        self.D_raw.requires_grad_(True)
        return stats

    def _apply(self, loss: torch.Tensor, opt, stats: dict) -> None:
        """Backward and step; a non-finite loss or gradient on any rank skips the step on every rank.

        The gradients are all-reduced by now, so one rank's overflow is every rank's. Under fp16
        the GradScaler checks the gradients itself (it must see an overflow to lower its scale),
        and its skip is the same on every rank for the same reason.
        """
        scaler = self.acc.scaler
        self.acc.backward(loss)
        ok = torch.isfinite(loss.detach())
        if scaler is None:
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                ok = ok & torch.stack([g.isfinite().all() for g in grads]).all()
        finite = dist.all_ranks_agree(self.acc, bool(ok.item()), "all")
        if finite:
            opt.step()
        elif scaler is not None:
            # Under fp16 a non-finite loss is mostly the *scaled* penalty gradient overflowing
            # (scaled-output recipe): back the scale off as the scaler would for an overflowing
            # gradient, or it never shrinks and every later step overflows too.
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        skipped = not finite or (scaler is not None and opt.step_was_skipped)
        stats["skipped_steps"] = torch.tensor(1.0 if skipped else 0.0)
        opt.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, float]:
        cfg, acc = self.cfg, self.acc
        n_critic = cfg.optim.n_critic
        remaining = cfg.train.steps - self.step
        self._print_plan(remaining)
        self._install_signal_handlers()
        batches = self.make_batches(skip=self.step * n_critic, count=max(remaining, 0) * n_critic)
        sums: dict[str, torch.Tensor] = {}
        tick_start, tick_nimg, last = time.time(), self.nimg, {}
        while self.step < cfg.train.steps and not self.stop_requested:
            for i in range(n_critic):
                images, _labels = next(batches)
                real = data_mod.to_model_range(images.to(self.device, non_blocking=True))
                z = self._draw("z_d", self.batch, cfg.model.latent_dim, step=self.step, phase=i)
                alpha = self._draw("alpha", self.batch, step=self.step, phase=i)
                self._accumulate(sums, self.critic_step(real, z, alpha), 1.0 / n_critic)
            z = self._draw("z_g", self.batch, cfg.model.latent_dim, step=self.step)
            self._accumulate(sums, self.generator_step(z), 1.0)
            self.step += 1
            self.nimg += cfg.train.batch_size * n_critic
            self.ema.update(self.G_raw, ema_beta(cfg, self.step * cfg.train.batch_size, cfg.train.batch_size))

            done = self.step == cfg.train.steps
            if self.step % cfg.log.tick_every == 0 or done:
                last = self._tick(sums, time.time() - tick_start, self.nimg - tick_nimg)
                last.update(self.monitor.check_diversity(self.G_raw, self.D_raw, real, self.step))
                sums, tick_start, tick_nimg = {}, time.time(), self.nimg
            if self.step % cfg.log.sample_every == 0 or done:
                self.sample()
                with torch.no_grad():
                    fake = self.G_raw(z)
                self.monitor.gp_visuals(self.D_raw, real, fake, self.step)
            if (cfg.eval.every and self.step % cfg.eval.every == 0) or done:
                last.update(self.monitor.evaluate(self.ema.model, self.step, self.nimg))
            self.stop_requested = dist.all_ranks_agree(acc, self.stop_requested, "any")
            if self.step % cfg.log.ckpt_every == 0 or done or self.stop_requested:
                path = self.save()
                if self.stop_requested:
                    dist.main_print(acc, f"stop requested: saved {path} at step {self.step}")
        return last

    @staticmethod
    def _accumulate(sums: dict, stats: dict, weight: float) -> None:
        for k, v in stats.items():
            v = v.detach().float() * weight
            sums[k] = sums[k] + v if k in sums else v

    def _tick(self, sums: dict, seconds: float, nimg: int) -> dict[str, float]:
        """Reduce the tick's statistics over ranks (one host sync per tick), log and print."""
        steps_in_tick = (self.step - 1) % self.cfg.log.tick_every + 1
        stats = dist.reduce_mean(self.acc, {k: v / steps_in_tick for k, v in sums.items()})
        stats["skipped_steps"] = stats.get("skipped_steps", 0.0) * steps_in_tick
        ips = nimg / max(seconds, 1e-9)
        stats.update({"images_per_sec": ips, "sec_per_kimg": 1000 / max(ips, 1e-9),
                      "kimg": self.nimg / 1000, "lr_G": self.opt_g.param_groups[0]["lr"],
                      "lr_D": self.opt_d.param_groups[0]["lr"],
                      "peak_mem_gb": peak_memory_gb(self.device)})
        groups = {"critic_loss": "Loss/critic", "generator_loss": "Loss/generator",
                  "wasserstein": "Loss/wasserstein", "gradient_penalty": "Loss/gradient_penalty",
                  "drift": "Loss/drift", "grad_norm_mean": "GP/grad_norm_mean",
                  "d_real": "Critic/D_real", "d_fake": "Critic/D_fake", "lr_G": "LR/G",
                  "lr_D": "LR/D", "images_per_sec": "Speed/images_per_sec",
                  "sec_per_kimg": "Speed/sec_per_kimg", "kimg": "Progress/kimg",
                  "peak_mem_gb": "Resources/peak_mem_gb", "skipped_steps": "Progress/skipped_steps"}
        for k, v in stats.items():
            self.writer.add_scalar(groups.get(k, f"Other/{k}"), v, self.step)
        line = (f"step {self.step:>6}/{self.cfg.train.steps}  kimg {stats['kimg']:8.1f}  "
                f"img/s {ips:7.1f}  sec/kimg {stats['sec_per_kimg']:6.2f}  "
                f"W {stats.get('wasserstein', float('nan')):7.3f}  "
                f"GP {stats.get('gradient_penalty', float('nan')):6.3f}  "
                f"|grad| {stats.get('grad_norm_mean', float('nan')):5.2f}  "
                f"D {stats.get('critic_loss', float('nan')):7.3f}  "
                f"G {stats.get('generator_loss', float('nan')):7.3f}  "
                f"mem {stats['peak_mem_gb']:.2f}GB")
        dist.main_print(self.acc, line)
        if self.acc.is_main_process:
            with open(self.run_dir / "log.txt", "a") as f:
                f.write(line + "\n")
        return stats

    @torch.no_grad()
    def sample(self) -> Path | None:
        """A grid from fixed noise through the EMA generator (main process only)."""
        if not self.acc.is_main_process:
            return None
        imgs = self.ema.model(self.fixed_z).float()
        nrow = int(math.sqrt(len(imgs))) or 1
        grid = make_grid(imgs, nrow=nrow, normalize=True, value_range=(-1, 1))
        path = self.run_dir / "samples" / f"step-{self.step:08d}.png"
        save_image(grid, path)
        self.writer.add_image("Samples/ema_fixed_noise", grid, self.step)
        return path

    def _print_plan(self, remaining: int) -> None:
        cfg, n = self.cfg, self.cfg.optim.n_critic
        gb = cfg.train.batch_size
        dist.main_print(self.acc, "\n".join([
            f"run dir        {self.run_dir.resolve()}",
            f"data           {cfg.data.shards} -> {len(self.shards.urls)} shard(s), "
            f"{self.shards.total or '?'} images, {cfg.data.resolution}px x {cfg.data.channels}ch"
            + (f", {self.shards.num_classes} classes" if self.shards.num_classes else ""),
            f"processes      {self.world} on {self.device.type}, mixed precision {cfg.train.mixed_precision}",
            f"global batch   {gb} = {self.batch} per process x {self.world} process(es)",
            f"per G step     {n} critic steps x {gb} real images = {n * gb} images",
            f"this run       {remaining} G steps = {remaining * n * gb / 1000:.1f} kimg "
            f"(total {cfg.train.steps * n * gb / 1000:.1f} kimg)",
            f"models         G {count_params(self.G_raw) / 1e6:.2f}M params, "
            f"D {count_params(self.D_raw) / 1e6:.2f}M params, loss {cfg.loss.kind}",
        ]))

    def _install_signal_handlers(self) -> None:
        """Ctrl-C, SIGTERM and SIGUSR1 (Slurm's warning) ask for a checkpoint and a clean stop;
        a second Ctrl-C stops at once."""
        def handler(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True
            print(f"[rank {self.rank}] signal {signal.Signals(signum).name}: checkpointing "
                  f"at the end of this step", file=sys.stderr, flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass

    def close(self) -> None:
        self.writer.close()
        self._write_gif()
        self.acc.wait_for_everyone()
        self.acc.end_training()

    def _write_gif(self) -> None:
        if not self.acc.is_main_process:
            return
        from PIL import Image

        frames = sorted((self.run_dir / "samples").glob("step-*.png"))
        if frames:
            images = [Image.open(p).convert("RGB") for p in frames]
            images[0].save(self.run_dir / "samples" / "progress.gif", save_all=True,
                           append_images=images[1:], duration=400, loop=0)
