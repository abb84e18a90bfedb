"""QuickDraw inputs: numpy bitmaps (``.npy``) and simplified drawings (``.ndjson``, rendered
from their strokes at any size)."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from . import builtin
from .records import ConvertOptions, Group, SkipError, gray_to_channels, visible_files

QUICKDRAW_EXTS = (".npy", ".npz", ".ndjson")
# Pen width, in 0..255 canvas units, for rendering .ndjson strokes: close to the look of
# QuickDraw's own 28 px bitmaps.
NDJSON_THICKNESS = 16.0
_QD_PREFIXES = ("full_numpy_bitmap_", "full_simplified_", "full_raw_", "full-numpy_bitmap-",
                "full-simplified-")


def quickdraw_class(path: str) -> str:
    """``full_numpy_bitmap_bicycle.npy`` / ``full_simplified_aircraft carrier.ndjson`` /
    ``bicycle.npz`` -> ``bicycle`` / ``aircraft carrier`` / ``bicycle``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    for p in _QD_PREFIXES:
        if stem.startswith(p):
            return stem[len(p):]
    return stem


# Bitmap arrays as found in the wild: one 28x28 drawing per row, however it is laid out.
BITMAP_SHAPES = ((784,), (1, 784), (28, 28), (1, 28, 28), (28, 28, 1))


def open_bitmaps(path: str) -> np.ndarray:
    """The drawings array of a ``.npy`` (memory-mapped) or a one-array ``.npz``."""
    if path.lower().endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if len(names) != 1:
                raise ValueError(f"holds {len(names)} arrays ({', '.join(names[:5])}); one is expected")
            return z[names[0]]
    return np.load(path, mmap_mode="r", allow_pickle=False)


def bitmap_scale(arr: np.ndarray) -> float:
    """The factor that brings the array's values to 0..255 (bool and [0, 1] floats: 255).
    Raises ValueError for dtypes or value ranges that are not bitmaps."""
    if arr.dtype == np.uint8:
        return 1.0
    if arr.dtype == np.bool_:
        return 255.0
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if lo < 0 or not np.isfinite(hi):
            raise ValueError(f"values from {lo:g} to {hi:g}, expected [0, 1] or [0, 255]")
        if hi <= 1.0:
            return 255.0
        if hi <= 255.0:
            return 1.0
        raise ValueError(f"values up to {hi:g}, expected [0, 1] or [0, 255]")
    raise ValueError("expected uint8, bool or float")


def _npy_group(path: str) -> Group:
    skip = lambda kind, detail: Group("skip", None, 1, items=[(path, kind, detail)])  # noqa: E731
    try:
        arr = open_bitmaps(path)
    except Exception as exc:  # not an .npy, pickled objects, truncated header, several arrays
        return skip("corrupt", f"cannot read {os.path.splitext(path)[1]} ({type(exc).__name__}: {exc})")
    layout = f"shape {tuple(arr.shape)}, dtype {arr.dtype}"
    if arr.ndim < 2 or tuple(arr.shape[1:]) not in BITMAP_SHAPES:
        return skip("wrong shape", f"{layout}; expected N drawings of 28x28: (N, 784), (N, 1, 784), "
                                   f"(N, 28, 28), (N, 1, 28, 28) or (N, 28, 28, 1)")
    try:
        scale = bitmap_scale(arr)
    except ValueError as exc:
        return skip("wrong dtype", f"{layout}; {exc}")
    return Group("npy", quickdraw_class(path), int(arr.shape[0]), path=path, items=scale)


def _ndjson_groups(path: str) -> list[Group]:
    """One group per ``word`` (usually one per file); bad lines become skip items."""
    by_cls: dict[str, list[tuple[int, int]]] = {}
    bad: list[tuple[str, str, str]] = []
    default_cls = quickdraw_class(path)
    with open(path, "rb") as f:
        offset = 0
        for lineno, line in enumerate(f, start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue  # blank lines are not inputs
            try:
                obj = json.loads(line)
            except ValueError as exc:
                bad.append((f"{path}:{lineno}", "not JSON", str(exc)))
                continue
            if not isinstance(obj, dict):
                bad.append((f"{path}:{lineno}", "bad drawing", "line is not a JSON object"))
                continue
            word = obj.get("word")
            cls = word if isinstance(word, str) and word else default_cls
            by_cls.setdefault(cls, []).append((start, lineno))
    groups = [Group("ndjson", c, len(v), path=path, items=np.asarray(v, dtype=np.int64))
              for c, v in sorted(by_cls.items())]
    if bad:
        groups.append(Group("skip", None, len(bad), items=bad))
    return groups


def enumerate_quickdraw(path: str) -> list[Group]:
    """An ``.npy``/``.ndjson`` file, or a folder of them (other files are skipped)."""
    files = [path] if os.path.isfile(path) else visible_files(path)
    groups: list[Group] = []
    for f in files:
        ext = os.path.splitext(f)[1].lower()
        if ext in (".npy", ".npz"):
            groups.append(_npy_group(f))
        elif ext == ".ndjson":
            groups += _ndjson_groups(f)
        else:
            groups.append(Group("skip", None, 1, items=[(f, "not QuickDraw", "not .npy/.npz/.ndjson")]))
    return groups


_NPY_CACHE: dict[str, np.ndarray] = {}  # per process: re-opening an mmap per row is slow


def _check_drawing(drawing: Any) -> None:
    if not isinstance(drawing, list) or not drawing:
        raise SkipError("bad drawing", "missing or empty 'drawing'")
    for s in drawing:
        ok = isinstance(s, list) and len(s) >= 2 and all(isinstance(v, list) for v in s[:2])
        if not ok or len(s[0]) != len(s[1]) or not s[0]:
            raise SkipError("bad drawing", "a stroke is not [[xs], [ys]] of equal length")
        if not all(isinstance(v, (int, float)) for v in s[0] + s[1]):
            raise SkipError("bad drawing", "non-numeric coordinate")


def load_ndjson(path: str, offset: int, opts: ConvertOptions) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(offset)
        obj = json.loads(f.readline())
    drawing = obj.get("drawing")
    _check_drawing(drawing)
    strokes = builtin.fit_strokes(drawing)
    return gray_to_channels(builtin.render_strokes(strokes, opts.resolution, NDJSON_THICKNESS),
                             opts)


def load_npy_row(path: str, row: int, opts: ConvertOptions, scale: float = 1.0) -> np.ndarray:
    """Drawing ``row`` as uint8 (28 x 28), values brought to 0..255 by ``scale``."""
    arr = _NPY_CACHE.get(path)
    if arr is None:
        arr = _NPY_CACHE[path] = open_bitmaps(path)
    a = np.asarray(arr[row]).reshape(28, 28)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return gray_to_channels(a, opts)
