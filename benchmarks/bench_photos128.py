"""celeba128 on real 128 px photos (AFHQ cats): throughput at the CPU width and at the
shipped width, and a short run's sample grid.

    python benchmarks/bench_photos128.py                 # 3 steps a width, then an 8 CPU-minute run; ~25 min
    python benchmarks/bench_photos128.py --rounds 2      # alternate the widths twice
    python benchmarks/bench_photos128.py --grid-cpu-min 0   # throughput only

The 5,153 cats are sharded at 128 px (``python -m wgan_dist.shard ... -s 128 --channels 3``,
png, as a user would). Throughput: ``--config celeba128`` as shipped (batch 128, 5 critic
steps: 640 real images a generator step; flips, one loader worker, one torch thread), at
``model.g_width=d_width=32`` and at the shipped 64, run through the CLI, the widths
alternating when ``--rounds`` > 1 (a load change on the shared machine hits both); a
checkpoint after every step, and the rate is the images through the critic from the first
checkpoint to the last (start-up and the first step left out) over the wall seconds and over
the CPU seconds of the process tree in that span. Then a short run at the CPU width with the
recipe measured at 64 px (``configs/celeba64.yaml``: batch 32, 2 critic steps, Adam 3e-4),
stopped after ``--grid-cpu-min`` CPU minutes; its EMA samples go to
benchmarks/out/photos128/ beside real photos.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import OUT_DIR, write_result
from bench_photos import CATS, grid, load, ours_samples, shard, train_ours


def rates(ckpts: list[dict], per_step: int) -> dict[str, float]:
    a, b = ckpts[0], ckpts[-1]
    images = (b["step"] - a["step"]) * per_step
    return {"img_per_s": images / (b["wall_s"] - a["wall_s"]),
            "img_per_cpu_s": images / (b["cpu_s"] - a["cpu_s"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=3, help="generator steps a throughput run")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--grid-cpu-min", type=float, default=8.0, help="CPU minutes of the short run (0: none)")
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    if a.quick:
        a.steps, a.rounds, a.grid_cpu_min = 2, 1, 0.5
    torch.set_num_threads(1)
    out = OUT_DIR / ("photos128" + ("_quick" if a.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="bench_photos128-") if a.work is None else None
    work = Path(tmp.name) if tmp else a.work
    src = work / "cats"
    if not src.exists():
        src.mkdir(parents=True)
        for f in sorted(CATS.glob("*.jpg")):
            (src / f.name).symlink_to(f)
    shards = work / "shards128"
    if not (shards / "manifest.json").is_file():
        from bench_photos import cli

        cli(["-m", "wgan_dist.shard", str(src), "-o", str(shards), "-s", "128", "--channels", "3",
             "--no-progress"], "sharding the cats at 128 px")
    from wgan_dist.config import load_config

    cfg = load_config("celeba128")
    per_step = cfg.optim.n_critic * cfg.train.batch_size
    kimg = a.steps * per_step / 1000
    runs: dict[int, list[dict]] = {32: [], 64: []}
    for r in range(a.rounds):
        for width in ((32, 64) if r % 2 == 0 else (64, 32)):
            ck = train_ours("celeba128", shards, work / f"tp{width}", kimg,
                            [f"model.g_width={width}", f"model.d_width={width}"],
                            out / f"throughput_w{width}.log", checkpoints=a.steps)
            runs[width].append(rates(ck, per_step))
            print(f"  round {r + 1}: width {width}: {runs[width][-1]['img_per_s']:.2f} img/s, "
                  f"{runs[width][-1]['img_per_cpu_s']:.2f} img/CPU-s", flush=True)
    summary = {w: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for w, rs in runs.items()}
    for w, s in summary.items():
        print(f"celeba128 width {w}: {s['img_per_s']:.2f} img/s, {s['img_per_cpu_s']:.2f} images per "
              f"CPU-second (median of {a.rounds}; batch {cfg.train.batch_size}, {cfg.optim.n_critic} "
              f"critic steps)")
    result = {"per_step_images": per_step, "rounds": runs, "median": summary}
    if a.grid_cpu_min:
        recipe = ["model.g_width=32", "model.d_width=32", "train.batch_size=32", "optim.n_critic=2",
                  "optim.lr_g=3e-4", "optim.lr_d=3e-4"]
        ck = train_ours("celeba128", shards, work / "short", 1000.0, recipe, out / "short.log",
                        cpu_budget_s=a.grid_cpu_min * 60)
        fake = ours_samples(ck[-1]["path"], 64)
        grid(fake, out / "celeba128_short.png")
        grid(load(shards)[:64], out / "real128.png")
        result["short_run"] = {"overrides": recipe, "kimg": ck[-1]["kimg"], "cpu_s": ck[-1]["cpu_s"],
                               "wall_s": ck[-1]["wall_s"]}
        print(f"short run: {ck[-1]['kimg']:.1f} kimg in {ck[-1]['cpu_s']:.0f} CPU s; grids in {out}")
    write_result("bench_photos128" + ("_quick" if a.quick else ""), {"args": {**vars(a), "work": str(a.work)},
                                                                        **result})
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
