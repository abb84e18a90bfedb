"""Images from a generator: the run's fixed-noise sample grids and progress GIF, and, from a
checkpoint, sample sets, per-class grids and latent interpolation strips (``generate``,
``evaluate``).

A conditional generator drawn without labels gets the classes in turn
(``nets.classes_in_turn``): balanced and deterministic.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from ..config import config_from_dict
from ..nets import GeneratorBase, build_models, classes_in_turn
from ..ranks import generator_for
from .checkpoint import load_checkpoint, load_module_state


class SampleGrid:
    """The EMA generator on fixed noise, saved as samples/step-XXXXXXXX.png.

    A conditional model gets one row per class with the same latents down each column: the
    style stays fixed while the class varies."""

    def __init__(self, grid_size: int, latent_dim: int, num_classes: int, seed: int,
                 device: torch.device) -> None:
        self.z = torch.randn(grid_size, latent_dim,
                             generator=generator_for(torch.device("cpu"), seed, "fixed")).to(device)
        self.y, self.cols = None, int(math.sqrt(grid_size)) or 1
        if num_classes:
            self.cols = max(1, grid_size // num_classes)
            self.z = self.z[:self.cols].repeat(num_classes, 1)
            self.y = torch.arange(num_classes, device=device).repeat_interleave(self.cols)

    @torch.no_grad()
    def save(self, generator: torch.nn.Module, path: Path) -> torch.Tensor:
        """Write the grid to ``path``; returns it (for TensorBoard)."""
        # A diverged generator's NaN/Inf pixels become 0 (mid-gray): a grid, not a warning.
        imgs = torch.nan_to_num(generator(self.z, self.y).float(), 0.0, 1.0, -1.0)
        grid = make_grid(imgs, nrow=self.cols, normalize=True, value_range=(-1, 1))
        save_image(grid, path)
        return grid


def write_gif(samples_dir: Path) -> Path | None:
    """samples/progress.gif from every step-*.png grid, in order."""
    from PIL import Image

    frames = sorted(Path(samples_dir).glob("step-*.png"))
    if not frames:
        return None
    images = [Image.open(p).convert("RGB") for p in frames]
    path = Path(samples_dir) / "progress.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=400, loop=0)
    return path


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
