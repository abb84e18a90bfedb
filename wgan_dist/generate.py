"""Images from a checkpoint: PNG files, a grid, and latent interpolation strips.

    python -m wgan_dist.generate --checkpoint runs/default --num 64 --out samples/ [--seed 0]
    python -m wgan_dist.generate --checkpoint runs/default --interpolate 8 --out strips/

Conditional checkpoints (model.conditional=true): --num images *per class*, written to
OUT/<class>/, and grid.png with one row per class; --class picks classes by name (repeat it or
give a comma list; default every class); --per-class-grid writes only per_class_grid.png, one row
per class with the same latents in every row (so a column shows one "style" in every class).

    python -m wgan_dist.generate --checkpoint runs/quickdraw_cond --class cat,dog --num 16 --out cats_dogs/
    python -m wgan_dist.generate --checkpoint runs/quickdraw_cond --per-class-grid --num 8 --out grid/
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from . import exits
from .exits import HelpFormatter
from .data.names import check_class_names, path_under
from .nets import GeneratorBase
from .training.samples import class_grid, class_ids, interpolate, load_generator, sample


def _selected_classes(g: GeneratorBase, requested: list[str], per_class_grid: bool,
                      meta: dict) -> list[int] | None:
    """The label indices to draw, or None for an unconditional generator."""
    if not g.num_classes:
        if requested or per_class_grid:
            raise ValueError(f"{meta['path']} holds an unconditional generator (trained without "
                             f"model.conditional=true); --class and --per-class-grid need a "
                             f"conditional one")
        return None
    if not requested:
        return list(range(g.num_classes))
    return class_ids(requested, meta["class_names"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m wgan_dist.generate", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory (newest)")
    p.add_argument("--num", type=int, default=None,
                   help="images to write, per class for a conditional model (default 64; "
                        "with --per-class-grid: columns, default 8)")
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                   help="class to draw (conditional checkpoints): repeat or give a comma list; "
                        "default every class")
    p.add_argument("--per-class-grid", action="store_true",
                   help="write only per_class_grid.png: one row per class, same latents per column")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="latent seed: the same seed, the same images")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator, not its EMA")
    p.add_argument("--interpolate", type=int, metavar="ROWS", default=0,
                   help="write ROWS latent interpolation strips instead of samples")
    p.add_argument("--steps", type=int, default=10, help="images per interpolation strip")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the generator runs")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error too")
    return p


def _check_numbers(args: argparse.Namespace) -> None:
    """Counts that cannot be drawn, refused before anything is loaded or created."""
    for flag, value, least in (("--num", args.num, 1), ("--interpolate", args.interpolate, 0),
                               ("--steps", args.steps, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} {value}: must be >= {least}")


def _write_samples(g: GeneratorBase, classes: list[int] | None, names: list[str], num: int,
                   seed: int, out: Path) -> int:
    """``num`` images (per class for a conditional model) and grid.png; returns how many.
    Class folders are checked to stay under ``out`` before anything is written."""
    if classes is None:
        imgs = sample(g, num, seed)
        paths = [out / f"{i:06d}.png" for i in range(num)]
        nrow = int(math.ceil(math.sqrt(len(imgs))))
    else:  # num per class, OUT/<class>/NNNNNN.png, one grid row per class
        folders = {k: Path(path_under(out, names[k])) for k in classes}
        imgs = sample(g, num * len(classes), seed,
                      labels=torch.tensor(classes).repeat_interleave(num))
        paths = [folders[k] / f"{i:06d}.png" for k in classes for i in range(num)]
        for folder in folders.values():
            folder.mkdir(exist_ok=True)
        nrow = num
    for img, path in zip(imgs, paths):
        save_image(img, path, normalize=True, value_range=(-1, 1))
    save_image(make_grid(imgs, nrow=nrow, normalize=True, value_range=(-1, 1)), out / "grid.png")
    return len(imgs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_numbers(args)
        g, meta = load_generator(args.checkpoint, args.device, use_ema=not args.no_ema)
        names = meta["class_names"] or [str(k) for k in range(g.num_classes)]
        meta["class_names"] = names
        classes = _selected_classes(g, args.classes, args.per_class_grid, meta)
        if classes is not None:  # a checkpoint of an older version may hold any name
            check_class_names([names[k] for k in classes], meta["path"])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.per_class_grid:
        cols = args.num or 8
        path = out / "per_class_grid.png"
        imgs = class_grid(g, classes, cols, args.seed)
        save_image(make_grid(imgs, nrow=cols, normalize=True, value_range=(-1, 1)), path)
        print(f"wrote {path}: rows {', '.join(names[k] for k in classes)}; {cols} columns")
        return 0
    if args.interpolate:
        labels = None if classes is None else torch.tensor(
            [classes[r % len(classes)] for r in range(args.interpolate)])
        imgs = interpolate(g, args.interpolate, args.steps, args.seed, labels)
        path = out / "interpolation.png"
        save_image(make_grid(imgs, nrow=args.steps, normalize=True, value_range=(-1, 1)), path)
        print(f"wrote {args.interpolate} interpolation strips to {path}")
        return 0
    n = _write_samples(g, classes, names, 64 if args.num is None else args.num, args.seed, out)
    print(f"wrote {n} images and grid.png to {out} (checkpoint {meta['path']}, "
          f"step {meta['step']}, {meta['nimg'] / 1000:.1f} kimg)")
    return 0


if __name__ == "__main__":
    sys.exit(exits.run(main))
