"""Judges for generated photographs that owe nothing to the models being trained.

* ``train_rotation_judge``: a small CNN (``DomainClassifier``) trained only on held-out real
  photos to tell which of four rotations (0, 90, 180, 270 degrees) an image was given
  (Gidaris et al., 2018: to solve it a network must find the eyes, ears and nose of a face).
  Unlabelled photo sets have no classes to train a domain classifier on; rotation needs none.
  ``classifier_fid`` in its penultimate features is the Frechet distance of a sample set,
  compared with its real-vs-real floor.
* ``haar_rate``: the fraction of images in which one of OpenCV's Haar cascades (by default
  the cat-face detector ``haarcascade_frontalcatface_extended.xml``) finds a face, with the
  settings checked on real 64 px AFHQ cats (upscaled to 128: 0.89-0.90 of real cats, 0.0 on
  uniform noise). The cascades ship in ``opencv-python-headless`` wheels up to 4.10 only.
  Cascades are lenient on blurry faces: read the rate beside a feature distance.
* ``memorisation``: each sample's distance to its nearest training image (and its mirror
  image: training flips) against the same distance for held-out real photos. A generator
  that copies its training set puts samples closer than held-out photos are.

Images are float tensors in [-1, 1], (N, C, H, W), as everywhere in ``metrics``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from torch import nn

from .classifier import _shift_augment
from .fid import extract_features, fid_from_features

Tensor = torch.Tensor

CAT_CASCADE = "haarcascade_frontalcatface_extended.xml"
OPENCV_HINT = "pip install 'opencv-python-headless<4.11' (the 5.x wheels ship no Haar cascades)"


# --------------------------------------------------------------------------- rotation judge
def rotate_batch(x: Tensor, k: Tensor) -> Tensor:
    """Rotate each image i of ``x`` by ``k[i]`` quarter turns (counter-clockwise)."""
    out = x.clone()
    for q in range(1, 4):
        sel = k == q
        if sel.any():
            out[sel] = torch.rot90(x[sel], q, dims=(2, 3))
    return out


class RotationJudge(nn.Module):
    """A plain strided CNN for square photos (32 to 256 px): 4x4 stride-2 convolutions with
    group norm and SiLU down to a 4x4 map, flattened (the layout of the face is kept, which a
    rotation task needs), then a linear layer to ``dim`` features and a 4-way head."""

    def __init__(self, channels: int = 3, resolution: int = 64, width: int = 32, dim: int = 128) -> None:
        super().__init__()
        self.config = {"channels": channels, "resolution": resolution, "width": width, "dim": dim}
        layers: list[nn.Module] = []
        ch, size = channels, resolution
        while size > 4:
            out = min(width * (resolution // size), 8 * width)
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.GroupNorm(min(8, out), out), nn.SiLU()]
            ch, size = out, size // 2
        self.trunk = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * 16, dim), nn.SiLU())
        self.head = nn.Linear(dim, 4)

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_rotation_judge(images: Tensor, *, steps: int = 1000, batch_size: int = 64,
                         lr: float = 1e-3, width: int = 32, seed: int = 0) -> RotationJudge:
    """A ``RotationJudge`` trained to name the rotation of real photos (random horizontal
    flips and shifts of up to 1/16 of the side as augmentation; Adam with a cosine decay).
    Deterministic for a given ``seed``; returned in eval mode."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"square images needed for rotations, got {tuple(images.shape[-2:])}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RotationJudge(images.shape[1], images.shape[-1], width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    shift = max(1, images.shape[-1] // 16)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
        x = images[idx]
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        k = torch.randint(0, 4, (len(x),), generator=gen)
        x = _shift_augment(rotate_batch(x, k), shift, gen)
        loss = F.cross_entropy(model(x), k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def judge_frechet(judge: nn.Module, real: Tensor, fake: Tensor) -> float:
    """Frechet distance between two image sets in the judge's features."""
    ext = _JudgeFeatures(judge)
    return fid_from_features(extract_features(ext, real, 256), extract_features(ext, fake, 256))


class _JudgeFeatures(nn.Module):
    def __init__(self, judge: nn.Module) -> None:
        super().__init__()
        self.judge = judge

    def forward(self, x: Tensor) -> Tensor:
        return self.judge.features(x)


@torch.no_grad()
def rotation_accuracy(judge: nn.Module, images: Tensor) -> float:
    """How often the judge names each of the four rotations of ``images`` right (a sanity
    figure: it should be high on held-out real photos)."""
    right = 0
    for q in range(4):
        x = torch.rot90(images, q, dims=(2, 3))
        pred = torch.cat([judge(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
        right += int((pred == q).sum())
    return right / (4 * len(images))


# --------------------------------------------------------------------------- Haar cascade
def load_cascade(name: str = CAT_CASCADE):
    """An OpenCV ``CascadeClassifier`` from the cascades shipped with the wheel; a one-line
    RuntimeError saying what to install when OpenCV or the cascade is missing."""
    try:
        import cv2
    except ImportError:
        raise RuntimeError(f"the Haar-cascade judge needs OpenCV: {OPENCV_HINT}") from None
    root = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not root:
        raise RuntimeError(f"OpenCV {cv2.__version__} ships no Haar cascades: {OPENCV_HINT}")
    cascade = cv2.CascadeClassifier(root + name)
    if cascade.empty():
        raise RuntimeError(f"no cascade {name!r} in {root}: {OPENCV_HINT}")
    return cascade


def haar_hits(images: Tensor, cascade=None, *, upscale: int = 128, scale_factor: float = 1.05,
              min_neighbors: int = 3, min_size: int = 32) -> np.ndarray:
    """A boolean per image: did the cascade find at least one face. Images are converted to
    8-bit gray, resized to ``upscale`` px (bilinear) and searched with ``detectMultiScale``."""
    import cv2

    cascade = cascade if cascade is not None else load_cascade()
    x = images.detach().float().cpu()
    if x.shape[1] == 3:  # ITU-R 601 luma, as cv2.cvtColor(RGB2GRAY)
        x = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    else:
        x = x[:, 0]
    gray = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    hits = np.zeros(len(gray), dtype=bool)
    for i, g in enumerate(gray):
        if upscale and g.shape[0] != upscale:
            g = cv2.resize(g, (upscale, upscale), interpolation=cv2.INTER_LINEAR)
        found = cascade.detectMultiScale(g, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                         minSize=(min_size, min_size))
        hits[i] = len(found) > 0
    return hits


def haar_rate(images: Tensor, cascade=None, **kwargs) -> float:
    """Fraction of ``images`` in which the cascade finds a face (see ``haar_hits``)."""
    return float(haar_hits(images, cascade, **kwargs).mean()) if len(images) else float("nan")


# --------------------------------------------------------------------------- memorisation
@torch.no_grad()
def nearest_distances(queries: Tensor, reference: Tensor, batch: int = 512) -> Tensor:
    """L2 distance from each query to its nearest reference (rows flattened)."""
    q = queries.flatten(1).float()
    r = reference.flatten(1).float()
    out = [torch.cdist(q[i:i + batch], r).amin(1) for i in range(0, len(q), batch)]
    return torch.cat(out).double()


def _with_mirrors(images: Tensor) -> Tensor:
    return torch.cat([images, images.flip(-1)]) if images.dim() == 4 else images


def memorisation(fake: Tensor, heldout: Tensor, train: Tensor, judge: nn.Module | None = None,
                 *, mirror: bool = True, close_quantile: float = 0.05) -> dict[str, float]:
    """Nearest-training-image distances of samples against those of held-out real photos.

    In pixel space and (given ``judge``) in the judge's features. For each space: the median
    distance of the samples and of the held-out photos, their ratio (``*_ratio``; below 1:
    samples sit closer to the training set than unseen real photos do), and the fraction of
    samples closer than the held-out photos' ``close_quantile`` quantile (``*_close``; by
    construction ~``close_quantile`` for a generator as far as new real photos). ``mirror``
    adds the mirror image of every training image (training flips them)."""
    ref = _with_mirrors(train) if mirror else train
    spaces = {"pix": (fake, heldout, ref)}
    if judge is not None:
        feats = [extract_features(_JudgeFeatures(judge), t, 256) for t in (fake, heldout, ref)]
        spaces["feat"] = tuple(feats)
    out: dict[str, float] = {}
    for name, (f, h, r) in spaces.items():
        df, dh = nearest_distances(f, r), nearest_distances(h, r)
        out[f"{name}_fake_median"] = float(df.median())
        out[f"{name}_heldout_median"] = float(dh.median())
        out[f"{name}_ratio"] = float(df.median() / dh.median())
        out[f"{name}_close"] = float((df < torch.quantile(dh, close_quantile)).double().mean())
    return out


