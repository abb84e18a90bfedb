"""The training backend as a declared part (issue 21): one package decides everything about
DDP and DeepSpeed, a step reads loop -> objective -> backend, the config a run settles is
frozen and written as what ran, and a resume reads its checkpoint once."""
from __future__ import annotations

import ast
import builtins
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from wgan_dist.compat import reset_accelerator_state

from conftest import PY, REPO, tiny_overrides
from wgan_dist.config import load_config
from wgan_dist.training import backends
from wgan_dist.training.backends.base import Backend
from wgan_dist.training.trainer import Trainer

PKG = REPO / "wgan_dist"
BACKENDS = PKG / "training" / "backends"


def _trainer(shards: Path, run: Path, resume=None, **extra) -> Trainer:
    reset_accelerator_state()
    return Trainer(load_config(None, tiny_overrides(shards, run, **extra)), resume=resume)


def test_both_backends_implement_the_declared_interface():
    declared = {n for n, v in vars(Backend).items()
                if callable(v) and not n.startswith("_")} | set(Backend.__annotations__)
    assert {"build", "loss_scale", "micro_batches", "backward", "step", "describe",
            "state_dict", "load_state_dict", "acc", "fused_adam"} <= declared
    for cls in backends.BACKENDS.values():
        missing = [n for n in declared - set(Backend.__annotations__) if not hasattr(cls, n)]
        assert not missing, f"{cls.__name__} lacks {missing}"


def _code_names(path: Path) -> list[tuple[int, str]]:
    """Names, attributes, imports and string constants of a module's code, docstrings (and
    attribute docstrings) left out."""
    tree = ast.parse(path.read_text())
    docs = {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            out.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            out.append((node.lineno, node.attr))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out += [(node.lineno, a.name) for a in node.names]
            out.append((node.lineno, getattr(node, "module", None) or ""))
    return out


def test_no_module_outside_the_backends_names_deepspeed():
    """DeepSpeed lives in training/backends/; elsewhere only docstrings and the config schema's
    field declarations may name it (``train.deepspeed_config``)."""
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if BACKENDS in path.parents:
            continue
        for line, text in _code_names(path):
            if "deepspeed" in text.lower() and not (path.name == "schema.py" and text == "deepspeed_config"):
                found.append(f"{path.relative_to(REPO)}:{line} {text[:60]!r}")
    assert not found, "DeepSpeed named outside training/backends/:\n" + "\n".join(found)


def test_no_module_outside_the_backends_branches_on_the_backend():
    """``<cfg>.train.backend`` is read in training/backends/ only."""
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if BACKENDS in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("backend", "zero_stage")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "train"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, f"train.backend read outside training/backends/: {found}"


def test_stage_3_in_a_deepspeed_json_file_is_refused_in_one_line(builtin_shards, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    run = tmp_path / "run"
    r = subprocess.run([PY, "-m", "wgan_dist.train", *tiny_overrides(builtin_shards, run, **{
        "train.backend": "deepspeed", "train.deepspeed_config": str(ds)})],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{ds}: zero_optimization.stage=3: ZeRO-3 partitions the parameters" in lines[0]
    assert not run.exists()


def test_dry_run_shows_and_refuses_what_the_backend_settles(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 1}, "bf16": {"enabled": true}}')
    r = subprocess.run([PY, "-m", "wgan_dist.train", "--dry-run", "train.backend=deepspeed",
                        f"train.deepspeed_config={ds}"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    train = yaml.safe_load(r.stdout)["train"]
    assert (train["zero_stage"], train["mixed_precision"]) == (1, "bf16")
    r = subprocess.run([PY, "-m", "wgan_dist.train", "--dry-run", "train.backend=horovod"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (
        "config error: train.backend='horovod': choose ddp, deepspeed"), r.stderr


def test_the_run_config_is_frozen_and_config_yaml_is_what_ran(builtin_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    given = load_config(None, tiny_overrides(builtin_shards, tmp_path / "run", **{
        "model.conditional": True, "train.steps": 2}))
    assert (given.train.threads, given.model.num_classes) == (0, 0)  # left to the run
    reset_accelerator_state()
    t = Trainer(given)
    assert (given.train.threads, given.model.num_classes) == (0, 0)  # the caller's is untouched
    with pytest.raises(AttributeError, match="frozen"):
        t.cfg.train.steps = 10
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["train"]["threads"] == 1 and written["model"]["num_classes"] == 8
    t.train()
    t.close()
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000002.pt", weights_only=True)
    assert state["config"] == written and state["chosen_for_machine"] == ["train.threads"]


def test_threads_chosen_for_a_machine_are_chosen_again_on_resume(builtin_shards, tmp_path, monkeypatch):
    """A run requeued on another node takes that node's thread count, not the first node's;
    a count the user typed stays."""
    from wgan_dist.train import main

    run = tmp_path / "run"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    t = _trainer(builtin_shards, run, **{"train.steps": 2})
    t.train()
    t.close()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    reset_accelerator_state()
    assert main(["--run-dir", str(run), "--resume", "train.steps=3"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["threads"] == 2
    reset_accelerator_state()
    assert main(["--run-dir", str(run), "--resume", "train.steps=4", "train.threads=3"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["threads"] == 3
    torch.set_num_threads(1)


def test_a_resume_reads_its_checkpoint_once(builtin_shards, tmp_path, monkeypatch):
    """``python -m wgan_dist.train --resume``: the checkpoint file is opened once, whatever opens
    it (torch.load, zipfile's CRC check, pathlib)."""
    from wgan_dist.train import main

    run = tmp_path / "run"
    t = _trainer(builtin_shards, run, **{"train.steps": 2, "log.ckpt_every": 2})
    t.train()
    t.close()
    ckpt_file = run / "checkpoints" / "step-00000002.pt"
    opened: list[str] = []
    real_open, real_io_open = builtins.open, io.open

    def counting(opener):
        def open_(file, *args, **kwargs):
            if isinstance(file, (str, Path)) and Path(file).name == ckpt_file.name:
                opened.append(str(file))
            return opener(file, *args, **kwargs)
        return open_
    monkeypatch.setattr(builtins, "open", counting(real_open))
    monkeypatch.setattr(io, "open", counting(real_io_open))
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    reset_accelerator_state()
    assert main(["--run-dir", str(run), "--resume", "train.steps=3"]) == 0
    assert len(opened) == 1 and len(loads) == 1, (opened, loads)


def test_a_critic_step_stays_in_the_loop_the_backend_the_objective_and_the_nets(builtin_shards, tmp_path):
    """The package modules a critic step runs code in (draws and logging aside: the step is
    given its inputs and returns its statistics)."""
    t = _trainer(builtin_shards, tmp_path / "run")
    b, latent = t.batch, t.cfg.model.latent_dim
    real, z, alpha = torch.zeros(b, 1, 28, 28), torch.randn(b, latent), torch.rand(b)
    t.critic_step(real, z, alpha)  # warm: lazy imports and first-call paths
    seen: set[str] = set()

    def profile(frame, event, arg):
        if event == "call":
            seen.add(frame.f_globals.get("__name__", ""))
    sys.setprofile(profile)
    try:
        t.critic_step(real, z, alpha)
    finally:
        sys.setprofile(None)
    t.close()
    ours = {m for m in seen if m.startswith("wgan_dist")}
    rooms = {"wgan_dist.training.trainer", "wgan_dist.training.backends", "wgan_dist.objective",
             "wgan_dist.nets", "wgan_dist.compat"}
    outside = {m for m in ours if not any(m == r or m.startswith(r + ".") for r in rooms)}
    assert not outside, f"a critic step also runs code in {sorted(outside)}"
    assert "wgan_dist.training.networks" not in ours and "wgan_dist.ranks" not in ours


# ------------------------------------------------------------------------------ thread tuner
def _tune(step_time: dict[int, float], steps: int, **kw) -> tuple[list[int], "ThreadTuner"]:
    """Feed a ThreadTuner step times that depend only on the count in use; the counts used."""
    from wgan_dist.training.threads import ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner, used = ThreadTuner(2, True, **kw), []
        for _ in range(steps):
            used.append(tuner.current)
            tuner.observe(step_time[tuner.current])
        return used, tuner
    finally:
        torch.set_num_threads(before)


def test_thread_tuner_keeps_all_threads_on_a_quiet_machine():
    used, tuner = _tune({1: 0.2, 2: 0.1}, 40)
    assert used[:5] == [1] * 5 and used[5:10] == [2] * 5  # both measured over a full window
    assert set(used[10:]) == {2} and tuner.reference == 0.1


def test_thread_tuner_drops_one_thread_after_one_step_when_it_is_much_slower():
    # The first probe (one thread) has nothing to lose against; a later look at one thread
    # against all of them gives up after one step that is 1.5x slower.
    from wgan_dist.training.threads import ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(2, True, reprobe=20)
        used = []
        for _ in range(40):
            used.append(tuner.current)
            tuner.observe({1: 0.2, 2: 0.1}[tuner.current])
        assert used[:10] == [1] * 5 + [2] * 5 and used[10:30] == [2] * 20
        assert used[30] == 1 and set(used[31:]) == {2}  # the look at step 30 cost one step
    finally:
        torch.set_num_threads(before)


def test_thread_tuner_drops_all_threads_after_one_step_beside_a_busy_process():
    # Two threads ~2.5x slower than one (OpenMP waits for a descheduled thread): one step of
    # them is enough; a 30-step run spends 1 step, not a window, on the losing count.
    used, tuner = _tune({1: 0.2, 2: 0.5}, 30)
    assert used.count(2) == 1 and used[:5] == [1] * 5 and set(used[6:]) == {1}
    assert tuner.reference == 0.2


def test_thread_tuner_looks_again_when_steps_slow_down():
    from wgan_dist.training.threads import ThreadTuner

    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner(2, True, reprobe=10_000)
        for _ in range(10):
            tuner.observe({1: 0.2, 2: 0.1}[tuner.current])
        assert tuner.current == 2
        for _ in range(4):  # another process arrives: two threads now 0.5 s a step
            tuner.observe(0.5)
        assert tuner.current == 1 and tuner.queue == [1]  # trying one thread against them
        for _ in range(5):
            tuner.observe(0.2)
        assert tuner.current == 1 and tuner.queue == []
    finally:
        torch.set_num_threads(before)
