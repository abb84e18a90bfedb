"""Mixed precision on a CPU: penalty and gradients under bf16 and fp16 autocast against fp32,
and the trainer's fp16 path (scaled-output penalty, GradScaler, all-reduced skips) on 2 ranks.

What is and is not covered, because Accelerate 1.15 does not do fp16 on a CPU:
``Accelerator(cpu=True, mixed_precision="fp16")`` sets no autocast and no GradScaler (a silent
fp32 run; ``dist.make_accelerator`` now says so). So

* the numerics below use ``torch.autocast("cpu")`` and ``torch.amp.GradScaler("cpu")`` directly
  with our own ``objective.critic_phase`` / ``losses.penalty_gradient_norms``;
* the 2-rank test gives the trainer's Accelerator the fp16 autocast and a CPU GradScaler that
  Accelerate would build on CUDA (``_ddp_worker.install_cpu_fp16``), then runs the trainer's
  own critic/generator steps: prepare's autocast wrapping, ``accelerator.backward`` through
  ``scaler.scale``, the AcceleratedOptimizer's ``scaler.step``/``update``, our scaled-output
  penalty and the all-reduced skip are the real code.
* Not covered: Accelerate's choice of scaler on CUDA (``GradScaler("cuda")``, same class and
  logic), CUDA's fp16 kernels (their rounding differs from the CPU's), DeepSpeed/FSDP scalers.

Tolerances (also in docs/scaling.md, "What the CPU tests prove"), measured on a 2-core
x86 CPU with the tiny models below (critic grads: max|diff| / max|fp32|); bounds about 3x:

    quantity                   bf16 measured (bound)    fp16, scale 2^10 measured (bound)
    gradient penalty, rel      5.1e-3 (2e-2)            9.7e-4 (5e-3)
    per-sample grad norms      1.2e-2 (4e-2)            3.2e-3 (1e-2)
    critic gradients           7.0e-2 (0.2)             9.0e-3 (3e-2)
    1 - cosine(critic grads)   3.0e-4 (1e-3)            2.3e-5 (1e-4)
    generator gradients        7.6e-2 (0.2)             3.6e-2 (0.1)
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wgan_dist.objective import losses
from wgan_dist.config import LossConfig
from wgan_dist.nets import Critic, Generator
from wgan_dist.objective import critic_phase, generator_phase

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _distributed import clean_env, launch, load_ranks, shard_set, tiny  # noqa: E402,F401

BOUNDS = {  # quantity -> (bf16, fp16)
    "penalty": (2e-2, 5e-3),
    "norms": (4e-2, 1e-2),
    "grads": (0.2, 3e-2),
    "cosine": (0.999, 0.9999),
    "g_grads": (0.2, 0.1),
}


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).abs().max() / ref.abs().max()).item()


def _cos(x: torch.Tensor, ref: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(x, ref, dim=0).item()


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    g = Generator(28, 1, latent_dim=16, width=8)
    d = Critic(28, 1, width=8)
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(8, 1, 28, 28, generator=gen) * 2 - 1
    z = torch.randn(8, 16, generator=gen)
    alpha = torch.rand(8, generator=gen)
    return g, d, real, z, alpha


def critic_terms(d, real, fake, alpha, dtype, scaler=None):
    """Penalty, per-sample norms and critic gradients, the way the trainer computes them."""
    d.zero_grad(set_to_none=True)
    scale = scaler.get_scale() if scaler is not None else 1.0
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss, stats = critic_phase(d, real, fake, alpha, LossConfig(), scale)
        norms = losses.penalty_gradient_norms(d, losses.interpolate(real, fake, alpha), scale)
    if scaler is not None:
        opt = torch.optim.SGD(d.parameters(), lr=0.0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # the grads the optimizer would see
    else:
        loss.backward()
    grads = torch.cat([p.grad.flatten() for p in d.parameters()])
    return float(stats["gradient_penalty"]), norms.detach(), grads


def generator_grads(g, d, z, dtype, scaler=None):
    g.zero_grad(set_to_none=True)
    d.requires_grad_(False)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss, _ = generator_phase(d, g(z), LossConfig())
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(torch.optim.SGD(g.parameters(), lr=0.0))
    else:
        loss.backward()
    d.requires_grad_(True)
    return torch.cat([p.grad.flatten() for p in g.parameters()])


@pytest.mark.parametrize("name,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_penalty_and_gradients_close_to_fp32(nets, name, dtype):
    g, d, real, z, alpha = nets
    with torch.no_grad():
        fake = g(z)
    col = 0 if name == "bf16" else 1
    ref_gp, ref_norms, ref_grads = critic_terms(d, real, fake, alpha, None)
    # fp16 takes the AMP recipe: gradient of the *scaled* output, unscaled before the norm;
    # At 2^10 nothing overflows here (2^16 always does, see the next test).
    def scaler():
        return torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if name == "fp16" else None

    gp, norms, grads = critic_terms(d, real, fake, alpha, dtype, scaler())
    measured = {"penalty": abs(gp - ref_gp) / ref_gp, "norms": _rel(norms, ref_norms),
                "grads": _rel(grads, ref_grads), "cosine": _cos(grads, ref_grads)}
    g_ref, g_amp = generator_grads(g, d, z, None), generator_grads(g, d, z, dtype, scaler())
    measured["g_grads"] = _rel(g_amp, g_ref)
    print(name, {k: f"{v:.2e}" for k, v in measured.items() if k != "cosine"},
          f"1 - cosine {1 - measured['cosine']:.1e}")
    assert torch.isfinite(grads).all() and ref_gp > 0.1  # a penalty far from 0: a real test
    for key in ("penalty", "norms", "grads", "g_grads"):
        assert measured[key] <= BOUNDS[key][col], f"{name} {key}: {measured[key]:.2e}"
    assert measured["cosine"] >= BOUNDS["cosine"][col]


def test_fp16_initial_scale_overflows_the_penalty(nets):
    """Why the trainer must back the scale off on a non-finite *loss* under fp16: the penalty
    differentiates out.sum() * scale, so each sample's seed gradient is the scale itself, and
    GradScaler's default 2^16 is above fp16's largest number (65504). The first step's penalty
    is non-finite by construction; half the scale is not."""
    g, d, real, z, alpha = nets
    with torch.no_grad():
        fake = g(z)
    scaler = torch.amp.GradScaler("cpu")
    assert scaler.get_scale() == 2.0 ** 16 > torch.finfo(torch.float16).max
    gp, _, _ = critic_terms(d, real, fake, alpha, torch.float16, scaler)
    assert not torch.isfinite(torch.tensor(gp))
    scaler.update(2.0 ** 15)
    gp, _, _ = critic_terms(d, real, fake, alpha, torch.float16, scaler)
    assert torch.isfinite(torch.tensor(gp))


def test_accelerate_fp16_on_cpu_is_fp32(tmp_path):
    """Accelerate 1.15 turns fp16 on a CPU into fp32 without a word; make_accelerator says it."""
    code = ("from wgan_dist.ranks import make_accelerator\n"
            "import torch\n"
            "acc = make_accelerator('fp16')\n"
            "with acc.autocast():\n"
            "    y = torch.ones(2, 2) @ torch.ones(2, 2)\n"
            "print('RESULT', acc.scaler, acc.native_amp, y.dtype)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=clean_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert "RESULT None False torch.float32" in res.stdout
    assert "Accelerate enables fp16 only on GPUs" in res.stdout


def test_fp16_trainer_two_ranks_overflow_skipped_everywhere(shard_set, tmp_path):
    """The trainer's fp16 path on 2 gloo ranks: the scale backs off until the scaled penalty
    fits, an overflow on one rank skips the step on both (a gradient overflow through the
    GradScaler, a loss overflow through our all-reduced check, which also backs the scale off),
    and the next step trains."""
    out = tmp_path / "out"
    launch("fp16", out, 2, tiny(shard_set, tmp_path / "run", **{"train.mixed_precision": "fp16"}))
    a, b = load_ranks(out, 2)
    assert a["fp16"] == {"autocast_dtype": "torch.float16", "scaler": "GradScaler"}
    for ea, eb in zip(a["events"], b["events"]):
        part = "D" if ea["phase"] == "critic" else "G"
        # Every decision and the scale are the same on both ranks; so are the parameters.
        assert ea["skipped"] == eb["skipped"] and ea["scale"] == eb["scale"], ea["kind"]
        assert torch.equal(ea["after"][part], eb["after"][part]), ea["kind"]
        moved = not torch.equal(ea["after"][part], ea["before"][part])
        assert moved == (ea["skipped"] == 0.0), (ea["kind"], ea["skipped"])
        assert torch.isfinite(ea["after"][part]).all()
    ev = a["events"]
    warm = [e for e in ev if e["kind"] == "warmup"]
    assert warm[0]["scale"] == 2.0 ** 16 and warm[0]["skipped"] == 1.0  # 2^16 > fp16 max
    assert warm[-1]["skipped"] == 0.0  # the backoff found a scale that fits
    rest = ev[len(warm):]
    assert [(e["kind"], e["skipped"]) for e in rest] == [
        ("grad", 1.0), ("ok", 0.0), ("loss", 1.0), ("ok", 0.0), ("ok", 0.0)]
    # Each skip halved the scale (the GradScaler's own backoff, and ours for the loss).
    assert rest[1]["scale"] == rest[0]["scale"] / 2 and rest[3]["scale"] == rest[2]["scale"] / 2
    assert not torch.isfinite(torch.tensor(b["events"][len(warm) + 2]["loss"]))  # the last rank's
    assert torch.isfinite(torch.tensor(a["events"][len(warm) + 2]["loss"]))
