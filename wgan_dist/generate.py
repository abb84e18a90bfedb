"""Images from a checkpoint: PNG files, a grid, and latent interpolation strips.

    python -m wgan_dist.generate --checkpoint runs/default --num 64 --out samples/ [--seed 0]
    python -m wgan_dist.generate --checkpoint runs/default --interpolate 8 --out strips/
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
from .models import Generator, build_models


def load_generator(path: str | Path, device: str | torch.device = "cpu",
                   use_ema: bool = True) -> tuple[Generator, dict]:
    """The (EMA) generator of a checkpoint, in eval mode, and the checkpoint's metadata."""
    state = load_checkpoint(Path(path), map_location="cpu")
    cfg = config_from_dict(state["config"])
    g, _ = build_models(cfg.model, cfg.data.resolution, cfg.data.channels)
    key = "G_ema" if use_ema else "G"
    load_module_state(g, state[key], "generator", state["path"])
    meta = {"config": cfg, "class_names": state.get("class_names", []), "step": state["step"],
            "nimg": state["nimg"], "path": state["path"]}
    return g.to(device).eval(), meta


@torch.no_grad()
def sample(g: Generator, num: int, seed: int = 0, batch: int = 256) -> torch.Tensor:
    """num images in [-1, 1], deterministic in seed."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num, g.latent_dim, generator=gen)
    device = next(g.parameters()).device
    return torch.cat([g(z[i:i + batch].to(device)).float().cpu() for i in range(0, num, batch)])


@torch.no_grad()
def interpolate(g: Generator, rows: int, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """rows strips of `steps` images, each a spherical interpolation between two latents."""
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(rows, g.latent_dim, generator=gen), torch.randn(rows, g.latent_dim, generator=gen)
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    # slerp: Gaussian latents live near a sphere; linear paths pass through its low-norm inside.
    omega = torch.acos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).clamp(min=1e-6).view(rows, 1, 1)
    z = (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / torch.sin(omega)
    device = next(g.parameters()).device
    return g(z.reshape(rows * steps, -1).to(device)).float().cpu()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wgan_dist.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory (newest)")
    p.add_argument("--num", type=int, default=64, help="images to write")
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
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.interpolate:
        imgs = interpolate(g, args.interpolate, args.steps, args.seed)
        path = out / "interpolation.png"
        save_image(make_grid(imgs, nrow=args.steps, normalize=True, value_range=(-1, 1)), path)
        print(f"wrote {args.interpolate} interpolation strips to {path}")
        return 0
    imgs = sample(g, args.num, args.seed)
    for i, img in enumerate(imgs):
        save_image(img, out / f"{i:06d}.png", normalize=True, value_range=(-1, 1))
    grid = make_grid(imgs, nrow=int(math.ceil(math.sqrt(len(imgs)))), normalize=True, value_range=(-1, 1))
    save_image(grid, out / "grid.png")
    print(f"wrote {len(imgs)} images and grid.png to {out} (checkpoint {meta['path']}, "
          f"step {meta['step']}, {meta['nimg'] / 1000:.1f} kimg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
