"""One toy run: a small MLP generator against an MLP critic on a 2-D dataset, trained with
the image trainer's own pieces -- the objective phases (``objective.critic_phase`` /
``generator_phase``), the generator EMA (``training.ema.EMA``) and the counter-based seeds
(``ranks.seed_for``) -- so a regression in the objective shows up here in seconds on a CPU.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import objective
from ..config import LossConfig
from ..ranks import generator_for, release_single_process_group, seed_for, single_process_group
from ..training import comm
from ..training.ema import EMA
from .data import DATA_SCALE, DATASETS, sample_latent, sample_real
from .rescue import ToyRescue, collapse
from .score import N_EVAL, jbt_latents, run_title, save_scatter, toy_metrics


@dataclass(frozen=True)
class ToyConfig:
    """Hyper-parameters of one toy run (docs/toy_results.md says why these values)."""

    latent_dim: int = 2
    """Size of z ~ N(0, I) (PacGAN: 2)."""
    g_width: int = 128
    """Generator hidden width."""
    g_depth: int = 3
    """Generator hidden layers."""
    d_width: int = 64
    """Critic hidden width."""
    d_depth: int = 3
    """Critic hidden layers."""
    batch: int = 128
    """Real and fake samples per critic step."""
    g_batch: int = 0
    """Samples per generator step (0: same as batch)."""
    n_critic: int = 1
    """Critic steps per generator step (wgan-gp; the ns loss takes 1)."""
    gp_weight: float = 1.0
    """lambda of the penalty."""
    one_sided: bool = True
    """The Lipschitz penalty (WGAN-LP); False: WGAN-GP's two-sided one."""
    lr_g: float = 1e-3
    """Adam learning rate of the generator."""
    lr_d: float = 3e-3
    """Adam learning rate of the critic."""
    betas: tuple[float, float] = (0.5, 0.9)
    """Adam betas of the critic."""
    g_betas: tuple[float, float] | None = None
    """Adam betas of the generator; None: same as betas."""
    warmup: float = 0.2
    """Fraction of steps over which the learning rates rise linearly from 0."""
    decay_start: float = 0.3
    """Fraction of steps after which the learning rates decay linearly to 0."""
    decay_d: bool = True
    """Decay the critic's learning rate too (else only the generator's)."""
    ema: float = 0.99
    """Generator weight EMA used for evaluation (bias-corrected warm-up); 0 disables it."""
    g_act: str = "relu"
    """Generator activation (a key of ACTIVATIONS)."""
    d_act: str = "relu"
    """Critic activation."""
    init: str = "he"
    """he (Kaiming normal, fan-in) or torch (nn.Linear's default)."""
    normalize: bool = True
    """Train on data / DATA_SCALE (the points are rescaled back for scoring)."""
    grad_comm: str = "none"
    """none, or a ``train.grad_comm`` setting (fp32, bf16, fp16, powersgd): both networks go
    through one-process DDP with that communication hook, so its effect on the gradients --
    PowerSGD's low-rank approximation with error feedback -- is measured here."""
    powersgd_rank: int = 1
    """PowerSGD's matrix rank (grad_comm powersgd)."""
    powersgd_start: int = 10
    """Plain all-reduce iterations before PowerSGD starts."""


ACTIVATIONS = {"relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2), "silu": nn.SiLU,
               "elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def _mlp(d_in: int, width: int, depth: int, d_out: int, act: str = "relu") -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), ACTIVATIONS[act]()]
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


def _he_init(net: nn.Sequential) -> None:
    """Kaiming-normal weights, zero biases.

    nn.Linear's default shrinks the signal ~1/sqrt(3) per layer: the untrained generator then
    emits a blob of radius ~0.05 (which the critic pushes, as one, towards a single mode)
    and the critic starts with |grad D| ~ 0.06, so the penalty first has to teach it unit
    slope. With He init both start at the data's scale.
    """
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for i, m in enumerate(linears):
        last = i == len(linears) - 1
        nn.init.kaiming_normal_(m.weight, nonlinearity="linear" if last else "relu")
        nn.init.zeros_(m.bias)


def lr_factor(step: int, steps: int, decay_start: float, warmup: float = 0.0) -> float:
    """Linear warm-up to 1, flat, then linear decay to 0 from ``decay_start``."""
    start, warm = int(decay_start * steps), int(warmup * steps)
    if step < warm:
        return (step + 1) / warm
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(steps - start, 1))


@torch.no_grad()
def _generate(g: nn.Module, z: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    return (g(z).double() * scale).numpy()


class ToyRun:
    """The networks, optimizers and data stream of one run; ``step`` is one generator step."""

    def __init__(self, dataset: str, seed: int, cfg: ToyConfig, loss: str) -> None:
        self.dataset, self.cfg, self.seed = dataset, cfg, seed
        self.lr_scale = 1.0  # halved by each rollback (``rescue``)
        self.n_critic = cfg.n_critic if loss == "wgan-gp" else 1
        self.scale = DATA_SCALE[dataset] if cfg.normalize else 1.0
        torch.manual_seed(seed_for(seed, "toy", "init"))  # parameter init
        self.gen = generator_for(torch.device("cpu"), seed, "toy", "train")  # data, z, alpha
        self.g = _mlp(cfg.latent_dim, cfg.g_width, cfg.g_depth, 2, cfg.g_act)
        self.d = _mlp(2, cfg.d_width, cfg.d_depth, 1, cfg.d_act)
        if cfg.init == "he":
            _he_init(self.g)
            _he_init(self.d)
        self.ema = EMA(self.g) if cfg.ema > 0 else None
        # Fused Adam (one kernel for all parameters): a quarter of a step's time otherwise.
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g,
                                      betas=cfg.g_betas or cfg.betas, fused=True)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=cfg.betas, fused=True)
        # What the optimizers' gradients come through: the module itself, or one-process DDP
        # with a communication hook (the raw modules stay for the EMA, scoring and the frozen
        # critic of the generator step).
        self.g_net, self.d_net = self.g, self.d
        if cfg.grad_comm != "none":
            single_process_group()
            self.g_net, self.d_net = (self._ddp(m) for m in (self.g, self.d))
        # The image trainer's objective, term for term (ns: no penalty).
        self.loss = LossConfig(kind=loss, gp_weight=cfg.gp_weight if loss == "wgan-gp" else 0.0,
                               one_sided=cfg.one_sided)

    def _ddp(self, module: nn.Module) -> nn.Module:
        net = nn.parallel.DistributedDataParallel(module)
        comm.register(net, self.cfg.grad_comm, self.cfg.powersgd_rank, self.cfg.powersgd_start)
        return net

    @property
    def sampler(self) -> nn.Module:
        """The generator that is scored: its EMA when there is one."""
        return self.ema.model if self.ema is not None else self.g

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(x).squeeze(1)  # (B, 1) -> (B,)

    def _trained_critic(self, x: torch.Tensor) -> torch.Tensor:
        return self.d_net(x).squeeze(1)

    def state(self) -> dict[str, Any]:
        """Everything a rollback restores (``rescue``), copied."""
        return copy.deepcopy({"g": self.g.state_dict(), "d": self.d.state_dict(),
                              "ema": self.ema.model.state_dict() if self.ema else None,
                              "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                              "gen": self.gen.get_state()})

    def load(self, state: dict[str, Any], stream: int) -> None:
        """Back to ``state``; learning rates halved ``stream`` times, data and noise from a new
        stream."""
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.lr_scale = 0.5 ** stream
        self.gen = generator_for(torch.device("cpu"), self.seed, "toy", "train", stream)

    def step(self, step: int, steps: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        f = lr_factor(step, steps, cfg.decay_start, cfg.warmup) * self.lr_scale
        for group in self.opt_g.param_groups:
            group["lr"] = cfg.lr_g * f
        for group in self.opt_d.param_groups:
            group["lr"] = cfg.lr_d * (f if cfg.decay_d else 1.0)
        self.d.requires_grad_(True)
        for _ in range(self.n_critic):
            real = sample_real(self.dataset, cfg.batch, self.gen) / self.scale
            with torch.no_grad():
                fake = self.g(sample_latent(cfg.batch, cfg, self.gen))
            alpha = torch.rand(len(real), generator=self.gen) if self.loss.gp_weight else None
            d_loss, stats = objective.critic_phase(self._trained_critic, real, fake, alpha,
                                                   self.loss)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        # The critic is frozen for the generator step: its gradients would be discarded.
        self.d.requires_grad_(False)
        g_loss, _ = objective.generator_phase(
            self.critic, self.g_net(sample_latent(cfg.g_batch or cfg.batch, cfg, self.gen)),
            self.loss)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        if self.ema is not None:
            # Bias-corrected warm-up: early on the EMA would mostly be the init.
            self.ema.update(self.g, min(cfg.ema, (1.0 + step) / (10.0 + step)))
        last = {"w": stats["wasserstein"], "g_loss": g_loss.detach()}
        if "gradient_penalty" in stats:
            last["gp"] = stats["gradient_penalty"]
        return last

    def points(self, z: torch.Tensor, raw: bool = False) -> np.ndarray:
        """Generated points for latents ``z``, in data units."""
        return _generate(self.g if raw else self.sampler, z, self.scale)


def _save_points(out_dir: str, dataset: str, seed: int, points: np.ndarray, metrics: dict,
                 suffix: str = "", note: str = "") -> None:
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{dataset}_seed{seed}{suffix}")
    np.save(stem + ".npy", points.astype(np.float32))
    save_scatter(points, dataset, stem + ".png", title=run_title(dataset, seed, metrics) + note)


def _train(run: ToyRun, dataset: str, seed: int, steps: int, log_every: int, z_eval: torch.Tensor,
           rescue_every: int, collapse_at: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The generator steps; with ``rescue_every``, the divergence guard every that many steps
    (``rescue``); ``collapse_at``: a collapse induced once, at that step."""
    rescue = ToyRescue(run, dataset, seed, rescue_every) if rescue_every else None
    last: dict[str, torch.Tensor] = {}
    step, induced = 0, False
    while step < steps:
        if step == collapse_at and not induced:
            collapse(run)
            induced = True
        last = run.step(step, steps)
        step += 1
        if rescue is not None:
            step = rescue.after_step(step, last)
        if log_every and step % log_every == 0:
            m = toy_metrics(run.points(z_eval), dataset)
            raw = toy_metrics(run.points(z_eval, raw=True), dataset).get("hq", float("nan"))
            print(f"step {step}: {run_title(dataset, seed, m)} | raw HQ {raw:.3f} "
                  + " ".join(f"{k} {v:.4g}" for k, v in last.items()), flush=True)
    return last, (rescue.summary() if rescue is not None else {})


def run_toy(dataset: str, seed: int, steps: int, out_dir: str | None = None,
            loss: str = "wgan-gp", config: ToyConfig | None = None,
            threads: int | None = 1, log_every: int = 0, reject: float = 0.1,
            rescue_every: int = 0, collapse_at: int = -1, **overrides: Any) -> dict[str, Any]:
    """Train one generator for ``steps`` generator steps and evaluate it on 2,500 samples.

    ``loss``: ``wgan-gp`` (n_critic critic steps with the gradient penalty per generator step)
    or ``ns`` (the non-saturating GAN baseline: one discriminator step, no penalty).
    ``overrides`` replace fields of ``config``. Writes ``<dataset>_seed<k>.npy`` and ``.png``
    into ``out_dir`` when given. Returns the metrics plus ``seconds`` and ``train``
    diagnostics; the untrained generator's metrics are under ``initial``. Given the seed
    and ``threads``, a run is bitwise repeatable on the same machine.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if loss not in ("wgan-gp", "ns"):
        raise ValueError(f"loss must be 'wgan-gp' or 'ns', got {loss!r}")
    if not 0.0 <= reject < 1.0:
        raise ValueError(f"reject is the fraction of latents JBT rejects, in [0, 1); got {reject}")
    cfg = replace(config or ToyConfig(), **overrides)
    t0 = time.perf_counter()
    prev_threads = torch.get_num_threads()
    if threads:
        # A fixed thread count: runs are repeatable and the timing is per core, not per machine.
        torch.set_num_threads(threads)
    try:
        run = ToyRun(dataset, seed, cfg, loss)
        z_eval = sample_latent(N_EVAL, cfg, generator_for(torch.device("cpu"), seed, "toy", "eval"))
        initial = toy_metrics(run.points(z_eval), dataset)
        last, rescued = _train(run, dataset, seed, steps, log_every, z_eval, rescue_every,
                               collapse_at)
        train_s = time.perf_counter() - t0
        points = run.points(z_eval)
        metrics, jbt = toy_metrics(points, dataset), {}
        if out_dir:
            _save_points(out_dir, dataset, seed, points, metrics)
        if reject > 0:
            gen = generator_for(torch.device("cpu"), seed, "toy", "jbt")
            jbt_points = run.points(jbt_latents(run.sampler, N_EVAL, reject, cfg, gen))
            jbt = {"reject": reject, **toy_metrics(jbt_points, dataset)}
            if out_dir:
                _save_points(out_dir, dataset, seed, jbt_points, jbt, "_jbt", f" | JBT {reject:g}")
    finally:
        torch.set_num_threads(prev_threads)
        release_single_process_group()
    return {"dataset": dataset, "seed": seed, "steps": steps, "loss": loss, **metrics, "jbt": jbt,
            "initial": initial, "train": {k: float(v) for k, v in last.items()}, "rescue": rescued,
            "train_seconds": train_s, "seconds": time.perf_counter() - t0, "config": asdict(cfg)}
