"""The training loop: it owns the schedule, and a step reads top to bottom in it.

Per generator step: n_critic critic steps (each with its own real batch, fresh noise and
interpolation coefficients), then one generator step, then the EMA update. A step: for each
micro-batch, the objective's loss (``objective``), the backend's backward; then the backend's
optimizer step (``backends``: DDP or DeepSpeed ZeRO, declared in ``backends.base``). Draws
come from ``draws``, reporting from ``logbook``, files from ``checkpoint`` and ``samples``,
rank decisions from ``ranks``; what the run settles at start-up from ``settle``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import torch

from .. import ranks
from ..config import Config, dump_yaml, freeze, thawed, to_dict, validate
from ..nets import count_params
from ..nets.augment import DiffAugment
from ..objective import critic_phase, generator_phase
from . import backends
from . import checkpoint as ckpt
from .backends import Accumulated
from .draws import Draws
from .ema import ema_beta
from .guard import DivergenceGuard, Diverged, LrSpike, learning_rate_scale
from .inputs import Inputs
from .instrument import Instruments
from .networks import Network
from .logbook import Logbook, Plan, RunLog, make_writer, plan_text
from .monitor import QualityMonitor, check_ready
from .resume import Resume, check_resume_classes, resume_message
from .samples import SampleGrid, write_gif
from .settle import settle_classes, settle_threads
from .signals import StopSignals
from .threads import ThreadTuner


def _sl(t: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    return None if t is None else t[sl]


class Steps:
    """One critic step and one generator step, top to bottom: per micro-batch the objective's
    loss and the backend's backward, then the backend's optimizer step. ``Trainer`` provides
    the networks, the backend, the config and the accelerator."""

    G: Network
    D: Network
    backend: backends.Backend
    cfg: Config
    classify: bool

    def critic_step(self, real: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor,
                    y_real: torch.Tensor | None = None, y_fake: torch.Tensor | None = None,
                    augment=None) -> dict:
        """One critic step: per micro-batch, fakes (no gradient), the critic's loss, backward;
        then the optimizer step (or the skip every rank agrees on). The statistics."""
        G, D, backend = self.G, self.D, self.backend
        if self.cfg.train.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        scale = backend.loss_scale(D)  # the penalty differentiates the scaled output (fp16)
        total = Accumulated()
        for mb in backend.micro_batches(D, real.shape[0]):
            s, yr, yf = mb.slice, _sl(y_real, mb.slice), _sl(y_fake, mb.slice)
            with mb.sync():
                with torch.no_grad(), self.acc.autocast():
                    fake = G.fwd(z[s], yf)
                with self.acc.autocast():
                    loss, stats = critic_phase(D.fwd, real[s], fake, alpha[s], self.cfg.loss, scale,
                                               y_real=yr, y_fake=yf, classify=self.classify,
                                               augment=augment.sliced(s) if augment else None,
                                               penalty_critic=D.eager)
                backend.backward(D, loss, mb)
            total.add(loss, stats, mb)
        backend.step(D, total.loss, total.stats)
        return total.stats

    def generator_step(self, z: torch.Tensor, y: torch.Tensor | None = None, augment=None) -> dict:
        """One generator step: per micro-batch, fakes through the frozen critic, the
        generator's loss, backward; then the optimizer step. The statistics."""
        G, D, backend = self.G, self.D, self.backend
        total = Accumulated()
        for mb in backend.micro_batches(G, z.shape[0]):
            s, ys = mb.slice, _sl(y, mb.slice)
            with mb.sync():
                with D.frozen_params() as critic, self.acc.autocast():
                    loss, stats = generator_phase(critic, G.fwd(z[s], ys), self.cfg.loss, y=ys,
                                                  classify=self.classify,
                                                  augment=augment.sliced(s) if augment else None)
                backend.backward(G, loss, mb)
            total.add(loss, stats, mb)
        backend.step(G, total.loss, total.stats)
        return total.stats


class RunState:
    """The run's whole state in a checkpoint: what is saved, and what resume and rollback restore
    (``Trainer`` provides the pieces)."""

    G: Network
    D: Network
    backend: backends.Backend

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.backend.state_dict(self.G, self.D),  # gathered: every rank calls it
            "G_ema": self.ema.model.state_dict(),
            "step": self.step, "nimg": self.nimg, "world_size": self.world,
            "config": to_dict(self.cfg), "chosen_for_machine": list(self.chosen_for_machine),
            "healthy": self.guard.healthy, "rollbacks": self.rollbacks,
            "class_names": list(self.shards.class_names), "rng_torch": torch.get_rng_state(),
        }

    def _load(self, resume: Resume) -> None:
        self._restore(resume.state)
        if resume.state.get("healthy", True):
            self.last_healthy = resume.path
        self.runlog.say(resume_message(resume.state, resume.config, self.cfg, self.world, self.batch))

    def _restore(self, state: dict[str, Any]) -> None:
        """The whole training state of a checkpoint (resume and rollback alike)."""
        where = state["path"]
        self.backend.load_state_dict(self.G, self.D, state, where)
        ckpt.load_module_state(self.ema.model, state["G_ema"], "generator EMA", where)
        torch.set_rng_state(state["rng_torch"])
        self.step, self.nimg = int(state["step"]), int(state["nimg"])
        self.rollbacks = self.draws.stream = int(state.get("rollbacks", 0))
        scale = learning_rate_scale(self.rollbacks)  # the rollbacks' halvings, on this config
        for net, lr in ((self.G, self.cfg.optim.lr_g), (self.D, self.cfg.optim.lr_d)):
            for group in net.opt.param_groups:
                group["lr"] = lr * scale

    def save(self) -> Path | None:
        state = self.state_dict()  # on every rank: a partitioned backend gathers its state
        # While unhealthy, rotation keeps the newest healthy checkpoint (a rollback's target).
        keep = None if state["healthy"] else self.last_healthy
        path = ranks.main_then_all(self.acc, lambda: ckpt.save_checkpoint(
            state, self.run_dir, self.step, self.cfg.log.keep_checkpoints, keep))
        if state["healthy"]:
            self.last_healthy = ckpt.checkpoint_dir(self.run_dir) / f"step-{self.step:08d}.pt"
        return path

    def _rollback(self, why: str) -> None:
        """Go back to the newest healthy checkpoint, or stop (exit 1): ``guard``."""
        t = self.cfg.train
        self.runlog.say(f"WARNING step {self.step}: {why}")
        self.writer.add_text("Events/divergence", why, self.step)
        refuse = ("train.on_divergence=stop" if t.on_divergence == "stop" else
                  f"{self.rollbacks} rollback(s) already (train.max_rollbacks={t.max_rollbacks})"
                  if self.rollbacks >= t.max_rollbacks else
                  "no healthy checkpoint to go back to" if self.last_healthy is None else "")
        if refuse:
            raise Diverged(f"step {self.step}: {why}; stopping: {refuse}"
                           + (f"; the newest healthy checkpoint is {self.last_healthy}"
                              if self.last_healthy else ""))
        target, at = self.last_healthy, self.step
        self._restore({**ckpt.read_checkpoint(target), "rollbacks": self.rollbacks + 1})
        self.guard.reset()
        self.monitor.alarm.reset()
        lrs = self._lrs()
        self.runlog.say(f"rolled back from step {at} to {target.name} (step {self.step}): learning "
                        f"rates halved to G {lrs['lr_G']:.3g}, D {lrs['lr_D']:.3g}, noise stream "
                        f"{self.rollbacks}; rollback {self.rollbacks} of {t.max_rollbacks}")
        self.writer.add_scalar("Events/rollbacks", self.rollbacks, self.step)
        self.rolled_back = True


class Trainer(Steps, RunState):
    def __init__(self, cfg: Config, resume: str | Resume | None = None,
                 overwrite: bool = False) -> None:
        # --- settle what the config leaves to the run, in a copy; then validate and freeze it:
        # config.yaml and every checkpoint say what ran.
        cfg = thawed(cfg)
        notes = backends.resolve(cfg)  # which backend, its stage and precision
        self.backend = backends.create(cfg)  # forms the process group
        self.acc = self.backend.acc
        self.device = self.acc.device
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.runlog = RunLog(self.acc)  # console lines, kept for log.txt
        say = self.runlog.say
        for note in notes:
            say(note)
        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.resume_from = resume if isinstance(resume, Resume) else Resume.of(
            ckpt.find_resume(self.run_dir, resume, overwrite, log=say))
        self.inputs = Inputs(self.acc, cfg, say)  # the shards, and the cache it holds them in
        self.shards, self.batch = self.inputs.shards, self.inputs.batch
        self.threads_why, chosen = settle_threads(cfg, self.inputs.loader_workers)
        self.chosen_for_machine = self.inputs.settle(cfg) + chosen
        torch.set_num_threads(cfg.train.threads)
        self.num_classes = self._classes(cfg)
        validate(cfg)
        freeze(cfg)
        # --- build
        self.G, self.D, self.ema = self.backend.build(cfg, say)
        self.fused_adam = self.backend.fused_adam
        self.instruments = Instruments(self.rank)  # off unless a benchmark asks
        self.vote = ranks.StopVote(self.acc)
        self.classify = bool(getattr(self.D.raw, "classifies", False))  # the critic has an AC head
        augment = DiffAugment(cfg.data.diffaug) if cfg.data.diffaug else None
        self.draws = Draws(cfg.train.seed, self.rank, self.device, self.batch,
                           cfg.model.latent_dim, self.num_classes, augment, cfg.data.resolution)
        self.step, self.nimg, self.stopped = 0, 0, False
        self.where = "start-up"  # what the loop is doing, for a collective that times out
        t = cfg.train
        self.guard = DivergenceGuard(t.divergence_ticks, t.divergence_bound, t.collapse_rollback)
        self.spike = LrSpike.from_env()  # fault injection (tests); off unless set
        self.rollbacks, self.rolled_back, self.last_healthy = 0, False, None
        if self.resume_from is not None:
            self._load(self.resume_from)
        manifest = self.shards.manifest_path
        shard_dir = manifest.parent if manifest is not None else None
        check_ready(cfg, shard_dir)  # what the evaluations will need, before any step is spent
        # Only now, with data, models and checkpoint in hand, does the run dir get written:
        # a start that fails leaves nothing behind, and config.yaml is the config as run
        # (model.num_classes from the manifest, the resumed run's own settings).
        ranks.main_then_all(self.acc, ckpt.prepare_run_dir, self.run_dir,
                            overwrite and self.resume_from is None)
        ranks.write_text(self.acc, self.run_dir / "config.yaml", dump_yaml(cfg))
        self.runlog.open(self.run_dir)
        self.writer = make_writer(self.acc, self.run_dir / "logs")
        self.monitor = QualityMonitor(self.acc, cfg, self.writer, self.run_dir, shard_dir, say)
        self.logbook = Logbook(self.acc, self.writer, self.runlog, cfg.log.tick_every,
                               cfg.train.steps)
        self.grid = SampleGrid(cfg.log.grid_size, cfg.model.latent_dim, self.num_classes,
                               cfg.train.seed, self.device)
        self.signals = StopSignals(self.rank, cfg.train.stop_grace)

    def _classes(self, cfg: Config) -> int:
        """model.num_classes from the shards; a conditional resume keeps its own classes."""
        where = self.shards.manifest_path or cfg.data.shards
        if self.resume_from is not None and cfg.model.conditional:
            check_resume_classes(self.resume_from, self.shards.class_names, where)
        return settle_classes(cfg, self.shards.class_names, where)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, float]:
        """Run to train.steps, or until a stop signal (then ``self.stopped``: checkpointed)."""
        cfg = self.cfg
        n_critic = cfg.optim.n_critic
        remaining = cfg.train.steps - self.step
        # Auto threads on a CPU: the faster of all of them and one, by measured steps.
        auto = self.threads_why not in ("train.threads", "OMP_NUM_THREADS")
        self.tuner = ThreadTuner(cfg.train.threads, auto and self.device.type == "cpu")
        self.runlog.say(self.plan(remaining))
        self.signals.install()
        if remaining <= 0:
            # Resumed at the end: a final evaluation that failed last time runs now.
            if not ranks.broadcast_from_main(self.acc, ranks.on_main(
                    self.acc, self.monitor.has_result, self.step)):
                return self.monitor.evaluate(self.ema.model, self.step, self.nimg)
            return {}
        while True:  # again from the step a rollback went back to
            self.rolled_back = False
            batches = self.inputs.batches(skip=self.step * n_critic,
                                          count=(cfg.train.steps - self.step) * n_critic)
            try:
                with ranks.bounded_collectives(self.acc, cfg.train.collective_timeout,
                                               lambda: f"{self.where} at step {self.step}"):
                    last = self._steps(batches)
            finally:
                batches.close()  # the loader's workers go now, whatever happened
            if not self.rolled_back:
                return last

    def _steps(self, batches: Iterator) -> dict[str, float]:
        cfg, log = self.cfg, self.logbook
        n_critic, batch = cfg.optim.n_critic, cfg.train.batch_size
        log.start(self.nimg)
        last: dict[str, float] = {}
        inst = self.instruments
        while self.step < cfg.train.steps:
            t0 = time.perf_counter()
            if (spike := self.spike.maybe(self.step, [self.G.opt, self.D.opt])) is not None:
                self.runlog.say(f"fault injected: learning rates x{spike:g} at step {self.step}")
            # --- n_critic critic phases, then one generator phase, then the EMA; no host read
            self.where = "the critic step's gradient all-reduce"
            with inst.phase("critic"):
                for i in range(n_critic):
                    real, y_real = self.inputs.next(batches, bool(self.num_classes))
                    log.add(self.critic_step(real, y_real=y_real, **self.draws.critic(self.step, i)),
                            1.0 / n_critic)
            self.where = "the generator step's gradient all-reduce"
            with inst.phase("generator"):
                g_draws = self.draws.generator(self.step)
                log.add(self.generator_step(**g_draws), 1.0)
            self.where = "the stop vote"
            with inst.phase("step"):
                self.step += 1
                self.nimg += batch * n_critic
                self.ema.update(self.G.raw, ema_beta(cfg.train.ema_kimg, cfg.train.ema_rampup,
                                                     self.step * batch, batch))
                # A stop every rank agrees on, decided one step after the signal (no wait).
                self.stopped = self.vote.step(self.signals.requested)
            self.tuner.observe(time.perf_counter() - t0)
            last = self._after_step(real, y_real, g_draws["z"], last)
            if self.stopped or self.rolled_back:
                break
            inst.step_done()
        self.vote.close()  # every rank finishes the vote in flight
        return last

    def _after_step(self, real: torch.Tensor, y_real: torch.Tensor | None, z: torch.Tensor,
                    last: dict) -> dict[str, float]:
        """The schedule after a step: tick (and the divergence guard), samples, checkpoint,
        evaluation. The checkpoint comes before the evaluation, which may fail (a resumed run
        then evaluates instead of replaying the end)."""
        cfg, step = self.cfg, self.step
        done = step == cfg.train.steps
        self.logbook.beat(step, self.nimg)
        if step % cfg.log.tick_every == 0 or done:
            self.where = "the tick's statistics all-reduce"
            last = self.logbook.tick(step, self.nimg, self._lrs(), self.device)
            last.update(self.monitor.check_diversity(self.G.raw, self.D.raw, real, step, y_real))
            verdict = self.guard.observe(last, (step - 1) % cfg.log.tick_every + 1, self.monitor.firing)
            if verdict:
                self._rollback(verdict)
                return last
        if step % cfg.log.sample_every == 0 or done:
            self.sample()
            self.monitor.gp_visuals(self.G.raw, self.D.raw, real, z, step)
        if step % cfg.log.ckpt_every == 0 or done or self.stopped:
            self.where = "the checkpoint's gather and barrier"
            path = self.save()
            if self.stopped:
                self.runlog.say(f"stop requested: saved {path} at step {step}")
                return last
        if (cfg.eval.every and step % cfg.eval.every == 0) or done:
            self.where = "the evaluation's gather"
            last.update(self.monitor.evaluate(self.ema.model, step, self.nimg))
        return last

    def _lrs(self) -> dict[str, float]:
        """What the tick reports besides the statistics: learning rates, threads in use."""
        return {"lr_G": self.G.opt.param_groups[0]["lr"], "lr_D": self.D.opt.param_groups[0]["lr"],
                "threads": float(torch.get_num_threads())}

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
        augment = self.draws.augment
        tuned = f"; 1 or {self.cfg.train.threads} by measured step time" if self.tuner.active else ""
        return plan_text(self.cfg, Plan(
            self.run_dir, self.shards, self.world, self.device, self.backend.describe(),
            self.threads_why + tuned, self.batch, remaining,
            (count_params(self.G.raw), count_params(self.D.raw)),
            augment.policy if augment else (), self.inputs.plan.line()))

    def close(self, failed: bool = False) -> None:
        """Release what the run holds. ``failed``: after an error, with no collective (a rank
        may be gone; a barrier here would wait for it until the timeout, hiding the error)."""
        self.signals.uninstall()
        self.instruments.close()
        self.writer.close()
        if failed:
            return
        ranks.main_then_all(self.acc, write_gif, self.run_dir / "samples")
        self.acc.end_training()
