"""A data-parallel scaling model for a WGAN-GP preset, from *measured* bytes on the wire.

    python benchmarks/bench_comm.py            # first: measures what DDP all-reduces
    python benchmarks/scaling_model.py [--config celeba128] [--mfu 0.35] [--overlap 0.5]

Measured (benchmarks/out/bench_comm.json, written by bench_comm.py on real gloo processes):
bytes all-reduced per critic step and per generator step for each ``train.grad_comm``
setting (fp32, bf16, fp16, powersgd). Counted here on the real models: FLOPs per image of a
critic step (the penalty's double backward included) and of a generator step
(``benchmarks/_flops.py``). Assumed, and printed: peak throughput, utilisation, link
bandwidths and latencies, overlap.

Model, per generator step (n_critic critic steps + 1 generator step), N GPUs, ring all-reduce:
    t_ar(bytes, N) = 2 (N - 1) / N * bytes / bw  +  2 (N - 1) * latency
        bw, latency: NVLink inside one 8-GPU node, InfiniBand (per GPU) beyond
    t_comm = n_critic * t_ar(bytes_critic) + t_ar(bytes_generator)
    t_comp = per_gpu_batch * (n_critic * F_critic + F_generator) / (peak * mfu)
    exposed = max(0, t_comm - overlap * t_comp)          (DDP overlaps buckets with backward)
    efficiency = t_comp / (t_comp + exposed)
Input (benchmarks/out/bench_input.json, written by bench_input.py on real photos): CPU
microseconds per real image of each input path, measured; a node's cores per GPU, assumed
(``--cores-per-gpu``, 12: an 8-GPU node with 96 cores). Per generator step a GPU needs
per_gpu_batch * n_critic real images:
    t_input = per_gpu_batch * n_critic * us_per_image / cores_per_gpu
    (the device cache: the gather runs on the GPU; its host cost is launches, t_input ~ 0)
    t_step = max(t_comp + exposed, t_input); efficiency = t_comp / t_step
so a table takes the slower of compute, communication and input.
Not modelled: PowerSGD's own compute (two small matmuls and an orthogonalisation per
bucket), stragglers. Prints one table per setting (GPUs x per-GPU batch) for the device
cache and for streaming, then the settings that keep 64 GPUs at >= 0.9 and the global batch
that implies. Writes benchmarks/out/scaling_model.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import OUT_DIR
from _flops import flops_per_image

from wgan_dist.config import load_config
from wgan_dist.nets import build_models, count_params

# Stated hardware assumptions (per GPU / per link), not measurements.
H100_BF16_DENSE = 989e12      # FLOP/s, H100 SXM dense bf16 (NVIDIA datasheet)
NVLINK_BUS_BW = 350e9         # B/s, achievable NCCL all-reduce bus bandwidth inside an 8x H100 node
IB_BUS_BW = 45e9              # B/s per GPU across nodes: one 400 Gb/s NDR NIC per GPU, ~90 % achieved
LATENCY_NVLINK = 5e-6         # s per ring step
LATENCY_IB = 10e-6
GPUS = (8, 64, 256)
BATCHES = (16, 64, 256)
TARGET = 0.9


def allreduce_time(nbytes: float, n: int, per_node: int = 8) -> float:
    if n <= 1:
        return 0.0
    # Inside a node NVLink; across nodes the ring is limited by the slowest link (IB).
    bw, lat = (NVLINK_BUS_BW, LATENCY_NVLINK) if n <= per_node else (IB_BUS_BW, LATENCY_IB)
    return 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * lat


def efficiency(m: dict, n: int, batch: int, flops: tuple[float, float], n_critic: int,
               mfu: float, overlap: float, input_s_per_image: float = 0.0) -> dict:
    """``input_s_per_image``: host CPU seconds per real image of the input path over the cores
    one GPU has (0: the input costs the host nothing, the device cache)."""
    f_critic, f_gen = flops
    t_comp = batch * (n_critic * f_critic + f_gen) / (H100_BF16_DENSE * mfu)
    t_comm = (n_critic * allreduce_time(m["bytes_critic_step"], n)
              + allreduce_time(m["bytes_generator_step"], n))
    exposed = max(0.0, t_comm - overlap * t_comp)
    t_input = batch * n_critic * input_s_per_image
    t_step = max(t_comp + exposed, t_input)
    return {"gpus": n, "per_gpu_batch": batch, "global_batch": n * batch, "t_comp_s": t_comp,
            "t_comm_s": t_comm, "exposed_s": exposed, "t_input_s": t_input,
            "limit": "input" if t_input > t_comp + exposed else "compute+comm" if exposed else "compute",
            "efficiency": t_comp / t_step}


def input_paths(path: Path, px: int, cores: float) -> dict[str, float]:
    """Seconds of one GPU's cores per real image for each measured input path (bench_input)."""
    if not path.is_file():
        sys.exit(f"error: {path}: no measured input paths; run python benchmarks/bench_input.py first")
    rows = [r for r in json.loads(path.read_text())["rows"] if r["px"] == px]
    if not rows:
        sys.exit(f"error: {path}: nothing measured at {px} px")
    paths = {"device cache": 0.0}
    paths.update({r["path"]: r["cpu_us_per_image"] * 1e-6 / cores for r in rows
                  if r["path"].startswith("stream") or r["path"] == "cache encoded"})
    return paths


def measured(config: str, path: Path) -> dict[str, dict]:
    if not path.is_file():
        sys.exit(f"error: {path}: no measured bytes; run python benchmarks/bench_comm.py first")
    results = json.loads(path.read_text())["results"]
    if config not in results:
        sys.exit(f"error: {path}: no measurement for {config!r} (has {', '.join(results)}); "
                 f"run python benchmarks/bench_comm.py --models {config}")
    return {k: v for k, v in results[config].items() if isinstance(v, dict)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="celeba128")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOPs utilisation")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="share of compute time that can hide communication (backward share)")
    p.add_argument("--comm", type=Path, default=OUT_DIR / "bench_comm.json",
                   help="bench_comm.py's measurements")
    p.add_argument("--input", type=Path, default=OUT_DIR / "bench_input.json",
                   help="bench_input.py's measurements")
    p.add_argument("--cores-per-gpu", type=float, default=12.0,
                   help="host cores per GPU (an 8-GPU node with 96 cores)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    settings = measured(args.config, args.comm)
    g, d = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
    pg, pd = count_params(g), count_params(d)
    flops = flops_per_image(cfg)
    n_critic = cfg.optim.n_critic
    print(f"{args.config}: {cfg.data.resolution}px x {cfg.data.channels}ch, G {pg / 1e6:.2f}M "
          f"params, D {pd / 1e6:.2f}M; n_critic {n_critic}")
    print(f"FLOPs per image: critic step {flops[0] / 1e9:.2f} GFLOP (incl. penalty double "
          f"backward), generator step {flops[1] / 1e9:.2f} GFLOP")
    print(f"assumed: peak {H100_BF16_DENSE / 1e12:.0f} TFLOP/s x MFU {args.mfu}, NVLink bus "
          f"{NVLINK_BUS_BW / 1e9:.0f} GB/s, IB {IB_BUS_BW / 1e9:.0f} GB/s per GPU, overlap "
          f"{args.overlap}")
    print(f"measured bytes all-reduced per G step ({args.comm.name}; fp32 counted: "
          f"{(n_critic * 4 * pd + 4 * pg) / 1e6:.1f} MB):")
    for name, m in settings.items():
        print(f"  {name:<9} {m['bytes_g_step'] / 1e6:8.2f} MB  (critic step "
              f"{m['bytes_critic_step'] / 1e6:.2f} MB, generator step "
              f"{m['bytes_generator_step'] / 1e6:.2f} MB)")
    inputs = input_paths(args.input, cfg.data.resolution, args.cores_per_gpu)
    demand = H100_BF16_DENSE * args.mfu / (flops[0] + flops[1] / n_critic)
    print(f"input: one GPU eats {demand:.0f} real images/s; supply with {args.cores_per_gpu:g} "
          f"cores per GPU ({args.input.name}):")
    for path, s_img in inputs.items():
        supply = 1 / s_img if s_img else float("inf")
        print(f"  {path:<16} {supply:10.0f} img/s per GPU  ({supply / demand:.2f} of the demand)")
    rows = []
    for path, s_img in inputs.items():
        for name, m in settings.items():
            print(f"\n{name}, input {path}: efficiency by GPUs (rows) and per-GPU batch (columns)")
            print(f"{'GPUs':>5} " + " ".join(f"{f'b={b}':>8}" for b in BATCHES))
            for n in GPUS:
                cells = [efficiency(m, n, b, flops, n_critic, args.mfu, args.overlap, s_img)
                         for b in BATCHES]
                rows += [{"setting": name, "input": path, **c} for c in cells]
                print(f"{n:>5} " + " ".join(f"{c['efficiency']:>8.2f}" for c in cells))
    ok = [r for r in rows if r["gpus"] == 64 and r["efficiency"] >= TARGET]
    print(f"\n64 GPUs at >= {TARGET}:")
    for r in sorted(ok, key=lambda r: (r["global_batch"], r["setting"])):
        print(f"  {r['setting']:<9} input {r['input']:<16} per-GPU batch {r['per_gpu_batch']:>3}: "
              f"efficiency {r['efficiency']:.2f}, global batch {r['global_batch']}")
    if not ok:
        print("  none of the measured settings and batches")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "scaling_model.json").write_text(json.dumps({
        "config": args.config, "params_G": pg, "params_D": pd,
        "flops_critic_step_per_image": flops[0], "flops_gen_step_per_image": flops[1],
        "mfu": args.mfu, "overlap": args.overlap, "measured": settings, "rows": rows,
        "cores_per_gpu": args.cores_per_gpu, "input_s_per_image": inputs, "gpu_demand": demand,
        "meets_target_at_64": ok}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
