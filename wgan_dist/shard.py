"""Write shard sets, or look at one.

    python -m wgan_dist.shard SRC [SRC ...] -o DIR [--kind auto|folder|quickdraw|celeba|builtin]
        [-s/--size 28] [--channels 1|3 | --grayscale | --rgb] [--per-shard 1000]
        [--encoding png|jpeg|raw] [--quality 95] [--workers N] [--limit N]
        [--limit-per-class N] [--seed 0] [--per-class 2000] [--crop N] [--min-size N]
        [--max-pixels 64000000] [--overwrite] [--no-progress]
    python -m wgan_dist.shard quickdraw:bicycle,cat -o shards/qd -s 28   # downloaded by name
    python -m wgan_dist.shard --explore DIR [--grid PATH] [--per-class 8] [--seed 0]

Exit codes: 0 written, 2 refused (bad input, a non-empty --out, nothing to write: the first
skip reasons are printed), 1 failed (a full disk, a dead download server).

The writer is ``wgan_dist.data.write``, the format ``wgan_dist.data.format``.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import exits
from .exits import HelpFormatter
from .data.format import ENC_EXT, MANIFEST
from .data.records import DEFAULT_MAX_PIXELS
from .data.write import NoSamplesError, summary_line, write_shards


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m wgan_dist.shard", description=__doc__,
        formatter_class=HelpFormatter)
    p.add_argument("sources", nargs="*", metavar="SRC",
                   help="image folder (class subfolders = labels), QuickDraw .npy/.npz/.ndjson "
                        "file or folder, quickdraw:NAME[,NAME...] (downloaded), CelebA folder, "
                        "or 'builtin'")
    p.add_argument("-o", "--out", help="output directory for the shard set")
    p.add_argument("--kind", default="auto", choices=["auto", "folder", "quickdraw", "celeba",
                                                      "builtin"], help="how to read SRC")
    p.add_argument("-s", "--size", "--resolution", dest="resolution", type=int, default=28,
                   help="image side in pixels (--resolution is the old spelling)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1 gray, 3 RGB")
    p.add_argument("--grayscale", dest="channels", action="store_const", const=1,
                   help="same as --channels 1")
    p.add_argument("--rgb", dest="channels", action="store_const", const=3,
                   help="same as --channels 3")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per tar file")
    p.add_argument("--encoding", choices=sorted(ENC_EXT), default="png",
                   help="png lossless, jpeg lossy, raw uint8 (fastest to read)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--workers", type=int, default=1, help="decode/resize/encode processes")
    p.add_argument("--limit", type=int, help="at most N inputs (after the shuffle); default all")
    p.add_argument("--limit-per-class", type=int, help="at most N inputs per class; default all")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (and built-in drawings)")
    p.add_argument("--per-class", type=int, default=None,
                   help="built-in drawings per class (2000 when not given); with --explore: "
                        "grid columns per class (8 when not given)")
    p.add_argument("--crop", type=int, help="centre-crop an NxN square before resizing "
                                            "(default: the shorter side)")
    p.add_argument("--min-size", type=int, help="skip images whose shorter side is below N "
                                                "(default: upscale them)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="skip (and list) images with more pixels than this, read from their "
                        "header before decoding; 0: no limit")
    p.add_argument("--overwrite", action="store_true", help="replace the shard set in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    p.add_argument("--explore", metavar="DIR", help="summarise a shard set and write a grid")
    p.add_argument("--grid", help="grid PNG path for --explore (default DIR/explore.png)")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error too")
    return p


def _explore(a: argparse.Namespace) -> int:
    if not os.path.exists(os.path.join(a.explore, MANIFEST)):
        print(f"error: {a.explore} has no {MANIFEST} (not a shard set, or an incomplete "
              "one)", file=sys.stderr)
        return exits.REFUSED
    from .data.explore import explore

    info = explore(a.explore, a.grid, a.per_class or 8, a.seed)
    print(f"{info['total']} samples in {a.explore}")
    for name, n in info["per_class"].items():
        print(f"  {name}: {n}")
    if info["total"] != info["manifest_total"]:
        print(f"warning: manifest says {info['manifest_total']} samples", file=sys.stderr)
    print(f"grid: {info['grid']}")
    return exits.OK


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2: refused -- usage, a non-empty --out, no samples)."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.explore:
        return _explore(a)
    if not a.sources or not a.out:
        p.print_usage(sys.stderr)
        print("error: give SRC ... and -o/--out DIR (or --explore DIR)", file=sys.stderr)
        return exits.REFUSED
    from .data.download import resolve_sources

    try:
        sources = resolve_sources(a.sources, a.resolution, a.progress)
        m = write_shards(sources, a.out, kind=a.kind, resolution=a.resolution,
                         channels=a.channels, per_shard=a.per_shard, encoding=a.encoding,
                         jpeg_quality=a.quality, workers=a.workers, limit=a.limit,
                         limit_per_class=a.limit_per_class, seed=a.seed, overwrite=a.overwrite,
                         builtin_per_class=a.per_class or 2000, progress=a.progress,
                         crop=a.crop, min_size=a.min_size, max_pixels=a.max_pixels or None)
    except NoSamplesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for s in exc.skipped[:5]:
            print(f"  skipped {s['reason']}", file=sys.stderr)
        if len(exc.skipped) > 5:
            print(f"  ... and {len(exc.skipped) - 5} more", file=sys.stderr)
        return exits.REFUSED
    print(summary_line(m, a.out))
    return exits.OK


if __name__ == "__main__":
    sys.exit(exits.run(main))
