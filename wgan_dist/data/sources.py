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

import os
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import builtin
from .quickdraw import (NDJSON_THICKNESS, QUICKDRAW_EXTS, enumerate_quickdraw, load_ndjson,
                        load_npy_row, load_npz_row, prepare_npz, quickdraw_class)
from .names import class_name_problem, is_utf8, printable
from .records import (ConvertOptions, Group, Record, Skip, SkipError, gray_to_channels,
                      visible_files)

__all__ = ["NDJSON_THICKNESS", "ConvertOptions", "Group", "Record", "Skip", "SkipError",
           "collect", "iter_records", "load_item", "prepare_npz", "quickdraw_class"]

IMAGE_EXTS = frozenset(
    ".png .jpg .jpeg .bmp .gif .webp .tif .tiff .ppm .pgm .pbm .pnm .jfif".split())
KINDS = ("auto", "folder", "quickdraw", "celeba", "builtin")


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
        with Image.open(path) as img:  # reads the header only
            w, h = img.size
            if opts.max_pixels and w * h > opts.max_pixels:
                raise SkipError("too large", f"{w}x{h} = {w * h:,} pixels > --max-pixels "
                                             f"{opts.max_pixels:,}; not decoded")
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


# ---------------------------------------------------------------------------------------------
# Enumeration
# ---------------------------------------------------------------------------------------------
def _image_groups(files: list[str], cls: str | None) -> list[Group]:
    """Image files -> one "image" group; other extensions and file names that are not
    UTF-8 (a manifest cannot name them) -> a "skip" group."""
    def problem(f: str) -> tuple[str, str] | None:
        if not is_utf8(f):
            return "bad file name", "not valid UTF-8 (rename the file)"
        ext = os.path.splitext(f)[1].lower()
        return None if ext in IMAGE_EXTS else ("not an image", f"extension {ext or '(none)'!r}")
    imgs = [f for f in files if problem(f) is None]
    other = [(printable(f), *why) for f in files if (why := problem(f)) is not None]
    groups = [Group("image", cls, len(imgs), items=imgs)]
    if other:
        groups.append(Group("skip", None, len(other), items=other))
    return groups


def _unusable_class(folder: str, why: str) -> Group:
    """Every file of a class folder whose name cannot be a class name, skipped and listed."""
    files = visible_files(folder)
    detail = f"class folder name {printable(os.path.basename(folder))[:80]!r}: {why}"
    return Group("skip", None, len(files), items=[(printable(f), "bad class name", detail)
                                                  for f in files])


def enumerate_folder(root: str) -> list[Group]:
    """Class subfolders (sorted names) are labels; a flat folder is unlabelled."""
    subdirs = sorted(d for d in os.listdir(root)
                     if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not subdirs:
        return _image_groups(visible_files(root), None)
    groups = []
    for d in subdirs:
        why = class_name_problem(d)
        groups += [_unusable_class(os.path.join(root, d), why)] if why else \
            _image_groups(visible_files(os.path.join(root, d)), d)
    loose = [os.path.join(root, f) for f in sorted(os.listdir(root))
             if not f.startswith(".") and os.path.isfile(os.path.join(root, f))]
    if loose:  # a labelled folder gives loose files no class; count them, don't guess one
        groups.append(Group("skip", None, len(loose),
                            items=[(printable(f), "no class", "file outside the class subfolders")
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
    return _image_groups(visible_files(img_dir), None)


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
        raise ValueError(f"{path}: a single input file must be .npy, .npz or .ndjson")
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
def load_item(group: Group, j: int, opts: ConvertOptions) -> Record | Skip:
    """Load item ``j`` of ``group``; every failure becomes a ``Skip`` (label left None)."""
    if group.loader == "skip":
        return Skip(*group.items[j])
    if group.loader == "image":
        src = group.items[j]
    elif group.loader in ("npy", "npz"):
        src = f"{group.path}#{j}"
    elif group.loader == "ndjson":
        src = f"{group.path}:{int(group.items[j][1])}"
    else:
        src = f"builtin:{group.cls}#{j}"
    try:
        if group.loader == "image":
            return Record(src, read_image(src, opts))
        if group.loader == "npy":
            return Record(src, load_npy_row(group.path, j, opts, group.items or 1.0))
        if group.loader == "npz":
            return Record(src, load_npz_row(group, j, opts))
        if group.loader == "ndjson":
            return Record(src, load_ndjson(group.path, int(group.items[j][0]), opts))
        sketch = builtin.render_sample(group.param, j, opts.seed, opts.resolution)
        return Record(src, gray_to_channels(sketch, opts))
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
