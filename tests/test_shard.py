"""The shard writer, its input readers and its CLI, on inputs generated in tmp_path."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_quickdraw_npy
from wgan_dist.data import builtin, sources
from wgan_dist.data import write as shard
from wgan_dist.data.format import decode_image
from wgan_dist.data.write import OutputNotEmptyError, ensure_builtin_shards, write_shards
from wgan_dist.data.sources import ConvertOptions, Record, iter_records

REPO = Path(__file__).resolve().parents[1]
FAST = dict(progress=False)


def read_set(out: Path) -> tuple[dict, list[dict]]:
    """The manifest and every sample (key, image array, cls, src) of a shard set."""
    m = json.loads((out / "manifest.json").read_text())
    ext = shard.ENC_EXT[m["encoding"]]
    samples = []
    for s in m["shards"]:
        entries: dict[str, dict] = {}
        with tarfile.open(out / s["name"]) as tf:
            for mem in tf:
                key, _, suffix = mem.name.partition(".")
                entries.setdefault(key, {"key": key})[suffix] = tf.extractfile(mem).read()
        assert len(entries) == s["count"]
        for e in entries.values():
            samples.append({"key": e["key"], "src": e["src"].decode(),
                            "cls": int(e["cls"]) if "cls" in e else None,
                            "img": decode_image(e[ext], ext, m["resolution"], m["channels"])})
    return m, samples


def check_manifest(out: Path, m: dict, samples: list[dict]) -> None:
    assert m["format"] == "wgan_dist-shards/1"
    assert m["inputs"] == m["total"] + len(m["skipped"]) == len(samples) + len(m["skipped"])
    assert sum(s["count"] for s in m["shards"]) == m["total"]
    for s in m["shards"]:
        assert hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    assert [s["key"] for s in samples] == [f"{i:09d}" for i in range(len(samples))]
    assert not list(out.glob(".*tmp"))


def reasons(m: dict) -> dict[str, str]:
    return {os.path.basename(s["input"]): s["reason"] for s in m["skipped"]}


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    c = 3 if mode == "RGB" else 1
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], c), dtype=np.uint8)
    return Image.fromarray(a.squeeze(), mode)


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for k, cls in enumerate(["cats", "dogs", "owls"]):
        for j in range(4):
            save(noise((20 + 7 * j, 24 + 3 * k), 10 * k + j), root / cls / f"{j}.png")
        save(noise((30, 30), 99 + k), root / cls / "x.jpg", quality=90)
    (root / "dogs" / ".hidden.png").write_bytes(b"not counted")
    return root


# ---------------------------------------------------------------------------------------------
def test_builtin_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "s"
    m = write_shards(["builtin"], str(out), builtin_per_class=5, per_shard=7, seed=3, **FAST)
    m2, samples = read_set(out)
    assert m == m2
    check_manifest(out, m, samples)
    n = 5 * len(builtin.CATEGORIES)
    assert m["total"] == m["inputs"] == n and len(m["shards"]) == -(-n // 7)
    assert m["class_names"] == list(builtin.CATEGORIES) and m["labelled"]
    assert m["per_class"] == {c: 5 for c in builtin.CATEGORIES}
    assert len({s["cls"] for s in samples[:7]}) > 1  # shuffled: shards mix classes
    for s in samples:
        name, j = re.fullmatch(r"builtin:(\w+)#(\d+)", s["src"]).groups()
        assert s["cls"] == builtin.CATEGORIES.index(name)
        want = builtin.render_sample(s["cls"], int(j), seed=3, size=28)
        np.testing.assert_array_equal(s["img"][:, :, 0], want)


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_folder_lossless_exact(tmp_path: Path, class_folder: Path, encoding: str) -> None:
    out = tmp_path / "s"
    m = write_shards([str(class_folder)], str(out), resolution=16, channels=3,
                     encoding=encoding, per_shard=4, **FAST)
    m, samples = read_set(out)
    check_manifest(out, m, samples)
    assert m["class_names"] == ["cats", "dogs", "owls"] and m["source"]["kind"] == "folder"
    assert m["total"] == 15 and m["skipped"] == []
    want = {r.src_id: r for r in iter_records(str(class_folder), opts=ConvertOptions(16, 3))}
    assert set(want) == {s["src"] for s in samples}
    for s in samples:
        assert s["cls"] == want[s["src"]].label
        np.testing.assert_array_equal(s["img"], want[s["src"]].image)


def test_jpeg_close(tmp_path: Path, class_folder: Path) -> None:
    out = tmp_path / "s"
    write_shards([str(class_folder)], str(out), resolution=32, channels=1, encoding="jpeg",
                 jpeg_quality=95, **FAST)
    m, samples = read_set(out)
    assert m["jpeg_quality"] == 95
    want = {r.src_id: r.image for r in iter_records(str(class_folder), opts=ConvertOptions(32, 1))}
    for s in samples:
        err = np.abs(s["img"].astype(int) - want[s["src"]].astype(int)).mean()
        assert err < 8, (s["src"], err)


def test_workers_byte_identical(tmp_path: Path, class_folder: Path) -> None:
    (class_folder / "owls" / "bad.png").write_bytes(b"garbage")
    a, b = tmp_path / "a", tmp_path / "b"
    ma = write_shards([str(class_folder)], str(a), resolution=16, per_shard=5, workers=1, **FAST)
    mb = write_shards([str(class_folder)], str(b), resolution=16, per_shard=5, workers=2, **FAST)
    assert ma["shards"] == mb["shards"] and ma["skipped"] == mb["skipped"]
    for s in ma["shards"]:
        assert (a / s["name"]).read_bytes() == (b / s["name"]).read_bytes()


# ---------------------------------------------------------------------------------------------
@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """A flat (unlabelled) folder holding one example of every awkward input."""
    d = tmp_path / "messy"
    d.mkdir()
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    buf = save(noise((64, 64), 1), d / "full.jpg", quality=90).read_bytes()
    (d / "trunc.jpg").write_bytes(buf[: len(buf) // 2])
    (d / "full.jpg").unlink()
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("hello")
    (d / ".DS_Store").write_bytes(b"hidden: not an input")
    save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), d / "cmyk.jpg", quality=95)  # red
    save(Image.new("RGB", (16, 16), (255, 0, 0)).quantize(4), d / "pal.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (0, 0, 255, 255)  # left opaque blue, right fully transparent
    save(Image.fromarray(rgba, "RGBA"), d / "rgba.png")
    la = np.zeros((16, 16, 2), np.uint8)
    la[:, :8] = (255, 255)
    la[:, 8:] = (255, 0)  # white but transparent: must come out black
    save(Image.fromarray(la, "LA"), d / "la.png")
    g16 = np.full((16, 16), 32768, np.uint16)
    g16[:, :8] = 65535
    save(Image.fromarray(g16), d / "g16.png")
    save(Image.new("L", (16, 16), 77), d / "gray.png")
    half = np.zeros((16, 16), np.uint8)
    half[:, :8] = 255  # left half white; orientation 6 turns it into the top half
    exif = Image.Exif()
    exif[0x0112] = 6
    save(Image.fromarray(half, "L"), d / "rot.jpg", exif=exif, quality=95)
    save(Image.new("L", (8, 8), 200), d / "small.png")
    return d


def test_bad_and_awkward_inputs(tmp_path: Path, messy_folder: Path) -> None:
    out = tmp_path / "s"
    m = write_shards([str(messy_folder)], str(out), resolution=16, channels=3, **FAST)
    m, samples = read_set(out)
    check_manifest(out, m, samples)
    assert not m["labelled"] and m["class_names"] == [] and m["per_class"] == {}
    assert m["inputs"] == 12  # every regular non-hidden file
    r = reasons(m)
    assert set(r) == {"corrupt.png", "trunc.jpg", "empty.png", "notes.txt"}
    for name, kind in [("corrupt.png", "corrupt"), ("trunc.jpg", "truncated"),
                       ("empty.png", "empty file"), ("notes.txt", "not an image")]:
        assert r[name].startswith(str(messy_folder / name) + f": {kind}"), r[name]
    assert shard.skip_kinds(m) == {"corrupt": 1, "truncated": 1, "empty file": 1,
                                   "not an image": 1}
    img = {os.path.basename(s["src"]): s["img"].astype(int) for s in samples}
    assert all(s["cls"] is None for s in samples)
    assert np.abs(img["cmyk.jpg"] - [255, 0, 0]).max() < 12
    assert np.abs(img["pal.png"] - [255, 0, 0]).max() < 8
    np.testing.assert_array_equal(img["rgba.png"][:, :8], np.broadcast_to([0, 0, 255], (16, 8, 3)))
    assert img["rgba.png"][:, 8:].max() == 0  # transparent -> black
    assert (img["la.png"][:, :8] == 255).all() and img["la.png"][:, 8:].max() == 0
    assert (img["g16.png"][:, :8] == 255).all() and (img["g16.png"][:, 8:] == 128).all()
    assert (img["gray.png"] == 77).all()  # grayscale replicated into RGB
    rot = img["rot.jpg"][:, :, 0]
    assert rot[:7].mean() > 200 and rot[9:].mean() < 50  # EXIF rotation applied
    assert img["small.png"].shape == (16, 16, 3) and (img["small.png"] == 200).all()  # upscaled


def test_min_size_and_16bit_gray(tmp_path: Path, messy_folder: Path) -> None:
    m = write_shards([str(messy_folder)], str(tmp_path / "s"), resolution=16, min_size=16,
                     **FAST)
    assert "small.png: too small" in reasons(m)["small.png"]
    assert m["inputs"] == m["total"] + len(m["skipped"]) == 12
    g = next(r for r in iter_records(str(messy_folder / "g16.png").rsplit("/", 1)[0],
                                     opts=ConvertOptions(16, 1))
             if isinstance(r, Record) and r.src_id.endswith("g16.png"))
    assert g.image.shape == (16, 16, 1) and g.image[0, 0, 0] == 255 and g.image[0, 15, 0] == 128


def test_celeba_centre_crop(tmp_path: Path) -> None:
    face = np.zeros((218, 178, 3), np.uint8)
    face[:20] = (255, 0, 0)   # cut by the 178x178 centre crop
    face[-20:] = (0, 0, 255)  # cut too
    face[20:-20] = (0, 200, 0)
    img_dir = tmp_path / "celeba" / "img_align_celeba"
    for i in range(3):
        save(Image.fromarray(face), img_dir / f"{i:06d}.jpg", quality=95)
    (img_dir / "list.txt").write_text("not an image")
    out = tmp_path / "s"
    m = write_shards([str(tmp_path / "celeba")], str(out), resolution=32, channels=3, **FAST)
    m, samples = read_set(out)
    assert m["source"]["kind"] == "celeba" and not m["labelled"] and m["total"] == 3
    assert len(m["skipped"]) == 1 and "not an image" in m["skipped"][0]["reason"]
    for s in samples:
        assert np.abs(s["img"].astype(int) - [0, 200, 0]).max() < 20


# ---------------------------------------------------------------------------------------------
def test_quickdraw_npy_both_names_and_bad_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    save_quickdraw_npy(a, 3, seed=5)
    save_quickdraw_npy(b, 3, seed=5, prefix="full_numpy_bitmap_")
    # (N, 28, 28) uint8 and float bitmaps are valid layouts since the real-QuickDraw issue
    np.save(b / "bad_shape.npy", np.zeros((4, 28, 27), np.uint8))
    np.save(b / "bad_dtype.npy", np.zeros((4, 784), np.int32))
    ma = write_shards([str(a)], str(tmp_path / "sa"), **FAST)
    mb = write_shards([str(b)], str(tmp_path / "sb"), **FAST)
    assert ma["source"]["kind"] == mb["source"]["kind"] == "quickdraw"
    assert ma["class_names"] == mb["class_names"] == list(builtin.CATEGORIES)
    assert ma["total"] == mb["total"] == 3 * len(builtin.CATEGORIES)
    assert mb["inputs"] == mb["total"] + 2
    r = reasons(mb)
    assert "wrong shape" in r["bad_shape.npy"] and "(4, 28, 27)" in r["bad_shape.npy"]
    assert "wrong dtype" in r["bad_dtype.npy"] and "int32" in r["bad_dtype.npy"]
    _, sa = read_set(tmp_path / "sa")
    _, sb = read_set(tmp_path / "sb")
    def by_row(samples: list[dict]) -> dict:
        return {(sources.quickdraw_class(s["src"].split("#")[0]), s["src"].split("#")[1]): s
                for s in samples}

    ra, rb = by_row(sa), by_row(sb)
    assert set(ra) == set(rb)
    for k, x in ra.items():  # same rows under both names: same pixels and labels
        assert x["cls"] == rb[k]["cls"] == builtin.CATEGORIES.index(k[0])
        assert np.array_equal(x["img"], rb[k]["img"])
        want = builtin.render_sample(x["cls"], int(k[1]), seed=5)
        np.testing.assert_array_equal(x["img"][:, :, 0], want)
    # one file given directly, upscaled to 32 px
    m = write_shards([str(a / "star.npy")], str(tmp_path / "sc"), resolution=32, **FAST)
    assert m["class_names"] == ["star"] and m["total"] == 3


def test_ndjson(tmp_path: Path) -> None:
    strokes, _ = builtin.builtin_drawing(4, 0)
    lines = [json.dumps({"word": "star", "drawing": strokes}), "{not json",
             json.dumps({"word": "star"}), "",
             json.dumps({"word": "star", "drawing": [[[1, 2], [3]]]}),
             json.dumps({"drawing": strokes})]
    f = tmp_path / "full_simplified_star.ndjson"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "s"
    m = write_shards([str(f)], str(out), resolution=32, **FAST)
    m, samples = read_set(out)
    check_manifest(out, m, samples)
    assert m["class_names"] == ["star"] and m["total"] == 2 and m["inputs"] == 5
    r = {s["input"]: s["reason"] for s in m["skipped"]}
    assert r[f"{f}:2"].startswith(f"{f}:2: not JSON")
    assert r[f"{f}:3"].startswith(f"{f}:3: bad drawing")
    assert r[f"{f}:5"].startswith(f"{f}:5: bad drawing")
    want = builtin.render_strokes(builtin.fit_strokes(strokes), 32, sources.NDJSON_THICKNESS)
    for s in samples:
        np.testing.assert_array_equal(s["img"][:, :, 0], want)


def test_limits(tmp_path: Path) -> None:
    m = write_shards(["builtin"], str(tmp_path / "a"), builtin_per_class=6, limit_per_class=2,
                     **FAST)
    assert m["per_class"] == {c: 2 for c in builtin.CATEGORIES}
    m = write_shards(["builtin"], str(tmp_path / "b"), builtin_per_class=6, limit=5, **FAST)
    assert m["total"] == m["inputs"] == 5


# ---------------------------------------------------------------------------------------------
def test_refuse_non_empty_then_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputNotEmptyError):
        write_shards(["builtin"], str(out), builtin_per_class=1, **FAST)
    assert not (out / "manifest.json").exists()
    write_shards(["builtin"], str(out), builtin_per_class=2, per_shard=3, overwrite=True, **FAST)
    m = write_shards(["builtin"], str(out), builtin_per_class=1, overwrite=True, **FAST)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "manifest.json",
                                                     "shard-000000.tar"]
    assert m["total"] == len(builtin.CATEGORIES)


def test_interrupted_run_leaves_no_manifest(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "s"
    write_shards(["builtin"], str(out), builtin_per_class=2, **FAST)
    calls = {"n": 0}
    real = shard.load_item

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(shard, "load_item", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        write_shards(["builtin"], str(out), builtin_per_class=5, per_shard=4, overwrite=True,
                     **FAST)
    assert list(out.iterdir()) == []  # old set removed, nothing half-written left


def test_ensure_builtin_shards(tmp_path: Path) -> None:
    out = tmp_path / "b"
    m1 = ensure_builtin_shards(str(out), resolution=16, per_class=2, seed=1, progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    m2 = ensure_builtin_shards(str(out), resolution=16, per_class=2, seed=1, progress=False)
    assert m1 == m2 and (out / "manifest.json").stat().st_mtime_ns == stamp
    m3 = ensure_builtin_shards(str(out), resolution=16, per_class=3, seed=1, progress=False)
    assert m3["total"] == 3 * len(builtin.CATEGORIES)


# ---------------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "wgan_dist.shard", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_shard_refuse_and_explore(tmp_path: Path, class_folder: Path) -> None:
    (class_folder / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (class_folder / "dogs" / "readme.md").write_text("hi")
    out = tmp_path / "s"
    p = run_cli(str(class_folder), "-o", str(out), "-s", "16", "--rgb", "--per-shard", "6",
                "--no-progress")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == (
        f"wrote 15 samples in 3 shards to {out} (2 skipped: 1 corrupt, 1 not an image)")
    m, samples = read_set(out)
    assert m["channels"] == 3 and m["inputs"] == 17
    p = run_cli(str(class_folder), "-o", str(out), "--no-progress")
    assert p.returncode == 2 and "not empty" in p.stderr and "--overwrite" in p.stderr
    p = run_cli("--explore", str(out), "--per-class", "4")
    assert p.returncode == 0, p.stderr
    assert "15 samples" in p.stdout and "cats: 5" in p.stdout
    grid = Image.open(out / "explore.png")
    assert grid.size == (4 * 18 + 2, 3 * 18 + 2)  # 4 columns, one row per class


def test_cli_builtin(tmp_path: Path) -> None:
    out = tmp_path / "b"
    p = run_cli("builtin", "-o", str(out), "--per-class", "3", "-s", "32", "--encoding", "raw",
                "--no-progress")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"wrote 24 samples in 1 shards to {out} (0 skipped)"
    m, samples = read_set(out)
    assert m["encoding"] == "raw" and samples[0]["img"].shape == (32, 32, 1)
