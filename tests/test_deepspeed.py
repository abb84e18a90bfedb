"""DeepSpeed ZeRO-1/2 (``train.backend=deepspeed``, training/backends/deepspeed.py), proven against DDP on
real gloo processes.

1. 2 ranks x B/2 under ZeRO-1 and under ZeRO-2 == 2 ranks x B/2 under DDP == 1 rank x B: the
   same samples and noise, 3 iterations of (n_critic critic steps + 1 generator step) through
   the real Trainer (``_ddp_worker.py equivalence``). Compared: the parameters after every
   iteration and Adam's moments at the end, gathered from the ZeRO partitions. Adam is nearly
   invariant to the scale of its gradient, so parameters alone would not see a gradient that
   is summed instead of averaged, or rescaled (DeepSpeed's *default* gradient_clipping of 1.0
   did exactly that: every critic gradient at norm 1, parameters still within 2.3e-5 after
   one step); with beta1 = 0 ``exp_avg`` is the last gradient itself, and it catches both.
2. A non-finite loss or gradient on one rank skips the ZeRO-2 step on every rank.
3. ``accelerate launch --config_file launch/accelerate_deepspeed_cpu2.yaml -m wgan_dist.train``:
   2 processes, ZeRO-2 in its start-up lines, and 2 steps + ``--resume`` to 4 equal 4 steps
   bitwise; the checkpoint reads with weights_only=True and ``generate`` uses it; the same
   checkpoint continues under DDP (and says so).
4. What is refused (ZeRO-3, offload, clipping, accumulation) is refused in one line.

Tolerances, measured on a 2-core x86 CPU (deepspeed 0.19.8, torch 2.14.1): ZeRO-1 and ZeRO-2 vs
2-process DDP: parameters within 1.2e-10 (most bitwise), Adam moments within 4.4e-8 relative
(the ZeRO reduction sums the two halves in another order, and ZeRO-2 reduce-scatters);
bounds 1e-8 and 1e-6. Against 1 process x B, ZeRO gives what DDP gives (1.2e-7 parameters,
1.35e-6 moments): bounds as tests/test_ddp.py's (rtol 1e-5 + atol 1e-5) and 1e-5.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _distributed import (REPO, assert_overflow_skipped_everywhere, clean_env,  # noqa: E402,F401
                          finish, free_port, load_ranks, shard_set, start, tiny, worker_cmd)

from wgan_dist.config import ConfigError, load_config  # noqa: E402
from wgan_dist.training import checkpoint as ckpt  # noqa: E402
from wgan_dist.training.backends import deepspeed as zero  # noqa: E402

ITERS = 3
ZERO = {1: {"train.backend": "deepspeed", "train.zero_stage": 1},
        2: {"train.backend": "deepspeed", "train.zero_stage": 2}}
VS_DDP = dict(param_atol=1e-8, moment_rtol=1e-6)
VS_ONE = dict(rtol=1e-5, atol=1e-5)
MOMENT_RTOL_ONE = 1e-5


@pytest.fixture(scope="module")
def runs(shard_set, tmp_path_factory) -> dict[str, list[dict]]:
    """1 process DDP, 2 processes DDP / ZeRO-1 / ZeRO-2, and ZeRO-2 overflows: one at a time
    (2 cores; each launch is 10-20 s)."""
    root = tmp_path_factory.mktemp("zero")
    plan = {"one": ("equivalence", 1, {}), "ddp": ("equivalence", 2, {}),
            "zero1": ("equivalence", 2, ZERO[1]), "zero2": ("equivalence", 2, ZERO[2]),
            "overflow": ("overflow", 2, ZERO[2])}
    out = {}
    for name, (scenario, world, extra) in plan.items():
        finish(start(worker_cmd(scenario, root / name, world, tiny(shard_set, root / f"run-{name}",
                                                                    **extra))))
        out[name] = load_ranks(root / name, world)
    return out


def moments_rel(a: dict, ref: dict) -> float:
    worst = 0.0
    for part in ("G", "D"):
        assert sorted(a[part]) == sorted(ref[part]) and ref[part]
        for i, st in ref[part].items():
            for key in ("exp_avg", "exp_avg_sq"):
                denom = st[key].abs().max().clamp_min(1e-30)
                worst = max(worst, ((a[part][i][key] - st[key]).abs().max() / denom).item())
    return worst


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_equals_ddp_and_one_process(runs, stage):
    zr, ddp, (one,) = runs[f"zero{stage}"], runs["ddp"], runs["one"]
    assert [(r["backend"], r["zero_stage"]) for r in zr] == [("deepspeed", stage)] * 2
    assert [(r["backend"], r["world"]) for r in ddp] == [("ddp", 2)] * 2
    a, b = zr
    assert len(a["params"]) == ITERS + 1
    for it in range(ITERS + 1):
        for part in ("G", "D"):
            assert torch.equal(a["params"][it][part], b["params"][it][part]), \
                f"ZeRO-{stage}: the ranks hold different {part} after iteration {it}"
    worst = 0.0
    for it in range(1, ITERS + 1):
        for part in ("G", "D"):
            p, ref = a["params"][it][part], ddp[0]["params"][it][part]
            worst = max(worst, (p - ref).abs().max().item())
            torch.testing.assert_close(p, one["params"][it][part], **VS_ONE,
                                       msg=lambda m: f"ZeRO-{stage} vs 1 process, iter {it} {part}: {m}")
            # it trained: far more movement than any tolerance here
            assert (p - a["params"][0][part]).abs().max() > 50 * VS_ONE["atol"]
    assert worst <= VS_DDP["param_atol"], f"ZeRO-{stage} vs DDP parameters: {worst:.2e}"
    rel_ddp, rel_one = moments_rel(a["opt"], ddp[0]["opt"]), moments_rel(a["opt"], one["opt"])
    print(f"ZeRO-{stage}: parameters vs DDP {worst:.2e}; Adam moments vs DDP {rel_ddp:.2e}, "
          f"vs 1 process {rel_one:.2e}")
    assert rel_ddp <= VS_DDP["moment_rtol"] and rel_one <= MOMENT_RTOL_ONE
    assert moments_rel(b["opt"], a["opt"]) == 0.0  # gathered the same on both ranks


def test_overflow_on_one_rank_is_skipped_on_every_rank_under_zero2(runs):
    assert_overflow_skipped_everywhere(*runs["overflow"])


def _accelerate(shard_set: Path, run: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "launch" / "accelerate_deepspeed_cpu2.yaml"),
           "--main_process_port", str(free_port()), "-m", "wgan_dist.train",
           *tiny(shard_set, run, **{"train.steps": 4, "log.tick_every": 1, "log.ckpt_every": 2,
                                    "log.sample_every": 2, "model.g_norm": "batch"}), *extra]
    return finish(start(cmd, clean_env(HF_HOME=str(run.parent / "hf"))))


def _assert_same(a: dict, b: dict) -> None:
    for key in ("G", "D", "G_ema"):
        assert a[key].keys() == b[key].keys()
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs"
    for key in ("opt_G", "opt_D"):
        assert a[key]["state"].keys() == b[key]["state"].keys() and a[key]["state"]
        for i, st in a[key]["state"].items():
            for name, t in st.items():
                assert torch.equal(torch.as_tensor(t), torch.as_tensor(b[key]["state"][i][name])), \
                    f"{key}[{i}].{name} differs"
    assert (a["step"], a["nimg"]) == (b["step"], b["nimg"])


def test_accelerate_deepspeed_launch_trains_and_resumes_exactly(shard_set, tmp_path):
    full = _accelerate(shard_set, tmp_path / "full")
    assert "processes      2 on cpu" in full  # a real 2-process group
    assert "DeepSpeed ZeRO-2 (optimizer state and gradients partitioned over 2 process(es))" in full
    assert "note: an Accelerate DeepSpeed launch: train.backend ddp -> deepspeed" in full
    assert "done at step 4." in full
    _accelerate(shard_set, tmp_path / "split", "train.steps=2")
    resumed = _accelerate(shard_set, tmp_path / "split", "--resume")
    assert "resumed" in resumed.lower() and "done at step 4." in resumed
    a, b = ckpt.load_checkpoint(tmp_path / "full"), ckpt.load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 4 and a["world_size"] == 2
    _assert_same(a, b)
    # one file, read with weights_only=True: fp32 weights of the whole model, not a partition
    path = ckpt.latest_checkpoint(tmp_path / "full")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["config"]["train"]["backend"] == "deepspeed"
    assert all(t.dtype == torch.float32 for t in raw["G"].values() if t.is_floating_point())
    r = subprocess.run([sys.executable, "-m", "wgan_dist.generate", "--checkpoint",
                        str(tmp_path / "full"), "--num", "8", "--out", str(tmp_path / "gen")],
                       cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list((tmp_path / "gen").glob("*.png"))) >= 8

    # the same run goes on under DDP: the checkpoint is torch Adam's layout under both
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "wgan_dist.train", "--run-dir", str(tmp_path / "split"), "--resume",
           "train.backend=ddp", "train.steps=5"]
    out = finish(start(cmd, clean_env()))
    assert "backend deepspeed ZeRO-2 -> ddp" in out and "done at step 5." in out
    assert "DeepSpeed" not in out.split("processes", 1)[1].splitlines()[0]


def test_bf16_from_the_deepspeed_config_trains_and_resumes(shard_set, tmp_path):
    """bf16 as DeepSpeed does it: 16-bit weights and gradients, fp32 master weights and Adam
    (the checkpoint's), losses and the penalty's norm in fp32 (outputs are cast back)."""
    ds = tmp_path / "bf16.json"
    ds.write_text('{"zero_optimization": {"stage": 2}, "bf16": {"enabled": true}}')

    def launch(*extra: str) -> str:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "wgan_dist.train", *tiny(shard_set, tmp_path / "run", **{
                   "train.backend": "deepspeed", "train.deepspeed_config": str(ds),
                   "model.g_norm": "batch", "train.steps": 3, "log.tick_every": 1}), *extra]
        return finish(start(cmd, clean_env()))

    out = launch()
    assert "mixed precision bf16, DeepSpeed ZeRO-2" in out and "done at step 3." in out
    state = ckpt.load_checkpoint(tmp_path / "run")
    for key in ("G", "D", "G_ema"):
        floats = [t for t in state[key].values() if t.is_floating_point()]
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats)
    out = launch("--resume", "train.steps=4")
    assert "resumed from" in out and "done at step 4." in out
    text = (tmp_path / "run" / "log.txt").read_text()
    assert "nan" not in text.lower() and text.count("\nstep ") >= 4


def test_deepspeed_launcher_runs_the_trainer(shard_set, tmp_path):
    """`deepspeed --module` (through launch/deepspeed.sh): it passes --local_rank=N, which the
    CLI accepts (LOCAL_RANK in the environment is what counts)."""
    run = tmp_path / "run"
    cmd = ["bash", "launch/deepspeed.sh", *tiny(shard_set, run, **{"train.steps": 2})]
    out = finish(start(cmd, clean_env(NPROC="2", PYTHON=sys.executable, MASTER_PORT=str(free_port()))))
    assert "--local_rank=1" in out and "DeepSpeed ZeRO-2 (" in out and "done at step 2." in out
    assert ckpt.load_checkpoint(run)["world_size"] == 2


def test_the_8gpu_accelerate_config_is_the_cpu_one_on_8_processes():
    import yaml

    cpu, gpu = (yaml.safe_load((REPO / "launch" / f"accelerate_deepspeed_{n}.yaml").read_text())
                for n in ("cpu2", "8gpu"))
    assert (cpu.pop("num_processes"), gpu.pop("num_processes")) == (2, 8)
    assert cpu == gpu and gpu["distributed_type"] == "DEEPSPEED"
    ds = json.loads((REPO / gpu["deepspeed_config"]["deepspeed_config_file"]).read_text())
    assert ds["zero_optimization"]["stage"] == 2


def _resolve(shard_set: Path, tmp_path: Path, launcher=None, **extra):
    cfg = load_config(None, tiny(shard_set, tmp_path / "run", **extra))
    return cfg, zero.resolve(cfg, launcher)


def test_zero_stage_and_precision_settle_before_anything_is_built(shard_set, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 1}, "bf16": {"enabled": true}}')
    cfg, notes = _resolve(shard_set, tmp_path, **{"train.backend": "deepspeed",
                                                  "train.deepspeed_config": str(ds)})
    assert (cfg.train.zero_stage, cfg.train.mixed_precision, notes) == (1, "bf16", [])
    conf = zero.engine_config(cfg, 2)
    assert conf["train_micro_batch_size_per_gpu"] == 4 and conf["gradient_clipping"] == 0.0
    # an Accelerate DeepSpeed launch routes the run and its stage wins, with a note
    cfg, notes = _resolve(shard_set, tmp_path, {"zero_stage": "2", "config_file": str(ds)})
    assert (cfg.train.backend, cfg.train.zero_stage) == ("deepspeed", 2)
    assert any("ZeRO stage 2 from the Accelerate config (not 1 from" in n for n in notes)
    cfg, _ = _resolve(shard_set, tmp_path, **{"train.backend": "ddp"})
    assert cfg.train.backend == "ddp"


@pytest.mark.parametrize("extra,text,match", [
    ({"train.zero_stage": 3}, None, r"train\.zero_stage=3: ZeRO-3 partitions the parameters"),
    ({"train.micro_batch": 2}, None, r"train\.micro_batch=2 is not supported with train\.backend"),
    ({"train.grad_comm": "bf16"}, None, r"train\.grad_comm='bf16' is not supported"),
    ({}, '{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}',
     r"offload_optimizer: DeepSpeed CPU/NVMe offload is not supported"),
    ({}, '{"gradient_clipping": 1.0}', r"gradient_clipping: the DDP path does not clip"),
    ({}, '{"optimizer": {"type": "Adam"}}', r"remove the 'optimizer' section"),
    ({}, '{"train_batch_size": 64}', r"train_batch_size=64 but this run has 8"),
    ({}, '[1, 2]', r"a DeepSpeed config must be a mapping"),
    ({}, '{"fp16": {"enabled": true}}', r"fp16 under train\.backend=deepspeed needs a GPU"),
])
def test_what_is_refused_is_refused_in_one_line(shard_set, tmp_path, extra, text, match):
    if text is not None:
        (tmp_path / "ds.json").write_text(text)
        extra = {**extra, "train.deepspeed_config": str(tmp_path / "ds.json")}
    with pytest.raises(ConfigError, match=match) as e:
        cfg, _ = _resolve(shard_set, tmp_path, **{"train.backend": "deepspeed", **extra})
        zero.engine_config(cfg, 1)
    assert "\n" not in str(e.value)


def test_cli_refuses_zero3_with_exit_2_and_leaves_nothing(shard_set, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "wgan_dist.train",
                        *tiny(shard_set, run, **{"train.backend": "deepspeed",
                                                 "train.zero_stage": 3})],
                       cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ZeRO-3" in lines[0] and "Traceback" not in r.stderr
    assert not run.exists()
