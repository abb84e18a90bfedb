"""PowerSGD against the exact (fp32) all-reduce, on quality, at equal steps.

    python benchmarks/bench_powersgd.py                  # toy + QuickDraw; ~25 min on 2 cores
    python benchmarks/bench_powersgd.py --quick          # a few minutes; a smoke test
    python benchmarks/bench_powersgd.py --parts toy

1. Toy (``python -m wgan_dist.toy``): both networks through one-process DDP with the
   rank-1 PowerSGD hook (error feedback, 10 plain iterations first) against the toy's own
   plain run, same seeds and steps; PacGAN's modes / high-quality % / reverse KL.
2. Real QuickDraw drawings (../shared/data/quickdraw, 4 categories, 3,000 each): the
   class-conditional trainer on 2 gloo processes (``launch/accelerate_cpu2.yaml``) with
   ``train.grad_comm=powersgd`` against ``fp32``, same seed and steps; scored by
   ``python -m wgan_dist.evaluate --classifier`` (a domain classifier trained once on the
   real drawings: accuracy on the requested class, classes covered, classifier-FID) and SWD.

Prints one line per setting and metric, side by side, and writes
benchmarks/out/bench_powersgd.json. What compression saves on the wire is bench_comm.py's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import OUT_DIR, REPO, machine, write_result

QUICKDRAW = REPO.parent / "shared" / "data" / "quickdraw"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _run(cmd: list[str], what: str) -> str:
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{what}: failed (exit {r.returncode})\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def toy(datasets: list[str], seeds: int, steps: int, root: Path) -> dict:
    out = {}
    for setting in ("none", "powersgd"):
        d = root / f"toy-{setting}"
        res = {}
        for ds in datasets:
            _run([sys.executable, "-m", "wgan_dist.toy", "--dataset", ds, "--seeds", str(seeds),
                  "--steps", str(steps), "--jobs", "2", "--reject", "0", "--grad-comm", setting,
                  "--out", str(d / ds)], f"toy {ds} {setting}")
            res[ds] = json.loads((d / ds / "results.json").read_text())["datasets"][ds]["summary"]
        out[setting] = res
        for ds in datasets:
            s = res[ds]
            print(f"toy {ds:<5} {setting:<9} modes {s['modes']['mean']:.2f}±{s['modes']['se']:.2f}  "
                  f"HQ {100 * s['hq']['mean']:.2f}±{100 * s['hq']['se']:.2f} %  reverse KL "
                  f"{s['reverse_kl']['mean']:.4f}±{s['reverse_kl']['se']:.4f}", flush=True)
    return out


def quickdraw(steps: int, num: int, root: Path) -> dict:
    if not QUICKDRAW.is_dir():
        sys.exit(f"error: {QUICKDRAW}: the real QuickDraw drawings are missing")
    shards = OUT_DIR / "data" / "quickdraw4"
    if not (shards / "manifest.json").is_file():
        _run([sys.executable, "-m", "wgan_dist.shard", *sorted(map(str, QUICKDRAW.glob("*.npy"))),
              "-o", str(shards), "--no-progress"], "shard QuickDraw")
    out = {}
    for setting in ("fp32", "powersgd"):
        run = root / f"qd-{setting}"
        _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              "launch/accelerate_cpu2.yaml", "-m", "wgan_dist.train", "--config", "quickdraw_cond",
              f"data.shards={shards}", "model.g_width=32", "model.d_width=32",
              # the recipe these figures were measured with (the preset's until 2026-12-07)
              "model.cond=projection", "optim.n_critic=5", "optim.lr_g=1e-4", "optim.lr_d=1e-4",
              f"train.steps={steps}", f"train.grad_comm={setting}", "train.seed=0",
              f"log.tick_every={max(steps // 4, 1)}", f"log.sample_every={steps}",
              f"log.ckpt_every={steps}", "eval.every=0", "eval.num=256", f"log.run_dir={run}"],
             f"QuickDraw {setting}")
        text = _run([sys.executable, "-m", "wgan_dist.evaluate", "--checkpoint", str(run),
                     "--data", str(shards), "--num", str(num), "--classifier", "--seed", "0"],
                    f"evaluate {setting}")
        m = json.loads(text[text.index("{"):])
        out[setting] = m
        print(f"QuickDraw {setting:<9} " + "  ".join(
            f"{k} {m[k]:.4g}" for k in sorted(m) if isinstance(m[k], (int, float))), flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["toy", "quickdraw"], choices=["toy", "quickdraw"])
    p.add_argument("--quick", action="store_true", help="tiny runs: checks the script, not quality")
    p.add_argument("--toy-datasets", nargs="+", default=["ring", "grid"])
    p.add_argument("--toy-seeds", type=int, default=2)
    p.add_argument("--toy-steps", type=int, default=24000)
    p.add_argument("--qd-steps", type=int, default=200)
    p.add_argument("--qd-num", type=int, default=2000, help="images scored per run")
    a = p.parse_args()
    if a.quick:
        a.toy_datasets, a.toy_seeds, a.toy_steps, a.qd_steps, a.qd_num = ["ring"], 1, 300, 12, 200
    result: dict = {"machine": machine(), "args": vars(a)}
    with tempfile.TemporaryDirectory() as tmp:
        if "toy" in a.parts:
            result["toy"] = toy(a.toy_datasets, a.toy_seeds, a.toy_steps, Path(tmp))
        if "quickdraw" in a.parts:
            result["quickdraw"] = quickdraw(a.qd_steps, a.qd_num, Path(tmp))
    parts = "" if len(a.parts) == 2 else "_" + a.parts[0]
    write_result("bench_powersgd" + parts + ("_quick" if a.quick else ""), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
