"""What a new user hit, one test each (the usability issue): every run resumes as itself,
runtime errors are one line and leave no empty run dir, the folder cache follows the folder's
contents, progress is never silent and log.txt holds the console, flags are consistent, the
toy reproduces bit for bit, installs use tested versions, and shard sets written by plain
webdataset train with their labels.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import PY, REPO, tiny_overrides


def cli(module: str, args: list[str], env: dict | None = None, timeout: int = 300):
    e = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    e.update(OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([PY, "-m", module, *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=timeout)


def train(args: list[str], **kw):
    return cli("wgan_dist.train", args, **kw)


# ------------------------------------------------------------------ 1. resume as itself
@pytest.mark.parametrize("kind,extra", [
    ("conditional", {"model.conditional": True, "model.cond": "both"}),
    ("resnet", {"model.arch": "resnet"}),
    ("diffaugment", {"data.diffaug": "translation,cutout,color"}),
])
def test_a_run_resumes_as_itself_from_its_run_dir(builtin_shards, tmp_path, kind, extra):
    run = tmp_path / "run"
    r = train(tiny_overrides(builtin_shards, run, **{"train.steps": 3, **extra}))
    assert r.returncode == 0, r.stderr
    made = (run / "config.yaml").read_text()
    # The README's form: nothing but the run dir and --resume (and a new step count).
    r = train(["--run-dir", str(run), "--resume", "train.steps=5"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "with the run's own config" in r.stdout and "resumed from" in r.stdout
    resumed = yaml.safe_load((run / "config.yaml").read_text())
    assert resumed["train"]["steps"] == 5
    made = yaml.safe_load(made)
    made["train"]["steps"] = 5
    assert resumed == made  # the record of how the run was made is kept, plus the change
    state = __import__("torch").load(sorted((run / "checkpoints").glob("step-*.pt"))[-1],
                                     weights_only=True)
    assert state["step"] == 5


def test_an_incompatible_override_is_refused_and_damages_nothing(builtin_shards, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_overrides(builtin_shards, run, **{"train.steps": 2})).returncode == 0
    before = (run / "config.yaml").read_text()
    r = train(["--run-dir", str(run), "--resume", "model.g_width=16"])
    assert r.returncode == 2
    assert "cannot resume" in r.stderr and "model.g_width: the run has 8, given 16" in r.stderr
    assert (run / "config.yaml").read_text() == before


# ------------------------------------------------------------------ 2. one-line errors
@pytest.mark.parametrize("case", ["missing-folder", "empty-folder", "missing-shard",
                                  "resume-nothing", "existing-run"])
def test_runtime_errors_are_one_line_and_leave_no_run_dir(builtin_shards, tmp_path, case):
    run = tmp_path / "run"
    args = tiny_overrides(builtin_shards, run)
    if case == "missing-folder":
        args += [f"data.shards={tmp_path / 'nope'}"]
    elif case == "empty-folder":
        (tmp_path / "empty").mkdir()
        args += [f"data.shards={tmp_path / 'empty'}"]
    elif case == "missing-shard":
        args += [f"data.shards={tmp_path}/shard-{{000..003}}.tar"]
    elif case == "resume-nothing":
        args += ["--resume"]
    else:
        assert train(tiny_overrides(builtin_shards, run, **{"train.steps": 2})).returncode == 0
    r = train(args)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith(("error:", "config error:"))]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    if case != "existing-run":
        assert not run.exists(), f"a failed start left {sorted(p.name for p in run.iterdir())}"


# ------------------------------------------------------------------ 3. folder cache
def _images(folder: Path, n: int, start: int = 0) -> None:
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            arr = np.random.default_rng(i).integers(0, 255, (32, 32), dtype=np.uint8)
            Image.fromarray(arr, "L").save(folder / cls / f"{i}.png")


def test_folder_cache_follows_the_folder_and_lives_in_one_place(tmp_path):
    folder, cache = tmp_path / "imgs", tmp_path / "cache"
    _images(folder, 6)
    args = ["-d", str(folder), "--run-dir", str(tmp_path / "r1"), "model.g_width=8",
            "model.d_width=8", "train.batch_size=4", "train.steps=1", "optim.n_critic=1",
            "data.workers=0", "eval.num=8", "log.grid_size=4"]
    env = {"WGAN_DIST_CACHE": str(cache)}
    r = train(args, env=env)
    assert r.returncode == 0, r.stderr
    assert "first use" in r.stdout and "12 images" in r.stdout
    assert not list((REPO / "shards").glob("imgs-*"))
    (manifest,) = (cache / "shards").glob("imgs-*/manifest.json")
    _images(folder, 3, start=100)  # the user adds images
    args[3] = str(tmp_path / "r2")
    r = train(args, env=env)
    assert r.returncode == 0 and "the folder changed" in r.stdout and "18 images" in r.stdout
    assert json.loads(manifest.read_text())["total"] == 18
    args[3] = str(tmp_path / "r3")
    r = train(args, env=env)
    assert "sharding image folder" not in r.stdout  # unchanged: reused


# ------------------------------------------------------------------ 4. never silent
def test_heartbeat_before_the_first_tick_and_log_txt_holds_the_console(builtin_shards, tmp_path):
    run = tmp_path / "run"
    r = train(tiny_overrides(builtin_shards, run, **{"train.steps": 30, "log.tick_every": 30}),
              env={"WGAN_DIST_HEARTBEAT": "0.01"})
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    first_tick = next(i for i, x in enumerate(out) if x.startswith("step "))
    assert any(x.startswith("... step ") for x in out[:first_tick]), r.stdout[-3000:]
    log = (run / "log.txt").read_text()
    for needle in ("run dir", "processes", "threads", "models", "eval step 30", "... step "):
        assert needle in log, f"{needle!r} missing from log.txt"


def test_evaluate_with_classifier_reports_progress(builtin_shards, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_overrides(builtin_shards, run, **{"train.steps": 2})).returncode == 0
    r = cli("wgan_dist.evaluate", ["--checkpoint", str(run), "--num", "64", "--classifier",
                                   "--classifier-steps", "40"],
            env={"WGAN_DIST_HEARTBEAT": "0.01", "WGAN_DIST_CACHE": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    assert "training a domain classifier" in r.stderr and "steps (" in r.stderr
    assert json.loads(r.stdout)["cls_covered"] >= 0


# ------------------------------------------------------------------ 5. consistent flags
def test_shard_takes_size_and_the_old_spelling(tmp_path):
    for flag in ("-s", "--size", "--resolution"):
        r = cli("wgan_dist.shard", ["builtin", "-o", str(tmp_path / flag.strip("-")), flag, "32",
                                    "--per-class", "2", "--no-progress"])
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / flag.strip("-") / "manifest.json").read_text())["resolution"] == 32


def test_no_prefix_surprises_and_toy_seed_lists(tmp_path):
    r = cli("wgan_dist.toy", ["--seed", "9101", "--steps", "5", "--dataset", "ring", "--reject", "0",
                              "--out", str(tmp_path / "t")])
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert [run["seed"] for run in res["datasets"]["ring"]["runs"]] == [9101]
    for module, arg in [("wgan_dist.toy", "--see"), ("wgan_dist.train", "--over"),
                        ("wgan_dist.shard", "--over"), ("wgan_dist.generate", "--check"),
                        ("wgan_dist.evaluate", "--check")]:
        r = cli(module, [arg, "x"])
        assert r.returncode == 2 and "unrecognized arguments" in r.stderr or "required" in r.stderr


@pytest.mark.parametrize("module", ["train", "generate", "evaluate", "shard", "toy"])
def test_every_option_has_help(module):
    import importlib

    parser = importlib.import_module(f"wgan_dist.{module}").build_parser()
    missing = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not missing, f"options without help in wgan_dist.{module}: {missing}"
    assert not parser.allow_abbrev


# ------------------------------------------------------------------ 6. the toy reproduces
def test_toy_is_bitwise_reproducible_across_processes(tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"t{k}"
        r = cli("wgan_dist.toy", ["--seed", "2", "--steps", "300", "--dataset", "grid",
                                  "--threads", "1", "--out", str(out)])
        assert r.returncode == 0, r.stderr
        outs.append(((out / "grid_seed2.npy").read_bytes(), (out / "grid_seed2_jbt.npy").read_bytes()))
    assert outs[0] == outs[1]


# ------------------------------------------------------------------ 9. tested versions
def test_installed_versions_are_the_constraints():
    from importlib.metadata import PackageNotFoundError, version

    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    if os.environ.get("WGAN_DIST_LATEST"):
        pytest.skip("WGAN_DIST_LATEST=1: testing the newest releases on purpose")
    off = {}
    for name in ("torch", "torchvision", "accelerate", "webdataset", "numpy", "scipy",
                 "torchmetrics", "tensorboard", "deepspeed", "pillow"):
        try:
            if version(name) != pins[name if name != "pillow" else "pillow"]:
                off[name] = (version(name), pins.get(name))
        except PackageNotFoundError:
            off[name] = (None, pins.get(name))
    assert not off, f"installed vs constraints.txt: {off}"


def test_fid_of_identical_sets_is_not_negative():
    from wgan_dist.metrics.fid import fid_from_features

    feats = np.random.default_rng(0).normal(size=(200, 64))
    assert fid_from_features(feats, feats) == 0.0 or fid_from_features(feats, feats) > 0


# ------------------------------------------------------------------ 10. foreign shards
def _webdataset_set(out: Path) -> list[str]:
    import webdataset as wds

    out.mkdir()
    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(out / "part-%03d.tar"), maxcount=40) as sink:
        for i in range(96):
            img = Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L")
            sink.write({"__key__": f"s{i:04d}", "png": img, "cls": i % 3})
    return sorted(str(p) for p in out.glob("*.tar"))


def test_plain_webdataset_shards_train_with_their_labels(tmp_path):
    _webdataset_set(tmp_path / "wds")
    base = ["--run-dir", str(tmp_path / "run"), "model.g_width=8", "model.d_width=8",
            "train.batch_size=8", "train.steps=2", "optim.n_critic=1", "data.workers=0",
            "model.conditional=true", "log.grid_size=6"]
    r = train([f"data.shards={tmp_path / 'wds'}", "data.class_names=cat,dog,fox", *base])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "no manifest.json" in r.stdout and "3 classes from the cls entries (cat, dog, fox)" in r.stdout
    assert "28x28 px, 1 channel(s) from the first image" in r.stdout
    assert "interrupted" not in r.stdout + r.stderr
    r = train([f"data.shards={tmp_path}/wds/part-{{000..002}}.tar", *base[:1],
               str(tmp_path / "run2"), *base[2:]])
    assert r.returncode == 0 and "3 classes from the cls entries (0, 1, 2)" in r.stdout, r.stderr


def test_our_shards_read_with_plain_webdataset(builtin_shards):
    import webdataset as wds

    urls = sorted(str(p) for p in builtin_shards.glob("shard-*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False).decode("l").to_tuple("png", "cls")
    img, cls = next(iter(ds))
    assert img.shape == (28, 28) and isinstance(cls, int)
