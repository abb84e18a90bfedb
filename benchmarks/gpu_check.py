"""One-shot GPU check: exact-resume runs, fast-path throughput, 2-GPU gradient communication.

    bash benchmarks/gpu_check.sh              # one GPU: ~4 of its 8 minutes on an H200
    bash benchmarks/gpu_check.sh --cpu-smoke  # the same code at toy sizes on the CPU: CI, ~45 s
    bash benchmarks/gpu_check.sh --out DIR    # default benchmarks/out/gpu_check/

1. runs: the CLI (``python -m wgan_dist.train --config celeba128``) on built-in drawings at 128 px,
   fp32, bf16 and DeepSpeed ZeRO-2 bf16 (``RUNS``): 50 steps, and 25 then ``--resume`` to 50 in a
   new process; exact: the final G, D,
   G_ema and optimizer states bitwise equal (if not, an uninterrupted repeat says whether the
   kernels are deterministic at all). Losses (log.txt's status lines) finite.
2. throughput: the Trainer's critic_step / generator_step on in-memory tensors at 64 and 128 px,
   batch 256 (halved on OOM), plain fp32 (no fused Adam, channels-last, compile) and each fast
   path: images/s of a critic step and of a whole G step (n_critic critic + 1 generator step; its
   images: the real ones), TFLOP/s from ``_flops``' counted FLOPs, % of the dense bf16 peak, ratio
   to plain fp32, peak memory. Compile: the 128 px critic step only (it takes a minute).
3. nccl (2+ GPUs; --cpu-smoke: gloo): ``torch.distributed.run --standalone --nproc_per_node=2`` of
   the CLI, bf16, batch 256 per GPU, grad_comm fp32 vs bf16: img/s of the status lines but the first.
4. input: real photos (``INPUT_PHOTOS``: AFHQ cats, sharded here as JPEG at 64 and 128 px) through
   the real Trainer (--cpu-smoke: 32 px), ``INPUT_CASE``'s settings and section 2's batch, streamed (``data.cache=none``,
   one loader worker per core), held decoded on the GPU (``device``) and held as JPEG bytes decoded
   on the GPU per batch (``encoded``, nvjpeg): end-to-end img/s (status lines but the first) and its
   ratio to section 2's random-tensor G step of the same case and size (target: the device cache
   >= 0.95).

Prints the table and each section's time; writes <out>/gpu_check.json and gpu_check.md. Exit 1
when a run fails, a loss is non-finite or a resume is not exact (one line says which). The targets
(bf16 128 px critic step, batch 256 >= 35 % of the peak; every fast path >= plain fp32; the device
cache end to end >= 0.95 of random tensors) are shown.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace as Plan

from _common import OUT_DIR, REPO, machine, median

import torch  # CUDA starts at its first use: --cpu-smoke hides the devices before that
from wgan_dist.config import load_config

PRESET = "celeba128"
# Dense bf16 TFLOP/s (no sparsity), the most specific name first.
PEAKS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0),
         ("H200", 989.0), ("A100", 312.0))
PLAIN = {"train.mixed_precision": "no", "train.fused_adam": False, "train.channels_last": False,
         "train.compile": False}
BF16 = {"train.mixed_precision": "bf16"}
CL, FUSED = {"train.channels_last": True}, {"train.fused_adam": True}
CASES = {"fp32": {}, "fp32+fused": FUSED, "bf16": BF16, "bf16+cl": {**BF16, **CL},  # over PLAIN
         "bf16+fused": {**BF16, **FUSED}, "bf16+cl+fused": {**BF16, **CL, **FUSED},
         "bf16+compile": {**BF16, "train.compile": True}}
STATUS = re.compile(r"^step\s+(\d+)/\d+\s.*?img/s\s+(\S+).*?\bW\s+(\S+).*?\bD\s+(\S+)\s+G\s+(\S+)"
                    r"\s+mem", re.M)
LOSSES = ("critic_loss", "generator_loss")
# Section 1's runs: DDP fp32 and bf16 autocast, and DeepSpeed ZeRO-2 with its own bf16.
RUNS = {"fp32": {"train.mixed_precision": "no"}, "bf16": {"train.mixed_precision": "bf16"},
        "zero2-bf16": {"train.mixed_precision": "bf16", "train.backend": "deepspeed",
                       "train.zero_stage": 2}}
# Section 4: real photos through each input path, with section 2's case of these settings.
INPUT_PHOTOS = REPO.parent / "shared" / "data" / "afhq_cat" / "cat"
INPUT_CASE = "bf16+fused"
INPUTS = {"stream": {"data.cache": "none"}, "device": {"data.cache": "device"},
          "encoded": {"data.cache": "encoded"}}


def make_plan(smoke: bool, out: Path) -> Plan:
    """Sizes: all that differs between the modes but device and compile. base: every run and
    trainer; run: section 1 on top (log.tick_every divides split, see section_runs)."""
    base = {"data.shards": "builtin", "data.cache_dir": out / "data", "log.grid_size": 16,
            "data.builtin_per_class": 16, "eval.num": 64}
    plan = dict(smoke=False, base=base, run={"log.tick_every": 5}, steps=50, split=25, px=(64, 128),
                batch=256, warmup=10, iters=20, timeout=300,  # timeout: s per CLI process
                comm={**BF16, "train.batch_size": 512, "log.tick_every": 5}, comm_steps=30,
                photos=2048, input_px=(64, 128), input_steps=40, input_tick=10,
                workers=os.cpu_count() or 1)
    if smoke:
        base.update({"data.builtin_per_class": 4, "eval.num": 8, "log.grid_size": 4,
                     "data.workers": 0, "data.shuffle_buffer": 16, "model.g_width": 8,
                     "model.d_width": 8, "model.latent_dim": 16, "data.resolution": 32,
                     "train.batch_size": 4})
        plan.update(smoke=True, run={"log.tick_every": 2}, steps=8, split=4, px=(28, 32), batch=4,
                    warmup=1, iters=2, timeout=120,
                    comm={**BF16, "train.batch_size": 8, "log.tick_every": 1}, comm_steps=4,
                    photos=32, input_px=(32,), input_steps=6, input_tick=2)
    return Plan(**plan)


def overrides(*dicts: dict) -> list[str]:
    """Dotted overrides, later dicts winning; strings YAML misreads (``no``: false) quoted."""
    import yaml

    merged = {k: v for d in dicts for k, v in d.items()}
    return [f"{k}=" + (str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str)
                       and yaml.safe_load(v) != v else str(v)) for k, v in merged.items()]


# ------------------------------------------------------------------------ 1. runs
def chain(plan: Plan, run_dir: Path, extra: dict, parts: list[int], nproc: int = 1) -> dict:
    """CLI processes (``nproc`` > 1: each under torch.distributed.run): to parts[0] steps, then
    ``--resume`` to each next one; their exit codes, and the status lines of the run's log.txt."""
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] * (nproc > 1)
    procs = []
    run_dir.parent.mkdir(parents=True, exist_ok=True)  # for the console files next to the run
    for i, steps in enumerate(parts):
        args = overrides(plan.base, extra, {"log.run_dir": run_dir, "train.steps": steps})
        log, t0 = run_dir.with_name(f"{run_dir.name}.console-{i}.txt"), time.perf_counter()
        with open(log, "w") as f:
            try:
                rc = subprocess.run([sys.executable, *launch, "-m", "wgan_dist.train", "--config",
                                     PRESET, *args, *["--resume"] * (i > 0)], cwd=REPO, stdout=f,
                                    stderr=subprocess.STDOUT, timeout=plan.timeout).returncode
            except subprocess.TimeoutExpired:
                rc = f"timeout {plan.timeout}s"
        procs.append({"rc": rc, "wall_s": time.perf_counter() - t0, "console": str(log)})
        if rc != 0:
            break
    text = (run_dir / "log.txt").read_text() if (run_dir / "log.txt").is_file() else ""
    ticks = [dict(zip(("step", "img_s", "wasserstein", *LOSSES), (int(m[0]), *map(float, m[1:]))))
             for m in STATUS.findall(text)]
    return {"processes": procs, "ok": len(procs) == len(parts) and all(x["rc"] == 0 for x in procs),
            "ticks": ticks, "losses_finite": bool(ticks) and all(
                math.isfinite(t[k]) for t in ticks for k in LOSSES)}


def compare(a_dir: Path, b_dir: Path) -> dict:
    """Bitwise comparison of two runs' final checkpoints (read with weights_only=True)."""
    from wgan_dist.training import checkpoint as ckpt

    a, b = (torch.load(ckpt.latest_checkpoint(d), map_location="cpu", weights_only=True)
            for d in (a_dir, b_dir))
    pairs = [(f"{k}.{n}", t, b[k][n]) for k in ("G", "D", "G_ema") for n, t in a[k].items()]
    pairs += [(f"{k}[{i}].{n}", torch.as_tensor(t), torch.as_tensor(b[k]["state"][i][n]))
              for k in ("opt_G", "opt_D") for i, st in a[k]["state"].items() for n, t in st.items()]
    differ = [(n, (x.double() - y.double()).abs().max().item() if x.shape == y.shape else math.inf)
              for n, x, y in pairs if not torch.equal(x, y)]
    return {"exact": not differ and a["step"] == b["step"], "steps": [a["step"], b["step"]],
            "tensors": len(pairs), "n_differ": len(differ), "first_differ": differ[:3],
            "max_abs_diff": max((d for _, d in differ), default=0.0),
            "weights_finite": bool(all(torch.isfinite(t).all() for k in ("G", "D")
                                       for t in a[k].values() if t.is_floating_point()))}


def section_runs(plan: Plan, out: Path) -> tuple[dict, list[str]]:
    from wgan_dist.data.shardset import resolve_shards

    root, fails, result = out / "runs", [], {}
    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(PRESET, overrides(plan.base, plan.run))  # the shards once, then 2 at a time
    d = cfg.data
    resolve_shards("builtin", d.resolution, d.channels, d.cache_dir, d.builtin_per_class, cfg.train.seed)
    # The split step is a tick and a sample step of every run alike: the end of a run ticks and
    # samples, and both forward G in train mode, which moves its BatchNorm running statistics.
    jobs = {(p, kind): (root / f"{p}-{kind}", {"log.sample_every": plan.split, **plan.run,
                                               **RUNS[p]},
                        [plan.steps] if kind == "full" else [plan.split, plan.steps])
            for p in RUNS for kind in ("full", "split", "repeat")}
    first = [k for k in jobs if k[1] != "repeat"]
    with ThreadPoolExecutor(2) as pool:  # 2 processes at a time: 2 CPU cores; one GPU has room
        done = dict(zip(first, pool.map(lambda k: chain(plan, *jobs[k]), first)))
    for p in RUNS:
        full, split = done[(p, "full")], done[(p, "split")]
        r = result[p] = {"steps": plan.steps, "split_at": plan.split, "full": full, "split": split,
                         "exit_codes": [x["rc"] for x in full["processes"] + split["processes"]],
                         "wall_s": sum(x["wall_s"] for x in full["processes"] + split["processes"])}
        if not (full["ok"] and split["ok"]):
            fails.append(f"runs/{p}: a CLI process failed (see {root}/{p}-*.console-*.txt)")
            continue
        r["final"] = full["ticks"][-1] if full["ticks"] else {}
        r["losses_finite"] = full["losses_finite"] and split["losses_finite"]
        r["resume"] = cmp = compare(jobs[(p, "full")][0], jobs[(p, "split")][0])
        if not (r["losses_finite"] and cmp["weights_finite"]):
            fails.append(f"runs/{p}: non-finite loss or weights")
        if not cmp["exact"]:  # does an uninterrupted run even repeat itself?
            rep = r["repeat"] = chain(plan, *jobs[(p, "repeat")])
            same = rep["ok"] and compare(jobs[(p, "full")][0], jobs[(p, "repeat")][0])["exact"]
            fails.append(f"runs/{p}: resume not exact ({cmp['n_differ']} of {cmp['tensors']} tensors "
                         f"differ, first {cmp['first_differ'][:1]}); an uninterrupted repeat "
                         + ("matches: the resume is at fault" if same else
                            "differs too: kernels not deterministic" if rep["ok"] else "failed"))
    return result, fails


# ------------------------------------------------------------------------ 2. throughput
def measure(plan: Plan, t, flops: tuple[float, float], peak: float | None, critic_only: bool) -> dict:
    from wgan_dist.training.logbook import peak_memory_gb

    dev, b, n, cfg = t.device, t.batch, t.cfg.optim.n_critic, t.cfg
    torch.manual_seed(0)
    real = torch.rand(b, cfg.data.channels, cfg.data.resolution, cfg.data.resolution, device=dev) * 2 - 1
    z, alpha = torch.randn(b, cfg.model.latent_dim, device=dev), torch.rand(b, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda d: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def timed(fn, warmup: int) -> tuple[float, float, dict]:  # warm-up s, s a call, last stats
        t0 = time.perf_counter()
        for i in range(warmup + plan.iters):
            if i == warmup:
                sync(dev)
                t1 = time.perf_counter()
            stats = fn()
        sync(dev)
        return t1 - t0, (time.perf_counter() - t1) / plan.iters, stats

    def g_step() -> dict:
        for _ in range(n):
            t.critic_step(real, z, alpha)
        return t.generator_step(z)

    def rates(images: int, seconds: float, flops: float, warm: float) -> dict:  # flops: all images'
        return {"img_s": images / seconds, "tflops": flops / seconds / 1e12, "ms": 1000 * seconds,
                "warmup_s": warm, "pct_peak": 100 * flops / seconds / 1e12 / peak if peak else None}

    warm, sec, stats = timed(lambda: t.critic_step(real, z, alpha), plan.warmup)
    res = {"batch": b, "n_critic": n, "critic": rates(b, sec, flops[0] * b, warm)}
    losses = [float(stats["critic_loss"])]
    if critic_only:
        res["g_step"] = {"skipped": "compile: critic step only (time budget)"}
    else:
        warm, sec, stats = timed(g_step, max(1, plan.warmup // n))
        res["g_step"] = rates(n * b, sec, (n * flops[0] + flops[1]) * b, warm)
        losses.append(float(stats["generator_loss"]))
    return {**res, "losses_finite": all(map(math.isfinite, losses)), "peak_mem_gb": peak_memory_gb(dev)}


def run_case(plan: Plan, out: Path, name: str, px: int, flops, peak) -> dict:
    """One case in a fresh Trainer; on a CUDA OOM its batch is halved (recorded), down to 8."""
    from wgan_dist.compat import reset_accelerator_state
    from wgan_dist.training.trainer import Trainer

    batch, oom, compiled = plan.batch, [], bool(CASES[name].get("train.compile"))
    while batch >= min(8, plan.batch):  # the smoke's batch is 4
        t = None
        try:
            reset_accelerator_state()  # another mixed precision in the same process
            t = Trainer(load_config(PRESET, overrides(plan.base, PLAIN, CASES[name], {
                "data.resolution": px, "data.workers": 0, "train.batch_size": batch,
                "log.run_dir": out / "throughput" / f"{name}-{px}"})), overwrite=True)
            res = measure(plan, t, flops, peak, critic_only=compiled)
            return {**res, "oom_at_batch": oom} if oom else res
        except torch.cuda.OutOfMemoryError:
            oom.append(batch)
            batch //= 2
        finally:
            if t is not None:
                t.close()
            del t
            gc.collect()
            torch.cuda.empty_cache()  # a no-op without CUDA
            torch._dynamo.reset()  # compiled graphs go too
    return {"error": f"out of memory at batch {oom}"}


def section_throughput(plan: Plan, out: Path, peak: float | None) -> tuple[dict, list[str]]:
    from _flops import flops_per_image

    rows, fails = [], []
    for px in plan.px:
        flops = flops_per_image(load_config(PRESET, overrides(plan.base, {"data.resolution": px})))
        for name, extra in CASES.items():
            row = {"case": name, "px": px, "flops_per_image": dict(zip(("critic", "generator"), flops))}
            if extra.get("train.compile") and (plan.smoke or px != max(plan.px)):
                row["skipped"] = f"compile: {'cpu smoke' if plan.smoke else f'{max(plan.px)} px only'}"
            else:
                t0 = time.perf_counter()
                try:
                    row.update(run_case(plan, out, name, px, flops, peak))
                except Exception as e:  # recorded and failed; the other cases still run
                    row["error"] = f"{type(e).__name__}: {e}"
                row["wall_s"] = time.perf_counter() - t0
                if "error" in row or not row["losses_finite"]:
                    fails.append(f"throughput/{name}/{px}px: {row.get('error', 'non-finite loss')}")
            rows.append(row)
            print(f"  {name:<14} {px:>4} px  " + (row.get("skipped") or row.get("error") or "  ".join(
                f"{k} {row[k]['img_s']:.0f} img/s {row[k]['tflops']:.3g} TFLOP/s"
                for k in ("critic", "g_step") if "img_s" in row[k])), flush=True)
    plain = {r["px"]: r for r in rows if r["case"] == "fp32"}
    for r in rows:  # images/s over plain fp32's, same resolution and part
        for part in ("critic", "g_step"):
            base = plain.get(r["px"], {}).get(part, {})
            if "img_s" in r.get(part, {}) and "img_s" in base:
                r[part]["vs_plain"] = r[part]["img_s"] / base["img_s"]
    return {"cases": rows}, fails


# ------------------------------------------------------------------------ 3. nccl
def section_nccl(plan: Plan, out: Path, gpus: int) -> tuple[dict, list[str]]:
    if gpus < 2 and not plan.smoke:
        return {"skipped": f"{gpus} GPU"}, []
    res, fails = {"backend": "nccl" if gpus >= 2 else "gloo (cpu smoke)", "processes": 2}, []
    shutil.rmtree(out / "nccl", ignore_errors=True)
    for comm in ("fp32", "bf16"):
        r = res[comm] = chain(plan, out / "nccl" / comm, {**plan.comm, "train.grad_comm": comm},
                              [plan.comm_steps], nproc=2)
        later = [t["img_s"] for t in r["ticks"][1:] or r["ticks"]]  # the first tick warms up
        r["img_s"], r["rc"] = median(later) if later else None, r["processes"][0]["rc"]
        if not (r["ok"] and r["losses_finite"]):
            fails.append(f"nccl/{comm}: {'non-finite loss' if r['ok'] else 'run failed'} "
                         f"({r['processes'][0]['console']})")
    if res["fp32"]["img_s"] and res["bf16"]["img_s"]:
        res["bf16_vs_fp32"] = res["bf16"]["img_s"] / res["fp32"]["img_s"]
    return res, fails


# ------------------------------------------------------------------------ 4. input
def photo_shards(plan: Plan, out: Path, px: int) -> Path:
    """``plan.photos`` AFHQ cats as JPEG shards at ``px`` (one shard per loader worker at least),
    written once per output directory."""
    from wgan_dist.data.write import write_shards

    path = out / "photos" / f"afhq-{px}px-jpeg-{plan.photos}"
    if not (path / "manifest.json").is_file():
        write_shards([str(INPUT_PHOTOS)], str(path), resolution=px, channels=3, encoding="jpeg",
                     per_shard=max(8, plan.photos // max(4, plan.workers)), limit=plan.photos,
                     workers=min(plan.workers, max(1, plan.photos // 256)),  # a pool pays for many
                     overwrite=True, progress=False)
    return path


def input_run(plan: Plan, out: Path, px: int, batch: int, shards: Path, name: str) -> dict:
    """One Trainer.train() on the photos through input path ``name``; img/s of its status lines
    after the first (the first holds the warm-up: loader workers, cuDNN's choices)."""
    from wgan_dist.compat import reset_accelerator_state
    from wgan_dist.training.trainer import Trainer

    run_dir = out / "input" / f"{name}-{px}"
    never = plan.input_steps + 1  # samples and checkpoints: only the end of the run's
    reset_accelerator_state()
    t = Trainer(load_config(PRESET, overrides(plan.base, PLAIN, CASES[INPUT_CASE], INPUTS[name], {
        "data.shards": shards, "data.resolution": px, "data.channels": 3,
        "data.workers": plan.workers, "train.batch_size": batch, "train.steps": plan.input_steps,
        "log.tick_every": plan.input_tick, "log.sample_every": never, "log.ckpt_every": never,
        "eval.every": 0, "log.run_dir": run_dir})), overwrite=True)
    try:
        cache = t.cfg.data.cache  # what the run settled on
        t.train()
    finally:
        t.close()
        del t
        gc.collect()
        torch.cuda.empty_cache()
    ticks = [float(m[1]) for m in STATUS.findall((run_dir / "log.txt").read_text())]
    later = ticks[1:] or ticks
    return {"cache": cache, "ticks_img_s": ticks, "img_s": median(later) if later else None}


def section_input(plan: Plan, out: Path, throughput: dict) -> tuple[dict, list[str]]:
    rows, fails = [], []
    for px in plan.input_px:
        random = next((r for r in throughput["cases"] if r["case"] == INPUT_CASE and r["px"] == px
                       and "img_s" in r.get("g_step", {})), None)
        if random is None:
            fails.append(f"input/{px}px: no section-2 figure for {INPUT_CASE} to compare with")
            continue
        t0 = time.perf_counter()
        shards = photo_shards(plan, out, px)
        shard_s = time.perf_counter() - t0
        for name in INPUTS:
            row = {"px": px, "input": name, "batch": random["batch"], "case": INPUT_CASE,
                   "random_img_s": random["g_step"]["img_s"], "shard_s": shard_s}
            t0 = time.perf_counter()
            try:
                row.update(input_run(plan, out, px, random["batch"], shards, name))
                row["vs_random"] = row["img_s"] / row["random_img_s"] if row["img_s"] else None
            except Exception as e:  # recorded and failed; the other paths still run
                row["error"] = f"{type(e).__name__}: {e}"
                fails.append(f"input/{name}/{px}px: {row['error']}")
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"  {name:<8} {px:>4} px  " + (row.get("error") or
                  f"{fmt(row['img_s'])} img/s end to end, random tensors {fmt(row['random_img_s'])}: "
                  f"x{fmt(row['vs_random'], '.2f')}"), flush=True)
    return {"photos": plan.photos, "workers": plan.workers, "rows": rows}, fails


# ------------------------------------------------------------------------ the table
def fmt(x, spec: str = ".0f") -> str:
    return "n/a" if x is None else format(x, spec)


def md(head: str, rows) -> list[str]:
    return [f"| {head} |", "|" + "---|" * (head.count("|") + 1),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def table(res: dict) -> str:
    runs = [[p, f"{r['split_at']}+{r['steps'] - r['split_at']} vs {r['steps']}",
             " ".join(map(str, r["exit_codes"])), r.get("resume", {}).get("exact", "n/a"),
             *(fmt(r.get("final", {}).get(k), ".3f") for k in ("wasserstein", *LOSSES)),
             r.get("losses_finite", False), fmt(r["wall_s"])] for p, r in res["runs"].items()]
    n = res["nccl"]
    comm = [f"skipped: {n['skipped']}"] if "skipped" in n else [f"backend {n['backend']}", "", *md(
        "grad_comm | img/s (both processes) | vs fp32 | exit", [
            [c, fmt(n[c]["img_s"]), fmt(n.get("bf16_vs_fp32") if c == "bf16" else 1.0, ".2f"),
             n[c]["rc"]] for c in ("fp32", "bf16")])]
    return "\n".join([
        f"# gpu_check{' --cpu-smoke' if res['cpu_smoke'] else ''}: {res['device']}, "
        f"torch {res['machine']['torch']}, {res['machine']['date']}", "",
        f"dense bf16 peak: {fmt(res['peak_tflops'])} TFLOP/s ({res['device']}); elapsed: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in res["elapsed_s"].items()), "",
        f"## runs: CLI --config {PRESET} on built-in drawings at {res['runs_px']} px, uninterrupted "
        "vs stopped + --resume", "",
        *md("precision | steps | exit codes | exact resume | final W | final D loss | final G loss "
            "| losses finite | wall s", runs), "",
        "## throughput: Trainer.critic_step and a whole G step (n_critic critic steps + 1 generator "
        "step; its images: the real ones), in-memory batches", "",
        *md("case | px | batch | critic img/s | TFLOP/s | % peak | vs fp32 | G step img/s | TFLOP/s "
            "| % peak | vs fp32 | peak mem GB", map(throughput_cells, res["throughput"]["cases"])),
        "", "## nccl: 2 processes, train.grad_comm fp32 vs bf16", "", *comm, "",
        f"## input: {res['input'].get('photos')} AFHQ cat photos (JPEG shards) through the Trainer, "
        f"{INPUT_CASE}, {res['input'].get('workers')} loader worker(s) when streaming", "",
        *md("input | px | batch | cache | end-to-end img/s | random tensors img/s | ratio | wall s",
            [[r["input"], r["px"], r["batch"], r.get("cache", ""), fmt(r.get("img_s")),
              fmt(r["random_img_s"]), fmt(r.get("vs_random"), ".2f"), fmt(r["wall_s"])]
             if "error" not in r else [r["input"], r["px"], r["batch"], "error: " + r["error"],
                                       "", "", "", ""] for r in res["input"].get("rows", [])]), "",
        "## targets", "", *res["targets"], "", res["verdict"], ""])


def throughput_cells(r: dict) -> list:
    head = [r["case"], r["px"], r.get("batch", "")]
    if "skipped" in r or "error" in r:
        return head + [r.get("skipped") or "error: " + r["error"]] + [""] * 8
    return head + [c for p in (r["critic"], r["g_step"]) for c in (
        [fmt(p["img_s"]), fmt(p["tflops"], ".3g"), fmt(p["pct_peak"], ".1f"),
         fmt(p.get("vs_plain"), ".2f")] if "img_s" in p else [p["skipped"], "", "", ""])
    ] + [fmt(r["peak_mem_gb"], ".2f")]


def targets(rows: list[dict], top: int) -> list[str]:
    rows = [r for r in rows if "critic" in r]
    best = max((r for r in rows if r["case"].startswith("bf16") and r["px"] == top),
               key=lambda r: r["critic"]["img_s"], default={"case": "none", "critic": {}})
    pct = best["critic"].get("pct_peak")
    slow = [f"{r['case']}/{r['px']}px/{part} x{r[part]['vs_plain']:.2f}" for r in rows
            for part in ("critic", "g_step") if r[part].get("vs_plain", 1.0) < 1.0]
    return [f"- bf16 critic step at {top} px, batch {best.get('batch')}, >= 35 % of the peak: best "
            f"{best['case']} {fmt(pct, '.1f')} % -> " + ("n/a" if pct is None else "met" if pct >= 35
                                                         else "NOT met"),
            "- every fast path at least as fast as plain fp32: " + ("yes" if not slow else
                                                                    "NO, slower: " + ", ".join(slow))]


def input_targets(inp: dict, plan: Plan) -> list[str]:
    dev = [r for r in inp.get("rows", []) if r["input"] == "device"]
    cells = ", ".join(f"{r['px']} px x{fmt(r.get('vs_random'), '.2f')}" for r in dev) or "none"
    ok = bool(dev) and all((r.get("vs_random") or 0) >= 0.95 for r in dev)
    return [f"- device cache end to end >= 0.95 of random tensors: {cells} -> "
            + ("n/a (cpu smoke)" if plan.smoke else "met" if ok else "NOT met")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU (CUDA hidden): CI")
    p.add_argument("--out", type=Path, default=OUT_DIR / "gpu_check",
                   help="where gpu_check.json and gpu_check.md go (default benchmarks/out/gpu_check)")
    a = p.parse_args()
    if a.cpu_smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch looks; the CLI processes inherit it
    if not (a.cpu_smoke or torch.cuda.is_available()):
        print("gpu_check: no CUDA device here; --cpu-smoke runs the same code at toy sizes")
        return 2

    (out := a.out.resolve()).mkdir(parents=True, exist_ok=True)
    plan = make_plan(a.cpu_smoke, out)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((tflops for key, tflops in PEAKS if key in device), None)  # None: n/a
    res = {"cpu_smoke": a.cpu_smoke, "device": device, "peak_tflops": peak,
           "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                    "matmul": torch.backends.cuda.matmul.allow_tf32},
           "cudnn_benchmark": torch.backends.cudnn.benchmark, "machine": machine(),
           "runs_px": plan.base.get("data.resolution", 128), "elapsed_s": {}}
    fails, t_all = [], time.perf_counter()
    for name, fn in {"runs": lambda: section_runs(plan, out),
                     "throughput": lambda: section_throughput(plan, out, peak),
                     "nccl": lambda: section_nccl(plan, out, torch.cuda.device_count()),
                     "input": lambda: section_input(plan, out, res["throughput"]),
                     }.items():
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        res[name], failed = fn()
        fails, res["elapsed_s"][name] = fails + failed, time.perf_counter() - t0
        print(f"== {name}: {res['elapsed_s'][name]:.1f} s", flush=True)
    res["elapsed_s"]["total"] = time.perf_counter() - t_all
    res["failures"] = fails
    res["targets"] = targets(res["throughput"]["cases"], max(plan.px)) + input_targets(res["input"], plan)
    res["verdict"] = "result: OK" if not fails else "result: FAILED: " + "; ".join(fails)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "gpu_check.md").write_text(text := table(res))
    print("\n" + text + f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
