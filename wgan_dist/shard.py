"""Write image/sketch datasets as WebDataset shard sets, and look at them.

CLI::

    python -m wgan_dist.shard SRC [SRC ...] -o DIR [--kind auto|folder|quickdraw|celeba|builtin]
        [-s 28] [--channels 1|3 | --grayscale | --rgb] [--per-shard 1000]
        [--encoding png|jpeg|raw] [--quality 95] [--workers N] [--limit N]
        [--limit-per-class N] [--seed 0] [--per-class 2000] [--crop N] [--min-size N]
        [--overwrite] [--no-progress]
    python -m wgan_dist.shard --explore DIR [--grid PATH] [--per-class 8] [--seed 0]

How a run goes: every input is enumerated first (paths, (npy file, row), (ndjson file,
line)) -- cheap, nothing decoded; the index list is shuffled with ``seed`` (so each shard
mixes classes), cut by ``--limit-per-class`` (first N inputs per class, in enumeration order,
before the shuffle) and ``--limit`` (first N after it); then inputs are decoded, converted
and encoded by a process pool in order, so the bytes written do not depend on ``--workers``.
Shards are written as ``.shard-NNNNNN.tar.tmp`` and renamed at the end, and
``manifest.json`` is written last: a directory without ``manifest.json`` is incomplete.
Every input ends as a sample or as an entry of ``skipped`` (``inputs == total +
len(skipped)``); a skip reason reads ``"<input>: <kind>: <detail>"`` (e.g.
``"a/b.png: corrupt: cannot identify image file"``, ``"x.ndjson:7: not JSON: ..."``).
``--overwrite`` removes the shard files, manifest and explore.png of an old set (manifest
first); other files in the directory are left alone.

The format written, verbatim from the contract the reader implements:

    # Shard set format (wgan_dist-shards/1) -- the contract between writer and reader

    A shard set is a directory holding `shard-000000.tar`, `shard-000001.tar`, ... (WebDataset tar
    files written with `webdataset.TarWriter`) and `manifest.json`.

    Each sample in a tar:
    - `__key__`: the global sample index as 9 zero-padded digits ("000000042").
    - exactly one image entry, by encoding:
      - `png`: lossless PNG bytes (mode "L" for 1 channel, "RGB" for 3 channels)
      - `jpg`: JPEG bytes at the manifest's quality
      - `u8`: raw uint8 bytes, shape (H, W, C) row-major, H = W = manifest["resolution"], C = manifest["channels"]
    - `cls`: the integer label as ASCII decimal bytes (b"3"), present only when the set is labelled.
    - `src`: UTF-8 bytes naming the input it came from (file path, or "path#row" / "path:line"), for tracing.

    manifest.json:
    {
      "format": "wgan_dist-shards/1",
      "resolution": 28, "channels": 1,
      "encoding": "png" | "jpeg" | "raw", "jpeg_quality": 95 or null,
      "labelled": true,
      "class_names": ["apple", "bicycle", ...],      # label i is class_names[i]; [] when unlabelled
      "inputs": 16012,                                # inputs seen = total + len(skipped)
      "total": 16000,
      "per_class": {"apple": 2000, ...},             # {} when unlabelled
      "shards": [{"name": "shard-000000.tar", "count": 1000, "sha256": "<hex>"}, ...],
      "skipped": [{"input": "<path or path:line or path#row>", "reason": "<one line>"}, ...],
      "source": {"kind": "builtin" | "folder" | "quickdraw" | "celeba", "paths": [...], ...},
      "seed": 0,
      "created": "<ISO-8601 UTC>"
    }
    Pixel values: uint8 0..255; QuickDraw-style data keeps bright strokes on a 0 background.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing as mp
import os
import sys
import tarfile
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
from PIL import Image

from .sources import (ConvertOptions, Group, Record, class_names_of, collect, load_item)

FORMAT = "wgan_dist-shards/1"
ENC_EXT = {"png": "png", "jpeg": "jpg", "raw": "u8"}
MANIFEST = "manifest.json"
TAR_MTIME = 0  # fixed member mtime: identical inputs give byte-identical shards


class OutputNotEmptyError(FileExistsError):
    """The output directory holds files and ``overwrite`` was not given."""


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------
def encode_image(image: np.ndarray, encoding: str, quality: int = 95) -> bytes:
    """uint8 ``(H, W, C)`` -> the bytes of one shard entry (``png``/``jpeg``/``raw``)."""
    if encoding == "raw":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    img = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image,
                          "L" if image.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    if encoding == "png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes, ext: str, resolution: int, channels: int) -> np.ndarray:
    """The inverse of ``encode_image`` given the entry extension (png/jpg/u8)."""
    if ext == "u8":
        return np.frombuffer(data, dtype=np.uint8).reshape(resolution, resolution, channels)
    with Image.open(io.BytesIO(data)) as img:
        a = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    return a.reshape(resolution, resolution, channels)


# ---------------------------------------------------------------------------------------------
# Worker side: state is installed once per process, tasks are bare global indices
# ---------------------------------------------------------------------------------------------
_W: dict = {}


def _init_worker(groups: list[Group], opts: ConvertOptions, encoding: str, quality: int) -> None:
    _W.update(groups=groups, opts=opts, encoding=encoding, quality=quality,
              offsets=np.cumsum([0] + [g.count for g in groups]))


def _work(gidx: int) -> tuple[int, str, bytes | None, str]:
    """Global index -> (group index, src_id, encoded bytes or None, skip reason)."""
    gi = int(np.searchsorted(_W["offsets"], gidx, side="right")) - 1
    r = load_item(_W["groups"][gi], gidx - int(_W["offsets"][gi]), _W["opts"])
    if isinstance(r, Record):
        return gi, r.src_id, encode_image(r.image, _W["encoding"], _W["quality"]), ""
    return gi, r.src_id, None, r.reason


@contextmanager
def _results(order: np.ndarray, workers: int, initargs: tuple) -> Iterator[Iterator]:
    """Results of ``_work`` over ``order``, in order, from ``workers`` processes."""
    if workers <= 1:
        _init_worker(*initargs)
        yield map(_work, map(int, order))
        return
    # forkserver/spawn, not fork: the trainer may call us with torch's threads running, and
    # forking a threaded process can deadlock.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    chunk = max(1, min(256, len(order) // (workers * 8)))
    with mp.get_context(method).Pool(workers, _init_worker, initargs) as pool:
        yield pool.imap(_work, map(int, order), chunksize=chunk)


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------
class _ShardSink:
    """Rolls samples into ``per_shard``-sized tars under temporary names."""

    def __init__(self, out_dir: str, per_shard: int) -> None:
        from webdataset import TarWriter  # lazy: the CLI's --help should not pay for it
        self._tw_cls, self.out_dir, self.per_shard = TarWriter, out_dir, per_shard
        self.writer, self.count, self.shards, self.final_paths = None, 0, [], []

    def _tmp(self, i: int) -> str:
        return os.path.join(self.out_dir, f".shard-{i:06d}.tar.tmp")

    def add(self, sample: dict) -> None:
        if self.writer is None:
            self.writer = self._tw_cls(self._tmp(len(self.shards)), encoder=False, mtime=TAR_MTIME)
            self.count = 0
        self.writer.write(sample)
        self.count += 1
        if self.count == self.per_shard:
            self._close()

    def _close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        h = hashlib.sha256()
        with open(self._tmp(len(self.shards)), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self.shards.append({"name": f"shard-{len(self.shards):06d}.tar", "count": self.count,
                            "sha256": h.hexdigest()})

    def finish(self) -> list[dict]:
        self._close()
        for i, s in enumerate(self.shards):
            final = os.path.join(self.out_dir, s["name"])
            os.replace(self._tmp(i), final)
            self.final_paths.append(final)
        return self.shards

    def abort(self) -> None:
        """Remove everything this run wrote (temporary or renamed): no half set remains."""
        try:
            if self.writer is not None:
                self.writer.close()
        except Exception:
            pass
        manifest_tmp = os.path.join(self.out_dir, MANIFEST + ".tmp")
        for p in [self._tmp(i) for i in range(len(self.shards) + 1)] + self.final_paths + [
                manifest_tmp]:
            if os.path.exists(p):
                os.remove(p)


def _prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    os.makedirs(out_dir, exist_ok=True)
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return
    if not overwrite:
        raise OutputNotEmptyError(
            f"output directory {out_dir} is not empty ({len(entries)} entries, e.g. "
            f"{entries[0]!r}); pass --overwrite to replace the shard set in it")
    ours = [MANIFEST] + [e for e in entries if e != MANIFEST and (
        e.startswith(("shard-", ".shard-")) and e.endswith((".tar", ".tar.tmp"))
        or e in (MANIFEST + ".tmp", "explore.png"))]
    for e in ours:  # the manifest goes first: from then on the old set reads incomplete
        if os.path.exists(os.path.join(out_dir, e)):
            os.remove(os.path.join(out_dir, e))


def _select(groups: list[Group], limit: int | None, limit_per_class: int | None,
            seed: int) -> np.ndarray:
    """Global indices to convert: per-class cut (enumeration order), shuffle, global cut."""
    offsets = np.cumsum([0] + [g.count for g in groups])
    taken: Counter = Counter()
    parts = []
    for gi, g in enumerate(groups):
        n = g.count
        if limit_per_class is not None and g.loader != "skip":
            n = max(0, min(n, limit_per_class - taken[g.cls]))
            taken[g.cls] += n
        parts.append(np.arange(offsets[gi], offsets[gi] + n, dtype=np.int64))
    chosen = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    order = np.random.default_rng(seed).permutation(chosen)
    return order[:limit] if limit is not None else order


def _check_args(resolution: int, channels: int, per_shard: int, encoding: str,
                jpeg_quality: int, workers: int, limits: tuple) -> None:
    if resolution < 1 or per_shard < 1 or workers < 1:
        raise ValueError("resolution, per_shard and workers must be >= 1")
    if any(x is not None and x < 0 for x in limits):
        raise ValueError("limit and limit_per_class must be >= 0")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if encoding not in ENC_EXT:
        raise ValueError(f"encoding must be one of {sorted(ENC_EXT)}, got {encoding!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")


def write_shards(sources: list[str], out_dir: str, *, kind: str = "auto", resolution: int = 28,
                 channels: int = 1, per_shard: int = 1000, encoding: str = "png",
                 jpeg_quality: int = 95, workers: int = 1, limit: int | None = None,
                 limit_per_class: int | None = None, seed: int = 0, overwrite: bool = False,
                 builtin_per_class: int = 2000, progress: bool = True,
                 crop: int | None = None, min_size: int | None = None) -> dict:
    """Convert ``sources`` into a shard set in ``out_dir``; returns the manifest written."""
    _check_args(resolution, channels, per_shard, encoding, jpeg_quality, workers,
                (limit, limit_per_class))
    kind, groups = collect(list(sources), kind, builtin_per_class)
    loadable = [g for g in groups if g.loader != "skip"]
    labelled = bool(loadable) and all(g.cls is not None for g in loadable)
    if loadable and not labelled and any(g.cls is not None for g in loadable):
        raise ValueError("some inputs are labelled and some are not; shard them separately")
    class_names = class_names_of(groups) if labelled else []
    index = {c: i for i, c in enumerate(class_names)}
    order = _select(groups, limit, limit_per_class, seed)
    _prepare_out_dir(out_dir, overwrite)  # after enumeration: a bad path leaves no trace
    opts = ConvertOptions(resolution, channels, crop, min_size, seed)
    ext = ENC_EXT[encoding]
    sink = _ShardSink(out_dir, per_shard)
    skipped, per_class, total = [], Counter(), 0
    try:
        from tqdm import tqdm
        with _results(order, workers, (groups, opts, encoding, jpeg_quality)) as results:
            for gi, src, payload, reason in tqdm(results, total=len(order), disable=not progress,
                                                 unit="img", desc="sharding", leave=False):
                if payload is None:
                    skipped.append({"input": src, "reason": reason})
                    continue
                sample = {"__key__": f"{total:09d}", ext: payload, "src": src.encode("utf-8")}
                if labelled:
                    sample["cls"] = str(index[groups[gi].cls]).encode("ascii")
                    per_class[groups[gi].cls] += 1
                sink.add(sample)
                total += 1
        manifest = {
            "format": FORMAT, "resolution": resolution, "channels": channels,
            "encoding": encoding, "jpeg_quality": jpeg_quality if encoding == "jpeg" else None,
            "labelled": labelled, "class_names": class_names, "inputs": len(order),
            "total": total, "per_class": {c: per_class[c] for c in class_names},
            "shards": sink.finish(), "skipped": skipped,
            "source": {"kind": kind, "paths": list(sources), "limit": limit,
                       "limit_per_class": limit_per_class, "crop": crop, "min_size": min_size,
                       **({"per_class": builtin_per_class} if kind == "builtin" else {})},
            "seed": seed, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        tmp = os.path.join(out_dir, MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, os.path.join(out_dir, MANIFEST))
    except BaseException:
        sink.abort()
        raise
    return manifest


def ensure_builtin_shards(out_dir: str, resolution: int = 28, channels: int = 1,
                          per_class: int = 2000, seed: int = 0, progress: bool = True,
                          workers: int = 1) -> dict:
    """The built-in set's manifest in ``out_dir``, (re)writing the set unless it matches.

    "Matches" means same format, resolution, channels, per_class and seed, no limits, and
    every shard file present (hashes are not re-checked: that is the reader's job).
    The bytes written do not depend on ``workers``, so any value gives the same set.
    """
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        try:
            with open(path) as f:
                m = json.load(f)
            src = m.get("source", {})
            if (m.get("format") == FORMAT and m.get("resolution") == resolution
                    and m.get("channels") == channels and m.get("seed") == seed
                    and src.get("kind") == "builtin" and src.get("per_class") == per_class
                    and src.get("limit") is None and src.get("limit_per_class") is None
                    and all(os.path.exists(os.path.join(out_dir, s["name"])) for s in m["shards"])):
                return m
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable manifest: rebuild
    return write_shards(["builtin"], out_dir, kind="builtin", resolution=resolution,
                        channels=channels, builtin_per_class=per_class, seed=seed,
                        overwrite=True, progress=progress, workers=workers)


def skip_kinds(manifest: dict) -> Counter:
    """Skip counts by kind, parsed from the ``"<input>: <kind>: <detail>"`` reasons."""
    kinds: Counter = Counter()
    for s in manifest["skipped"]:
        reason = s["reason"]
        rest = reason[len(s["input"]) + 2:] if reason.startswith(s["input"] + ": ") else reason
        kinds[rest.split(":")[0].strip()] += 1
    return kinds


def summary_line(manifest: dict, out_dir: str) -> str:
    """``wrote N samples in K shards to DIR (M skipped: 3 corrupt, 1 too small)``."""
    kinds = skip_kinds(manifest)
    detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    n_skip = len(manifest["skipped"])
    return (f"wrote {manifest['total']} samples in {len(manifest['shards'])} shards to {out_dir} "
            f"({n_skip} skipped{': ' + detail if detail else ''})")


# ---------------------------------------------------------------------------------------------
# Exploration view
# ---------------------------------------------------------------------------------------------
def _scan(shard_dir: str, manifest: dict) -> list[tuple[str, tarfile.TarInfo, int | None]]:
    """(shard path, image member, label) of every sample, reading tar headers only."""
    ext = ENC_EXT[manifest["encoding"]]
    out = []
    for s in manifest["shards"]:
        path = os.path.join(shard_dir, s["name"])
        samples: dict[str, list] = {}
        with tarfile.open(path) as tf:
            for mem in tf:
                key, _, suffix = mem.name.partition(".")
                entry = samples.setdefault(key, [None, None])
                if suffix == ext:
                    entry[0] = mem
                elif suffix == "cls":
                    entry[1] = int(tf.extractfile(mem).read())
        out += [(path, img, label) for img, label in samples.values() if img is not None]
    return out


def explore(shard_dir: str, grid_path: str | None = None, per_class: int = 8,
            seed: int = 0) -> dict:
    """Count a shard set's samples per class and save a grid of random ones, a row per class."""
    import torch
    from torchvision.utils import make_grid, save_image

    with open(os.path.join(shard_dir, MANIFEST)) as f:
        m = json.load(f)
    names = m["class_names"]
    samples = _scan(shard_dir, m)
    counts = Counter(label for _, _, label in samples)
    rows = sorted(counts, key=lambda x: -1 if x is None else x)
    if not m["labelled"]:  # one class: show a square of samples instead of a single row
        rows = [None] * per_class
    rng = np.random.default_rng(seed)
    res, ch, ext = m["resolution"], m["channels"], ENC_EXT[m["encoding"]]
    by_label: dict = {}
    for i, (_, _, label) in enumerate(samples):
        by_label.setdefault(label, []).append(i)
    tiles = []
    for label in rows:
        pool = by_label.get(label, [])
        take = min(per_class, len(pool))
        pick = sorted(rng.choice(len(pool), size=take, replace=False)) if take else []
        picked = set(pick)
        by_label[label] = [i for k, i in enumerate(pool) if k not in picked]  # no repeats
        row = []
        for k in pick:
            path, mem, _ = samples[pool[k]]
            with tarfile.open(path) as tf:
                row.append(decode_image(tf.extractfile(mem).read(), ext, res, ch))
        row += [np.zeros((res, res, ch), np.uint8)] * (per_class - len(row))  # short class
        tiles += row
    grid_path = grid_path or os.path.join(shard_dir, "explore.png")
    if tiles:
        t = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255.0
        save_image(make_grid(t, nrow=per_class, padding=2, pad_value=0.5), grid_path)
    per_cls = {(names[k] if k is not None and k < len(names) else "(unlabelled)"): n
               for k, n in sorted(counts.items(), key=lambda kv: -1 if kv[0] is None else kv[0])}
    return {"total": len(samples), "manifest_total": m["total"], "per_class": per_cls,
            "class_names": names, "grid": grid_path if tiles else None,
            "rows": [names[k] if k is not None else "(unlabelled)" for k in rows]}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wgan_dist.shard",
                                description="Write WebDataset shards from images, QuickDraw "
                                            "files, CelebA or the built-in set; or --explore one.")
    p.add_argument("sources", nargs="*", metavar="SRC",
                   help="image folder, .npy/.ndjson file or folder, CelebA folder, or 'builtin'")
    p.add_argument("-o", "--out", help="output directory for the shard set")
    p.add_argument("--kind", default="auto", choices=["auto", "folder", "quickdraw", "celeba",
                                                      "builtin"])
    p.add_argument("-s", "--resolution", type=int, default=28)
    p.add_argument("--channels", type=int, choices=[1, 3], default=1)
    p.add_argument("--grayscale", dest="channels", action="store_const", const=1)
    p.add_argument("--rgb", dest="channels", action="store_const", const=3)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--encoding", choices=sorted(ENC_EXT), default="png")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--workers", type=int, default=1, help="decode/resize/encode processes")
    p.add_argument("--limit", type=int, help="at most N inputs (after the shuffle)")
    p.add_argument("--limit-per-class", type=int, help="at most N inputs per class")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (and built-in drawings)")
    p.add_argument("--per-class", type=int, default=None,
                   help="built-in drawings per class (default 2000); with --explore: grid "
                        "columns per class (default 8)")
    p.add_argument("--crop", type=int, help="centre-crop an NxN square before resizing "
                                            "(default: the shorter side)")
    p.add_argument("--min-size", type=int, help="skip images whose shorter side is below N "
                                                "(default: upscale them)")
    p.add_argument("--overwrite", action="store_true", help="replace the shard set in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--explore", metavar="DIR", help="summarise a shard set and write a grid")
    p.add_argument("--grid", help="grid PNG path for --explore (default DIR/explore.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 on usage errors and a non-empty --out)."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.explore:
        if not os.path.exists(os.path.join(a.explore, MANIFEST)):
            print(f"error: {a.explore} has no {MANIFEST} (not a shard set, or an incomplete "
                  "one)", file=sys.stderr)
            return 2
        info = explore(a.explore, a.grid, a.per_class or 8, a.seed)
        print(f"{info['total']} samples in {a.explore}")
        for name, n in info["per_class"].items():
            print(f"  {name}: {n}")
        if info["total"] != info["manifest_total"]:
            print(f"warning: manifest says {info['manifest_total']} samples", file=sys.stderr)
        print(f"grid: {info['grid']}")
        return 0
    if not a.sources or not a.out:
        p.print_usage(sys.stderr)
        print("error: give SRC ... and -o/--out DIR (or --explore DIR)", file=sys.stderr)
        return 2
    try:
        m = write_shards(a.sources, a.out, kind=a.kind, resolution=a.resolution,
                         channels=a.channels, per_shard=a.per_shard, encoding=a.encoding,
                         jpeg_quality=a.quality, workers=a.workers, limit=a.limit,
                         limit_per_class=a.limit_per_class, seed=a.seed, overwrite=a.overwrite,
                         builtin_per_class=a.per_class or 2000, progress=a.progress,
                         crop=a.crop, min_size=a.min_size)
    except (OutputNotEmptyError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out is a file, disk full: no traceback for a user error
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary_line(m, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
