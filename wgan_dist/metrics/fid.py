"""FID and KID through torchmetrics, with an Inception that never touches the network.

torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` do the accumulation
and the maths. We run the feature extractor ourselves and hand the metrics an identity
module, for three reasons:

* one forward pass feeds both metrics (Inception is the expensive part);
* ``KernelInceptionDistance`` cannot be given a local Inception weights path, and on
  clusters without internet torchmetrics' default would try to download it;
* any ``nn.Module`` mapping [-1, 1] images to ``(N, D)`` features (a stand-in net in tests,
  the domain classifier's trunk) plugs in the same way.

``frechet_distance`` is an independent float64 scipy implementation (``sqrtm``), used to
cross-check torchmetrics and for the classifier-feature FID.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import nn

from ..progress import Heartbeat, Say

Tensor = torch.Tensor

INCEPTION_ENV = "WGAN_DIST_INCEPTION_WEIGHTS"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
# The same TF-ported weights are published by pytorch-fid under INCEPTION_FILE and by
# torch-fidelity as weights-inception-2015-12-05-6726825d.pth (same sha256 prefix, which
# torch.hub checks); either file loads into torch-fidelity's FeatureExtractorInceptionV3.
INCEPTION_URLS = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE,
)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), in float64 (Heusel et al., 2017)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Singular product (fewer samples than dimensions): nudge both diagonals, the
        # same fallback pytorch-fid uses, rather than returning NaN.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    # Rounding can leave a tiny imaginary part on a real square root; drop it.
    covmean = np.real(covmean)
    # >= 0 in exact arithmetic; a tiny negative result is rounding in sqrtm for close sets.
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)))


def feature_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1, as torchmetrics) of ``(N, D)`` features."""
    f = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N>=2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def fid_from_features(real: Tensor | np.ndarray, fake: Tensor | np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets."""
    mu_r, sig_r = feature_stats(real)
    mu_f, sig_f = feature_stats(fake)
    return frechet_distance(mu_r, sig_r, mu_f, sig_f)


def _missing_weights_message(path: str | None) -> str:
    where = (f"'{path}'" if path else
             f"nothing (neither --inception-weights / eval.inception_weights nor ${INCEPTION_ENV} is set)")
    return (
        f"Inception FID weights not found: looked for {where}. Nothing is downloaded (wgan_dist "
        f"targets clusters without internet). Fetch the FID Inception weights {INCEPTION_FILE} "
        f"on a machine with internet (from {INCEPTION_URLS[0]} or {INCEPTION_URLS[1]}), copy "
        f"the file over, and pass --inception-weights /path/to/{INCEPTION_FILE} (evaluate), "
        f"eval.inception_weights=/path/to/{INCEPTION_FILE} (train), or export "
        f"{INCEPTION_ENV}=/path/to/{INCEPTION_FILE}."
    )


def check_inception_available(weights: str | os.PathLike | None = None) -> str:
    """The weights file FID would read, checked now (exists; torch-fidelity importable), so a
    run fails at its start rather than at its first evaluation. Returns the path."""
    path = str(weights) if weights else os.environ.get(INCEPTION_ENV) or None
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(_missing_weights_message(path))
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as exc:
        raise ImportError("FID needs torch-fidelity: pip install torch-fidelity "
                          f"(the weights are read from {path}, never downloaded)") from exc
    return path


class InceptionFeatures(nn.Module):
    """The standard FID Inception-v3 (torch-fidelity weights), pool3 2048-d features.

    Input: [-1, 1] images, 1 or 3 channels, any size. They are quantised to uint8 as a saved
    PNG would be, grayscale repeated to RGB, and resized to 299 inside the network with the
    TF1-compatible bilinear resize (``antialias=False``), matching torch-fidelity and the
    original TF FID code rather than torchmetrics' antialiased default.
    """

    num_features = 2048

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        path = str(weights) if weights is not None else os.environ.get(INCEPTION_ENV) or None
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(_missing_weights_message(path))
        try:
            import torch_fidelity  # noqa: F401  (torchmetrics needs it for the network definition)
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as exc:
            raise ImportError(
                "The Inception FID extractor needs torch-fidelity: pip install torch-fidelity "
                f"(the weights themselves are read from {path}, never downloaded)."
            ) from exc
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"],
            feature_extractor_weights_path=path, antialias=False,
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        u8 = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
        return self.net(u8)


class _Identity(nn.Module):
    """Hands precomputed features to torchmetrics; ``num_features`` skips its dummy probe."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


@functools.lru_cache(maxsize=2)
def _cached_inception(path: str | None) -> InceptionFeatures:
    # Periodic evaluation in the trainer would otherwise re-read ~100 MB of weights each time.
    return InceptionFeatures(path)


def build_extractor(
    feature_extractor: str | nn.Module,
    inception_weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """``"inception"`` -> :class:`InceptionFeatures` (loaded once per process, moved to
    ``device``); an ``nn.Module`` is used as given, where it is."""
    if isinstance(feature_extractor, nn.Module):
        return feature_extractor
    if feature_extractor == "inception":
        path = str(inception_weights) if inception_weights is not None else os.environ.get(INCEPTION_ENV) or None
        if path is None or not Path(path).is_file():  # checked here too: never cache a failure
            raise FileNotFoundError(_missing_weights_message(path))
        net = _cached_inception(str(Path(path).resolve()))
        return net.to(device) if device is not None else net
    raise ValueError(f"feature_extractor must be 'inception' or an nn.Module, got {feature_extractor!r}")


@torch.no_grad()
def extract_features(extractor: nn.Module, images: Tensor, batch_size: int = 64,
                     progress: Say | None = None) -> Tensor:
    """Run ``extractor`` over [-1, 1] images in batches; float64 ``(N, D)`` on the CPU.
    ``progress`` hears a heartbeat line every 10 s."""
    device = next((p.device for p in extractor.parameters()), images.device)
    was_training = extractor.training
    extractor.eval()  # dropout / batch-norm statistics must not change the features
    beat = Heartbeat("features", images.shape[0], "images", progress) if progress else None
    out = []
    try:
        for i in range(0, images.shape[0], batch_size):
            out.append(extractor(images[i:i + batch_size].to(device)).flatten(1).double().cpu())
            if beat:
                beat(i + batch_size)
    finally:
        extractor.train(was_training)
    return torch.cat(out)


class FeatureFID:
    """Accumulates real and fake images in batches; ``compute()`` gives FID and KID.

    ``feature_extractor``: ``"inception"`` (weights from ``inception_weights`` or
    ``$WGAN_DIST_INCEPTION_WEIGHTS``, put on ``device``) or any module mapping [-1, 1]
    images to ``(N, D)`` features (used on its own device). Features are kept in float64 on
    the CPU; KID keeps all of them, so memory is ~16 KB per image for Inception.

    ``sync_on_compute`` is off by default: torchmetrics would otherwise all-gather across
    DDP ranks inside ``compute()``, which deadlocks when only rank 0 evaluates.
    """

    def __init__(
        self,
        feature_extractor: str | nn.Module = "inception",
        *,
        inception_weights: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
        sync_on_compute: bool = False,
        progress: Say | None = None,
    ) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        self.extractor = build_extractor(feature_extractor, inception_weights, device)
        self.batch_size, self.progress = batch_size, progress
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        self._fid: FrechetInceptionDistance | None = None
        self._kid: KernelInceptionDistance | None = None
        self._make = lambda dim: (
            FrechetInceptionDistance(feature=_Identity(dim), sync_on_compute=sync_on_compute),
            KernelInceptionDistance(
                feature=_Identity(dim), subsets=kid_subsets, subset_size=kid_subset_size,
                sync_on_compute=sync_on_compute,
            ),
        )

    def update(self, images: Tensor, real: bool) -> None:
        """Add a batch of [-1, 1] images to the real or the fake side."""
        feats = extract_features(self.extractor, images, self.batch_size, self.progress)
        self.update_features(feats, real)

    def update_features(self, features: Tensor, real: bool) -> None:
        """Add precomputed ``(N, D)`` features (e.g. cached real statistics)."""
        features = features.detach().double().cpu()
        if self._fid is None:
            with warnings.catch_warnings():
                # KID warns that it buffers all features; that is known and intended here.
                warnings.simplefilter("ignore", UserWarning)
                self._fid, self._kid = self._make(features.shape[1])
        self._fid.update(features, real=real)
        self._kid.update(features, real=real)

    def compute(self) -> dict[str, float]:
        """``{"fid", "kid_mean", "kid_std"}``; KID subsets shrink to the smaller set if needed."""
        if self._fid is None or self._kid is None:
            raise RuntimeError("FeatureFID.compute() before any update()")
        n_real = int(self._fid.real_features_num_samples)
        n_fake = int(self._fid.fake_features_num_samples)
        if min(n_real, n_fake) < 2:
            raise RuntimeError(f"need >= 2 real and fake samples, have {n_real} real, {n_fake} fake")
        # Clamped at 0: the distance is >= 0, and a negative value is rounding in the matrix
        # square root (float64 sqrtm of a near-singular product) when the two sets are close.
        fid = max(0.0, float(self._fid.compute()))
        self._kid.subset_size = min(self.kid_subset_size, n_real, n_fake)
        # KID draws its subsets from the global RNG; fork it so the value is a function of
        # the inputs and the seed, and the caller's RNG stream is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kid_mean, kid_std = self._kid.compute()
        # KID's estimator is unbiased, so for matching sets it scatters around 0 and can dip
        # below; a squared distance is >= 0, and that is what is reported.
        return {"fid": fid, "kid_mean": max(0.0, float(kid_mean)), "kid_std": float(kid_std)}

    def reset(self, keep_real: bool = False) -> None:
        """Forget the fake side (and the real side unless ``keep_real``)."""
        for m in (self._fid, self._kid):
            if m is not None:
                m.reset_real_features = not keep_real
                m.reset()


def compute_fid_kid(
    real: Tensor,
    fake: Tensor,
    feature_extractor: str | nn.Module = "inception",
    **kwargs: object,
) -> dict[str, float]:
    """One-shot FID/KID of two image tensors (keyword arguments go to :class:`FeatureFID`)."""
    metric = FeatureFID(feature_extractor, **kwargs)  # type: ignore[arg-type]
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute()
