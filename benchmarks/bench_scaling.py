"""Images/s of the real trainer on 1 and 2 processes, side by side in one run.

    python benchmarks/bench_scaling.py [--steps 40] [--repeats 2] [--gpus]

Runs `python -m wgan_dist.train` under `accelerate launch` with 1 process and with 2 (gloo on
a CPU; NCCL with --gpus), alternating, on the built-in dataset, and reads the trainer's own
images/s from the final ticks of log.txt. The global batch is the same in both, so 2
processes do the same work per step. Prints the speed-up and the efficiency (speed-up / 2);
writes benchmarks/out/bench_scaling.json.

On a 2-core CPU two processes share the same two cores that one process already uses (each
process is given one thread), so the figure measures the overhead of DDP (gradient
all-reduce, duplicated generator work), not added hardware.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"img/s\s+([0-9.]+)")


def run(nproc: int, steps: int, run_dir: Path, extra: list[str], gpus: bool) -> float:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--multi_gpu", "--num_processes", str(nproc)] if nproc > 1 else ["--num_processes", "1"]
    if not gpus:
        launch += [] if nproc > 1 else ["--cpu"]
    tick = max(1, steps // 4)
    args = ["-m", "wgan_dist.train", f"train.steps={steps}", f"log.tick_every={tick}",
            f"log.sample_every={steps}", f"log.ckpt_every={steps}", f"log.run_dir={run_dir}",
            "eval.gp_visuals=false", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    subprocess.run(launch + args, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    rates = [float(m.group(1)) for m in LINE.finditer((run_dir / "log.txt").read_text())]
    return statistics.median(rates[1:])  # the first tick includes start-up


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--gpus", action="store_true", help="run on GPUs (NCCL) instead of CPU")
    p.add_argument("overrides", nargs="*", default=["train.batch_size=64", "data.workers=1"])
    args = p.parse_args(argv)
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        extra = [f"data.cache_dir={REPO / 'shards'}", *args.overrides]
        for r in range(args.repeats):
            for n in (1, 2):
                ips = run(n, args.steps, Path(tmp) / f"n{n}-r{r}", extra, args.gpus)
                results[n].append(ips)
                print(f"repeat {r}: {n} process(es): {ips:.1f} img/s", flush=True)
    one, two = statistics.median(results[1]), statistics.median(results[2])
    summary = {"img_per_s_1": one, "img_per_s_2": two, "speedup": two / one,
               "efficiency": two / one / 2, "runs": results, "overrides": args.overrides,
               "device": "gpu" if args.gpus else "cpu", "cpus": os.cpu_count()}
    print(f"1 process {one:.1f} img/s, 2 processes {two:.1f} img/s: speed-up {two / one:.2f}, "
          f"efficiency {two / one / 2:.2f}")
    out = REPO / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_scaling.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
