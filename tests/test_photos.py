"""Real photographs end to end: JPEG folders sharded at 64 and 128 px in every encoding,
``--explore`` grids, the photo presets training (and resuming exactly) on real shards, and
the photo judges of ``wgan_dist.metrics.photo`` on real photos.

The photos are ``../shared/data/afhq_cat/cat`` (5,153 AFHQ cat faces, 128 px JPEG) and
``../shared/data/sign_digits/0..9`` (2,062 hand signs, 100 px JPEG, 10 classes); the tests
use small subsets. CI always has them (``.ci/run`` sets WGAN_DIST_REQUIRE_SHARED_DATA=1 and a
missing copy fails there); elsewhere these tests skip and say where the photos go.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, tiny_overrides

SHARED = REPO.parent / "shared" / "data"
CATS = SHARED / "afhq_cat" / "cat"
SIGNS = SHARED / "sign_digits"
N_CATS = 24


def _require(path: Path, what: str, count: int) -> None:
    found = len(list(path.glob("*.jpg"))) if path.is_dir() else 0
    if found >= count:
        return
    msg = f"{what} missing from {path} (found {found} .jpg files; see the README of ../shared/data)"
    if os.environ.get("WGAN_DIST_REQUIRE_SHARED_DATA"):
        pytest.fail(f"{msg}; CI must have them")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def cat_files() -> list[Path]:
    _require(CATS, "the AFHQ cat photos", 1000)
    return sorted(CATS.glob("*.jpg"))


@pytest.fixture(scope="module")
def sign_files() -> dict[str, list[Path]]:
    for d in range(10):
        _require(SIGNS / str(d), f"the sign-digit photos of class {d}", 100)
    return {str(d): sorted((SIGNS / str(d)).glob("*.jpg")) for d in range(10)}


def linked(folder: Path, files: list[Path]) -> Path:
    """A folder of links to ``files``: a subset as a user's image folder, without copying."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def shard_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "wgan_dist.shard", *args, "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def read_back(out: Path) -> tuple[dict, list[np.ndarray], list[int], list[str]]:
    from wgan_dist.data.format import (decode_image, image_entry, iter_samples, label_of,
                                       read_manifest, shard_paths)

    m = read_manifest(out)
    images, labels, srcs = [], [], []
    for path in shard_paths(out, m):
        for s in iter_samples(str(path)):
            ext, data = image_entry(s)
            images.append(decode_image(data, ext, m["resolution"], m["channels"]))
            labels.append(label_of(s))
            srcs.append(bytes(s["src"]).decode())
    return m, images, labels, srcs


def expected_pixels(path: Path, size: int) -> np.ndarray:
    """What a photo should become: decoded by PIL, resized with LANCZOS when it is not
    ``size`` px already (the AFHQ photos are square)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.LANCZOS)
        return np.asarray(img)


@pytest.fixture(scope="module")
def cat_folder(cat_files, tmp_path_factory) -> Path:
    return linked(tmp_path_factory.mktemp("cats") / "cats", cat_files[:N_CATS])


@pytest.fixture(scope="module")
def sign_folder(sign_files, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signs") / "signs"
    for cls, files in sign_files.items():
        linked(root / cls, files[:4])
    return root


# ------------------------------------------------------------------------------ shards
@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("encoding", ["png", "jpeg", "raw"])
def test_cat_photos_shard_in_each_encoding(cat_folder, tmp_path, size, encoding):
    out = tmp_path / "s"
    r = shard_cli(str(cat_folder), "-o", str(out), "-s", str(size), "--channels", "3",
                  "--encoding", encoding, "--per-shard", "10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {N_CATS} samples in 3 shards to {out} (0 skipped)"
    m, images, labels, srcs = read_back(out)
    assert (m["resolution"], m["channels"], m["encoding"], m["total"]) == (size, 3, encoding, N_CATS)
    assert not m["labelled"] and set(labels) == {-1}  # a flat folder is unlabelled
    assert m["jpeg_quality"] == (95 if encoding == "jpeg" else None)
    assert sorted(Path(s).name for s in srcs) == sorted(p.name for p in cat_folder.iterdir())
    for img, src in zip(images, srcs):
        want = expected_pixels(Path(src), size).astype(int)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        diff = np.abs(img.astype(int) - want)
        if encoding == "jpeg":  # lossy at quality 95: close, not equal
            assert diff.mean() < 3.0, (src, diff.mean())
        else:  # lossless: the photo's own pixels at 128 px, PIL's LANCZOS resize at 64
            assert diff.max() <= (0 if size == 128 else 1), (src, diff.max())


def test_explore_a_photo_set_writes_a_grid(cat_folder, tmp_path):
    out = tmp_path / "s"
    assert shard_cli(str(cat_folder), "-o", str(out), "-s", "128", "--rgb", "--encoding", "jpeg").returncode == 0
    r = shard_cli("--explore", str(out), "--grid", str(tmp_path / "grid.png"))
    assert r.returncode == 0, r.stderr
    assert f"{N_CATS} samples in {out}" in r.stdout and "(unlabelled): 24" in r.stdout
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (8 * 130 + 2, 8 * 130 + 2)  # an unlabelled set: an 8 x 8 square
    tile = np.asarray(grid.convert("RGB"))[2:130, 2:130].astype(int)
    assert tile.std() > 20  # a photo, not a blank tile


def test_sign_digit_photos_shard_with_their_labels(sign_folder, tmp_path):
    out = tmp_path / "s"
    r = shard_cli(str(sign_folder), "-o", str(out), "-s", "64", "--rgb", "--encoding", "jpeg")
    assert r.returncode == 0, r.stderr
    m, images, labels, srcs = read_back(out)
    assert m["labelled"] and m["class_names"] == [str(d) for d in range(10)]
    assert m["per_class"] == {str(d): 4 for d in range(10)}
    for label, src in zip(labels, srcs):  # the folder a photo came from is its label
        assert Path(src).parent.name == str(label)
    assert all(img.shape == (64, 64, 3) for img in images)  # 100 px photos resized to 64
    r = shard_cli("--explore", str(out), "--per-class", "4", "--grid", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr
    assert all(f"  {d}: 4" in r.stdout for d in range(10))
    assert Image.open(tmp_path / "g.png").size == (4 * 66 + 2, 10 * 66 + 2)  # a row per class


# ------------------------------------------------------------------------------ presets on photos
@pytest.fixture(scope="module")
def photo_shards(cat_folder, sign_folder, tmp_path_factory):
    from wgan_dist.data.write import write_shards

    root = tmp_path_factory.mktemp("photo_shards")
    made = {}
    for name, src, size, enc in (("cats64", cat_folder, 64, "png"), ("cats128", cat_folder, 128, "raw"),
                                 ("signs64", sign_folder, 64, "jpeg")):
        write_shards([str(src)], str(root / name), resolution=size, channels=3, encoding=enc,
                     per_shard=12, progress=False)
        made[name] = root / name
    return made


def _train(preset: str, shards: Path, run: Path, steps: int, resume: str | None = None, **extra):
    from wgan_dist.compat import reset_accelerator_state
    from wgan_dist.config import load_config
    from wgan_dist.training.trainer import Trainer

    overrides = tiny_overrides(shards, run, **{
        "model.g_width": 4, "model.d_width": 4, "train.batch_size": 4, "train.steps": steps,
        "optim.n_critic": 2, "data.shuffle_buffer": 12, "log.grid_size": 4, "eval.num": 8,
        "eval.gp_visuals": False, "log.ckpt_every": 100, **extra})
    reset_accelerator_state()
    trainer = Trainer(load_config(preset, overrides), resume=resume)
    stats = trainer.train()
    trainer.close()
    return trainer, stats


@pytest.mark.parametrize("preset,data", [("celeba64", "cats64"), ("small_data64", "cats64"),
                                         ("animal_faces_cond64", "signs64"), ("celeba128", "cats128")])
def test_photo_presets_train_on_real_photo_shards(photo_shards, tmp_path, preset, data):
    from wgan_dist.training import checkpoint as ckpt

    trainer, stats = _train(preset, photo_shards[data], tmp_path / "run", 2)
    assert trainer.step == 2 and np.isfinite(stats["critic_loss"])
    state = ckpt.load_checkpoint(tmp_path / "run")
    if trainer.cfg.model.conditional:
        assert state["class_names"] == [str(d) for d in range(10)]


def _same_state(a: dict, b: dict) -> list[str]:
    """Names of the tensors that differ between two checkpoints (weights, buffers, Adam)."""
    bad = [f"{k}.{n}" for k in ("G", "D", "G_ema") for n, t in a[k].items() if not torch.equal(t, b[k][n])]
    for key in ("opt_G", "opt_D"):
        for idx, st in a[key]["state"].items():
            bad += [f"{key}[{idx}].{n}" for n, t in st.items()
                    if not torch.equal(torch.as_tensor(t), torch.as_tensor(b[key]["state"][idx][n]))]
    return bad


def _full_and_split(shards: Path, tmp_path: Path, **extra) -> tuple[dict, dict]:
    from wgan_dist.training import checkpoint as ckpt

    _train("celeba128", shards, tmp_path / "full", 4, **extra)
    _train("celeba128", shards, tmp_path / "split", 2, **extra)
    _train("celeba128", shards, tmp_path / "split", 4, resume="latest", **extra)
    return ckpt.load_checkpoint(tmp_path / "full"), ckpt.load_checkpoint(tmp_path / "split")


def test_celeba128_resumes_exactly_on_real_photos(photo_shards, tmp_path):
    # 128 px photos, flips, the preset's networks: 2 steps, then a new Trainer resumes to 4;
    # bit for bit the run that never stopped (a sample grid at step 2 in both runs).
    a, b = _full_and_split(photo_shards["cats128"], tmp_path, **{"log.sample_every": 2})
    assert (a["step"], a["nimg"]) == (b["step"], b["nimg"]) == (4, 4 * 2 * 4)
    assert _same_state(a, b) == []


def test_resume_after_a_run_ends_off_the_sample_schedule(photo_shards, tmp_path):
    # The split run's first part ends at step 2 with a grid the run that never stopped does
    # not make: a grid and its penalty visuals must leave the generator's BatchNorm statistics
    # as they were (they did not before 2026-12-07).
    a, b = _full_and_split(photo_shards["cats128"], tmp_path, **{"log.sample_every": 3})
    assert _same_state(a, b) == []


# ------------------------------------------------------------------------------ judges on photos
def _tensors(files: list[Path], size: int = 64) -> torch.Tensor:
    arr = np.stack([expected_pixels(f, size) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_cat_face_cascade_fires_on_real_cats_not_on_hands_or_noise(cat_files, sign_files):
    from wgan_dist.metrics.photo import haar_rate, load_cascade

    cascade = load_cascade()
    cats = _tensors(cat_files[::80][:60])  # 60 cats from across the set (flickr and pixabay)
    hands = _tensors([f for files in sign_files.values() for f in files[:4]])
    noise = torch.rand(40, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert haar_rate(cats, cascade) >= 0.75  # 0.89-0.90 on all 5,153
    assert haar_rate(hands, cascade) <= 0.05
    assert haar_rate(noise, cascade) == 0.0


def test_memorisation_flags_copies_and_passes_unseen_photos(cat_files):
    from wgan_dist.metrics.photo import memorisation

    train, heldout, other = (_tensors(cat_files[a:a + 60]) for a in (0, 100, 200))
    copies = torch.cat([train[:30], train[30:].flip(-1)])  # exact copies and mirrored copies
    m = memorisation(copies, heldout, train)
    assert m["pix_ratio"] < 1e-3 and m["pix_close"] == 1.0
    m = memorisation(other, heldout, train)  # unseen real photos are as far as held-out ones
    assert 0.8 < m["pix_ratio"] < 1.25 and m["pix_close"] < 0.2


def test_rotation_judge_learns_from_real_photos_and_separates_noise(cat_files):
    from wgan_dist.metrics.photo import judge_frechet, rotation_accuracy, train_rotation_judge

    photos = torch.nn.functional.avg_pool2d(_tensors(cat_files[::16][:300]), 2)  # 32 px: cheap
    judge = train_rotation_judge(photos[:200], steps=120)
    assert rotation_accuracy(judge, photos[200:]) > 0.6  # chance: 0.25
    floor = judge_frechet(judge, photos[200:250], photos[250:300])
    noise = torch.rand(50, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert judge_frechet(judge, photos[200:250], noise) > 5 * floor
    one, two = (train_rotation_judge(photos[:16], steps=3) for _ in range(2))  # seeded
    assert all(torch.equal(p, q) for p, q in zip(one.parameters(), two.parameters()))
