"""What every input reader produces: records, skips, groups of enumerated inputs, and the
conversion options all workers share (``sources`` and ``quickdraw`` both build on these)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


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

    ``loader``: "image" (items: paths), "npy" (path, rows 0..count-1), "npz" (path, items:
    its header, then the rows selected, ``quickdraw.prepare_npz``), "ndjson" (path,
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
    max_pixels: int | None = None  # larger images are skipped, checked before decoding


# The shard command's default --max-pixels: 64 Mpx (an 8000x8000 photo) decodes to ~200 MB
# of RGB; PIL's own bomb check only stops images past 179 Mpx, which decode to ~2 GB.
DEFAULT_MAX_PIXELS = 64_000_000


def visible_files(root: str) -> list[str]:
    """Every regular, non-hidden file under root (hidden dirs pruned), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                   if not f.startswith(".") and os.path.isfile(os.path.join(dirpath, f)))
    return out


def gray_to_channels(a: np.ndarray, opts: ConvertOptions) -> np.ndarray:
    """A uint8 (h, w) sketch -> (res, res, channels), LANCZOS-resized when needed."""
    res = opts.resolution
    if a.shape != (res, res):
        a = np.asarray(Image.fromarray(a, "L").resize((res, res), Image.LANCZOS))
    return np.repeat(a[:, :, None], opts.channels, axis=2)
