"""The 2-D toy benchmark (ring, grid, swiss roll) with PacGAN's mode metrics.

    python -m wgan_dist.toy --dataset all --seeds 5 --jobs 2 --out runs/toy

Each run trains a small MLP generator with the image trainer's objective and scores its
samples and those of the JBT sampler; the table prints one row per seed and the mean +- s.e.
The library is ``wgan_dist.toybench``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Iterator, Sequence

import torch

from . import exits
from .exits import HelpFormatter
from .toybench import (DATASETS, METRIC_KEYS, N_EVAL, run_toy, sample_real, summarise,
                       toy_metrics)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m wgan_dist.toy", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="all", choices=DATASETS + ("all",),
                   help="which 2-D dataset (all: ring, grid and swiss roll)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None,
                       help="runs with seeds 0..N-1 (default 5 when --seed is not given)")
    seeds.add_argument("--seed", type=int, nargs="+", default=None, metavar="S",
                       help="runs with exactly these seeds, e.g. --seed 0 3 9101")
    p.add_argument("--steps", type=int, default=24000, help="generator steps per run")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--loss", default="wgan-gp", choices=("wgan-gp", "ns"),
                   help="the objective: WGAN with the penalty, or the non-saturating baseline")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, one process each (2 on a 2-core machine)")
    p.add_argument("--reject", type=float, default=0.1,
                   help="also score the JBT sampler that rejects this fraction of latents "
                        "(the steepest); 0: only the generator's own samples")
    p.add_argument("--grad-comm", default="none", choices=("none", "fp32", "bf16", "fp16", "powersgd"),
                   help="train both networks through one-process DDP with this gradient "
                        "communication hook (train.grad_comm): its effect on quality")
    p.add_argument("--rescue-every", type=int, default=0, metavar="N",
                   help="the image trainer's divergence guard every N steps: a collapse or "
                        "divergence rolls back to the last healthy snapshot (0: off)")
    p.add_argument("--collapse-at", type=int, default=-1, metavar="STEP",
                   help="induce a total mode collapse once, at this generator step (shows "
                        "what --rescue-every does)")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error too")
    return p


def _fmt_row(name: str, dataset: str, vals: dict[str, str]) -> str:
    if dataset == "swissroll":
        cols = (vals["fake_to_real"], vals["real_to_fake"], "", vals.get("seconds", ""))
    else:
        cols = (vals["modes"], vals["hq"], vals["reverse_kl"], vals.get("seconds", ""))
    return f"{dataset:<10} {name:<12} " + " ".join(f"{c:>16}" for c in cols)


def _cells(dataset: str, vals: dict[str, Any]) -> dict[str, str]:
    """Format metric values (plain floats, or {'mean','se'} dicts) as table cells."""
    def one(k: str, v: Any) -> str:
        scale = 100.0 if k == "hq" else 1.0
        digits = {"modes": 2, "hq": 2, "seconds": 1}.get(k, 4)
        if isinstance(v, dict):
            return f"{scale * v['mean']:.{digits}f}±{scale * v['se']:.{digits}f}"
        return f"{scale * v:.{digits}f}"
    return {k: one(k, v) for k, v in vals.items()}


def _run_job(job: tuple) -> dict[str, Any]:
    ds, seed, steps, out, loss, threads, reject, grad_comm, rescue_every, collapse_at = job
    result = run_toy(ds, seed, steps, out_dir=out, loss=loss, threads=threads, reject=reject,
                     grad_comm=grad_comm, rescue_every=rescue_every, collapse_at=collapse_at)
    for event in result["rescue"].get("events", []):
        print(f"{ds} seed {seed}: {event}", flush=True)
    return result


def _results(jobs: list[tuple], processes: int) -> tuple[Iterator[dict], Any]:
    """Run results in job order (rows print as soon as their turn is done), and the pool."""
    if processes <= 1:
        return map(_run_job, jobs), None
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(processes)
    return pool.imap(_run_job, jobs), pool


def _worst(ds: str, runs: list[dict], key: str | None = None) -> dict[str, Any]:
    """The worst seed's row: fewest modes, then lowest HQ (swiss roll: largest fake->real)."""
    rows = [(r[key] if key else r) | {"seed": r["seed"]} for r in runs]
    if ds == "swissroll":
        return max(rows, key=lambda m: m["fake_to_real"])
    return min(rows, key=lambda m: (m["modes"], m["hq"]))


def _summarise_dataset(ds: str, runs: list[dict], reject: float) -> dict[str, Any]:
    summary = summarise(runs)
    print(_fmt_row("mean±se", ds, _cells(ds, summary)), flush=True)
    worst = _worst(ds, runs)
    print(_fmt_row(f"worst ({worst['seed']})", ds, _cells(ds, {k: worst[k] for k in METRIC_KEYS[ds]})),
          flush=True)
    entry: dict[str, Any] = {"runs": runs, "summary": summary, "worst": worst}
    if reject > 0:
        entry["summary_jbt"] = summarise(runs, jbt=True)
        entry["worst_jbt"] = _worst(ds, runs, "jbt")
        print(_fmt_row("JBT mean±se", ds, _cells(ds, entry["summary_jbt"])), flush=True)
        w = entry["worst_jbt"]
        print(_fmt_row(f"JBT worst ({w['seed']})", ds, _cells(ds, {k: w[k] for k in METRIC_KEYS[ds]})),
              flush=True)
    if ds == "swissroll":
        # The floor: the same metric for 2,500 *real* points (an independent draw).
        real = sample_real(ds, N_EVAL, torch.Generator().manual_seed(1)).numpy()
        entry["real_reference"] = toy_metrics(real, ds)
    return entry


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    seeds = args.seed if args.seed is not None else list(range(5 if args.seeds is None else args.seeds))
    datasets = DATASETS if args.dataset == "all" else (args.dataset,)
    os.makedirs(args.out, exist_ok=True)
    print(f"{'dataset':<10} {'seed':<12} " + " ".join(
        f"{h:>16}" for h in ("modes|fake->real", "HQ %|real->fake", "reverse KL", "seconds")))
    results: dict[str, Any] = {"args": vars(args) | {"seeds": seeds}, "datasets": {},
                               "torch_threads_per_run": args.threads}
    jobs = [(ds, seed, args.steps, args.out, args.loss, args.threads, args.reject, args.grad_comm,
             args.rescue_every, args.collapse_at)
            for ds in datasets for seed in seeds]
    done, pool = _results(jobs, args.jobs)
    for ds in datasets:
        runs = []
        for seed in seeds:
            r = next(done)
            runs.append(r)
            keys = METRIC_KEYS[ds]
            print(_fmt_row(str(seed), ds, _cells(ds, {k: r[k] for k in keys + ("seconds",)})),
                  flush=True)
            if r["jbt"]:
                print(_fmt_row(f"{seed} JBT", ds, _cells(ds, {k: r["jbt"][k] for k in keys})))
        results["datasets"][ds] = _summarise_dataset(ds, runs, args.reject)
    if pool is not None:
        pool.close()
        pool.join()
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(exits.run(lambda argv: (main(argv), exits.OK)[1]))
