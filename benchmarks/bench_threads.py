"""Images/s of the real trainer with each torch thread setting, on a quiet machine and beside a
competing CPU-bound process, side by side in one run.

    python benchmarks/bench_threads.py             # 3 interleaved rounds, 60 steps a case; ~15 min
    python benchmarks/bench_threads.py --quick     # 2 rounds, 30 steps; ~6 min

Settings: torch's own default (what the trainer ran with before it chose: one thread per
physical core, 2 here), OMP_NUM_THREADS=1, OMP_NUM_THREADS=2, and the trainer's automatic
choice (train.threads=0: every core when the images are cached, and a ThreadTuner that times
all threads against one and keeps the faster) -- all with the default input (data.cache=auto:
the built-in set is held decoded in memory, no loader worker) -- and "stream" (the input before
the cache: data.cache=none, one loader worker, automatic threads). Each case is
`python -m wgan_dist.train` with the built-in default model, 1 process; the figure is the
median img/s of its status lines after the first (start-up excluded).
"Busy" runs a `while True: pass` process for the whole case (another job on the machine).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, interleave, machine, median, paired_ratio, write_result

LINE = re.compile(r"img/s\s+([\d.]+)")


def torch_default_threads() -> int:
    code = "import torch; print(torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True).stdout)


def run_case(setting: str, busy: bool, steps: int, root: Path, shards: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    extra = []
    if setting.startswith("OMP="):
        env["OMP_NUM_THREADS"] = setting[4:]
    elif setting == "torch default":
        extra = [f"train.threads={torch_default_threads()}"]  # what torch picks on its own
    elif setting == "stream":
        extra = ["data.cache=none", "data.workers=1"]
    run_dir = root / f"{setting.replace(' ', '_').replace('=', '')}-{'busy' if busy else 'quiet'}"
    tick = max(1, steps // 5)
    cmd = [sys.executable, "-m", "wgan_dist.train", f"train.steps={steps}",
           f"log.tick_every={tick}", f"log.sample_every={steps}", f"log.ckpt_every={steps}",
           f"log.run_dir={run_dir}", f"data.cache_dir={shards}", "eval.gp_visuals=false",
           "eval.num=64", "--overwrite", *extra]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    rates = [float(m.group(1)) for m in LINE.finditer((run_dir / "log.txt").read_text())]
    return statistics.median(rates[1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds of 30 steps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args()
    steps, repeats = a.steps or (30 if a.quick else 60), a.repeats or (2 if a.quick else 3)
    settings = ["torch default", "OMP=1", "OMP=2", "auto", "stream"]
    with tempfile.TemporaryDirectory() as tmp:
        shards = REPO / "shards"  # the built-in set, written once by the first case
        cases = {f"{s} | {'busy' if b else 'quiet'}":
                 (lambda s=s, b=b: run_case(s, b, steps, Path(tmp), shards))
                 for b in (False, True) for s in settings}
        runs = interleave(cases, repeats)
    print(f"\nimg/s of the trainer (default model and input), median of {repeats} rounds; "
          f"torch's default here is {torch_default_threads()} thread(s):")
    table = {}
    for load in ("quiet", "busy"):
        auto = runs[f"auto | {load}"]
        for s in settings:
            r = runs[f"{s} | {load}"]
            table[f"{s} | {load}"] = {"img_s": median(r), "auto_over_this": paired_ratio(auto, r),
                                      "rounds": r}
            print(f"  {load:<5} {s:<14} {median(r):8.1f} img/s   auto / this {paired_ratio(auto, r):5.2f}")
        best = max((s for s in settings if s.startswith("OMP")), key=lambda s: median(runs[f"{s} | {load}"]))
        print(f"  {load:<5} default (auto) / best OMP setting ({best}): "
              f"{paired_ratio(auto, runs[f'{best} | {load}']):.2f} (target >= 0.9)")
    write_result("bench_threads", {"steps": steps, "repeats": repeats, "machine": machine(),
                                   "cases": table, "torch_default": torch_default_threads()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
