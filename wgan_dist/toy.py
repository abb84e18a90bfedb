"""The 2-D toy benchmark: ring, grid and swiss roll, with PacGAN's mode metrics.

It trains a small MLP generator against an MLP critic with the image trainer's own objective
(``objective.critic_phase`` / ``generator_phase``), so a regression in the objective shows up
here in seconds on a CPU. Datasets and metrics follow PacGAN (Lin et al., 2018, Sec. 5.1):

* ring: 8 Gaussians, means (cos 2*pi*i/8, sin 2*pi*i/8), std 0.01;
* grid: 25 Gaussians, means {-4,-2,0,2,4}^2, std 0.05;
* a generated sample is *high quality* (HQ) if it lies within 3 std of its nearest mode;
  a mode is *covered* if at least one HQ sample is nearest to it; the reverse KL is
  KL(P_gen || uniform) with P_gen the histogram of the HQ samples over the modes, normalised
  by the number of HQ samples (0 log 0 = 0; the uniform target has no empty bins, so no
  smoothing is needed); evaluated on 2,500 generated samples.

Each run is scored twice: on the generator's own samples, and on those of the JBT sampler
(Jacobian-based truncation, Tanielian et al., 2020), which rejects the 10 % of latents where
the generator is steepest: a continuous generator of a unimodal latent must put some mass on
paths between disconnected modes, and that mass sits where dG/dz is largest.

Usage: ``python -m wgan_dist.toy --dataset all --seeds 5 --jobs 2 --out runs/toy``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from wgan_dist import objective
from wgan_dist.config import LossConfig

DATASETS = ("ring", "grid", "swissroll")
N_EVAL = 2500  # PacGAN's number of generated samples per evaluation
HQ_STDS = 3.0  # "within three standard deviations of the nearest mode"
SWISS_NOISE = 0.25  # the WGAN-GP toy swiss roll: sklearn-style noise 0.25, then / 7.5
SWISS_SCALE = 7.5
SWISS_REF = 10_000  # real points the swiss-roll distance metric compares against
# Per-coordinate std of each dataset (ring: 1/sqrt 2, grid: sqrt 8, swiss roll: measured).
# Training happens in units of it, so one set of learning rates fits all three datasets.
DATA_SCALE = {"ring": math.sqrt(0.5), "grid": math.sqrt(8.0), "swissroll": 0.9}


def mode_centres(dataset: str) -> np.ndarray:
    """(K, 2) mixture means of ``ring`` or ``grid``."""
    if dataset == "ring":
        ang = 2.0 * math.pi * np.arange(8) / 8
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if dataset == "grid":
        vals = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
        return np.array([(x, y) for x in vals for y in vals])
    raise ValueError(f"{dataset!r} has no modes (expected 'ring' or 'grid')")


def mode_std(dataset: str) -> float:
    return {"ring": 0.01, "grid": 0.05}[dataset]


def sample_real(dataset: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points from the dataset, drawn fresh (an infinite training set)."""
    if dataset == "swissroll":
        t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=gen, dtype=torch.float64))
        xy = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
        xy = xy + SWISS_NOISE * torch.randn(n, 2, generator=gen, dtype=torch.float64)
        return (xy / SWISS_SCALE).float()
    centres = torch.from_numpy(mode_centres(dataset)).float()
    idx = torch.randint(len(centres), (n,), generator=gen)
    return centres[idx] + mode_std(dataset) * torch.randn(n, 2, generator=gen)


def _nearest_dist(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each row of ``a`` the Euclidean distance to its nearest row of ``b``."""
    at, bt = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    out = [torch.cdist(at[i : i + chunk], bt).min(dim=1).values for i in range(0, len(at), chunk)]
    return torch.cat(out).numpy()


def toy_metrics(points: np.ndarray, dataset: str) -> dict[str, Any]:
    """PacGAN's metrics for ``ring``/``grid``; nearest-neighbour distances for ``swissroll``.

    ring/grid keys: ``modes`` (covered modes), ``hq`` (fraction of HQ samples), ``reverse_kl``
    (nats; NaN when there is no HQ sample at all), ``mean_dist`` (mean distance to the
    nearest mode centre: not PacGAN's, a continuous diagnostic), ``n`` and ``histogram``
    (HQ samples per mode). swissroll keys: ``fake_to_real`` (mean distance of a
    generated point to the nearest of 10,000 real points: quality) and ``real_to_fake`` (mean
    distance of 2,500 real points to the nearest generated one: coverage), both against a
    fixed real sample (seed 0) so that runs are comparable.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if dataset == "swissroll":
        g = torch.Generator().manual_seed(0)
        ref = sample_real(dataset, SWISS_REF, g).double().numpy()
        return {
            "n": len(pts),
            "fake_to_real": float(_nearest_dist(pts, ref).mean()),
            "real_to_fake": float(_nearest_dist(ref[:N_EVAL], pts).mean()),
        }
    centres, std = mode_centres(dataset), mode_std(dataset)
    # Isotropic, equal std per mode: the nearest mode in std units is the Euclidean nearest.
    d = np.sqrt(((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
    nearest, dmin = d.argmin(axis=1), d.min(axis=1)
    hq = dmin < HQ_STDS * std  # strict, as PacGAN's MetricLogger (min_dis < dis_thre)
    hist = np.bincount(nearest[hq], minlength=len(centres))
    n_hq = int(hist.sum())
    if n_hq:
        p = hist[hist > 0] / n_hq
        kl = float(np.sum(p * np.log(p * len(centres))))
    else:
        kl = float("nan")
    return {
        "modes": int((hist > 0).sum()),
        "hq": n_hq / max(len(pts), 1),
        "reverse_kl": kl,
        "mean_dist": float(dmin.mean()) if len(pts) else float("nan"),
        "n": len(pts),
        "histogram": hist.tolist(),
    }


@dataclass(frozen=True)
class ToyConfig:
    """Hyper-parameters of one toy run (docs/toy_results.md says why these values)."""

    latent_dim: int = 2  # PacGAN: z ~ N(0, I_2)
    g_width: int = 128
    g_depth: int = 3  # hidden layers
    d_width: int = 64
    d_depth: int = 3
    batch: int = 128  # real and fake samples per critic step
    g_batch: int = 0  # samples per generator step (0: same as ``batch``)
    n_critic: int = 1
    gp_weight: float = 1.0
    one_sided: bool = True  # the Lipschitz penalty (WGAN-LP); False: WGAN-GP's two-sided one
    lr_g: float = 1e-3
    lr_d: float = 3e-3
    betas: tuple[float, float] = (0.5, 0.9)  # Adam betas of the critic
    g_betas: tuple[float, float] | None = None  # of the generator; None: same as betas
    warmup: float = 0.2  # fraction of steps over which the lr rises linearly from 0
    decay_start: float = 0.3  # fraction of steps after which the lr decays linearly to 0
    decay_d: bool = True  # decay the critic's lr too (else only the generator's)
    ema: float = 0.99  # generator weight EMA used for evaluation; 0 disables it
    g_act: str = "relu"
    d_act: str = "relu"
    init: str = "he"  # "he" (Kaiming normal, fan-in) or "torch" (nn.Linear's default)
    normalize: bool = True  # train on data / DATA_SCALE (the points are rescaled back)


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


def _lr_factor(step: int, steps: int, decay_start: float, warmup: float = 0.0) -> float:
    start, warm = int(decay_start * steps), int(warmup * steps)
    if step < warm:
        return (step + 1) / warm
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(steps - start, 1))


def sample_latent(n: int, cfg: ToyConfig, gen: torch.Generator) -> torch.Tensor:
    """n generator inputs z ~ N(0, I_latent_dim)."""
    return torch.randn(n, cfg.latent_dim, generator=gen)


@torch.no_grad()
def jacobian_norms(g: nn.Module, z: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per row of ``z``, the Frobenius norm of the generator's Jacobian dG/dz (exact)."""
    import warnings

    from torch.func import jacfwd, vmap

    one = vmap(jacfwd(lambda v: g(v[None])[0]))
    with warnings.catch_warnings():
        # torch.func's first call scripts a helper with the deprecated torch.jit.script.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        return torch.cat([one(z[i : i + chunk]).flatten(1).norm(dim=1)
                          for i in range(0, len(z), chunk)])


def jbt_latents(g: nn.Module, n: int, reject: float, cfg: ToyConfig,
                gen: torch.Generator, calibrate: int = 10_000) -> torch.Tensor:
    """n latents of the Jacobian-based truncation sampler (JBT, Tanielian et al., 2020).

    A generator fed a unimodal Gaussian is continuous, so between two disconnected modes it
    must spend some latent mass on a path, and that is where it is steepest. JBT draws
    z ~ N(0, I) and keeps it iff ||dG/dz||_F <= tau, with tau the (1 - reject) quantile of
    the norm over ``calibrate`` draws: a fixed sampler (reject = 0.1 keeps 90 % of draws).
    """
    tau = torch.quantile(jacobian_norms(g, sample_latent(calibrate, cfg, gen)), 1.0 - reject)
    kept: list[torch.Tensor] = []
    while sum(len(k) for k in kept) < n:
        z = sample_latent(2 * n, cfg, gen)
        kept.append(z[jacobian_norms(g, z) <= tau])
    return torch.cat(kept)[:n]


@torch.no_grad()
def _generate(g: nn.Module, z: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    return (g(z).double() * scale).numpy()


def run_toy(dataset: str, seed: int, steps: int, out_dir: str | None = None,
            loss: str = "wgan-gp", config: ToyConfig | None = None,
            threads: int | None = 1, log_every: int = 0, reject: float = 0.1,
            **overrides: Any) -> dict[str, Any]:
    """Train one generator for ``steps`` generator steps and evaluate it on 2,500 samples.

    ``loss``: ``wgan-gp`` (n_critic critic steps with the gradient penalty per generator step)
    or ``ns`` (the non-saturating GAN baseline: one discriminator step, no penalty).
    ``overrides`` replace fields of ``config``. Writes ``<dataset>_seed<k>.npy`` and ``.png``
    into ``out_dir`` when given. Returns the metrics plus ``seconds`` and ``train``
    diagnostics; the untrained generator's metrics are under ``initial``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if loss not in ("wgan-gp", "ns"):
        raise ValueError(f"loss must be 'wgan-gp' or 'ns', got {loss!r}")
    if not 0.0 <= reject < 1.0:
        raise ValueError(f"reject is the fraction of latents JBT rejects, in [0, 1); got {reject}")
    cfg = replace(config or ToyConfig(), **overrides)
    n_critic = cfg.n_critic if loss == "wgan-gp" else 1
    scale = DATA_SCALE[dataset] if cfg.normalize else 1.0
    t0 = time.perf_counter()
    prev_threads = torch.get_num_threads()
    if threads:
        # One thread: runs are repeatable and the timing is per core, not per machine.
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)  # parameter init
        gen = torch.Generator().manual_seed(10_000 + seed)  # data, latents, alphas
        g = _mlp(cfg.latent_dim, cfg.g_width, cfg.g_depth, 2, cfg.g_act)
        d = _mlp(2, cfg.d_width, cfg.d_depth, 1, cfg.d_act)
        if cfg.init == "he":
            _he_init(g)
            _he_init(d)
        g_ema = copy.deepcopy(g).requires_grad_(False) if cfg.ema > 0 else g
        # Fused Adam (one kernel for all parameters): a quarter of a step's time otherwise.
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=cfg.g_betas or cfg.betas,
                                 fused=True)
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=cfg.betas, fused=True)
        g_params, d_params = list(g.parameters()), list(d.parameters())
        ema_params = list(g_ema.parameters())
        z_eval = sample_latent(N_EVAL, cfg, torch.Generator().manual_seed(seed))
        initial = toy_metrics(_generate(g, z_eval, scale), dataset)
        # The image trainer's objective, term for term (ns: no penalty).
        loss_cfg = LossConfig(kind=loss, gp_weight=cfg.gp_weight if loss == "wgan-gp" else 0.0,
                              one_sided=cfg.one_sided)
        critic = lambda x: d(x).squeeze(1)  # noqa: E731 -- (B, 1) -> (B,)
        last: dict[str, torch.Tensor] = {}
        for step in range(steps):
            f = _lr_factor(step, steps, cfg.decay_start, cfg.warmup)
            for group in opt_g.param_groups:
                group["lr"] = cfg.lr_g * f
            for group in opt_d.param_groups:
                group["lr"] = cfg.lr_d * (f if cfg.decay_d else 1.0)
            for p in d_params:
                p.requires_grad_(True)
            for _ in range(n_critic):
                real = sample_real(dataset, cfg.batch, gen) / scale
                with torch.no_grad():
                    fake = g(sample_latent(cfg.batch, cfg, gen))
                alpha = torch.rand(len(real), generator=gen) if loss_cfg.gp_weight else None
                d_loss, stats = objective.critic_phase(critic, real, fake, alpha, loss_cfg)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            # The critic is frozen for the generator step: its gradients would be discarded.
            for p in d_params:
                p.requires_grad_(False)
            g_loss, _ = objective.generator_phase(
                critic, g(sample_latent(cfg.g_batch or cfg.batch, cfg, gen)), loss_cfg)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            if g_ema is not g:
                with torch.no_grad():
                    # Bias-corrected warm-up: early on the EMA would mostly be the init.
                    beta = min(cfg.ema, (1.0 + step) / (10.0 + step))
                    torch._foreach_lerp_(ema_params, g_params, 1.0 - beta)
            last = {"w": stats["wasserstein"], "g_loss": g_loss.detach()}
            if "gradient_penalty" in stats:
                last["gp"] = stats["gradient_penalty"]
            if log_every and (step + 1) % log_every == 0:
                m = toy_metrics(_generate(g_ema, z_eval, scale), dataset)
                raw = toy_metrics(_generate(g, z_eval, scale), dataset).get("hq", float("nan"))
                print(f"step {step + 1}: {_title(dataset, seed, m)} | raw HQ {raw:.3f} "
                      + " ".join(f"{k} {v:.4g}" for k, v in last.items()), flush=True)
        train_s = time.perf_counter() - t0
        points = _generate(g_ema, z_eval, scale)
        metrics = toy_metrics(points, dataset)
        jbt: dict[str, Any] = {}
        if reject > 0:
            z_jbt = jbt_latents(g_ema, N_EVAL, reject, cfg,
                                torch.Generator().manual_seed(20_000 + seed))
            jbt_points = _generate(g_ema, z_jbt, scale)
            jbt = {"reject": reject, **toy_metrics(jbt_points, dataset)}
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            stem = os.path.join(out_dir, f"{dataset}_seed{seed}")
            np.save(stem + ".npy", points.astype(np.float32))
            save_scatter(points, dataset, stem + ".png", title=_title(dataset, seed, metrics))
            if jbt:
                np.save(stem + "_jbt.npy", jbt_points.astype(np.float32))
                save_scatter(jbt_points, dataset, stem + "_jbt.png",
                             title=_title(dataset, seed, jbt) + f" | JBT {reject:g}")
    finally:
        torch.set_num_threads(prev_threads)
    return {"dataset": dataset, "seed": seed, "steps": steps, "loss": loss, **metrics, "jbt": jbt,
            "initial": initial, "train": {k: float(v) for k, v in last.items()},
            "train_seconds": train_s,
            "seconds": time.perf_counter() - t0, "config": asdict(cfg)}


def _title(dataset: str, seed: int, m: dict[str, Any]) -> str:
    if dataset == "swissroll":
        return f"{dataset} seed {seed}: fake->real {m['fake_to_real']:.4f}"
    return (f"{dataset} seed {seed}: {m['modes']} modes, {100 * m['hq']:.1f}% HQ, "
            f"rev KL {m['reverse_kl']:.4f}")


def save_scatter(points: np.ndarray, dataset: str, path: str, title: str = "",
                 size: int = 512) -> None:
    """Scatter plot with PIL (no matplotlib): real modes/samples in red, generated in black."""
    from PIL import Image, ImageDraw

    lim = {"ring": 1.5, "grid": 5.5, "swissroll": 2.5}[dataset]
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)

    def px(xy: np.ndarray) -> np.ndarray:
        # Data y grows upwards, image rows grow downwards.
        u = (xy[:, 0] + lim) / (2 * lim) * (size - 1)
        v = (lim - xy[:, 1]) / (2 * lim) * (size - 1)
        return np.stack([u, v], axis=1)

    if dataset == "swissroll":
        for u, v in px(sample_real(dataset, 2000, torch.Generator().manual_seed(0)).numpy()):
            draw.point((float(u), float(v)), fill=(255, 170, 170))
    else:
        # The HQ disc of each mode (radius 3 std), at least 3 px so it stays visible.
        r = max(3.0, HQ_STDS * mode_std(dataset) / (2 * lim) * (size - 1))
        for u, v in px(mode_centres(dataset)):
            draw.ellipse((u - r, v - r, u + r, v + r), outline=(220, 0, 0), width=2)
    for u, v in px(np.asarray(points, dtype=np.float64)):
        draw.rectangle((u - 0.5, v - 0.5, u + 0.5, v + 0.5), fill=(0, 0, 0))
    if title:
        draw.text((6, 6), title, fill=(0, 0, 160))
    img.save(path)


def _mean_se(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return float(a.mean()), se


METRIC_KEYS = {"ring": ("modes", "hq", "reverse_kl"), "grid": ("modes", "hq", "reverse_kl"),
               "swissroll": ("fake_to_real", "real_to_fake")}


def summarise(runs: list[dict[str, Any]], jbt: bool = False) -> dict[str, Any]:
    """Mean and standard error (sample std / sqrt(n)) over seeds of each metric: of the
    generator's own samples, or with ``jbt`` of the JBT sampler's (``run["jbt"]``)."""
    keys = METRIC_KEYS[runs[0]["dataset"]] + (() if jbt else ("seconds",))
    rows = [r["jbt"] if jbt else r for r in runs]
    return {k: dict(zip(("mean", "se"), _mean_se([r[k] for r in rows]))) for k in keys}


def _fmt_row(name: str, dataset: str, vals: dict[str, str]) -> str:
    if dataset == "swissroll":
        cols = (vals["fake_to_real"], vals["real_to_fake"], "", vals.get("seconds", ""))
    else:
        cols = (vals["modes"], vals["hq"], vals["reverse_kl"], vals.get("seconds", ""))
    return f"{dataset:<10} {name:<12} " + " ".join(f"{c:>16}" for c in cols)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m wgan_dist.toy", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="all", choices=DATASETS + ("all",))
    p.add_argument("--seeds", type=int, default=5, help="runs with seeds 0..N-1")
    p.add_argument("--steps", type=int, default=24000, help="generator steps per run")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--loss", default="wgan-gp", choices=("wgan-gp", "ns"))
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, one process each (2 on a 2-core machine)")
    p.add_argument("--reject", type=float, default=0.1,
                   help="also score the JBT sampler that rejects this fraction of latents "
                        "(the steepest); 0: only the generator's own samples")
    args = p.parse_args(argv)
    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    os.makedirs(args.out, exist_ok=True)
    print(f"{'dataset':<10} {'seed':<12} " + " ".join(
        f"{h:>16}" for h in ("modes|fake->real", "HQ %|real->fake", "reverse KL", "seconds")))
    results: dict[str, Any] = {"args": vars(args), "datasets": {}}
    jobs = [(ds, seed, args.steps, args.out, args.loss, args.threads, args.reject)
            for ds in datasets for seed in range(args.seeds)]
    if args.jobs > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.jobs)
        done = pool.imap(_run_job, jobs)  # in order: rows print as soon as their turn is done
    else:
        pool, done = None, map(_run_job, jobs)
    for ds in datasets:
        runs = []
        for seed in range(args.seeds):
            r = next(done)
            runs.append(r)
            print(_fmt_row(str(seed), ds, _cells(ds, {k: r[k] for k in METRIC_KEYS[ds]
                                                      + ("seconds",)})), flush=True)
            if r["jbt"]:
                print(_fmt_row(f"{seed} JBT", ds, _cells(ds, {k: r["jbt"][k]
                                                             for k in METRIC_KEYS[ds]})))
        summary = summarise(runs)
        print(_fmt_row("mean±se", ds, _cells(ds, summary)), flush=True)
        results["datasets"][ds] = {"runs": runs, "summary": summary}
        if args.reject > 0:
            summary_jbt = summarise(runs, jbt=True)
            print(_fmt_row("JBT mean±se", ds, _cells(ds, summary_jbt)), flush=True)
            results["datasets"][ds]["summary_jbt"] = summary_jbt
        if ds == "swissroll":
            # The floor: the same metric for 2,500 *real* points (an independent draw).
            real = sample_real(ds, N_EVAL, torch.Generator().manual_seed(1)).numpy()
            results["datasets"][ds]["real_reference"] = toy_metrics(real, ds)
    if pool is not None:
        pool.close()
        pool.join()
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    return results


def _run_job(job: tuple) -> dict[str, Any]:
    ds, seed, steps, out, loss, threads, reject = job
    return run_toy(ds, seed, steps, out_dir=out, loss=loss, threads=threads, reject=reject)


def _cells(dataset: str, vals: dict[str, Any]) -> dict[str, str]:
    """Format metric values (plain floats, or {'mean','se'} dicts) as table cells."""
    def one(k: str, v: Any) -> str:
        scale = 100.0 if k == "hq" else 1.0
        digits = {"modes": 2, "hq": 2, "seconds": 1}.get(k, 4)
        if isinstance(v, dict):
            return f"{scale * v['mean']:.{digits}f}±{scale * v['se']:.{digits}f}"
        return f"{scale * v:.{digits}f}"
    return {k: one(k, v) for k, v in vals.items()}


if __name__ == "__main__":
    main()
