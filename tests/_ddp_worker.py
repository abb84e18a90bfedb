"""One process of the distributed tests, run under ``torchrun`` (or plain python for 1 process).

    torchrun --standalone --nproc_per_node=2 tests/_ddp_worker.py SCENARIO OUT WORLD [overrides]

It builds the real ``Trainer`` from dotted overrides, drives its ``critic_step`` /
``generator_step`` with tensors it is given, and writes what the test needs to compare into
``OUT/rank<r>.pt``. The comparisons happen in the test, across processes and across runs.

Scenarios:
  equivalence  ITERS iterations (n_critic critic steps + 1 generator step) on a *global* batch
               built from a fixed seed; each rank takes its slice. Records the gradient each
               optimizer step used and the parameters after every iteration; also the fakes of
               the trainer's own per-rank noise.
  overflow     after the above: a non-finite loss, then a non-finite gradient, on the last rank
               only, for a critic and a generator step, each followed by a normal step.
  fp16         the trainer's fp16 path on CPU (see ``install_cpu_fp16``): steps until the
               scale fits, a gradient overflow on the last rank, a normal step, a loss overflow
               on the last rank, a normal step, a generator step.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wgan_dist import ranks as dist  # noqa: E402
from wgan_dist.config import load_config  # noqa: E402

ITERS = 3


def install_cpu_fp16() -> None:
    """Give the trainer's Accelerator the fp16 machinery Accelerate only builds off-CPU.

    Accelerate 1.15 with ``mixed_precision="fp16"`` on a CPU device sets ``native_amp=False``
    and ``scaler=None``: no autocast, no GradScaler, a silent fp32 run. Here we install what it
    would install on CUDA -- fp16 autocast (through ``native_amp``, which makes ``prepare`` wrap
    the forwards and ``autocast()`` return ``torch.autocast(dtype=float16)``) and a GradScaler,
    ``torch.amp.GradScaler("cpu")`` instead of ``("cuda")`` -- before the models are prepared.
    Everything after that (prepare, the AcceleratedOptimizer's scaler.step/update, backward
    through scaler.scale, our scaled-output penalty) is the code that runs on a GPU.
    """
    original = dist.make_accelerator

    def make_accelerator(mixed_precision: str = "no", *args, **kwargs):
        acc = original(mixed_precision, *args, **kwargs)
        assert acc.state.mixed_precision == "fp16" and acc.scaler is None and not acc.native_amp
        acc.native_amp = True
        acc.scaler = torch.amp.GradScaler("cpu")
        return acc

    dist.make_accelerator = make_accelerator


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().reshape(-1) for t in tensors])


def flat_grad(module: torch.nn.Module) -> torch.Tensor:
    return flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters())


def record_grads(opt, module: torch.nn.Module, log: list) -> None:
    """Log the gradient every step used: ``_apply`` always zeroes after (maybe) stepping."""
    original = opt.zero_grad

    def zero_grad(*args, **kwargs):
        log.append(flat_grad(module))
        return original(*args, **kwargs)

    opt.zero_grad = zero_grad


def global_batch(seed: int, batch: int, latent: int, n_critic: int, iters: int) -> list[dict]:
    """The same samples and noise for every world size: one dict per iteration."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(iters):
        out.append({
            "real": [torch.rand(batch, 1, 28, 28, generator=g) * 2 - 1 for _ in range(n_critic)],
            "z_d": [torch.randn(batch, latent, generator=g) for _ in range(n_critic)],
            "alpha": [torch.rand(batch, generator=g) for _ in range(n_critic)],
            "z_g": torch.randn(batch, latent, generator=g),
        })
    return out


def poison_grad_on(module: torch.nn.Module, active: bool):
    """A hook that turns one parameter's local gradient into inf on this rank (before DDP's
    all-reduce sees it), or None."""
    if not active:
        return None
    p = next(module.parameters())
    return p.register_hook(lambda grad: torch.full_like(grad, float("inf")))


def main() -> int:
    scenario, out_dir, expect = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    cfg = load_config(None, sys.argv[4:])
    if scenario == "fp16":
        install_cpu_fp16()
    from wgan_dist.training.trainer import Trainer

    t = Trainer(cfg)
    # The Accelerate CPU trap would give 1 here in every process: check the real group.
    assert t.world == expect, f"expected a group of {expect}, Accelerate formed {t.world}"
    assert not torch.distributed.is_initialized() or torch.distributed.get_world_size() == expect
    rank, world, b = t.rank, t.world, t.batch
    mine = slice(rank * b, (rank + 1) * b)
    n_critic, latent = cfg.optim.n_critic, cfg.model.latent_dim
    last = rank == world - 1
    rec: dict = {"rank": rank, "world": world, "grads_D": [], "grads_G": [], "params": [],
                 "backend": cfg.train.backend, "zero_stage": cfg.train.zero_stage}
    if cfg.train.backend == "ddp":  # a ZeRO engine's gradients are partitions, not .grad
        record_grads(t.D.opt, t.D.raw, rec["grads_D"])
        record_grads(t.G.opt, t.G.raw, rec["grads_G"])

    def params() -> dict:
        return {"G": flat(t.G.raw.parameters()), "D": flat(t.D.raw.parameters())}

    rec["params"].append(params())
    if scenario in ("equivalence", "overflow"):
        for it in global_batch(1234, cfg.train.batch_size, latent, n_critic, ITERS):
            for i in range(n_critic):
                t.critic_step(it["real"][i][mine], it["z_d"][i][mine], it["alpha"][i][mine])
            t.generator_step(it["z_g"][mine])
            rec["params"].append(params())
        # The trainer's own noise: a function of (seed, purpose, rank, step, phase).
        z = t.draws.noise("z_d", b, latent, step=0, phase=0)
        with torch.no_grad():
            rec["own_fake"] = t.G.raw(z).detach()

    if scenario in ("overflow", "fp16"):
        g = torch.Generator().manual_seed(99 + rank)  # different data on every rank
        real = lambda: torch.rand(b, 1, 28, 28, generator=g) * 2 - 1  # noqa: E731
        z = lambda: torch.randn(b, latent, generator=g)  # noqa: E731
        alpha = lambda: torch.rand(b, generator=g)  # noqa: E731
        events = []

        def critic(kind: str) -> None:
            x = real()
            if kind == "loss" and last:
                x[0] = float("inf")  # one sample on one rank: a non-finite loss there only
            hook = poison_grad_on(t.D.raw, kind == "grad" and last)
            before = params()
            scale = t.acc.scaler.get_scale() if t.acc.scaler is not None else None
            stats = t.critic_step(x, z(), alpha())
            if hook is not None:
                hook.remove()
            events.append({"phase": "critic", "kind": kind, "before": before, "after": params(),
                           "skipped": float(stats["skipped_steps"]), "scale": scale,
                           "loss": float(stats["critic_loss"])})

        def generator(kind: str) -> None:
            hook = poison_grad_on(t.G.raw, kind == "grad" and last)
            before = params()
            stats = t.generator_step(z())
            if hook is not None:
                hook.remove()
            events.append({"phase": "generator", "kind": kind, "before": before, "after": params(),
                           "skipped": float(stats["skipped_steps"]), "scale": None,
                           "loss": float(stats["generator_loss"])})

        if scenario == "fp16":
            rec["fp16"] = {"autocast_dtype": None, "scaler": type(t.acc.scaler).__name__}
            with t.acc.autocast():
                rec["fp16"]["autocast_dtype"] = str((torch.ones(2, 2) @ torch.ones(2, 2)).dtype)
            # The initial scale (2^16) overflows the scaled penalty gradient of a fresh critic:
            # the first steps back the scale off until one fits (the same on every rank).
            for _ in range(8):
                critic("warmup")
                if events[-1]["skipped"] == 0.0:
                    break
            for kind in ("grad", "ok", "loss", "ok"):
                critic(kind)
            generator("ok")
        else:
            for kind in ("loss", "ok", "grad", "ok"):
                critic(kind)
            for kind in ("grad", "ok"):
                generator(kind)
        rec["events"] = events

    # Adam's moments, whole (gathered from the partitions under ZeRO; a collective): with
    # beta1 = 0 exp_avg is the last step's gradient, so a sum-for-mean slip shows here too.
    rec["opt"] = {part: {i: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                         for i, s in net.opt.state_dict()["state"].items()}
                  for part, net in (("G", t.G), ("D", t.D))}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(rec, out_dir / f"rank{rank}.pt")
    t.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
