"""Domain-classifier metrics for labelled data: conditional accuracy, class coverage, FID.

A small CNN is trained on the real shards once and cached, keyed by the sha256 of the
shard set's ``manifest.json`` (which lists every shard's sha256) plus the training
settings, so every later evaluation of the same data reuses it.

Shards are read through ``wgan_dist.data.format`` (the one reader of the shard format).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.format import (decode_image, file_sha256, image_entry, iter_samples, label_of,
                           read_manifest, shard_paths)
from ..progress import Heartbeat, Say
from .fid import extract_features, fid_from_features

Tensor = torch.Tensor

ARCH_VERSION = 1  # bump when DomainClassifier changes, so stale caches are not loaded
CACHE_ENV = "WGAN_DIST_CACHE"
_TRAIN_BYTES = 2 * 1024**3  # float32 training images held in memory when limit=None


# --------------------------------------------------------------------------- shards
def load_shard_tensors(
    shard_dir: str | os.PathLike, limit: int | None = None, *, verify: bool = True
) -> tuple[Tensor, Tensor | None, list[str]]:
    """Read a shard set into memory: images float [-1, 1] (N, C, H, W), labels or None, names.

    ``limit`` keeps the first ``limit`` samples in shard order: a fair subset only when the
    shards were written in shuffled order, as ``wgan_dist.shard`` does (class-sorted shards
    would give the first classes only). ``verify`` checks each shard's sha256 against the
    manifest (a ``ValueError`` on mismatch).
    """
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    res, channels = manifest["resolution"], manifest["channels"]
    labelled = manifest["labelled"]
    images: list[np.ndarray] = []
    labels: list[int] = []
    for entry, path in zip(manifest["shards"], shard_paths(shard_dir, manifest)):
        if verify and entry.get("sha256") and file_sha256(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 does not match manifest.json (corrupt or replaced shard)")
        for sample in iter_samples(str(path)):
            ext, data = image_entry(sample)
            images.append(decode_image(data, ext, res, channels))
            if labelled:
                labels.append(label_of(sample))
            if limit is not None and len(images) >= limit:
                break
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise ValueError(f"no samples in {shard_dir}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    y = torch.tensor(labels, dtype=torch.long) if labelled else None
    return x.contiguous(), y, list(manifest["class_names"])


# --------------------------------------------------------------------------- model
class DomainClassifier(nn.Module):
    """Small CNN for 28..128 px, 1 or 3 channels; ``features`` is the penultimate layer.

    Stride-2 stages halve the image until it is <= 8 px, then global average pooling, so
    the same definition serves every resolution. GroupNorm rather than BatchNorm: the
    output must not depend on batch composition or train/eval mode.
    """

    def __init__(self, in_channels: int, n_classes: int, resolution: int, width: int = 32) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "n_classes": n_classes,
                       "resolution": resolution, "width": width}
        n_down = max(1, math.ceil(math.log2(resolution / 8)))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU()]
        ch = width
        for _ in range(n_down):
            out = min(ch * 2, 4 * width)
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            ch = out
        self.trunk = nn.Sequential(*layers)
        self.num_features = ch
        self.head = nn.Linear(ch, n_classes)
        self.from_cache = False

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class _Features(nn.Module):
    """Exposes ``DomainClassifier.features`` as a module for the FID helpers."""

    def __init__(self, clf: DomainClassifier) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, x: Tensor) -> Tensor:
        return self.clf.features(x)


def _shift_augment(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Random translation by up to ``max_shift`` px (replicate padding), one shift per batch:
    cheap, and keeps the classifier from keying on exact pixel positions of GAN samples."""
    if max_shift <= 0:
        return x
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=gen)).tolist()
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    h, w = x.shape[-2:]
    return padded[:, :, p + dy: p + dy + h, p + dx: p + dx + w]


def train_classifier(
    images: Tensor, labels: Tensor, n_classes: int, *, steps: int = 2000, batch_size: int = 64,
    lr: float = 2e-3, width: int = 32, max_shift: int = 2, seed: int = 0,
    device: str | torch.device = "cpu", progress: Say | None = None,
) -> DomainClassifier:
    """Adam on cross-entropy with a cosine learning-rate decay; returns the model in eval mode.
    ``progress`` hears a heartbeat line every 10 s."""
    gen = torch.Generator().manual_seed(seed)
    # Seeded parameter init without disturbing the caller's (e.g. the trainer's) RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(images.shape[1], n_classes, images.shape[-1], width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    model.train()
    beat = Heartbeat("training the domain classifier", steps, "steps", progress)
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=gen)
        x = _shift_augment(images[idx], max_shift, gen).to(device)
        loss = F.cross_entropy(model(x), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        beat(step + 1)
    beat.finish()
    return model.eval()


def _cache_key(shard_dir: Path, settings: dict) -> str:
    h = hashlib.sha256((shard_dir / "manifest.json").read_bytes())
    h.update(json.dumps({**settings, "arch": ARCH_VERSION}, sort_keys=True).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    from ..cache import cache_root

    return cache_root() / "classifiers"


def get_or_train_classifier(
    shard_dir: str | os.PathLike, *, steps: int = 2000, limit: int | None = None,
    cache_dir: str | os.PathLike | None = None, width: int = 32, batch_size: int = 64, seed: int = 0,
    device: str | torch.device | None = None, retrain: bool = False,
    progress: Say | None = None,
) -> DomainClassifier:
    """Load the cached classifier for this shard set, or train and cache it.

    ``limit``: training images read (the first ones in shard order); None picks as many as
    fit a ~2 GiB float32 budget (all of a 28 px set, ~10k images at 128 px RGB).
    The returned model has ``from_cache`` True when it was loaded. The cache file is a
    ``torch.save`` dict of tensors and plain values, read back with ``weights_only=True``,
    and is written through a temporary file + rename so a concurrent reader never sees a
    partial file.
    """
    shard_dir = Path(shard_dir)
    device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if limit is None:
        m = read_manifest(shard_dir)
        per_image = 4 * int(m["channels"]) * int(m["resolution"]) ** 2
        limit = min(int(m.get("total", 0)) or 2**31, _TRAIN_BYTES // per_image)
    settings = {"steps": steps, "limit": limit, "width": width, "batch_size": batch_size, "seed": seed}
    key = _cache_key(shard_dir, settings)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"domain_classifier-{key[:20]}.pt"
    if path.is_file() and not retrain:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = DomainClassifier(**blob["config"])
        model.load_state_dict(blob["state_dict"])
        model.from_cache = True
        return model.to(device).eval()
    images, labels, names = load_shard_tensors(shard_dir, limit=limit)
    if labels is None:
        raise ValueError(f"{shard_dir} is unlabelled; a domain classifier needs class labels")
    n_classes = max(len(names), int(labels.max()) + 1)
    (progress or (lambda m: None))(f"training a domain classifier for {shard_dir} ({steps} steps, "
                                   f"cached in {path.parent} for later evaluations)")
    model = train_classifier(images, labels, n_classes, steps=steps, batch_size=batch_size,
                             width=width, seed=seed, device=device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": model.config, "state_dict": state, "class_names": names, "key": key}, tmp)
    os.replace(tmp, path)
    return model


# --------------------------------------------------------------------------- metrics
@torch.no_grad()
def predict(classifier: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Argmax class of each image (CPU long tensor)."""
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    try:
        return torch.cat([classifier(images[i:i + batch_size].to(device)).argmax(1).cpu()
                          for i in range(0, images.shape[0], batch_size)])
    finally:
        classifier.train(was_training)


def confident_fraction(classifier: nn.Module, images: Tensor, threshold: float = 0.9,
                       batch_size: int = 256) -> float:
    """Fraction of ``images`` the classifier puts in one class with probability >= ``threshold``
    ("recognisably one thing"); compare with the same figure on real images."""
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.no_grad():
            top = torch.cat([classifier(images[i:i + batch_size].to(device)).softmax(1).amax(1).cpu()
                             for i in range(0, images.shape[0], batch_size)])
    finally:
        classifier.train(was_training)
    return float((top >= threshold).float().mean())


def conditional_accuracy(classifier: nn.Module, images: Tensor, requested_labels: Tensor) -> float:
    """Fraction of conditional samples the classifier assigns to the class they were asked for."""
    pred = predict(classifier, images)
    return float((pred == requested_labels.cpu().long()).float().mean())


def _as_histogram(real: Tensor | np.ndarray | list, n_classes: int | None) -> Tensor:
    """Labels (1-D long) -> counts; a float vector is taken as a histogram already."""
    t = real.detach().cpu() if isinstance(real, Tensor) else torch.as_tensor(np.asarray(real))
    if t.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return torch.bincount(t.long().flatten(), minlength=n_classes or 0).double()
    return t.double().flatten()


def class_histogram_stats(
    classifier: nn.Module, fake_images: Tensor, real_labels_or_hist: Tensor | np.ndarray | list,
    *, smoothing: float = 1e-3, min_count: int = 1,
) -> dict:
    """Class coverage and reverse KL of the fakes' predicted-class histogram.

    ``real_labels_or_hist``: integer labels of the real set, or a float histogram (counts or
    probabilities) over classes. A class is *covered* when at least ``min_count`` fakes are
    predicted as it. ``rkl`` = KL(p_fake || p_real); both histograms are first mixed with the
    uniform distribution at weight ``smoothing`` (p <- (1 - s) p + s / K), which keeps the KL
    finite when fakes land in a class absent from the reals and leaves KL(p || p) = 0.
    A fully collapsed generator over K balanced classes scores ~log K.
    """
    n_out = getattr(classifier, "head", None)
    n_classes = n_out.out_features if isinstance(n_out, nn.Linear) else None
    real_hist = _as_histogram(real_labels_or_hist, n_classes)
    k = max(real_hist.numel(), n_classes or 0)
    real_hist = F.pad(real_hist, (0, k - real_hist.numel()))
    fake_counts = torch.bincount(predict(classifier, fake_images), minlength=k).double()[:k]
    p_real = real_hist / real_hist.sum()
    p_fake = fake_counts / fake_counts.sum()
    ps_real = (1 - smoothing) * p_real + smoothing / k
    ps_fake = (1 - smoothing) * p_fake + smoothing / k
    rkl = float((ps_fake * (ps_fake / ps_real).log()).sum())
    real_classes = int((real_hist > 0).sum())
    covered = int(((fake_counts >= min_count) & (real_hist > 0)).sum())
    return {
        "covered": covered,
        "real_classes": real_classes,
        "covered_frac": covered / max(real_classes, 1),
        "rkl": rkl,
        "hist": p_fake.tolist(),
        "real_hist": p_real.tolist(),
    }


def classifier_fid(classifier: DomainClassifier, real: Tensor, fake: Tensor, batch_size: int = 256) -> float:
    """Frechet distance in the classifier's penultimate (pooled trunk) features."""
    ext = _Features(classifier)
    return fid_from_features(extract_features(ext, real, batch_size), extract_features(ext, fake, batch_size))
