"""The training loop: it owns the schedule, nothing else.

Per generator step: n_critic critic phases (each with its own real batch, fresh noise and
interpolation coefficients), then one generator phase, then the EMA update. Losses come from
``objective``; the networks and their views from ``networks``; backward and skip mechanics
from ``step``; draws from ``draws``; reporting from ``logbook``; files from ``checkpoint``
and ``samples``; rank decisions from ``ranks``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from .. import ranks
from ..config import Config, config_from_dict, dump_yaml, to_dict
from ..data import pipeline
from ..data.shardset import check_shape, resolve_shards
from ..nets.augment import DiffAugment
from ..objective import critic_phase, generator_phase
from . import checkpoint as ckpt
from . import comm, zero
from .draws import Draws
from .ema import ema_beta
from .instrument import Instruments
from .logbook import Logbook, RunLog, plan_text
from .monitor import QualityMonitor
from .networks import build_networks
from .samples import SampleGrid, write_gif
from .signals import StopSignals
from .step import StepRunner


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Load an optimizer's state but keep this run's implementation flags (fused, foreach):
    ``load_state_dict`` takes every group setting from the checkpoint, so a run resumed with
    train.fused_adam changed would silently keep the old implementation."""
    current = opt.state_dict()["param_groups"]
    groups = [{**g, **{k: c[k] for k in ("fused", "foreach") if k in c}}
              for g, c in zip(saved["param_groups"], current)]
    opt.load_state_dict({**saved, "param_groups": groups})


def resolve_num_classes(cfg: Config, shards) -> int:
    """model.num_classes from the shard manifest for a conditional model (0 otherwise)."""
    m, names = cfg.model, shards.class_names
    if not m.conditional:
        return 0
    where = shards.manifest_path or cfg.data.shards
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


def _sl(t: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    return None if t is None else t[sl]


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None, overwrite: bool = False) -> None:
        self.cfg = cfg
        notes = zero.resolve(cfg, ranks.launcher_deepspeed())  # a DeepSpeed launch: deepspeed
        deepspeed = cfg.train.backend == "deepspeed"
        self.acc = ranks.make_accelerator(cfg.train.mixed_precision, ranks.bucket_mb_for(
            cfg.train.grad_comm, cfg.train.bucket_mb), deepspeed)
        self.device = self.acc.device
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.run_dir = cfg.run_dir
        self.threads, self.threads_why = ranks.choose_threads(cfg.train.threads, cfg.data.workers)
        torch.set_num_threads(self.threads)
        self.runlog = RunLog(self.acc)  # console lines, kept for log.txt
        say = self.runlog.say
        for note in notes:
            say(note)
        self.resume_from = ckpt.select_resume(self.run_dir, resume, overwrite, log=say)
        self._setup_data()
        self.G, self.D, self.ema, self.fused_adam = (
            zero.build_networks if deepspeed else build_networks)(self.acc, cfg, say)
        self.instruments = Instruments(self.rank)  # off unless a benchmark asks
        self.comm_states = [comm.register(net.eager, cfg.train.grad_comm, cfg.train.powersgd_rank,
                                          cfg.train.powersgd_start, self.instruments.on)
                            for net in (self.G, self.D)]
        self.vote = ranks.StopVote(self.acc)
        self.classify = bool(getattr(self.D.raw, "classifies", False))  # the critic has an AC head
        augment = DiffAugment(cfg.data.diffaug) if cfg.data.diffaug else None
        self.draws = Draws(cfg.train.seed, self.rank, self.device, self.batch,
                           cfg.model.latent_dim, self.num_classes, augment, cfg.data.resolution)
        self.steps = zero.ZeroSteps(self.acc) if deepspeed else StepRunner(self.acc, self.fused_adam)
        self.step, self.nimg, self.stopped = 0, 0, False
        if self.resume_from is not None:
            self._load(self.resume_from)
        manifest = self.shards.manifest_path
        self.monitor = QualityMonitor(self.acc, cfg, ranks.NullWriter(), self.run_dir,
                                      manifest.parent if manifest is not None else None, say)
        self.monitor.check_ready()  # what the evaluations will need, before any step is spent
        # Only now, with data, models and checkpoint in hand, does the run dir get written:
        # a start that fails leaves nothing behind, and config.yaml is the config as run
        # (model.num_classes from the manifest, the resumed run's own settings).
        ranks.main_then_all(self.acc, ckpt.prepare_run_dir, self.run_dir,
                            overwrite and self.resume_from is None)
        ranks.write_text(self.acc, self.run_dir / "config.yaml", dump_yaml(cfg))
        self.runlog.open(self.run_dir)
        self.writer = ranks.make_writer(self.acc, self.run_dir / "logs")
        self.monitor.writer = self.writer
        self.logbook = Logbook(self.acc, self.writer, self.runlog, cfg.log.tick_every,
                               cfg.train.steps)
        self.grid = SampleGrid(cfg.log.grid_size, cfg.model.latent_dim, self.num_classes,
                               cfg.train.seed, self.device)
        self.signals = StopSignals(self.rank, cfg.train.stop_grace)

    # ------------------------------------------------------------------ setup
    def _setup_data(self) -> None:
        cfg = self.cfg
        if cfg.train.batch_size % self.world:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is the global batch and "
                             f"must divide by the {self.world} processes")
        self.batch = cfg.train.batch_size // self.world
        # Only the main process writes shards (built-in set, -d folders); the others wait.
        with self.acc.main_process_first():
            self.shards = resolve_shards(
                cfg.data.shards, cfg.data.resolution, cfg.data.channels, cfg.data.cache_dir,
                cfg.data.builtin_per_class, cfg.train.seed,
                log=self.runlog.say,
                class_names=[c.strip() for c in cfg.data.class_names.split(",") if c.strip()])
        check_shape(self.shards, cfg.data.resolution, cfg.data.channels)
        self.shards.check()  # on every rank (headers only), so every rank stops alike
        self.num_classes = resolve_num_classes(cfg, self.shards)

    def make_batches(self, skip: int, count: int) -> pipeline.Taken:
        """``count`` batches, the first ``skip`` of the run's stream already consumed; its
        ``close()`` shuts the loader's workers down."""
        cfg = self.cfg
        loader = pipeline.make_loader(
            self.shards.urls, rank=self.rank, world=self.world, seed=cfg.train.seed,
            batch_size=self.batch, resolution=cfg.data.resolution, channels=cfg.data.channels,
            num_batches=count, workers=cfg.data.workers, shuffle_buffer=cfg.data.shuffle_buffer,
            hflip=cfg.data.hflip, skip_batches=skip, pin_memory=self.device.type == "cuda",
            expected=self.shards.expected)
        return loader.take(count)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        scaler = self.acc.scaler
        return {
            "G": self.G.weights(), "D": self.D.weights(),
            "G_ema": self.ema.model.state_dict(),
            "opt_G": self.G.opt.state_dict(), "opt_D": self.D.opt.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "step": self.step, "nimg": self.nimg, "world_size": self.world,
            "config": to_dict(self.cfg), "class_names": list(self.shards.class_names),
            "rng_torch": torch.get_rng_state(),
        }

    def _load(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, map_location="cpu")
        where = state["path"]
        self.G.load_weights(state["G"], "generator", where)
        self.D.load_weights(state["D"], "critic", where)
        ckpt.load_module_state(self.ema.model, state["G_ema"], "generator EMA", where)
        load_optimizer_state(self.G.opt, state["opt_G"])
        load_optimizer_state(self.D.opt, state["opt_D"])
        if self.acc.scaler is not None and state["scaler"]:
            self.acc.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_torch"])
        self.step, self.nimg = int(state["step"]), int(state["nimg"])
        self.runlog.say(ckpt.resume_message(state, config_from_dict(state["config"]),
                                            self.cfg, self.world, self.batch))

    def save(self) -> Path | None:
        state = self.state_dict()  # on every rank: under DeepSpeed it gathers the partitions
        return ranks.main_then_all(self.acc, lambda: ckpt.save_checkpoint(
            state, self.run_dir, self.step, self.cfg.log.keep_checkpoints))

    # ------------------------------------------------------------------ phases
    def critic_step(self, real: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                    y_real: torch.Tensor | None = None, y_fake: torch.Tensor | None = None,
                    augment=None) -> dict:
        if self.cfg.train.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        scale = self.steps.loss_scale(self.D.opt)

        def compute(sl: slice) -> tuple[torch.Tensor, dict]:
            yr, yf = _sl(y_real, sl), _sl(y_fake, sl)
            with torch.no_grad(), self.acc.autocast():
                fake = self.G.fwd(z[sl], yf)
            with self.acc.autocast():
                return critic_phase(self.D.fwd, real[sl], fake, alpha[sl], self.cfg.loss, scale,
                                    y_real=yr, y_fake=yf, classify=self.classify,
                                    augment=augment.sliced(sl) if augment else None,
                                    penalty_critic=self.D.eager)
        return self.steps.accumulate(self.D.eager, self.D.opt, real.shape[0],
                                     self.cfg.train.micro_batch, compute)

    def generator_step(self, z: torch.Tensor, y: torch.Tensor | None = None, augment=None) -> dict:
        def compute(sl: slice) -> tuple[torch.Tensor, dict]:
            ys = _sl(y, sl)
            with self.D.frozen_params() as critic, self.acc.autocast():
                return generator_phase(critic, self.G.fwd(z[sl], ys), self.cfg.loss, y=ys,
                                       classify=self.classify,
                                       augment=augment.sliced(sl) if augment else None)
        return self.steps.accumulate(self.G.eager, self.G.opt, z.shape[0],
                                     self.cfg.train.micro_batch, compute)

    def _real_batch(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor | None]:
        fmt = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        images, labels = next(batches)
        real = pipeline.to_model_range(images.to(self.device, non_blocking=True), fmt)
        return real, labels.to(self.device, non_blocking=True) if self.num_classes else None

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, float]:
        """Run to train.steps, or until a stop signal (then ``self.stopped``: checkpointed)."""
        cfg = self.cfg
        n_critic = cfg.optim.n_critic
        remaining = cfg.train.steps - self.step
        self.runlog.say(self.plan(remaining))
        self.signals.install()
        if remaining <= 0:
            # Resumed at the end: a final evaluation that failed last time runs now.
            if not ranks.broadcast_from_main(self.acc, ranks.on_main(
                    self.acc, self.monitor.has_result, self.step)):
                return self.monitor.evaluate(self.ema.model, self.step, self.nimg)
            return {}
        batches = self.make_batches(skip=self.step * n_critic, count=remaining * n_critic)
        try:
            return self._loop(batches)
        finally:
            batches.close()  # the loader's workers go now, whatever happened

    def _loop(self, batches: Iterator) -> dict[str, float]:
        cfg, log = self.cfg, self.logbook
        n_critic, batch = cfg.optim.n_critic, cfg.train.batch_size
        log.start(self.nimg)
        last: dict[str, float] = {}
        inst = self.instruments
        while self.step < cfg.train.steps:
            # --- n_critic critic phases, then one generator phase, then the EMA; no host read
            with inst.phase("critic"):
                for i in range(n_critic):
                    real, y_real = self._real_batch(batches)
                    log.add(self.critic_step(real, y_real=y_real, **self.draws.critic(self.step, i)),
                            1.0 / n_critic)
            with inst.phase("generator"):
                g_draws = self.draws.generator(self.step)
                log.add(self.generator_step(**g_draws), 1.0)
            with inst.phase("step"):
                self.step += 1
                self.nimg += batch * n_critic
                self.ema.update(self.G.raw, ema_beta(cfg.train.ema_kimg, cfg.train.ema_rampup,
                                                     self.step * batch, batch))
                # A stop every rank agrees on, decided one step after the signal (no wait).
                self.stopped = self.vote.step(self.signals.requested)
            done = self.step == cfg.train.steps
            log.beat(self.step, self.nimg)
            if self.step % cfg.log.tick_every == 0 or done:
                last = log.tick(self.step, self.nimg, self._lrs(), self.device)
                last.update(self.monitor.check_diversity(self.G.raw, self.D.raw, real, self.step))
            if self.step % cfg.log.sample_every == 0 or done:
                self.sample()
                with torch.no_grad():
                    fake = self.G.raw(g_draws["z"])
                self.monitor.gp_visuals(self.D.raw, real, fake, self.step)
            # --- the checkpoint before the evaluation, which may fail (a resumed run then
            # evaluates instead of replaying the end)
            if self.step % cfg.log.ckpt_every == 0 or done or self.stopped:
                path = self.save()
                if self.stopped:
                    log.say(f"stop requested: saved {path} at step {self.step}")
                    break
            if (cfg.eval.every and self.step % cfg.eval.every == 0) or done:
                last.update(self.monitor.evaluate(self.ema.model, self.step, self.nimg))
            inst.step_done()
        self.vote.close()  # every rank finishes the vote in flight
        return last

    def _lrs(self) -> dict[str, float]:
        return {"lr_G": self.G.opt.param_groups[0]["lr"], "lr_D": self.D.opt.param_groups[0]["lr"]}

    def sample(self) -> Path | None:
        """A grid from fixed noise through the EMA generator (main process only)."""
        def save() -> Path:
            path = self.run_dir / "samples" / f"step-{self.step:08d}.png"
            self.writer.add_image("Samples/ema_fixed_noise", self.grid.save(self.ema.model, path),
                                  self.step)
            return path
        return ranks.on_main(self.acc, save)

    def plan(self, remaining: int) -> str:
        """The start-up lines: where, what data, how many processes, what a step is."""
        return plan_text(self, remaining)

    def close(self) -> None:
        self.signals.uninstall()
        self.instruments.close()
        self.writer.close()
        ranks.main_then_all(self.acc, write_gif, self.run_dir / "samples")
        self.acc.end_training()
