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

from .checkpoint import load_checkpoint, load_module_state
from .config import config_from_dict
from .models import GeneratorBase, build_models, classes_in_turn


def load_generator(path: str | Path, device: str | torch.device = "cpu",
                   use_ema: bool = True) -> tuple[GeneratorBase, dict]:
    """The (EMA) generator of a checkpoint, in eval mode, and the checkpoint's metadata."""
    state = load_checkpoint(Path(path), map_location="cpu")
    cfg = config_from_dict(state["config"])
    g, _ = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
    key = "G_ema" if use_ema else "G"
    load_module_state(g, state[key], "generator", state["path"])
    meta = {"config": cfg, "class_names": state.get("class_names", []), "step": state["step"],
            "nimg": state["nimg"], "path": state["path"]}
    return g.to(device).eval(), meta


def class_ids(requested: list[str], class_names: list[str]) -> list[int]:
    """--class values (each a name or a comma list) -> label indices, in the order given."""
    names = [n.strip() for item in requested for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ValueError(f"unknown class {', '.join(map(repr, unknown))}; known classes: "
                         f"{', '.join(class_names)}")
    return [class_names.index(n) for n in names]


@torch.no_grad()
def _run(g: GeneratorBase, z: torch.Tensor, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
    device = next(g.parameters()).device
    return torch.cat([g(z[i:i + batch].to(device),
                        None if labels is None else labels[i:i + batch].to(device)).float().cpu()
                      for i in range(0, z.shape[0], batch)])


@torch.no_grad()
def sample(g: GeneratorBase, num: int, seed: int = 0, batch: int = 256,
           labels: torch.Tensor | None = None) -> torch.Tensor:
    """num images in [-1, 1], deterministic in seed. A conditional generator draws ``labels``
    (default: the classes in turn, 0, 1, ..., K-1, 0, ...)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num, g.latent_dim, generator=gen)
    if labels is None:
        labels = classes_in_turn(num, g.num_classes)
    return _run(g, z, labels, batch)


@torch.no_grad()
def class_grid(g: GeneratorBase, classes: list[int], cols: int = 8, seed: int = 0,
               batch: int = 256) -> torch.Tensor:
    """len(classes) rows of ``cols`` images, one row per class, the same latents in every row."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(cols, g.latent_dim, generator=gen).repeat(len(classes), 1)
    return _run(g, z, torch.tensor(classes).repeat_interleave(cols), batch)


@torch.no_grad()
def interpolate(g: GeneratorBase, rows: int, steps: int = 10, seed: int = 0,
                labels: torch.Tensor | None = None) -> torch.Tensor:
    """rows strips of `steps` images, each a spherical interpolation between two latents
    (for a conditional generator, strip r is drawn in class labels[r])."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(rows, g.latent_dim, generator=gen), torch.randn(rows, g.latent_dim, generator=gen)
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    # slerp: Gaussian latents live near a sphere; linear paths pass through its low-norm inside.
    omega = torch.acos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).clamp(min=1e-6).view(rows, 1, 1)
    z = (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / torch.sin(omega)
    if labels is None:
        labels = classes_in_turn(rows, g.num_classes)
    y = None if labels is None else labels.repeat_interleave(steps)
    return _run(g, z.reshape(rows * steps, -1), y, batch=rows * steps)


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wgan_dist.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw generator, not its EMA")
    p.add_argument("--interpolate", type=int, metavar="ROWS", default=0,
                   help="write ROWS latent interpolation strips instead of samples")
    p.add_argument("--steps", type=int, default=10, help="images per interpolation strip")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        g, meta = load_generator(args.checkpoint, args.device, use_ema=not args.no_ema)
        names = meta["class_names"] or [str(k) for k in range(g.num_classes)]
        meta["class_names"] = names
        classes = _selected_classes(g, args.classes, args.per_class_grid, meta)
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
    num = args.num or 64
    if classes is None:
        imgs = sample(g, num, args.seed)
        paths = [out / f"{i:06d}.png" for i in range(num)]
        nrow = int(math.ceil(math.sqrt(len(imgs))))
    else:  # num per class, OUT/<class>/NNNNNN.png, one grid row per class
        imgs = sample(g, num * len(classes), args.seed,
                      labels=torch.tensor(classes).repeat_interleave(num))
        paths = [out / names[k] / f"{i:06d}.png" for k in classes for i in range(num)]
        for k in classes:
            (out / names[k]).mkdir(exist_ok=True)
        nrow = num
    for img, path in zip(imgs, paths):
        save_image(img, path, normalize=True, value_range=(-1, 1))
    save_image(make_grid(imgs, nrow=nrow, normalize=True, value_range=(-1, 1)), out / "grid.png")
    print(f"wrote {len(imgs)} images and grid.png to {out} (checkpoint {meta['path']}, "
          f"step {meta['step']}, {meta['nimg'] / 1000:.1f} kimg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
