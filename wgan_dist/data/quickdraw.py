"""QuickDraw inputs: numpy bitmaps (``.npy``) and simplified drawings (``.ndjson``, rendered
from their strokes at any size)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import builtin, npz
from .names import class_name_problem, is_utf8, printable
from .records import ConvertOptions, Group, SkipError, gray_to_channels, visible_files

QUICKDRAW_EXTS = (".npy", ".npz", ".ndjson")
# Pen width, in 0..255 canvas units, for rendering .ndjson strokes: close to the look of
# QuickDraw's own 28 px bitmaps.
NDJSON_THICKNESS = 16.0
# Stroke coordinates beyond this are not drawings (simplified files hold 0..255, raw ones
# screen pixels); a NaN, an Infinity or a 1e308 would otherwise render as a blank sample.
MAX_COORD = 1e6
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
    """The drawings array of a ``.npy``, memory-mapped (``.npz``: see ``npz``)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def scale_for(dtype: np.dtype, lo: float = 0.0, hi: float = 0.0) -> float:
    """The factor that brings values from ``lo`` to ``hi`` to 0..255 (bool and [0, 1]
    floats: 255). Raises ValueError for dtypes or value ranges that are not bitmaps."""
    if dtype == np.uint8:
        return 1.0
    if dtype == np.bool_:
        return 255.0
    if np.issubdtype(dtype, np.floating):
        if lo < 0 or not np.isfinite(hi):
            raise ValueError(f"values from {lo:g} to {hi:g}, expected [0, 1] or [0, 255]")
        if hi <= 1.0:
            return 255.0
        if hi <= 255.0:
            return 1.0
        raise ValueError(f"values up to {hi:g}, expected [0, 1] or [0, 255]")
    raise ValueError("expected uint8, bool or float")


def bitmap_scale(arr: np.ndarray) -> float:
    """``scale_for`` an array's dtype and values."""
    if np.issubdtype(arr.dtype, np.floating):
        return scale_for(arr.dtype, float(np.nanmin(arr)), float(np.nanmax(arr)))
    return scale_for(arr.dtype)


def _npy_group(path: str) -> Group:
    """An ``.npy`` (memory-mapped) or ``.npz`` (its header only) as one group of rows."""
    skip = lambda kind, detail: Group("skip", None, 1, items=[(path, kind, detail)])  # noqa: E731
    is_npz = path.lower().endswith(".npz")
    try:
        arr = npz.read_header(path) if is_npz else open_bitmaps(path)
    except Exception as exc:  # not an .npy, pickled objects, truncated header, several arrays
        return skip("corrupt", f"cannot read {os.path.splitext(path)[1]} ({type(exc).__name__}: {exc})")
    layout = f"shape {tuple(arr.shape)}, dtype {arr.dtype}"
    if len(arr.shape) < 2 or tuple(arr.shape[1:]) not in BITMAP_SHAPES:
        return skip("wrong shape", f"{layout}; expected N drawings of 28x28: (N, 784), (N, 1, 784), "
                                   f"(N, 28, 28), (N, 1, 28, 28) or (N, 28, 28, 1)")
    try:
        scale = scale_for(arr.dtype, 0.0, 1.0) if is_npz else bitmap_scale(arr)
    except ValueError as exc:  # an .npz's float range is checked when its rows are read
        return skip("wrong dtype", f"{layout}; {exc}")
    if is_npz:
        return Group("npz", quickdraw_class(path), int(arr.shape[0]), path=path, items=arr)
    return Group("npy", quickdraw_class(path), int(arr.shape[0]), path=path, items=scale)


@dataclass(frozen=True)
class NpzRows:
    """The rows of an ``.npz`` a run selected (sorted), read in one streamed pass; or why
    they could not be read (each selected row is then skipped with that reason)."""
    rows: np.ndarray
    data: np.ndarray | None
    scale: float = 1.0
    error: tuple[str, str] | None = None


def _read_npz_rows(path: str, header: npz.NpzHeader, rows: np.ndarray) -> NpzRows:
    floats = header.dtype.kind == "f"
    try:
        data, lo, hi = npz.read_rows(path, header, rows, whole_range=floats)
    except Exception as exc:  # a damaged member (CRC, truncation): its rows are skipped
        return NpzRows(rows, None, error=("corrupt", f"{type(exc).__name__}: {exc}"))
    try:
        scale = scale_for(header.dtype, lo, hi)
    except ValueError as exc:
        return NpzRows(rows, None, error=("wrong dtype", f"dtype {header.dtype}; {exc}"))
    return NpzRows(np.unique(rows), data, scale)


def prepare_npz(groups: list[Group], order: np.ndarray) -> None:
    """Read, in the main process, the rows of every ``.npz`` group that ``order`` (global
    indices) selects: memory follows ``--limit``, not the size the file declares."""
    offsets = np.cumsum([0] + [g.count for g in groups])
    for gi, g in enumerate(groups):
        if g.loader == "npz" and isinstance(g.items, npz.NpzHeader):
            mine = order[(order >= offsets[gi]) & (order < offsets[gi + 1])] - offsets[gi]
            g.items = _read_npz_rows(g.path, g.items, mine)


def parse_line(line: bytes) -> Any:
    """One ``.ndjson`` line as JSON; ValueError for anything that is not (a line nested so
    deeply that the parser recurses out of stack is not JSON we can use either)."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _line_class(obj: Any, default_cls: str) -> tuple[str | None, str, str]:
    """(class, skip kind, detail) of a parsed line: its ``word``, else the file's class."""
    if not isinstance(obj, dict):
        return None, "bad drawing", "line is not a JSON object"
    word = obj.get("word")
    cls = word if isinstance(word, str) and word else default_cls
    why = class_name_problem(cls)
    if why:
        return None, "bad class name", f"word {printable(cls)[:80]!r}: {why}"
    return cls, "", ""


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
                obj = parse_line(line)
            except ValueError as exc:
                bad.append((f"{path}:{lineno}", "not JSON", str(exc)))
                continue
            cls, kind, detail = _line_class(obj, default_cls)
            if cls is None:
                bad.append((f"{path}:{lineno}", kind, detail))
                continue
            by_cls.setdefault(cls, []).append((start, lineno))
    groups = [Group("ndjson", c, len(v), path=path, items=np.asarray(v, dtype=np.int64))
              for c, v in sorted(by_cls.items())]
    if bad:
        groups.append(Group("skip", None, len(bad), items=bad))
    return groups


def _file_problem(path: str) -> tuple[str, str] | None:
    """(skip kind, detail) for a QuickDraw file that cannot be read as one, else None."""
    if not is_utf8(path):
        return "bad file name", "not valid UTF-8 (rename the file)"
    if os.path.splitext(path)[1].lower() not in QUICKDRAW_EXTS:
        return "not QuickDraw", "not .npy/.npz/.ndjson"
    why = class_name_problem(quickdraw_class(path))
    return ("bad class name", f"from the file name: {why}") if why else None


def enumerate_quickdraw(path: str) -> list[Group]:
    """An ``.npy``/``.ndjson`` file, or a folder of them (other files are skipped)."""
    files = [path] if os.path.isfile(path) else visible_files(path)
    groups: list[Group] = []
    for f in files:
        problem = _file_problem(f)
        if problem:
            groups.append(Group("skip", None, 1, items=[(printable(f), *problem)]))
            continue
        try:
            groups += [_npy_group(f)] if f.lower().endswith((".npy", ".npz")) else _ndjson_groups(f)
        except OSError as exc:  # unreadable (permissions, I/O error): this file, not the run
            groups.append(Group("skip", None, 1, items=[(f, "unreadable", str(exc))]))
    return groups


_NPY_CACHE: dict[str, np.ndarray] = {}  # per process: re-opening an mmap per row is slow


def _check_drawing(drawing: Any) -> None:
    if not isinstance(drawing, list) or not drawing:
        raise SkipError("bad drawing", "missing or empty 'drawing'")
    for s in drawing:
        ok = isinstance(s, list) and len(s) >= 2 and all(isinstance(v, list) for v in s[:2])
        if not ok or len(s[0]) != len(s[1]) or not s[0]:
            raise SkipError("bad drawing", "a stroke is not [[xs], [ys]] of equal length")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in s[0] + s[1]):
            raise SkipError("bad drawing", "non-numeric coordinate")
        if not all(-MAX_COORD <= v <= MAX_COORD for v in s[0] + s[1]):  # False for NaN too
            raise SkipError("bad drawing", f"a coordinate is not a finite number within "
                                           f"+-{MAX_COORD:g} (NaN, Infinity, 1e308, ...)")


def load_ndjson(path: str, offset: int, opts: ConvertOptions) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(offset)
        obj = parse_line(f.readline())
    drawing = obj.get("drawing")
    _check_drawing(drawing)
    strokes = builtin.fit_strokes(drawing)
    return gray_to_channels(builtin.render_strokes(strokes, opts.resolution, NDJSON_THICKNESS),
                             opts)


def load_npz_row(group: Group, row: int, opts: ConvertOptions) -> np.ndarray:
    """Drawing ``row`` of an ``.npz`` group (its rows read by ``prepare_npz``, or all of them
    now when nothing prepared it)."""
    if isinstance(group.items, npz.NpzHeader):
        group.items = _read_npz_rows(group.path, group.items, np.arange(group.count))
    held: NpzRows = group.items
    if held.error:
        raise SkipError(*held.error)
    k = int(np.searchsorted(held.rows, row))
    if k >= len(held.rows) or held.rows[k] != row:
        raise SkipError("unreadable", f"row {row} was not selected when the file was read")
    return bitmap_row(held.data[k], opts, held.scale)


def load_npy_row(path: str, row: int, opts: ConvertOptions, scale: float = 1.0) -> np.ndarray:
    """Drawing ``row`` as uint8 (28 x 28), values brought to 0..255 by ``scale``."""
    arr = _NPY_CACHE.get(path)
    if arr is None:
        arr = _NPY_CACHE[path] = open_bitmaps(path)
    return bitmap_row(arr[row], opts, scale)


def bitmap_row(row: np.ndarray, opts: ConvertOptions, scale: float) -> np.ndarray:
    a = np.asarray(row).reshape(28, 28)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return gray_to_channels(a, opts)
