"""Write shard sets, or look at one.

    python -m wgan_dist.shard SRC [SRC ...] -o DIR [--kind auto|folder|quickdraw|celeba|builtin]
        [-s 28] [--channels 1|3 | --grayscale | --rgb] [--per-shard 1000]
        [--encoding png|jpeg|raw] [--quality 95] [--workers N] [--limit N]
        [--limit-per-class N] [--seed 0] [--per-class 2000] [--crop N] [--min-size N]
        [--overwrite] [--no-progress]
    python -m wgan_dist.shard --explore DIR [--grid PATH] [--per-class 8] [--seed 0]

The writer is ``wgan_dist.data.write``, the format ``wgan_dist.data.format``.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import exits
from .data.format import ENC_EXT, MANIFEST
from .data.write import OutputNotEmptyError, summary_line, write_shards


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m wgan_dist.shard",
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
    p.add_argument("--debug", action="store_true", help="print the traceback of an error too")
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
        from .data.explore import explore

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
    sys.exit(exits.run(main))
