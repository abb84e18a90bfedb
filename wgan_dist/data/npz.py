"""One-array ``.npz`` files (QuickDraw bitmaps saved with ``np.savez_compressed``), read lazily.

``np.load(path)[name]`` inflates the whole member at once: a 2.4 MB zip of zeros that
declares a 3 GB array costs 3 GB of memory, whatever ``--limit`` says. Here enumeration reads
only the zip directory and the ``.npy`` header (and checks that the two agree on the size),
and loading streams the member through in bounded chunks, keeping only the rows the run
selected: ``--limit 10`` holds 10 rows, never the array.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass

import numpy as np

CHUNK_BYTES = 4 << 20  # bytes inflated at a time while streaming a member


@dataclass(frozen=True)
class NpzHeader:
    """What an ``.npz``'s one array declares: ``shape`` and ``dtype`` (C order)."""
    member: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def _open_member(z: zipfile.ZipFile) -> zipfile.ZipInfo:
    members = [i for i in z.infolist() if not i.is_dir()]
    if len(members) != 1 or not members[0].filename.endswith(".npy"):
        shown = ", ".join(i.filename.removesuffix(".npy") for i in members[:5])
        raise ValueError(f"holds {len(members)} arrays ({shown}); one is expected")
    return members[0]


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def read_header(path: str) -> NpzHeader:
    """The array an ``.npz`` declares, from its zip directory and ``.npy`` header only (no
    data is inflated). ValueError when they disagree, the array holds Python objects or is
    Fortran-ordered (rows would not be contiguous)."""
    with zipfile.ZipFile(path) as z:
        info = _open_member(z)
        with z.open(info) as f:
            shape, fortran, dtype = _read_header(f)
            header_bytes = f.tell()
    if dtype.hasobject:
        raise ValueError("the array holds Python objects (pickles are not read)")
    if fortran and len(shape) > 1:
        raise ValueError("the array is Fortran-ordered; save it with np.ascontiguousarray")
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != header_bytes + declared:
        raise ValueError(f"the .npy header declares shape {shape} of {dtype} ({declared:,} bytes) "
                         f"but the zip directory says the member inflates to "
                         f"{info.file_size - header_bytes:,} bytes")
    return NpzHeader(info.filename, tuple(int(n) for n in shape), dtype)


def _read_exactly(f, n: int) -> bytes:
    parts, left = [], n
    while left:
        part = f.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_rows(path: str, header: NpzHeader, rows: np.ndarray,
              whole_range: bool = False) -> tuple[np.ndarray, float, float]:
    """The sorted ``rows`` of the array, streamed (memory: the rows kept plus one chunk),
    and the (min, max) of the values read. The stream stops after the last row wanted, unless
    ``whole_range`` (the min and max of every value are needed: float bitmaps)."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    per_chunk = max(1, CHUNK_BYTES // max(1, header.row_bytes))
    stop = header.shape[0] if whole_range else (int(rows[-1]) + 1 if len(rows) else 0)
    out = np.empty((len(rows), *header.shape[1:]), dtype=header.dtype)
    lo, hi, done = np.inf, -np.inf, 0
    with zipfile.ZipFile(path) as z, z.open(header.member) as f:
        _read_header(f)
        for start in range(0, stop, per_chunk):
            n = min(per_chunk, header.shape[0] - start)
            data = _read_exactly(f, n * header.row_bytes)
            if len(data) != n * header.row_bytes:
                raise ValueError(f"the array ends before row {start + len(data) // header.row_bytes}"
                                 f" of the {header.shape[0]} its header declares")
            chunk = np.frombuffer(data, dtype=header.dtype).reshape(n, *header.shape[1:])
            if whole_range and chunk.size and header.dtype.kind == "f":
                lo, hi = min(lo, float(np.nanmin(chunk))), max(hi, float(np.nanmax(chunk)))
            take = rows[(rows >= start) & (rows < start + n)]
            out[done:done + len(take)] = chunk[take - start]
            done += len(take)
    return out, lo, hi
