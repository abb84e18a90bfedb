"""What crosses the wire, measured: the real trainer on 2 gloo processes (CPU), with every
all-reduce counted by phase (``WGAN_DIST_INSTRUMENT``, wgan_dist/training/instrument.py), for
each ``train.grad_comm`` setting, for the default model and for ``celeba128``.

    python benchmarks/bench_comm.py              # both models, 4 settings; ~6 min on 2 cores
    python benchmarks/bench_comm.py --models default

Prints, per model: bytes per critic step, per generator step and per G step in total for each
setting, one line each as ``bytes/G-step <setting> <n>``, then ``ratio bf16/fp32 <x>`` and
``host syncs between ticks: <n>`` (host reads inside the hot loop over all steps and both
ranks; the target is 0). Figures are taken from the last G step of each run, after PowerSGD's
plain warm-up iterations. Writes benchmarks/out/bench_comm.json, which
benchmarks/scaling_model.py reads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _common import OUT_DIR, REPO, machine, write_result

SETTINGS = ("fp32", "bf16", "fp16", "powersgd")
MODELS = {
    # The built-in default (28 px), and celeba128 on small built-in images of its size: the
    # bytes depend on the parameters, not on the pixels, so tiny batches suffice.
    "default": [],
    "celeba128": ["--config", "celeba128", "data.shards=builtin", "data.builtin_per_class=4",
                  "data.hflip=false"],
}


def run(model: str, setting: str, steps: int, root: Path) -> dict:
    out = root / f"{model}-{setting}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE"))}
    env.update(WGAN_DIST_INSTRUMENT=str(out / "instrument"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           "launch/accelerate_cpu2.yaml", "-m", "wgan_dist.train", *MODELS[model],
           f"train.grad_comm={setting}", "train.powersgd_start=2", f"train.steps={steps}",
           "train.batch_size=4", "data.workers=0", f"log.tick_every={steps}",
           f"log.sample_every={steps}", f"log.ckpt_every={steps}", "eval.num=8",
           "eval.gp_visuals=false", "log.grid_size=4", f"log.run_dir={out / 'run'}",
           f"data.cache_dir={OUT_DIR / 'data'}"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        sys.exit(f"{model} {setting}: the run failed\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    ranks = [json.loads(Path(f"{out / 'instrument'}.rank{k}.json").read_text()) for k in (0, 1)]
    # The run's own critic steps per G step (the built-in default has 2, celeba128 5).
    n_critic = yaml.safe_load((out / "run" / "config.yaml").read_text())["optim"]["n_critic"]
    last = {}
    for phase in ("critic", "generator"):
        a = ranks[0]["bytes_after_step"][-1].get(phase, 0)
        b = ranks[0]["bytes_after_step"][-2].get(phase, 0)
        last[phase] = a - b  # the last G step, rank 0 (each rank sends the same)
    return {"bytes_critic_step": last["critic"] / n_critic, "bytes_generator_step": last["generator"],
            "bytes_g_step": last["critic"] + last["generator"],
            "host_syncs": sum(r["host_syncs"] for r in ranks),
            "sync_sites": ranks[0]["sync_sites"], "steps": steps, "n_critic": n_critic}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--steps", type=int, default=4, help="G steps per run (>= 3)")
    a = p.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            results[model] = {}
            print(f"\n{model}:", flush=True)
            for setting in a.settings:
                m = run(model, setting, a.steps, Path(tmp))
                results[model][setting] = m
                print(f"bytes/critic-step {setting} {m['bytes_critic_step']:.0f}")
                print(f"bytes/generator-step {setting} {m['bytes_generator_step']:.0f}")
                print(f"bytes/G-step {setting} {m['bytes_g_step']:.0f}", flush=True)
            fp32 = results[model].get("fp32", {}).get("bytes_g_step")
            if fp32 and "bf16" in results[model]:
                ratio = results[model]["bf16"]["bytes_g_step"] / fp32
                results[model]["ratio_bf16_fp32"] = ratio
                print(f"ratio bf16/fp32 {ratio:.3f}")
            if "powersgd" in results[model] and fp32:
                print(f"ratio powersgd/fp32 {results[model]['powersgd']['bytes_g_step'] / fp32:.3f}")
            syncs = results[model].get("fp32", next(iter(results[model].values())))["host_syncs"]
            print(f"host syncs between ticks: {syncs}")
    write_result("bench_comm", {"machine": machine(), "results": results, "steps": a.steps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
