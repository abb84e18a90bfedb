"""celeba128 on real 128 px photos (AFHQ cats): throughput at the CPU width and at the
shipped width, and a short run's sample grid.

    python benchmarks/bench_photos128.py                 # 2 rounds x 2 widths of 40 steps, then a 16 kimg run
    python benchmarks/bench_photos128.py --quick         # 1 round of 12 steps, a 1 kimg run
    python benchmarks/bench_photos128.py --grid-kimg 0   # throughput only

The 5,153 cats are sharded at 128 px (``python -m wgan_dist.shard ... -s 128 --channels 3``,
png, as a user would). Throughput: ``--config celeba128`` as shipped (its batch, critic steps,
flips, one loader worker, one torch thread), at ``model.g_width=d_width=32`` and at the
shipped 64, run through the CLI in alternating rounds (32, 64, 64, 32, ...: a load change on
the shared machine hits both); per run the images through the critic between the first and
the last of 5 checkpoints (start-up and the first interval left out) over the wall seconds
and over the CPU seconds of the process tree in that span. Then a ``--grid-kimg`` run at the
CPU width; its EMA samples go to benchmarks/out/photos128/ beside real photos.
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
    ap.add_argument("--steps", type=int, default=40, help="generator steps a throughput run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--grid-kimg", type=float, default=16.0, help="kimg of the short run (0: none)")
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    if a.quick:
        a.steps, a.rounds, a.grid_kimg = 12, 1, 1.0
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
                            out / f"throughput_w{width}.log", checkpoints=5)
            runs[width].append(rates(ck[1:], per_step))
            print(f"  round {r + 1}: width {width}: {runs[width][-1]['img_per_s']:.2f} img/s, "
                  f"{runs[width][-1]['img_per_cpu_s']:.2f} img/CPU-s", flush=True)
    summary = {w: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for w, rs in runs.items()}
    for w, s in summary.items():
        print(f"celeba128 width {w}: {s['img_per_s']:.2f} img/s, {s['img_per_cpu_s']:.2f} images per "
              f"CPU-second (median of {a.rounds}; batch {cfg.train.batch_size}, {cfg.optim.n_critic} "
              f"critic steps)")
    result = {"per_step_images": per_step, "rounds": runs, "median": summary}
    if a.grid_kimg:
        ck = train_ours("celeba128", shards, work / "short", a.grid_kimg,
                        ["model.g_width=32", "model.d_width=32"], out / "short.log")
        fake = ours_samples(ck[-1]["path"], 64)
        grid(fake, out / "celeba128_short.png")
        grid(load(shards)[:64], out / "real128.png")
        result["short_run"] = {"kimg": ck[-1]["kimg"], "cpu_s": ck[-1]["cpu_s"], "wall_s": ck[-1]["wall_s"]}
        print(f"short run: {ck[-1]['kimg']:.1f} kimg in {ck[-1]['cpu_s']:.0f} CPU s; grids in {out}")
    write_result("bench_photos128" + ("_quick" if a.quick else ""), {"args": {**vars(a), "work": str(a.work)},
                                                                        **result})
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
