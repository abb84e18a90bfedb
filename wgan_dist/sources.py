"""Input readers: turn folders, QuickDraw files, CelebA or the built-in set into records.

Reading happens in two steps so the writer can shuffle and parallelise cheaply:

1. *enumerate* (``collect``): list every input as a compact ``Group`` -- a list of image
   paths, an ``.npy`` file and its row count, an ``.ndjson`` file and its line offsets, a
   built-in category -- without decoding anything. Inputs known to be bad at this point
   (a ``.txt`` file, an ``.npy`` of the wrong shape, a non-JSON line) become items of a
   ``"skip"`` group, so they are counted like any other input.
2. *load* (``load_item``): decode/convert one item into a ``Record`` (a uint8 ``(H, W, C)``
   image) or a ``Skip`` (with a short kind such as ``"corrupt"`` and a detail).

Every input ends as exactly one ``Record`` or ``Skip``, so inputs == written + skipped.

Image conversion rules (folders and CelebA), see ``convert_image``:
EXIF orientation is applied; palette, CMYK, YCbCr, 1-bit and 16-bit images are converted to
8-bit (16-bit is *scaled*, ``v * 255 / 65535``, not clipped); transparency is composited on
**black**, matching the 0 background that sketch data uses; then a centre square crop (the
shorter side, or ``crop`` pixels) is resized to the target with LANCZOS. Smaller images are
upscaled by default; ``min_size`` skips images whose shorter side is below it instead.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import builtin

IMAGE_EXTS = frozenset(
    ".png .jpg .jpeg .bmp .gif .webp .tif .tiff .ppm .pgm .pbm .pnm .jfif".split())
QUICKDRAW_EXTS = (".npy", ".ndjson")
KINDS = ("auto", "folder", "quickdraw", "celeba", "builtin")
# Pen width, in 0..255 canvas units, for rendering .ndjson strokes: close to the look of
# QuickDraw's own 28 px bitmaps.
NDJSON_THICKNESS = 16.0
_QD_PREFIXES = ("full_numpy_bitmap_", "full_simplified_", "full_raw_", "full-numpy_bitmap-")


class SkipError(Exception):
    """An input that cannot become a sample; ``kind`` groups reasons in the summary."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


@dataclass(frozen=True)
class Record:
    """A converted sample: ``image`` is uint8 ``(H, W, C)``; ``label`` indexes class_names."""
    src_id: str
    image: np.ndarray
    label: int | None = None


@dataclass(frozen=True)
class Skip:
    """An input that was not written, and why."""
    src_id: str
    kind: str
    detail: str = ""

    @property
    def reason(self) -> str:
        """One line naming the input, the kind of problem and the detail."""
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.src_id}: {self.kind}{tail}".replace("\n", " ")


@dataclass
class Group:
    """A run of enumerated inputs that load the same way and share one class.

    ``loader``: "image" (items: paths), "npy" (path, rows 0..count-1), "ndjson" (path,
    items: int64 array of (byte offset, line number)), "builtin" (param: category index),
    "skip" (items: list of (src_id, kind, detail)).
    """
    loader: str
    cls: str | None
    count: int
    path: str = ""
    items: Any = None
    param: int = 0


@dataclass(frozen=True)
class ConvertOptions:
    """How every input is turned into a sample (shared by all workers)."""
    resolution: int = 28
    channels: int = 1
    crop: int | None = None
    min_size: int | None = None
    seed: int = 0  # the built-in set's drawing seed


# ---------------------------------------------------------------------------------------------
# Image conversion
# ---------------------------------------------------------------------------------------------
def _to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL mode -> "L" or "RGB" (or "RGBA" when it has transparency), 8 bits."""
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L, I (16-bit sources opened as 32-bit)
        a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a  # 0..1 floats or 0..255
        return Image.fromarray(np.clip(np.nan_to_num(np.rint(a)), 0, 255).astype(np.uint8), "L")
    if img.mode == "1":
        return img.convert("L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa")
    if has_alpha or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        return img.convert("RGBA")
    if img.mode == "P":
        return img.convert("RGB")
    return img


def convert_image(img: Image.Image, opts: ConvertOptions) -> np.ndarray:
    """Convert a loaded PIL image by the module's rules to uint8 ``(res, res, channels)``."""
    img = ImageOps.exif_transpose(img)
    img = _to_8bit(img)
    if img.mode == "RGBA":
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img).convert("RGB")
    target = "L" if opts.channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)  # CMYK/YCbCr/LAB -> RGB, RGB -> luma, L -> replicated RGB
    w, h = img.size
    if opts.min_size and min(w, h) < opts.min_size:
        raise SkipError("too small", f"{w}x{h}, shorter side < --min-size {opts.min_size}")
    side = min(w, h, opts.crop) if opts.crop else min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    res = opts.resolution
    if side != res:
        # reducing_gap: box-reduce large images first (fast), LANCZOS for the last factor.
        img = img.resize((res, res), Image.LANCZOS, reducing_gap=3.0)
    a = np.asarray(img, dtype=np.uint8)
    return a.reshape(res, res, opts.channels)


def read_image(path: str, opts: ConvertOptions) -> np.ndarray:
    """Open, fully decode and convert one image file; raises ``SkipError`` on any problem."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in IMAGE_EXTS:
        raise SkipError("not an image", f"extension {ext or '(none)'!r}")
    try:
        if os.path.getsize(path) == 0:
            raise SkipError("empty file", "zero bytes")
        with Image.open(path) as img:
            img.load()  # decode now: truncation and bad data surface here, not later
            return convert_image(img, opts)
    except SkipError:
        raise
    except UnidentifiedImageError:
        raise SkipError("corrupt", "cannot identify image file") from None
    except Image.DecompressionBombError as exc:
        raise SkipError("too large", str(exc)) from None
    except Exception as exc:  # one bad file must never end the run: PIL raises many types
        msg = f"{type(exc).__name__}: {exc}"
        raise SkipError("truncated" if "truncat" in msg.lower() else "corrupt", msg) from None


def _gray_to_channels(a: np.ndarray, opts: ConvertOptions) -> np.ndarray:
    """A uint8 (h, w) sketch -> (res, res, channels), LANCZOS-resized when needed."""
    res = opts.resolution
    if a.shape != (res, res):
        a = np.asarray(Image.fromarray(a, "L").resize((res, res), Image.LANCZOS))
    return np.repeat(a[:, :, None], opts.channels, axis=2)


# ---------------------------------------------------------------------------------------------
# Enumeration
# ---------------------------------------------------------------------------------------------
def _visible_files(root: str) -> list[str]:
    """Every regular, non-hidden file under root (hidden dirs pruned), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                   if not f.startswith(".") and os.path.isfile(os.path.join(dirpath, f)))
    return out


def _image_groups(files: list[str], cls: str | None) -> list[Group]:
    """Image files -> one "image" group; other extensions -> a "skip" group."""
    imgs = [f for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTS]
    other = [(f, "not an image", f"extension {os.path.splitext(f)[1] or '(none)'!r}")
             for f in files if os.path.splitext(f)[1].lower() not in IMAGE_EXTS]
    groups = [Group("image", cls, len(imgs), items=imgs)]
    if other:
        groups.append(Group("skip", None, len(other), items=other))
    return groups


def enumerate_folder(root: str) -> list[Group]:
    """Class subfolders (sorted names) are labels; a flat folder is unlabelled."""
    subdirs = sorted(d for d in os.listdir(root)
                     if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not subdirs:
        return _image_groups(_visible_files(root), None)
    groups = []
    for d in subdirs:
        groups += _image_groups(_visible_files(os.path.join(root, d)), d)
    loose = [os.path.join(root, f) for f in sorted(os.listdir(root))
             if not f.startswith(".") and os.path.isfile(os.path.join(root, f))]
    if loose:  # a labelled folder gives loose files no class; count them, don't guess one
        groups.append(Group("skip", None, len(loose),
                            items=[(f, "no class", "file outside the class subfolders")
                                   for f in loose]))
    return groups


def find_celeba_dir(path: str) -> str | None:
    """The ``img_align_celeba`` folder: ``path`` itself, or one or two levels below it.

    Kaggle's archive nests ``img_align_celeba/img_align_celeba/``; the innermost wins.
    """
    if not os.path.isdir(path):
        return None
    subdirs = [os.path.join(path, d) for d in sorted(os.listdir(path))
               if not d.startswith(".") and os.path.isdir(os.path.join(path, d))]
    for base in [path] + subdirs:
        for cand in (base, os.path.join(base, "img_align_celeba")):
            if os.path.basename(os.path.normpath(cand)) == "img_align_celeba" \
                    and os.path.isdir(cand):
                inner = os.path.join(cand, "img_align_celeba")
                return inner if os.path.isdir(inner) else cand
    return None


def enumerate_celeba(path: str) -> list[Group]:
    """Unlabelled JPEGs of ``img_align_celeba`` (found inside ``path`` if needed)."""
    img_dir = find_celeba_dir(path)
    if img_dir is None:
        raise FileNotFoundError(f"no img_align_celeba folder in {path}")
    return _image_groups(_visible_files(img_dir), None)


def quickdraw_class(path: str) -> str:
    """``full_numpy_bitmap_bicycle.npy`` / ``bicycle.ndjson`` -> ``bicycle``."""
    stem = os.path.splitext(os.path.basename(path))[0]
    for p in _QD_PREFIXES:
        if stem.startswith(p):
            return stem[len(p):]
    return stem


def _npy_group(path: str) -> Group:
    skip = lambda kind, detail: Group("skip", None, 1, items=[(path, kind, detail)])  # noqa: E731
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # not an .npy, pickled objects, truncated header...
        return skip("corrupt", f"cannot read .npy ({type(exc).__name__}: {exc})")
    if arr.ndim != 2 or arr.shape[1] != 784:
        return skip("wrong shape", f"shape {tuple(arr.shape)}, expected (N, 784)")
    if arr.dtype != np.uint8:
        return skip("wrong dtype", f"dtype {arr.dtype}, expected uint8")
    return Group("npy", quickdraw_class(path), int(arr.shape[0]), path=path)


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
    files = [path] if os.path.isfile(path) else _visible_files(path)
    groups: list[Group] = []
    for f in files:
        ext = os.path.splitext(f)[1].lower()
        if ext == ".npy":
            groups.append(_npy_group(f))
        elif ext == ".ndjson":
            groups += _ndjson_groups(f)
        else:
            groups.append(Group("skip", None, 1, items=[(f, "not QuickDraw", "not .npy/.ndjson")]))
    return groups


def enumerate_builtin(per_class: int) -> list[Group]:
    """One group per built-in category (labels follow ``builtin.CATEGORIES``, sorted)."""
    return [Group("builtin", name, per_class, param=c)
            for c, name in enumerate(builtin.CATEGORIES)]


def detect_kind(path: str) -> str:
    """The ``--kind auto`` rule: builtin / quickdraw / celeba / folder."""
    if path == "builtin":
        return "builtin"
    if not os.path.exists(path):
        raise FileNotFoundError(f"input not found: {path}")
    if os.path.isfile(path):
        if path.lower().endswith(QUICKDRAW_EXTS):
            return "quickdraw"
        raise ValueError(f"{path}: a single input file must be .npy or .ndjson")
    if find_celeba_dir(path) is not None:
        return "celeba"
    names = [n.lower() for n in os.listdir(path) if not n.startswith(".")]
    if any(n.endswith(QUICKDRAW_EXTS) for n in names):
        return "quickdraw"
    return "folder"


def collect(paths: list[str], kind: str = "auto", builtin_per_class: int = 2000
            ) -> tuple[str, list[Group]]:
    """Enumerate every input of every path; all paths must resolve to the same kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    kinds = {detect_kind(p) if kind == "auto" else kind for p in paths}
    if len(kinds) != 1:
        raise ValueError(f"inputs resolve to different kinds {sorted(kinds)}; "
                         "shard them separately or pass --kind")
    resolved = kinds.pop()
    groups: list[Group] = []
    for p in paths:
        if resolved != "builtin" and not os.path.exists(p):
            raise FileNotFoundError(f"input not found: {p}")
        groups += {"builtin": lambda: enumerate_builtin(builtin_per_class),
                   "folder": lambda: enumerate_folder(p),
                   "quickdraw": lambda: enumerate_quickdraw(p),
                   "celeba": lambda: enumerate_celeba(p)}[resolved]()
    return resolved, groups


# ---------------------------------------------------------------------------------------------
# Loading one item (runs in worker processes)
# ---------------------------------------------------------------------------------------------
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


def _load_ndjson(path: str, offset: int, opts: ConvertOptions) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(offset)
        obj = json.loads(f.readline())
    drawing = obj.get("drawing")
    _check_drawing(drawing)
    strokes = builtin.fit_strokes(drawing)
    return _gray_to_channels(builtin.render_strokes(strokes, opts.resolution, NDJSON_THICKNESS),
                             opts)


def load_item(group: Group, j: int, opts: ConvertOptions) -> Record | Skip:
    """Load item ``j`` of ``group``; every failure becomes a ``Skip`` (label left None)."""
    if group.loader == "skip":
        return Skip(*group.items[j])
    if group.loader == "image":
        src = group.items[j]
    elif group.loader == "npy":
        src = f"{group.path}#{j}"
    elif group.loader == "ndjson":
        src = f"{group.path}:{int(group.items[j][1])}"
    else:
        src = f"builtin:{group.cls}#{j}"
    try:
        if group.loader == "image":
            return Record(src, read_image(src, opts))
        if group.loader == "npy":
            arr = _NPY_CACHE.get(group.path)
            if arr is None:
                arr = _NPY_CACHE[group.path] = np.load(group.path, mmap_mode="r")
            return Record(src, _gray_to_channels(np.array(arr[j]).reshape(28, 28), opts))
        if group.loader == "ndjson":
            return Record(src, _load_ndjson(group.path, int(group.items[j][0]), opts))
        sketch = builtin.render_sample(group.param, j, opts.seed, opts.resolution)
        return Record(src, _gray_to_channels(sketch, opts))
    except SkipError as exc:
        return Skip(src, exc.kind, exc.detail)
    except Exception as exc:  # never end a run on one input (unreadable file, bad JSON ...)
        return Skip(src, "unreadable", f"{type(exc).__name__}: {exc}")


def class_names_of(groups: list[Group]) -> list[str]:
    """Sorted class names of the loadable groups ([] when unlabelled)."""
    return sorted({g.cls for g in groups if g.loader != "skip" and g.cls is not None})


def iter_records(path: str, kind: str = "auto", opts: ConvertOptions = ConvertOptions(),
                 builtin_per_class: int = 2000) -> Iterator[Record | Skip]:
    """Every input of ``path`` in enumeration order (no shuffle), labels resolved."""
    _, groups = collect([path], kind, builtin_per_class)
    index = {c: i for i, c in enumerate(class_names_of(groups))}
    for g in groups:
        for j in range(g.count):
            r = load_item(g, j, opts)
            if isinstance(r, Record) and g.cls is not None:
                r = Record(r.src_id, r.image, index[g.cls])
            yield r
