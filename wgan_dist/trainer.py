"""The training loop: it owns the schedule, nothing else.

Per generator step: n_critic critic phases (each with its own real batch, fresh noise and
interpolation coefficients), then one generator phase, then the EMA update. Losses come from
``objective``; rank decisions from ``dist``; files from ``checkpoint``.
"""
from __future__ import annotations

import copy
import functools
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
from .augment import DiffAugment
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


def fused_adam_available(device: torch.device) -> bool:
    """Whether this torch has fused Adam kernels for ``device`` (CPU too since torch 2.4)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return device.type in _get_fused_kernels_supported_devices()


def compile_module(module: nn.Module) -> Any:
    """torch.compile (inductor). One place, so a test can swap in a backend without codegen."""
    return torch.compile(module)


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Load an optimizer's state but keep this run's implementation flags (fused, foreach):
    ``load_state_dict`` takes every group setting from the checkpoint, so a run resumed with
    train.fused_adam changed would silently keep the old implementation."""
    current = opt.state_dict()["param_groups"]
    groups = [{**g, **{k: c[k] for k in ("fused", "foreach") if k in c}}
              for g, c in zip(saved["param_groups"], current)]
    opt.load_state_dict({**saved, "param_groups": groups})


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
        if self.acc.is_main_process:
            # After the data: the config as run, with model.num_classes from the manifest.
            (self.run_dir / "config.yaml").write_text(dump_yaml(self.cfg))
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
        self.fixed_y, self.grid_cols = None, int(math.sqrt(cfg.log.grid_size)) or 1
        if self.num_classes:
            # One row per class, the same latents down each column: style fixed, class varies.
            self.grid_cols = max(1, cfg.log.grid_size // self.num_classes)
            self.fixed_z = self.fixed_z[:self.grid_cols].repeat(self.num_classes, 1)
            self.fixed_y = torch.arange(self.num_classes, device=self.device).repeat_interleave(self.grid_cols)

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
        self.num_classes = self._resolve_num_classes()

    def _resolve_num_classes(self) -> int:
        """model.num_classes from the shard manifest for a conditional model (0 otherwise)."""
        m, names = self.cfg.model, self.shards.class_names
        if not m.conditional:
            return 0
        where = self.shards.manifest_path or self.cfg.data.shards
        if not names:
            raise ValueError(f"model.conditional=true needs labelled shards, but {where} has no "
                             f"class labels (class subfolders, QuickDraw files or the built-in set "
                             f"give labels); or set model.conditional=false")
        if m.num_classes and m.num_classes != len(names):
            raise ValueError(f"model.num_classes={m.num_classes} but {where} has {len(names)} "
                             f"classes ({', '.join(names)}); leave model.num_classes=0 to take them "
                             f"from the manifest")
        m.num_classes = len(names)  # stored with the config in every checkpoint
        return m.num_classes

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
        if cfg.train.channels_last:  # before the EMA copy, so samples run channels-last too
            g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
        self.classify = bool(getattr(d, "classifies", False))  # the critic has an AC head
        self.augment = DiffAugment(cfg.data.diffaug) if cfg.data.diffaug else None
        self.ema = EMA(g)
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        self.fused_adam = cfg.train.fused_adam and fused_adam_available(self.device)
        if cfg.train.fused_adam and not self.fused_adam:
            dist.main_print(self.acc, f"note: train.fused_adam: torch {torch.__version__} has no "
                                      f"fused Adam on {self.device.type}; using the foreach Adam")
        fused = True if self.fused_adam else None  # None, not False: False means the for-loop Adam
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.optim.lr_g, betas=betas, fused=fused)
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.optim.lr_d, betas=betas, fused=fused)
        self.G, self.D, self.opt_g, self.opt_d = self.acc.prepare(g, d, opt_g, opt_d)
        self.ema.model.to(self.device)
        self.G_raw, self.D_raw = self.acc.unwrap_model(self.G), self.acc.unwrap_model(self.D)
        # Compiled callables share the modules' parameters; the modules stay eager, so their
        # state_dict keys do not change. The penalty differentiates the critic's input gradient
        # (double backward), which AOTAutograd refuses ("torch.compile with aot_autograd does
        # not currently support double backward"): its forward uses the eager self.D.
        self.G_fwd, self.D_fwd, self.D_frozen = self.G, self.D, self.D_raw
        if cfg.train.compile:
            self.G_fwd, self.D_fwd = compile_module(self.G), compile_module(self.D)
            self.D_frozen = self.D_fwd if self.D is self.D_raw else compile_module(self.D_raw)

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
        load_optimizer_state(self.opt_g, state["opt_G"])
        load_optimizer_state(self.opt_d, state["opt_D"])
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

    def _draw_labels(self, purpose: str, step: int, phase: int = 0) -> torch.Tensor | None:
        """Uniform class labels for the fakes, counter-based like the noise (None if unconditional)."""
        if not self.num_classes:
            return None
        g = dist.generator_for(torch.device("cpu"), self.cfg.train.seed, purpose, self.rank, step, phase)
        return torch.randint(self.num_classes, (self.batch,), generator=g).to(self.device)

    def _augmenter(self, purpose: str, step: int, phase: int = 0):
        """This phase's DiffAugment with its parameters drawn (one transform per real/fake
        pair), counter-based like the noise; None when data.diffaug is off."""
        if self.augment is None:
            return None
        g = dist.generator_for(torch.device("cpu"), self.cfg.train.seed, purpose, self.rank, step, phase)
        res = self.cfg.data.resolution
        return functools.partial(self.augment.apply,
                                 params=self.augment.sample(self.batch, res, res, g, self.device))

    def critic_step(self, real: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                    y_real: torch.Tensor | None = None, y_fake: torch.Tensor | None = None,
                    augment=None) -> dict:
        if self.cfg.train.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), self.acc.autocast():
            fake = self.G_fwd(z, y_fake)
        scaler = self.acc.scaler
        scale = scaler._get_scale_async() if scaler is not None else 1.0
        if scale is None:  # the scaler builds its scale tensor lazily, at its first scale()
            scale = scaler.get_scale()
        with self.acc.autocast():
            loss, stats = critic_phase(self.D_fwd, real, fake, alpha, self.cfg.loss, scale,
                                       y_real=y_real, y_fake=y_fake, classify=self.classify,
                                       augment=augment, penalty_critic=self.D)
        self._apply(loss, self.opt_d, stats)
        return stats

    def generator_step(self, z: torch.Tensor, y: torch.Tensor | None = None, augment=None) -> dict:
        # The generator's loss flows through the critic, but the critic is not trained here:
        # use the unwrapped critic with frozen parameters (no DDP reducer, no critic grads).
        self.D_raw.requires_grad_(False)
        with self.acc.autocast():
            loss, stats = generator_phase(self.D_frozen, self.G_fwd(z, y), self.cfg.loss, y=y,
                                          classify=self.classify, augment=augment)
        self._apply(loss, self.opt_g, stats)
        self.D_raw.requires_grad_(True)
        return stats

    def _apply(self, loss: torch.Tensor, opt, stats: dict) -> None:
        """Backward and step; a non-finite loss or gradient on any rank skips the step on every rank.

        The gradients are all-reduced by now, so one rank's overflow is every rank's. Under fp16
        the GradScaler checks the gradients itself (it must see an overflow to lower its scale),
        and its skip is the same on every rank for the same reason.

        With fused Adam (and no GradScaler) the decision stays on the device: the optimizer
        takes the flag as ``found_inf`` and skips inside its kernel, so the step has no host
        sync. Otherwise reading the flag is this phase's one host sync.
        """
        scaler = self.acc.scaler
        self.acc.backward(loss)
        if scaler is None:
            found_inf = self._found_inf(loss, opt)
            if self.fused_adam:
                opt.optimizer.found_inf = found_inf
                opt.step()
                stats["skipped_steps"] = found_inf
                opt.zero_grad(set_to_none=True)
                return
            finite = not bool(found_inf.item())
        else:
            finite = dist.all_ranks_agree(self.acc, bool(torch.isfinite(loss.detach()).item()), "all")
        if finite:
            opt.step()
        elif scaler is not None:
            # Under fp16 a non-finite loss is mostly the *scaled* penalty gradient overflowing
            # (scaled-output recipe): back the scale off as the scaler would for an overflowing
            # gradient, or it never shrinks and every later step overflows too.
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        skipped = not finite or (scaler is not None and opt.step_was_skipped)
        # On the loss's device, like every other statistic: the tick stacks them all.
        stats["skipped_steps"] = torch.tensor(1.0 if skipped else 0.0, device=loss.device)
        opt.zero_grad(set_to_none=True)

    def _found_inf(self, loss: torch.Tensor, opt) -> torch.Tensor:
        """1.0 where the loss or a gradient of ``opt``'s parameters is non-finite on any rank,
        else 0.0: a scalar tensor on the device, not read here. One fused kernel per device and
        dtype (GradScaler's own check, unscaling by 1) instead of a few launches per parameter."""
        found = (~torch.isfinite(loss.detach())).float().reshape(1)
        by_kind: dict[tuple, list[torch.Tensor]] = {}
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    by_kind.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        one = torch.ones(1, device=found.device)
        for (device, _), grads in by_kind.items():
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one.to(device))
        if self.world > 1:  # an async all-reduce: no host sync
            found = self.acc.reduce(found, reduction="sum").clamp_(max=1.0)
        return found.reshape(())  # 0-dim, as fused Adam subtracts it from its step counts

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, float]:
        cfg, acc = self.cfg, self.acc
        n_critic = cfg.optim.n_critic
        memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        remaining = cfg.train.steps - self.step
        self._print_plan(remaining)
        self._install_signal_handlers()
        batches = self.make_batches(skip=self.step * n_critic, count=max(remaining, 0) * n_critic)
        sums: dict[str, torch.Tensor] = {}
        tick_start, tick_nimg, last = time.time(), self.nimg, {}
        while self.step < cfg.train.steps and not self.stop_requested:
            for i in range(n_critic):
                images, labels = next(batches)
                real = data_mod.to_model_range(images.to(self.device, non_blocking=True), memory_format)
                y_real = labels.to(self.device, non_blocking=True) if self.num_classes else None
                z = self._draw("z_d", self.batch, cfg.model.latent_dim, step=self.step, phase=i)
                alpha = self._draw("alpha", self.batch, step=self.step, phase=i)
                y_fake = self._draw_labels("y_d", step=self.step, phase=i)
                aug = self._augmenter("aug_d", step=self.step, phase=i)
                self._accumulate(sums, self.critic_step(real, z, alpha, y_real, y_fake, aug), 1.0 / n_critic)
            z = self._draw("z_g", self.batch, cfg.model.latent_dim, step=self.step)
            y = self._draw_labels("y_g", step=self.step)
            self._accumulate(sums, self.generator_step(z, y, self._augmenter("aug_g", step=self.step)), 1.0)
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
                  "peak_mem_gb": "Resources/peak_mem_gb", "skipped_steps": "Progress/skipped_steps",
                  "ac_real": "Loss/ac_real", "ac_fake": "Loss/ac_fake",
                  "ac_generator": "Loss/ac_generator", "ac_accuracy": "Critic/ac_accuracy_real"}
        for k, v in stats.items():
            self.writer.add_scalar(groups.get(k, f"Other/{k}"), v, self.step)
        line = (f"step {self.step:>6}/{self.cfg.train.steps}  kimg {stats['kimg']:8.1f}  "
                f"img/s {ips:7.1f}  sec/kimg {stats['sec_per_kimg']:6.2f}  "
                f"W {stats.get('wasserstein', float('nan')):7.3f}  "
                + (f"GP {stats['gradient_penalty']:6.3f}  |grad| {stats['grad_norm_mean']:5.2f}  "
                   if "gradient_penalty" in stats else "")  # no penalty (loss.kind=ns)
                + f"D {stats.get('critic_loss', float('nan')):7.3f}  "
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
        imgs = self.ema.model(self.fixed_z, self.fixed_y).float()
        grid = make_grid(imgs, nrow=self.grid_cols, normalize=True, value_range=(-1, 1))
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
            f"D {count_params(self.D_raw) / 1e6:.2f}M params, {cfg.model.arch}, loss {cfg.loss.kind}"
            + (f", conditional on {self.num_classes} classes ({cfg.model.cond})" if self.num_classes else "")
            + (f", DiffAugment {','.join(self.augment.policy)}" if self.augment else ""),
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
