"""A data-parallel scaling model for a WGAN-GP preset: bytes all-reduced per step, all-reduce
time at stated link bandwidths, compute time at a stated utilisation, predicted efficiency.

    python benchmarks/scaling_model.py [--config celeba128] [--mfu 0.35] [--per-gpu-batch 16]

Counted here, not assumed: parameters of G and D (-> gradient bytes), and FLOPs per image of
each phase, measured with torch.utils.flop_counter on the real models (including the
penalty's double backward). Assumed, and printed: peak throughput, utilisation, bandwidths,
overlap. Writes benchmarks/out/scaling_model.json.

Model, per generator step (n_critic critic steps + 1 generator step), N GPUs, ring all-reduce:
    bytes_D = 4 * params_D, bytes_G = 4 * params_G          (fp32 gradients)
    t_ar(bytes, N) = 2 (N - 1) / N * bytes / bw  +  2 (N - 1) * latency
    t_comm = n_critic * t_ar(bytes_D) + t_ar(bytes_G)
    t_comp = images_per_gpu * (n_critic * F_critic_step + F_gen_step) / (peak * mfu)
    exposed = max(0, t_comm - overlap * t_comp)             (DDP overlaps buckets with backward)
    efficiency = t_comp / (t_comp + exposed)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgan_dist.config import LossConfig, load_config  # noqa: E402
from wgan_dist.nets import build_models, count_params  # noqa: E402
from wgan_dist.objective import critic_phase, generator_phase  # noqa: E402

# Stated hardware assumptions (per GPU / per link), not measurements.
H100_BF16_DENSE = 989e12      # FLOP/s, H100 SXM dense bf16 (NVIDIA datasheet)
NVLINK_BUS_BW = 350e9         # B/s, achievable NCCL all-reduce bus bandwidth inside an 8x H100 node
IB_BUS_BW = 45e9              # B/s per GPU across nodes: one 400 Gb/s NDR NIC per GPU, ~90 % achieved
LATENCY_NVLINK = 5e-6         # s per ring step
LATENCY_IB = 10e-6


class FlopCount(TorchDispatchMode):
    """Counts FLOPs at the dispatcher with torch's own per-op formulas. (FlopCounterMode's
    module hooks break autograd.grad, which the penalty needs.)"""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out

    def get_total_flops(self) -> int:
        return self.flops


def flops_per_image(cfg) -> tuple[float, float]:
    """FLOPs of one critic step and one generator step, per image, on the real models."""
    g, d = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
    b = 4
    real = torch.randn(b, cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    z = torch.randn(b, cfg.model.latent_dim)
    with FlopCount() as fc:
        with torch.no_grad():
            fake = g(z)
        loss, _ = critic_phase(d, real, fake, torch.rand(b), LossConfig())
        loss.backward()
    critic = fc.get_total_flops() / b
    d.requires_grad_(False)
    with FlopCount() as fc:
        loss, _ = generator_phase(d, g(z), LossConfig())
        loss.backward()
    return critic, fc.get_total_flops() / b


def allreduce_time(nbytes: float, n: int, per_node: int = 8) -> float:
    if n <= 1:
        return 0.0
    # Inside a node NVLink; across nodes the ring is limited by the slowest link (IB).
    bw, lat = (NVLINK_BUS_BW, LATENCY_NVLINK) if n <= per_node else (IB_BUS_BW, LATENCY_IB)
    return 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * lat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="celeba128")
    p.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOPs utilisation")
    p.add_argument("--per-gpu-batch", type=int, default=16, help="batch per GPU (weak scaling)")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="share of compute time that can hide communication (backward share)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    g, d = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
    pg, pd = count_params(g), count_params(d)
    f_critic, f_gen = flops_per_image(cfg)
    n_critic = cfg.optim.n_critic
    bytes_d, bytes_g = 4 * pd, 4 * pg
    print(f"{args.config}: {cfg.data.resolution}px x {cfg.data.channels}ch, G {pg / 1e6:.2f}M params "
          f"({bytes_g / 1e6:.1f} MB fp32 grads), D {pd / 1e6:.2f}M ({bytes_d / 1e6:.1f} MB)")
    print(f"bytes all-reduced per G step: {n_critic} x {bytes_d / 1e6:.1f} + {bytes_g / 1e6:.1f} = "
          f"{(n_critic * bytes_d + bytes_g) / 1e6:.1f} MB")
    print(f"FLOPs per image: critic step {f_critic / 1e9:.2f} GFLOP (incl. penalty double backward), "
          f"generator step {f_gen / 1e9:.2f} GFLOP")
    print(f"assumed: peak {H100_BF16_DENSE / 1e12:.0f} TFLOP/s x MFU {args.mfu}, NVLink bus "
          f"{NVLINK_BUS_BW / 1e9:.0f} GB/s, IB {IB_BUS_BW / 1e9:.0f} GB/s per GPU, overlap {args.overlap}, "
          f"per-GPU batch {args.per_gpu_batch}")
    rows = []
    print(f"{'GPUs':>5} {'global batch':>12} {'t_comp ms':>10} {'t_comm ms':>10} {'exposed ms':>11} {'efficiency':>10}")
    for n in (1, 8, 64, 256):
        t_comp = args.per_gpu_batch * (n_critic * f_critic + f_gen) / (H100_BF16_DENSE * args.mfu)
        t_comm = n_critic * allreduce_time(bytes_d, n) + allreduce_time(bytes_g, n)
        exposed = max(0.0, t_comm - args.overlap * t_comp)
        eff = t_comp / (t_comp + exposed)
        rows.append({"gpus": n, "global_batch": n * args.per_gpu_batch, "t_comp_s": t_comp,
                     "t_comm_s": t_comm, "exposed_s": exposed, "efficiency": eff})
        print(f"{n:>5} {n * args.per_gpu_batch:>12} {t_comp * 1e3:>10.2f} {t_comm * 1e3:>10.2f} "
              f"{exposed * 1e3:>11.2f} {eff:>10.2f}")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "scaling_model.json").write_text(json.dumps({
        "config": args.config, "params_G": pg, "params_D": pd, "flops_critic_step_per_image": f_critic,
        "flops_gen_step_per_image": f_gen, "mfu": args.mfu, "overlap": args.overlap,
        "per_gpu_batch": args.per_gpu_batch, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
