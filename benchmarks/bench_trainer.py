"""Our trainer against a minimal plain-PyTorch WGAN-GP loop; the penalty's cost; the fast paths.

    python benchmarks/bench_trainer.py            # 5 rounds of 25 steps, fast paths with compile; ~9 min
    python benchmarks/bench_trainer.py --quick    # 3 rounds of 10 steps, no compile; ~4 min

Model: the default config (28 px, batch 64, n_critic 5, latent 100, data.workers 1, default
logging intervals) with ``--width`` 16 for G and D (the default is 32: ~4x the compute, so
1.5 s a step here; a smaller model makes the trainer's fixed costs look *larger*). One torch
thread (``--threads``): on this shared 2-core machine two threads ran 10x slower (OpenMP
barriers wait for a thread the OS has descheduled).

1. Overhead. ``Trainer.train()`` for N generator steps -- with a tick every 25 steps (status
   line, TensorBoard, diversity check), a sample grid with the penalty visuals at the end
   (every 100 by default: with N = 25, four times the default rate), the end-of-run evaluation
   (eval.num 256 here) and checkpoint -- against ``plain_wgan_gp`` below: the same models,
   batch, device and per-step computation, reading batches from the same
   ``data.pipeline.make_loader``, and nothing else. Interleaved rounds; ratios are medians of the
   per-round ratios. "steady" leaves out the end-of-run evaluation and checkpoint (once per
   run, not per step); "full" keeps them. The trainer's parts are timed in place, so the
   difference is accounted for. A third loop reads pre-loaded batches: what loading costs.
2. Penalty. A critic step with loss.gp_weight=10 against 0 (same trainer and inputs): the
   share of a critic step spent on the penalty's forward and double backward.
3. Fast paths. One iteration (n_critic critic steps + a generator step on pre-loaded
   batches) of trainers built with each option, each in its own process (Accelerate keeps
   one state per process), driven in interleaved rounds from this one.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

from _common import (OUT_DIR, column, cpu_seconds, interleave, median, paired_ratio, spread,
                     write_result)

import torch  # noqa: E402

from wgan_dist.data import pipeline as data  # noqa: E402
from wgan_dist.config import load_config, updated  # noqa: E402
from wgan_dist.nets import build_models  # noqa: E402


# ------------------------------------------------------------------------ the plain loop
def plain_wgan_gp(G, D, batches: Iterator, steps: int, *, n_critic: int, batch: int,
                  latent: int, gp_weight: float, opt_g, opt_d, device: torch.device) -> None:
    """WGAN-GP as a user would write it (Gulrajani et al., Algorithm 1): no logging, EMA,
    checks or checkpoints. Per step the same computation as the trainer: reals and fakes
    through the critic in one forward, the penalty on interpolates with create_graph."""
    for _ in range(steps):
        for _ in range(n_critic):
            images, _labels = next(batches)
            real = images.to(device, non_blocking=True).float().mul_(2 / 255).sub_(1)
            z = torch.randn(batch, latent, device=device)
            with torch.no_grad():
                fake = G(z)
            scores = D(torch.cat([real, fake]))
            loss = scores[batch:].mean() - scores[:batch].mean()
            alpha = torch.rand(batch, 1, 1, 1, device=device)
            x_hat = torch.lerp(fake, real, alpha).requires_grad_(True)
            (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
            norms = torch.sqrt(grad.flatten(1).square().sum(1) + 1e-12)
            loss = loss + gp_weight * (norms - 1).square().mean()
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
        D.requires_grad_(False)
        z = torch.randn(batch, latent, device=device)
        g_loss = -D(G(z)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        D.requires_grad_(True)


# ------------------------------------------------------------------------ helpers
def new_trainer(run_name: str, extra: dict[str, Any], steps: int, width: int):
    from wgan_dist.compat import reset_accelerator_state

    from wgan_dist.training.trainer import Trainer

    reset_accelerator_state()
    values = {"data.cache_dir": str(OUT_DIR / "data"), "data.builtin_per_class": 250,
              "model.g_width": width, "model.d_width": width, "eval.num": 256,
              "train.steps": steps, "log.run_dir": str(OUT_DIR / run_name),
              "train.threads": torch.get_num_threads(),  # the plain loop's (--threads): like for like
              **extra}
    return Trainer(load_config(None, [f"{k}={v}" for k, v in values.items()]), overwrite=True)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work before reading a clock (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds spent in named trainer methods, wrapped in place on the instance."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1
        setattr(obj, attr, timed)

    def wrap_batches(self, trainer) -> None:
        make = trainer.inputs.batches

        def make_batches(skip: int, count: int):
            gen = make(skip, count)
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(gen)
                except StopIteration:
                    return
                finally:
                    self.seconds["data wait"] += time.perf_counter() - t0
                yield item
        trainer.inputs.batches = make_batches

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def instrument(trainer) -> Clock:
    clock = Clock()
    clock.wrap_batches(trainer)
    for attr, name in [("sample", "sample grid"), ("save", "checkpoint")]:
        clock.wrap(trainer, attr, name)
    for attr, name in [("critic", "noise draws"), ("generator", "noise draws")]:
        clock.wrap(trainer.draws, attr, name)
    for attr, name in [("add", "stat accumulation"), ("tick", "tick: reduce + log")]:
        clock.wrap(trainer.logbook, attr, name)
    clock.wrap(trainer.backend, "_found_inf", "non-finite check")
    clock.wrap(trainer.ema, "update", "EMA update")
    for attr, name in [("check_diversity", "tick: diversity check"),
                       ("gp_visuals", "sample: penalty visuals"), ("evaluate", "end: evaluation")]:
        clock.wrap(trainer.monitor, attr, name)
    return clock


def preloaded(trainer, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = list(itertools.islice(trainer.inputs.batches(skip=0, count=count), count))
    return batches


# ------------------------------------------------------------------------ 1. overhead
def bench_overhead(steps: int, repeats: int, width: int, cache_mode: str = "none") -> dict:
    """Trainer against the plain loop, both reading the same input path: the stream
    (``data.cache=none``, the plain loop through ``make_loader``) or a cache (the plain loop
    drawing from the trainer's own ``ImageCache``)."""
    trainer = new_trainer(f"bench-trainer-{cache_mode}", {"data.cache": cache_mode}, steps, width)
    cfg, dev = trainer.cfg, trainer.device
    n_critic, batch, latent = cfg.optim.n_critic, trainer.batch, cfg.model.latent_dim
    clock = instrument(trainer)
    torch.manual_seed(0)
    G, D = (m.to(dev) for m in build_models(cfg.model, cfg.data.resolution, cfg.data.channels))
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr_d, betas=betas)
    mem = preloaded(trainer, 64)
    plain_kw = dict(n_critic=n_critic, batch=batch, latent=latent, gp_weight=cfg.loss.gp_weight,
                    opt_g=opt_g, opt_d=opt_d, device=dev)
    parts: list[dict[str, float]] = []

    def run_trainer() -> dict:
        trainer.step, trainer.nimg = 0, 0
        clock.reset()
        c0, t0 = cpu_seconds(), time.perf_counter()
        trainer.train()
        sync(dev)
        gc.collect()  # the loader goes with train()'s frame: its workers are joined and counted
        total = time.perf_counter() - t0
        parts.append({**clock.seconds, "total": total})
        return {"s": total, "cpu_s": cpu_seconds() - c0}

    def run_plain(batches_fn: Callable[[], Iterator]) -> dict:
        c0, t0 = cpu_seconds(), time.perf_counter()
        batches = batches_fn()
        plain_wgan_gp(G, D, batches, steps, **plain_kw)
        sync(dev)
        del batches
        gc.collect()
        return {"s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}

    def loader_batches() -> Iterator:
        if trainer.inputs.cache is not None:
            from wgan_dist.data.cache import CachedBatches

            return iter(CachedBatches(trainer.inputs.cache, seed=1, rank=0, world=1,
                                      total=trainer.shards.total, batch_size=batch, skip=0,
                                      count=steps * n_critic, hflip=cfg.data.hflip))
        return iter(data.make_loader(
            trainer.shards.urls, rank=0, world=1, seed=1, batch_size=batch,
            resolution=cfg.data.resolution, channels=cfg.data.channels,
            num_batches=steps * n_critic, workers=cfg.data.workers,
            shuffle_buffer=cfg.data.shuffle_buffer, pin_memory=dev.type == "cuda"))

    print(f"\n1. overhead, data.cache={cache_mode}: {steps} steps x (n_critic {n_critic} + 1), "
          f"batch {batch}, {cfg.data.resolution} px, widths {width}; seconds per run:")
    runs = interleave({"trainer": run_trainer,
                       "plain": lambda: run_plain(loader_batches),
                       "plain_preloaded": lambda: run_plain(lambda: itertools.cycle(mem))}, repeats)
    # The end-of-run evaluation and checkpoint run once per run, not per step. They are
    # single-threaded Python and torch work, so their wall time stands for their CPU time too.
    end_only = [p.get("end: evaluation", 0.0) + p.get("checkpoint", 0.0) for p in parts]
    wall = {k: column(v, "s") for k, v in runs.items()}
    cpu = {k: column(v, "cpu_s") for k, v in runs.items()}
    steady = [t - e for t, e in zip(wall["trainer"], end_only)]
    steady_cpu = [t - e for t, e in zip(cpu["trainer"], end_only)]
    names = sorted({k for p in parts for k in p if k != "total"},
                   key=lambda k: -median([p.get(k, 0.0) for p in parts]))
    result = {
        "cache": cache_mode, "data_wait_share_trainer": median(
            [p.get("data wait", 0.0) / p["total"] for p in parts]),
        "steps": steps, "n_critic": n_critic, "batch": batch, "resolution": cfg.data.resolution,
        "width": width, "data_workers": cfg.data.workers, "tick_every": cfg.log.tick_every,
        "sample_every": cfg.log.sample_every, "ckpt_every": cfg.log.ckpt_every,
        "eval_num": cfg.eval.num,
        "trainer_s": median(wall["trainer"]), "trainer_steady_s": median(steady),
        "plain_s": median(wall["plain"]), "plain_preloaded_s": median(wall["plain_preloaded"]),
        "ratio_full": paired_ratio(wall["trainer"], wall["plain"]),
        "ratio_steady": paired_ratio(steady, wall["plain"]),
        "cpu_ratio_full": paired_ratio(cpu["trainer"], cpu["plain"]),
        "cpu_ratio_steady": paired_ratio(steady_cpu, cpu["plain"]),
        "data_loading_share_plain": 1 - paired_ratio(wall["plain_preloaded"], wall["plain"]),
        "cpu_data_loading_share_plain": 1 - paired_ratio(cpu["plain_preloaded"], cpu["plain"]),
        "ms_per_step_trainer_steady": 1000 * median(steady) / steps,
        "ms_per_step_plain": 1000 * median(wall["plain"]) / steps,
        "cpu_ms_per_step_trainer_steady": 1000 * median(steady_cpu) / steps,
        "cpu_ms_per_step_plain": 1000 * median(cpu["plain"]) / steps,
        "spread_trainer": spread(wall["trainer"]), "spread_plain": spread(wall["plain"]),
        "spread_cpu_trainer": spread(cpu["trainer"]), "spread_cpu_plain": spread(cpu["plain"]),
        "breakdown_s_median": {k: median([p.get(k, 0.0) for p in parts]) for k in names},
        "runs": runs, "parts": parts,
    }
    trainer.close()
    return result


# ------------------------------------------------------------------------ 2. penalty
def bench_penalty(repeats: int, iters: int, width: int) -> dict:
    trainer = new_trainer("bench-penalty", {}, 1, width)
    cfg, dev = trainer.cfg, trainer.device
    b, latent = trainer.batch, cfg.model.latent_dim
    images, _ = preloaded(trainer, 1)[0]
    real = data.to_model_range(images.to(dev))
    z, alpha = torch.randn(b, latent, device=dev), torch.rand(b, device=dev)

    def critic_steps(gp: float) -> dict:
        trainer.cfg = updated(cfg, {"loss": {"gp_weight": gp}})  # the run's config is frozen
        trainer.critic_step(real, z, alpha)  # warm-up
        sync(dev)
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(iters):
            trainer.critic_step(real, z, alpha)
        sync(dev)
        return {"s": (time.perf_counter() - t0) / iters, "cpu_s": (time.process_time() - c0) / iters}

    print("\n2. penalty: critic step, gp_weight 10 vs 0; seconds per step:")
    runs = interleave({"gp10": lambda: critic_steps(10.0), "gp0": lambda: critic_steps(0.0)}, repeats)
    trainer.close()
    out: dict[str, Any] = {"runs": runs}
    for unit, key in (("", "s"), ("cpu_", "cpu_s")):
        gp10, gp0 = column(runs["gp10"], key), column(runs["gp0"], key)
        out.update({f"{unit}critic_step_gp10_ms": 1000 * median(gp10),
                    f"{unit}critic_step_gp0_ms": 1000 * median(gp0),
                    f"{unit}penalty_share_of_critic_step": 1 - paired_ratio(gp0, gp10)})
    return out


# ------------------------------------------------------------------------ 3. fast paths
# Accelerate keeps one state per process (it cannot hold mixed precision "no" and "bf16" at
# once), so every variant lives in a child process that builds its trainer once and then
# times iterations when told: the rounds stay interleaved.
def _variant_child(conn, name: str, extra: dict, width: int, threads: int) -> None:
    torch.set_num_threads(threads)
    # data.workers 0: batches are pre-loaded once, and in a spawned process the DataLoader
    # would spawn its workers too, which needs a picklable pipeline (ours is built of closures).
    trainer = new_trainer(f"bench-fast-{name}", {"data.workers": 0, **extra}, 1, width)
    cfg, dev = trainer.cfg, trainer.device
    n_critic, b, latent = cfg.optim.n_critic, trainer.batch, cfg.model.latent_dim
    reals = [data.to_model_range(x.to(dev)) for x, _ in preloaded(trainer, n_critic)]
    z, alpha = torch.randn(b, latent, device=dev), torch.rand(b, device=dev)

    def iteration() -> None:
        for real in reals:
            trainer.critic_step(real, z, alpha)
        trainer.generator_step(z)

    t0 = time.perf_counter()
    iteration()
    iteration()  # compiles happen in these two
    sync(dev)
    conn.send(time.perf_counter() - t0)
    while (iters := conn.recv()) is not None:
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(iters):
            iteration()
        sync(dev)
        conn.send({"s": (time.perf_counter() - t0) / iters, "cpu_s": (time.process_time() - c0) / iters})
    trainer.close()


def bench_fastpaths(repeats: int, iters: int, width: int, with_compile: bool) -> dict:
    import multiprocessing as mp

    variants = {"default": {}, "fused_adam": {"train.fused_adam": True},
                "channels_last": {"train.channels_last": True},
                "bf16": {"train.mixed_precision": "bf16"}}
    if with_compile:
        variants["compile"] = {"train.compile": True}
        variants["all"] = {"train.fused_adam": True, "train.channels_last": True, "train.compile": True}
    ctx = mp.get_context("spawn")
    children, warmup = {}, {}
    print(f"\n3. fast paths: starting {len(variants)} trainers (compiles happen here) ...", flush=True)
    for name, extra in variants.items():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_variant_child, args=(child, name, extra, width, torch.get_num_threads()))
        proc.start()
        child.close()  # so a child that dies is an EOFError here, not a hang
        warmup[name] = parent.recv()  # one at a time: a compile gets the machine to itself
        children[name] = (proc, parent)

    def timed(name: str) -> dict:
        conn = children[name][1]
        conn.send(iters)
        return conn.recv()

    print("   one iteration (n_critic critic steps + generator step); seconds:")
    runs = interleave({name: (lambda n=name: timed(n)) for name in variants}, repeats)
    for proc, conn in children.values():
        conn.send(None)
        proc.join()
    out: dict[str, Any] = {"warmup_s": warmup, "runs": runs}
    for unit, key in (("", "s"), ("cpu_", "cpu_s")):
        series = {k: column(v, key) for k, v in runs.items()}
        out[f"{unit}iteration_ms"] = {k: 1000 * median(v) for k, v in series.items()}
        out[f"{unit}speedup_vs_default"] = {k: paired_ratio(series["default"], v)
                                            for k, v in series.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds, 10 steps a run, no compile")
    p.add_argument("--steps", type=int, default=None, help="generator steps per trainer run (25)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (5; quick 3)")
    p.add_argument("--width", type=int, default=16,
                   help="model.g_width = model.d_width (16; the default config has 32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (see the README)")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="time train.compile (inductor: about a minute to compile on a CPU)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--cache", nargs="+", default=["none", "memory"], choices=("none", "memory"),
                   help="input paths of the overhead comparison (data.cache)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    steps = a.steps or (10 if a.quick else 25)
    repeats = a.repeats or (3 if a.quick else 5)
    with_compile = (not a.quick) if a.compile is None else a.compile
    overheads = {mode: bench_overhead(steps, repeats, a.width, mode) for mode in a.cache}
    penalty = bench_penalty(repeats, 3 if a.quick else 5, a.width)
    fast = bench_fastpaths(repeats, 2 if a.quick else 4, a.width, with_compile)
    for mode, o in overheads.items():
        report_overhead(o, steps, mode)
    print(f"penalty share of a critic step: {penalty['penalty_share_of_critic_step']:.1%} wall "
          f"({penalty['critic_step_gp10_ms']:.0f} vs {penalty['critic_step_gp0_ms']:.0f} ms), "
          f"{penalty['cpu_penalty_share_of_critic_step']:.1%} CPU")
    print("fast paths, ms per iteration: wall (speed-up) | CPU (speed-up) | warm-up s")
    for k, v in fast["iteration_ms"].items():
        print(f"    {k:<14} {v:8.1f} (x{fast['speedup_vs_default'][k]:.2f}) | "
              f"{fast['cpu_iteration_ms'][k]:8.1f} (x{fast['cpu_speedup_vs_default'][k]:.2f}) | "
              f"{fast['warmup_s'][k]:.0f}")
    write_result("bench_trainer", {"quick": a.quick, "repeats": repeats, "threads": a.threads,
                                   "width": a.width, "overhead": overheads.get("none"),
                                   "overheads": overheads, "penalty": penalty, "fastpaths": fast})


def report_overhead(o: dict, steps: int, mode: str) -> None:
    print(f"\ntrainer / plain loop, data.cache={mode}, {steps} steps (target <= 1.05; median of "
          f"per-round ratios):")
    print(f"  wall clock: steady {o['ratio_steady']:.3f}, full {o['ratio_full']:.3f}; "
          f"{o['ms_per_step_trainer_steady']:.0f} vs {o['ms_per_step_plain']:.0f} ms/step "
          f"(spread {o['spread_trainer']:.0%} / {o['spread_plain']:.0%})")
    print(f"  CPU time:   steady {o['cpu_ratio_steady']:.3f}, full {o['cpu_ratio_full']:.3f}; "
          f"{o['cpu_ms_per_step_trainer_steady']:.0f} vs {o['cpu_ms_per_step_plain']:.0f} ms/step "
          f"(spread {o['spread_cpu_trainer']:.0%} / {o['spread_cpu_plain']:.0%})")
    print(f"  data loading share of the plain loop: {o['data_loading_share_plain']:.1%} wall, "
          f"{o['cpu_data_loading_share_plain']:.1%} CPU")
    print(f"  data-wait share of the trainer's run: {o['data_wait_share_trainer']:.1%}")
    print("  trainer time by part (median s per run):")
    for k, v in o["breakdown_s_median"].items():
        print(f"    {k:<26} {v:7.3f}  ({v / o['trainer_s']:.1%})")


if __name__ == "__main__":
    main()
