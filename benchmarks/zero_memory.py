"""Memory per GPU under DDP and DeepSpeed ZeRO-1/2, for this project's models: when ZeRO pays.

    python benchmarks/zero_memory.py                  # default + celeba128 + resnet 128; ~1 min
    python benchmarks/zero_memory.py --gpus 8 64 --local-batch 16 64

Two parts, both from the real networks:

1. **Model states**, counted: the parameters P of G and D (``nets.build_models``), and the
   bytes each rank holds for them (ZeRO paper, Rajbhandari et al. 2020, section 3):
   DDP fp32 and DDP with autocast (bf16/fp16 compute, fp32 weights): weights 4P + gradients 4P
   + Adam 8P = 16P. ZeRO-1 fp32: 4P + 4P + 8P/N. ZeRO-2 fp32: 4P + 4P/N + 8P/N. ZeRO-2 with
   DeepSpeed bf16 (16-bit weights and gradients, fp32 master weights and Adam): 2P + 2P/N +
   12P/N. (ZeRO-2 also keeps reduce buckets of a fixed size, 50M elements in
   launch/deepspeed_zero2.json; not counted.)
2. **Activations**, measured: the bytes autograd saves for backward (``saved_tensors_hooks``,
   each storage counted once) in one critic phase -- reals, fakes and the penalty's
   interpolates, whose ``create_graph=True`` graph is saved too -- and in one generator phase,
   at the local batch per GPU, in fp32 (bf16 autocast roughly halves them).

Writes benchmarks/out/zero_memory.json and prints the table docs/deepspeed.md shows.
"""
from __future__ import annotations

import argparse

import torch

from _common import write_result

from wgan_dist.config import LossConfig, load_config
from wgan_dist.nets import build_models
from wgan_dist.objective import critic_phase, generator_phase

MODELS = {"default (28 px, width 32)": (None, []),
          "celeba128 (DCGAN 64)": ("celeba128", []),
          "celeba128, resnet": ("celeba128", ["model.arch=resnet"])}
MB = 2.0**20


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` builds its graph."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def activations(cfg, batch: int) -> tuple[int, int]:
    g, d = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
    res, ch = cfg.data.resolution, cfg.data.channels
    real, z = torch.randn(batch, ch, res, res), torch.randn(batch, cfg.model.latent_dim)
    with torch.no_grad():
        fake = g(z)
    critic = saved_bytes(lambda: critic_phase(d, real, fake, torch.rand(batch), LossConfig()))
    d.requires_grad_(False)
    gen = saved_bytes(lambda: generator_phase(d, g(z), LossConfig()))
    return critic, gen


def states(p: int, n: int) -> dict[str, float]:
    return {"ddp": 16.0 * p, "zero1": 8.0 * p + 8.0 * p / n, "zero2": 4.0 * p + 12.0 * p / n,
            "zero2_bf16": 2.0 * p + 14.0 * p / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--local-batch", type=int, nargs="+", default=[16, 64],
                    help="images per GPU (celeba128's batch 128 on 8 GPUs is 16)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows, out = [], {"models": {}}
    for name, (preset, extra) in MODELS.items():
        cfg = load_config(preset, extra)
        g, d = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
        p = sum(x.numel() for m in (g, d) for x in m.parameters())
        acts = {b: activations(cfg, b) for b in a.local_batch}
        out["models"][name] = {"params": p, "params_G": sum(x.numel() for x in g.parameters()),
                               "activations": {b: {"critic": c, "generator": gg}
                                               for b, (c, gg) in acts.items()},
                               "states": {n: states(p, n) for n in a.gpus}}
        for n in a.gpus:
            s = states(p, n)
            saving = s["ddp"] - s["zero2"]
            rows.append([name, f"{p / 1e6:.2f}M", n, *(f"{s[k] / MB:.0f}" for k in
                                                       ("ddp", "zero1", "zero2", "zero2_bf16")),
                         f"{saving / MB:.0f}",
                         *(f"{acts[b][0] / MB:.0f}" for b in a.local_batch)])
    head = (["model", "params G+D", "GPUs", "DDP MB", "ZeRO-1 MB", "ZeRO-2 MB",
             "ZeRO-2 bf16 MB", "ZeRO-2 saves MB"]
            + [f"critic activations, {b}/GPU, MB" for b in a.local_batch])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    print("\n".join(lines))
    out["table"] = lines
    write_result("zero_memory", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
