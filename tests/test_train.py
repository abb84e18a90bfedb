"""The trainer end to end on one process: resume exactness, signals, logs, generate, errors."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from wgan_dist.compat import reset_accelerator_state

from conftest import PY, REPO, tiny_overrides
from wgan_dist.training import checkpoint as ckpt
from wgan_dist.config import load_config
from wgan_dist.training.trainer import Trainer


def run_trainer(overrides: list[str], resume: str | None = None, overwrite: bool = False) -> Trainer:
    reset_accelerator_state()
    trainer = Trainer(load_config(None, overrides), resume=resume, overwrite=overwrite)
    trainer.train()
    trainer.close()
    return trainer


def assert_same_state(a: dict, b: dict) -> None:
    for key in ("G", "D", "G_ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs"
    for key in ("opt_G", "opt_D"):
        for idx, st in a[key]["state"].items():
            for name, t in st.items():
                assert torch.equal(torch.as_tensor(t), torch.as_tensor(b[key]["state"][idx][name])), \
                    f"{key}[{idx}].{name} differs"
    assert (a["step"], a["nimg"]) == (b["step"], b["nimg"])


@pytest.mark.parametrize("workers,n_critic", [(0, 2), (2, 3)])
def test_stop_and_resume_equals_uninterrupted(builtin_shards, tmp_path, workers, n_critic):
    extra = {"data.workers": workers, "optim.n_critic": n_critic, "log.ckpt_every": 100}
    full = run_trainer(tiny_overrides(builtin_shards, tmp_path / "full", **extra))
    # 3 steps, stop; then a new process (here: a new Trainer) resumes to 6.
    run_trainer(tiny_overrides(builtin_shards, tmp_path / "split", **extra, **{"train.steps": 3}))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "split")] == ["step-00000003.pt"]
    run_trainer(tiny_overrides(builtin_shards, tmp_path / "split", **extra), resume="latest")
    a = ckpt.load_checkpoint(tmp_path / "full")
    b = ckpt.load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    assert_same_state(a, b)


def test_run_dir_outputs_and_tensorboard_events(builtin_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    run_trainer(tiny_overrides(builtin_shards, run))
    assert (run / "config.yaml").is_file() and (run / "log.txt").is_file()
    assert sorted(p.name for p in (run / "samples").glob("step-*.png")) == [
        "step-00000003.png", "step-00000006.png"]
    assert (run / "samples" / "progress.gif").is_file()
    # rotation keeps log.keep_checkpoints=3; here two were written
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000003.pt", "step-00000006.pt"]
    acc = EventAccumulator(str(run / "logs"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("Loss/critic", "Loss/generator", "Loss/wasserstein", "Loss/gradient_penalty",
                "GP/grad_norm_mean", "LR/G", "LR/D", "Speed/images_per_sec", "Progress/kimg"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    assert [e.step for e in acc.Scalars("Progress/kimg")] == [2, 4, 6]
    assert acc.Scalars("Progress/kimg")[-1].value == pytest.approx(6 * 8 * 2 / 1000)
    assert acc.Scalars("LR/G")[0].value == pytest.approx(1e-4)
    assert "Samples/ema_fixed_noise" in acc.Tags()["images"]
    assert len(acc.Images("Samples/ema_fixed_noise")) == 2
    # what the user should see besides losses: diversity, the penalty's gradients, quality
    assert {"Diversity/ratio", "Diversity/pixel_ratio", "Metrics/swd_avg", "Metrics/div_ratio"} <= scalars
    assert "GP/grad_norms" in acc.Tags()["histograms"]
    assert "GP/grad_maps" in acc.Tags()["images"]
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [6] and rows[0]["swd_avg"] > 0


def test_collapse_alarm_trips_for_a_collapsed_generator(builtin_shards, tmp_path, capsys):
    # A generator whose output ignores z (last layer zeroed, never trained) must trip the alarm
    # within collapse_patience ticks; the healthy tiny run above does not.
    reset_accelerator_state()
    trainer = Trainer(load_config(None, tiny_overrides(builtin_shards, tmp_path / "c", **{
        "optim.lr_g": 0.0, "train.steps": 4, "log.tick_every": 1})))
    last = trainer.G.raw.blocks[-2]
    torch.nn.init.zeros_(last.weight)
    stats = trainer.train()
    trainer.close()
    assert stats["ratio"] < 0.05
    assert trainer.monitor.alarms and "mode collapse suspected" in trainer.monitor.alarms[0]
    assert "WARNING step 2: mode collapse suspected" in capsys.readouterr().out


def test_collapse_alarm_sees_a_conditional_generator_that_makes_one_image_per_class(
        builtin_shards, tmp_path, capsys):
    # Its output ignores z but not the label: its classes differ, so over a mixed batch it
    # looks diverse; within a class it is collapsed, and that is what the alarm measures.
    reset_accelerator_state()
    trainer = Trainer(load_config(None, tiny_overrides(builtin_shards, tmp_path / "c", **{
        "model.conditional": True, "optim.lr_g": 0.0, "train.steps": 4, "log.tick_every": 1})))
    with torch.no_grad():
        trainer.G.raw.fc.weight[:, :trainer.cfg.model.latent_dim] = 0.0
    stats = trainer.train()
    trainer.close()
    assert stats["ratio"] < 0.05
    assert trainer.monitor.alarms and "mode collapse suspected" in trainer.monitor.alarms[0]
    assert "WARNING step 2: mode collapse suspected" in capsys.readouterr().out


def test_no_alarm_for_a_healthy_run(builtin_shards, tmp_path):
    trainer = run_trainer(tiny_overrides(builtin_shards, tmp_path / "h", **{"log.tick_every": 1}))
    assert trainer.monitor.alarms == []


def test_checkpoint_is_whole_state_and_loads_weights_only(builtin_shards, tmp_path):
    run_trainer(tiny_overrides(builtin_shards, tmp_path / "r"))
    path = ckpt.latest_checkpoint(tmp_path / "r")
    state = torch.load(path, weights_only=True)
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "scaler", "step", "nimg", "rng_torch",
                "config", "class_names"):
        assert key in state
    assert state["step"] == 6 and state["nimg"] == 6 * 8 * 2
    assert len(state["class_names"]) >= 5
    assert state["opt_D"]["state"], "optimizer moments must be saved"


def test_refuses_to_overwrite_a_run_and_checks_shapes(builtin_shards, tmp_path):
    run = tmp_path / "r"
    run_trainer(tiny_overrides(builtin_shards, run, **{"train.steps": 2, "log.ckpt_every": 2}))
    reset_accelerator_state()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(load_config(None, tiny_overrides(builtin_shards, run)))
    reset_accelerator_state()
    with pytest.raises(ValueError, match="does not fit the configured model"):
        Trainer(load_config(None, tiny_overrides(builtin_shards, run, **{"model.g_width": 16})),
                resume="latest")


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "wgan_dist.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, **kw)


def test_cli_errors_are_clear(builtin_shards, tmp_path):
    r = _cli(["train.no_such=1"])
    assert r.returncode == 2 and "unknown setting 'train.no_such'" in r.stderr
    r = _cli(["-s", "48", "--dry-run"])
    assert r.returncode == 2 and "data.resolution=48 has no dcgan architecture" in r.stderr
    r = _cli([*tiny_overrides(builtin_shards, tmp_path / "x"), "data.channels=3"])
    assert r.returncode != 0 and "1 channel(s) but data.channels=3" in r.stderr


def test_seed_style_flags_and_dry_run():
    r = _cli(["-d", "images/", "-s", "128", "-l", "100", "-b", "128", "--channels", "3", "--dry-run"])
    assert r.returncode == 0, r.stderr
    import yaml

    cfg = yaml.safe_load(r.stdout)
    assert cfg["data"]["shards"] == "images/" and cfg["data"]["resolution"] == 128
    assert cfg["model"]["latent_dim"] == 100 and cfg["train"]["batch_size"] == 128
    # given data, the schema's defaults (the WGAN-GP paper's recipe), not configs/default.yaml
    assert not cfg["model"]["conditional"] and cfg["optim"]["n_critic"] == 5


def test_no_preset_and_no_data_runs_the_builtin_default_recipe():
    import yaml

    r = _cli(["--dry-run"])
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["name"] == "default" and cfg["data"]["shards"] == "builtin"
    assert (cfg["model"]["conditional"], cfg["model"]["cond"], cfg["optim"]["n_critic"],
            cfg["train"]["batch_size"], cfg["train"]["steps"]) == (True, "both", 2, 32, 2000)
    r = _cli(["data.shards=builtin", "--dry-run"])
    assert yaml.safe_load(r.stdout)["optim"]["n_critic"] == 5


def test_ctrl_c_saves_then_resume_finishes(builtin_shards, tmp_path):
    run = tmp_path / "r"
    args = tiny_overrides(builtin_shards, run, **{"train.steps": 100000, "log.ckpt_every": 100000,
                                                  "log.tick_every": 1})
    proc = subprocess.Popen([PY, "-m", "wgan_dist.train", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120

    def ticks() -> int:  # status lines (log.txt also holds the start-up header)
        log = run / "log.txt"
        return sum(x.startswith("step ") for x in log.read_text().splitlines()) if log.is_file() else 0

    while ticks() < 2:  # tick_every 1: step 2 is done
        assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out  # stopped by a signal, checkpoint saved (exits.STOPPED)
    assert "stop requested: saved" in out
    stopped = ckpt.load_checkpoint(run)
    assert 2 <= stopped["step"] < 100000
    target = stopped["step"] + 2
    r = _cli([*tiny_overrides(builtin_shards, run, **{"train.steps": target}), "--resume"])
    assert r.returncode == 0, r.stderr
    assert f"resumed from {stopped['path']} at step {stopped['step']}" in r.stdout
    assert ckpt.load_checkpoint(run)["step"] == target


def test_generate_from_checkpoint(builtin_shards, tmp_path):
    run = tmp_path / "r"
    run_trainer(tiny_overrides(builtin_shards, run))
    out = tmp_path / "gen"
    r = subprocess.run([PY, "-m", "wgan_dist.generate", "--checkpoint", str(run), "--num", "10",
                        "--out", str(out), "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    files = sorted(out.glob("0*.png"))
    assert len(files) == 10 and Image.open(files[0]).size == (28, 28)
    assert (out / "grid.png").is_file()
    r = subprocess.run([PY, "-m", "wgan_dist.generate", "--checkpoint", str(run), "--interpolate",
                        "3", "--steps", "5", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Image.open(out / "interpolation.png").size[0] > 5 * 28
    # same seed, same images
    from wgan_dist.training.samples import load_generator, sample

    g, meta = load_generator(run)
    assert meta["step"] == 6
    assert torch.equal(sample(g, 4, seed=1), sample(g, 4, seed=1))


def test_resume_flag_does_not_swallow_an_override():
    from wgan_dist.train import parse_args

    a = parse_args(["--resume", "train.steps=600", "log.tick_every=5"])
    assert a.resume == "latest" and a.overrides == ["train.steps=600", "log.tick_every=5"]
    assert parse_args(["--resume", "auto", "train.steps=6"]).resume == "auto"
    assert parse_args(["train.steps=6"]).resume is None
    # in its place: after the run's other overrides, the last one wins
    a = parse_args(["train.steps=3", "--resume", "train.steps=4"])
    assert a.resume == "latest" and a.overrides == ["train.steps=3", "train.steps=4"]
