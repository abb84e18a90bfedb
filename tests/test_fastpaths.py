"""The fast paths give the plain path's results: channels-last, fused Adam, torch.compile,
bf16 autocast, and the shard reader that replaces webdataset's tarfile reader.

Each trainer test runs the real ``Trainer.train()`` for 2 generator steps (2 critic steps
each) on the tiny models, from the same seed, data and noise, once on the plain path and
once with the option, and compares the last tick's statistics (losses, penalty, mean
gradient norm: relative difference) and the final G, D and EMA state (weights and BatchNorm
running statistics: max absolute difference). Measured on a 2-core x86 CPU, torch 2.14.1;
the bounds are about 10x the measurement:

    option                 statistics, rel         state, max |diff|      why they differ at all
    channels_last          2e-7  (bound 1e-5)      1.2e-7 (bound 1e-6)    NHWC kernels sum in another order
    fused_adam             1e-7  (bound 1e-5)      1.3e-7 (bound 1e-6)    one fused kernel vs foreach: rounding
    compile, aot_eager     0     (bound 1e-5)      0      (bound 1e-6)    the same ATen ops, traced
    compile, inductor      2e-7  (bound 1e-5)      2e-7   (bound 1e-6)    generated C++ kernels
    mixed_precision=bf16   6e-3  (bound 5e-2)      8.8e-4 (bound 5e-3)    bf16 has 8 mantissa bits

A weight moves by about lr = 1e-4 a step (Adam), so against 2 steps x 1e-4 the first four
rows are the same numbers. Under bf16 the largest difference is a BatchNorm running
variance (8.8e-4); weights differ by up to 4.7e-4: where a gradient is near zero its sign
can flip in bf16, and Adam then steps about lr the other way.

torch.compile here uses the ``aot_eager`` backend: the same Dynamo capture and AOTAutograd
(the part that refuses the penalty's double backward) without inductor's C++ code
generation, which takes ~40-60 s on this CPU. WGAN_DIST_TEST_INDUCTOR=1 runs inductor instead
(bench_trainer.py runs it too).
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from wgan_dist.compat import reset_accelerator_state

from conftest import tiny_overrides
from wgan_dist.data import format as shard_format
from wgan_dist.data import pipeline as data
from wgan_dist.training import networks as trainer_mod
from wgan_dist.config import load_config
from wgan_dist.training.trainer import Trainer

STEPS = 2
STAT_KEYS = ("wasserstein", "gradient_penalty", "critic_loss", "generator_loss", "grad_norm_mean")


def build(shards: Path, run_dir: Path, **extra) -> Trainer:
    reset_accelerator_state()
    overrides = tiny_overrides(shards, run_dir, **{
        "train.steps": STEPS, "log.tick_every": STEPS, "log.sample_every": 1000,
        "log.ckpt_every": 1000, "eval.num": 32, "eval.gp_visuals": False, **extra})
    return Trainer(load_config(None, overrides))


def run(shards: Path, run_dir: Path, **extra) -> dict:
    trainer = build(shards, run_dir, **extra)
    stats = trainer.train()
    out = {"stats": {k: stats[k] for k in STAT_KEYS},
           "G": {k: v.detach().clone() for k, v in trainer.G.raw.state_dict().items()},
           "D": {k: v.detach().clone() for k, v in trainer.D.raw.state_dict().items()},
           "G_ema": {k: v.detach().clone() for k, v in trainer.ema.model.state_dict().items()},
           "trainer": trainer}
    trainer.close()
    return out


@pytest.fixture(scope="module")
def plain(builtin_shards, tmp_path_factory) -> dict:
    return run(builtin_shards, tmp_path_factory.mktemp("plain"))


def compare(plain: dict, fast: dict, stat_rtol: float, weight_atol: float) -> None:
    for k in STAT_KEYS:
        a, b = plain["stats"][k], fast["stats"][k]
        assert abs(a - b) <= stat_rtol * max(abs(a), 1e-3), f"{k}: plain {a} vs fast {b}"
    for net in ("G", "D", "G_ema"):
        for name, t in plain[net].items():
            u = fast[net][name]
            if t.is_floating_point():
                diff = (t - u).abs().max().item()
                assert diff <= weight_atol, f"{net}.{name}: max |diff| {diff:.3g} > {weight_atol}"
            else:
                assert torch.equal(t, u), f"{net}.{name} differs"


def test_channels_last_matches_plain(builtin_shards, tmp_path, plain):
    fast = run(builtin_shards, tmp_path, **{"train.channels_last": True})
    conv = fast["trainer"].D.raw.trunk[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    compare(plain, fast, stat_rtol=1e-5, weight_atol=1e-6)


def test_fused_adam_matches_plain(builtin_shards, tmp_path, plain):
    fast = run(builtin_shards, tmp_path, **{"train.fused_adam": True})
    t = fast["trainer"]
    assert t.fused_adam and all(g["fused"] for g in t.D.opt.param_groups)  # CPU has it in 2.14
    compare(plain, fast, stat_rtol=1e-5, weight_atol=1e-6)


def test_fused_adam_falls_back_with_a_note(builtin_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer_mod, "fused_adam_available", lambda device: False)
    t = build(builtin_shards, tmp_path, **{"train.fused_adam": True})
    assert "train.fused_adam" in capsys.readouterr().out and not t.fused_adam
    assert not any(g["fused"] for g in t.D.opt.param_groups)
    t.close()


def test_fused_adam_skips_a_non_finite_step_on_the_device(builtin_shards, tmp_path):
    """The sync-free skip: the fused kernel leaves weights and Adam state alone."""
    t = build(builtin_shards, tmp_path, **{"train.fused_adam": True})
    b, latent = t.batch, t.cfg.model.latent_dim
    real = torch.zeros(b, 1, 28, 28)
    t.critic_step(real, torch.randn(b, latent), torch.rand(b))  # one good step: Adam state exists
    before = {k: v.clone() for k, v in t.D.raw.state_dict().items()}
    steps = [s["step"].clone() for s in t.D.opt.optimizer.state.values()]
    stats = t.critic_step(real.fill_(float("nan")), torch.randn(b, latent), torch.rand(b))
    assert stats["skipped_steps"].item() == 1.0
    for k, v in t.D.raw.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [s["step"] for s in t.D.opt.optimizer.state.values()] == steps
    t.close()


def test_resume_keeps_this_runs_adam_implementation(builtin_shards, tmp_path, plain):
    """A checkpoint of a foreach-Adam run resumed with train.fused_adam=true runs fused Adam
    (load_state_dict alone would copy the old flag back)."""
    path = plain["trainer"].save()
    reset_accelerator_state()
    overrides = tiny_overrides(builtin_shards, tmp_path, **{"train.fused_adam": True})
    t = Trainer(load_config(None, overrides), resume=str(path))
    assert all(g["fused"] for g in t.G.opt.param_groups + t.D.opt.param_groups)
    t.close()


def test_compile_matches_plain_with_the_penalty_eager(builtin_shards, tmp_path, plain, monkeypatch):
    backend = "inductor" if os.environ.get("WGAN_DIST_TEST_INDUCTOR") else "aot_eager"
    monkeypatch.setattr(trainer_mod, "compile_module", lambda m: torch.compile(m, backend=backend))
    torch._dynamo.reset()
    fast = run(builtin_shards, tmp_path, **{"train.compile": True})
    t = fast["trainer"]
    assert t.D.fwd is not t.D.eager and t.G.fwd is not t.G.eager  # compiled callables, eager modules
    assert not any(k.startswith("_orig_mod") for k in fast["G"])  # checkpoint keys unchanged
    compare(plain, fast, stat_rtol=1e-5, weight_atol=1e-6)


def test_compiled_critic_cannot_take_the_penalty():
    """Why the penalty's forward stays eager: if this starts passing, torch learned double
    backward through AOTAutograd and the whole critic can be compiled."""
    from wgan_dist.objective.losses import penalty_gradient_norms
    from wgan_dist.nets import Critic

    torch._dynamo.reset()
    critic = torch.compile(Critic(28, 1, 8), backend="aot_eager")
    with pytest.raises(RuntimeError, match="double backward"):
        penalty_gradient_norms(critic, torch.randn(4, 1, 28, 28)).sum().backward()


def test_bf16_close_to_fp32(builtin_shards, tmp_path, plain):
    fast = run(builtin_shards, tmp_path, **{"train.mixed_precision": "bf16"})
    compare(plain, fast, stat_rtol=5e-2, weight_atol=5e-3)


# --------------------------------------------------------------------------- shard reader
def _tar(path: Path, members: list[tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT) -> str:
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return str(path)


def _both(urls: list[str]) -> tuple[list[dict], list[dict]]:
    ours = list(data.ReadTar()(iter({"url": u} for u in urls)))
    theirs = list(wds.tarfile_to_samples()(iter({"url": u} for u in urls)))
    return ours, theirs


def test_read_tar_gives_webdatasets_samples(builtin_shards, tmp_path):
    """Same samples, same order, same bytes: on our shards and on names that exercise the
    key/extension rules (directories, upper-case extensions, meta entries, no extension)."""
    urls = sorted(str(p) for p in builtin_shards.glob("shard-*.tar"))
    ours, theirs = _both(urls)
    assert len(ours) == 320 and ours == theirs
    odd = _tar(tmp_path / "odd.tar", [
        ("a/b/0001.png", b"x"), ("a/b/0001.CLS", b"3"), ("__meta__", b"m"), ("noext", b"n"),
        ("0002.seg.png", b"y"), ("0002.txt", b"t"), ("__k__/0003.png", b"z"), ("0003.png", b"w"),
        ("p" * 120 + "/0004.png", b"long path: ustar prefix")])
    ours, theirs = _both([odd])
    assert ours == theirs and len(ours) == 4


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_read_tar_leaves_other_tars_to_webdataset(tmp_path, fmt):
    """Long names written as pax or GNU headers, and a gzip'd tar, go through webdataset."""
    name = "d" * 150 + "/0001.png"  # too long for ustar: an extended header
    url = _tar(tmp_path / "ext.tar", [(name, b"x"), ("0002.png", b"y")], fmt=fmt)
    assert shard_format.scan_plain_tar(url) is None
    ours, theirs = _both([url])
    assert ours == theirs and [s["__key__"] for s in ours] == [name[:-4], "0002"]
    gz = tmp_path / "c.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        info = tarfile.TarInfo("0001.png")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    ours, theirs = _both([str(gz)])
    assert ours == theirs and len(ours) == 1
