"""Real QuickDraw drawings end to end: every bitmap layout users arrive with, the zero-sample
cases, and download by category name from a real local HTTP server (no test touches the
internet).

The real drawings are ``../shared/data/quickdraw`` (four categories, 3,000 each, shape
(3000, 1, 784)). CI always has them (``.ci/run`` sets WGAN_DIST_REQUIRE_SHARED_DATA=1, and a
missing copy fails there); elsewhere these tests skip and say how to get real data.
"""
from __future__ import annotations

import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

SHARED = REPO.parent / "shared" / "data" / "quickdraw"
CATEGORIES = ("apple", "bicycle", "cat", "fish")


@pytest.fixture(scope="module")
def real() -> Path:
    if not all((SHARED / f"{c}.npy").is_file() for c in CATEGORIES):
        if os.environ.get("WGAN_DIST_REQUIRE_SHARED_DATA"):
            pytest.fail(f"the shared QuickDraw drawings are missing from {SHARED} (CI must have them)")
        pytest.skip(f"no real QuickDraw drawings at {SHARED}: get some with "
                    f"`python -m wgan_dist.shard quickdraw:apple,bicycle,cat,fish -o shards/qd` "
                    f"or put <category>.npy files there")
    return SHARED


def shard(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "wgan_dist.shard", *args, "--no-progress"],
                          cwd=REPO, env=e, capture_output=True, text=True, timeout=300)


def read_images(out: Path) -> tuple[dict, list[np.ndarray], list[int]]:
    from wgan_dist.data.format import decode_image, image_entry, iter_samples, read_manifest, shard_paths

    m = read_manifest(out)
    images, labels = [], []
    for path in shard_paths(out, m):
        for s in iter_samples(str(path)):
            ext, data = image_entry(s)
            images.append(decode_image(data, ext, m["resolution"], m["channels"])[:, :, 0])
            labels.append(int(s["cls"]))
    return m, images, labels


# ------------------------------------------------------------------------------ layouts
def test_shared_files_as_they_are_shard_into_12000_labelled_samples(real, tmp_path):
    r = shard(str(real), "-o", str(tmp_path / "qd"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "qd" / "manifest.json").read_text())
    assert m["total"] == 12000 and m["class_names"] == list(CATEGORIES)
    assert m["per_class"] == {c: 3000 for c in CATEGORIES}
    assert m["inputs"] == m["total"] + len(m["skipped"])  # the README.md is counted, skipped


LAYOUTS = [("n784", lambda a: a.reshape(-1, 784)), ("n1_784", lambda a: a.reshape(-1, 1, 784)),
           ("n28_28", lambda a: a.reshape(-1, 28, 28)), ("n1_28_28", lambda a: a.reshape(-1, 1, 28, 28)),
           ("n28_28_1", lambda a: a.reshape(-1, 28, 28, 1))]
DTYPES = [("uint8", lambda a: a), ("bool", lambda a: a > 127),
          ("float01", lambda a: a.astype(np.float32) / 255), ("float255", lambda a: a.astype(np.float64))]


@pytest.mark.parametrize("layout", [name for name, _ in LAYOUTS])
@pytest.mark.parametrize("dtype", [name for name, _ in DTYPES])
def test_every_bitmap_layout_and_dtype(real, tmp_path, layout, dtype):
    ref = np.load(real / "cat.npy")[:40].reshape(-1, 784)
    arr = dict(DTYPES)[dtype](dict(LAYOUTS)[layout](ref))
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "full_numpy_bitmap_cat.npy", arr)
    r = shard(str(src), "-o", str(tmp_path / "out"), "--seed", "0")
    assert r.returncode == 0, r.stderr
    m, images, labels = read_images(tmp_path / "out")
    assert m["class_names"] == ["cat"] and len(images) == 40
    want = ref > 127 if dtype == "bool" else ref
    want = (want * 255).astype(np.uint8) if dtype == "bool" else want
    got = {img.tobytes() for img in images}
    assert got == {w.reshape(28, 28).tobytes() for w in want}  # exact pixels (any order)


def test_npz_names_with_spaces_and_simplified_ndjson(real, tmp_path):
    from wgan_dist.data.builtin import builtin_drawing

    src = tmp_path / "in"
    src.mkdir()
    np.savez(src / "aircraft carrier.npz", drawings=np.load(real / "fish.npy")[:10])
    np.savez(src / "two.npz", a=np.zeros((2, 784), np.uint8), b=np.zeros((2, 784), np.uint8))
    with open(src / "full_simplified_hot air balloon.ndjson", "w") as f:
        for i in range(6):
            strokes, _ = builtin_drawing(0, i, seed=0)
            f.write(json.dumps({"word": "hot air balloon", "drawing": strokes}) + "\n")
    r = shard(str(src), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["per_class"] == {"aircraft carrier": 10, "hot air balloon": 6}
    (reason,) = [s["reason"] for s in m["skipped"]]
    assert "two.npz: corrupt: cannot read .npz" in reason and "holds 2 arrays" in reason


@pytest.mark.parametrize("arr,why", [
    (np.zeros((5, 3, 3), np.uint8), "shape (5, 3, 3), dtype uint8; expected N drawings of 28x28"),
    (np.zeros((5, 784), np.int32), "shape (5, 784), dtype int32; expected uint8, bool or float"),
    (np.full((5, 784), 300.0), "values up to 300, expected [0, 1] or [0, 255]"),
])
def test_other_arrays_are_skipped_with_file_shape_and_dtype(tmp_path, arr, why):
    np.save(tmp_path / "x.npy", arr)
    r = shard(str(tmp_path / "x.npy"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and why in r.stderr and str(tmp_path / "x.npy") in r.stderr, r.stderr


# ------------------------------------------------------------------------------ zero samples
@pytest.mark.parametrize("case", ["empty", "non-images", "wrong-shape"])
def test_zero_samples_exit_2_with_reasons_and_no_manifest(tmp_path, case):
    src = tmp_path / "src"
    src.mkdir()
    if case == "non-images":
        (src / "notes.txt").write_text("hi")
        (src / "data.csv").write_text("1,2")
    elif case == "wrong-shape":
        np.save(src / "bicycle.npy", np.zeros((3, 1, 7), np.uint8))
    out = tmp_path / "out"
    r = shard(str(src), "-o", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: no inputs" if case == "empty" else "error: no samples written")
    if case != "empty":
        assert "skipped" in r.stderr and str(src) in r.stderr.splitlines()[1]
    assert not (out / "manifest.json").exists() and not out.exists()


# ------------------------------------------------------------------------------ download
class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support; the server's ``drop_first`` makes the first
    response of each file stop half-way (a dropped connection)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        self.server.requests.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.drop_first and self.path not in self.server.dropped:
            self.server.dropped.add(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # cut mid-transfer
            return
        self.wfile.write(body)


@pytest.fixture()
def server(real, tmp_path):
    root = tmp_path / "www"
    (root / "numpy_bitmap").mkdir(parents=True)
    for c in ("bicycle", "cat"):
        (root / "numpy_bitmap" / f"{c}.npy").write_bytes((real / f"{c}.npy").read_bytes())

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    srv = Server(("127.0.0.1", 0), handler)
    srv.requests, srv.drop_first, srv.dropped = [], False, set()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def _env(srv, tmp_path) -> dict[str, str]:
    return {"WGAN_DIST_QUICKDRAW_URL": f"http://127.0.0.1:{srv.server_address[1]}",
            "WGAN_DIST_CACHE": str(tmp_path / "cache")}


def test_download_by_name_into_the_cache(server, real, tmp_path):
    env = _env(server, tmp_path)
    r = shard("quickdraw:bicycle,cat", "-o", str(tmp_path / "qd"), "-s", "28",
              "--limit-per-class", "500", env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "qd" / "manifest.json").read_text())
    assert m["per_class"] == {"bicycle": 500, "cat": 500}
    cached = tmp_path / "cache" / "quickdraw" / "numpy_bitmap" / "cat.npy"
    assert cached.read_bytes() == (real / "cat.npy").read_bytes()
    n = len(server.requests)
    r = shard("quickdraw:cat", "-o", str(tmp_path / "qd2"), env=env)
    assert r.returncode == 0 and len(server.requests) == n  # reused, not downloaded again


def test_interrupted_download_resumes_with_range(server, real, tmp_path):
    server.drop_first = True
    env = _env(server, tmp_path)
    r = shard("quickdraw:bicycle", "-o", str(tmp_path / "qd"), env=env)
    assert r.returncode == 0, r.stderr
    ranges = [rng for path, rng in server.requests if path.endswith("bicycle.npy")]
    assert ranges[0] is None and ranges[1] and int(ranges[1].split("=")[1].split("-")[0]) > 0
    assert "interrupted" in r.stdout
    cached = tmp_path / "cache" / "quickdraw" / "numpy_bitmap" / "bicycle.npy"
    assert cached.read_bytes() == (real / "bicycle.npy").read_bytes()


def test_a_killed_runs_part_file_is_resumed(server, real, tmp_path):
    env = _env(server, tmp_path)
    part = tmp_path / "cache" / "quickdraw" / "numpy_bitmap" / "cat.npy.part"
    part.parent.mkdir(parents=True)
    data = (real / "cat.npy").read_bytes()
    part.write_bytes(data[:100_000])
    r = shard("quickdraw:cat", "-o", str(tmp_path / "qd"), env=env)
    assert r.returncode == 0, r.stderr
    assert server.requests[-1][1] == "bytes=100000-"
    assert (part.parent / "cat.npy").read_bytes() == data and not part.exists()


def test_unknown_category_says_where_the_list_is(server, tmp_path):
    r = shard("quickdraw:bicyclee", "-o", str(tmp_path / "qd"), env=_env(server, tmp_path))
    assert r.returncode == 2, r.stderr
    assert "no QuickDraw category 'bicyclee'" in r.stderr and "categories.txt" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_server_gone_is_one_clear_line(server, tmp_path):
    env = _env(server, tmp_path)
    server.shutdown()
    server.server_close()
    r = shard("quickdraw:cat", "-o", str(tmp_path / "qd"), env=env)
    assert r.returncode == 1, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert "cannot download" in line and "cat.npy" in line and "Traceback" not in r.stderr
    assert not (tmp_path / "qd").exists()
