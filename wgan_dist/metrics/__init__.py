"""Sample-quality metrics: FID/KID, ProGAN SWD, domain-classifier metrics, collapse alarm,
gradient-penalty visuals. Images are float tensors in [-1, 1], shape (N, C, H, W).

Only ``objective.losses`` and ``data.format`` are imported from the rest of the package, so the trainer and the
``evaluate`` CLI can both depend on this without cycles.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .classifier import (
    DomainClassifier,
    class_histogram_stats,
    classifier_fid,
    conditional_accuracy,
    confident_fraction,
    get_or_train_classifier,
    load_shard_tensors,
    predict,
    train_classifier,
)
from .diversity import CollapseAlarm, diversity_stats, mean_pairwise_distance
from .fid import (
    INCEPTION_ENV,
    FeatureFID,
    InceptionFeatures,
    compute_fid_kid,
    fid_from_features,
    frechet_distance,
)
from .gp_vis import grad_norms, gradient_norm_maps, log_gradient_visuals
from .swd import pyramid_resolutions, sliced_wasserstein

Tensor = torch.Tensor

__all__ = [
    "CollapseAlarm", "DomainClassifier", "FeatureFID", "INCEPTION_ENV", "InceptionFeatures",
    "class_histogram_stats", "classifier_fid", "compute_fid_kid", "conditional_accuracy",
    "confident_fraction",
    "diversity_stats", "evaluate_samples", "fid_from_features", "frechet_distance",
    "get_or_train_classifier", "grad_norms", "gradient_norm_maps", "load_shard_tensors",
    "log_gradient_visuals", "mean_pairwise_distance", "predict", "pyramid_resolutions",
    "sliced_wasserstein", "train_classifier",
]


def _classifier_metrics(
    classifier: nn.Module, fake: Tensor, real: Tensor,
    fake_labels: Tensor | None, real_labels: Tensor | None,
) -> dict[str, float]:
    out: dict[str, float] = {}
    if fake_labels is not None:
        out["cls_acc"] = conditional_accuracy(classifier, fake, fake_labels)
    # Without real labels, the classifier's view of the real set is the reference histogram.
    ref = real_labels if real_labels is not None else predict(classifier, real)
    hist = class_histogram_stats(classifier, fake, ref)
    out.update(cls_covered=float(hist["covered"]), cls_real_classes=float(hist["real_classes"]),
               cls_covered_frac=float(hist["covered_frac"]), cls_rkl=float(hist["rkl"]))
    out["cls_confident"] = confident_fraction(classifier, fake)  # p >= 0.9 for one class
    out["cls_confident_real"] = confident_fraction(classifier, real)
    if isinstance(classifier, DomainClassifier) and min(len(real), len(fake)) >= 2:
        out["cls_fid"] = classifier_fid(classifier, real, fake)
    return out


def evaluate_samples(
    fake: Tensor,
    real: Tensor,
    *,
    fake_labels: Tensor | None = None,
    real_labels: Tensor | None = None,
    classifier: nn.Module | None = None,
    fid_features: str | nn.Module | None = None,
    swd: bool = True,
    inception_weights: str | os.PathLike | None = None,
    diversity_features: nn.Module | None = None,
    seed: int = 0,
    progress=None,
) -> dict[str, float]:
    """All metrics that apply to the given inputs, as one flat dict of floats.

    Keys: ``fid, kid_mean, kid_std`` (when ``fid_features`` is ``"inception"`` or a module);
    ``swd_L0..swd_Lk, swd_avg`` (x1e3, ``L0`` = finest level); ``cls_acc`` (needs
    ``fake_labels``), ``cls_covered, cls_real_classes, cls_covered_frac, cls_rkl, cls_fid``
    (need ``classifier``); ``div_ratio, div_pixel_ratio`` (+ ``div_feat_ratio`` with
    ``diversity_features``; within a class given both label sets). Deterministic for fixed inputs and ``seed`` (the caller's RNG
    state is not consumed).
    """
    fake, real = fake.detach(), real.detach()
    out: dict[str, float] = {}
    if fid_features is not None:
        out.update(compute_fid_kid(real, fake, fid_features, inception_weights=inception_weights,
                                   device=fake.device, seed=seed, progress=progress))
    if swd and min(real.shape[-2:]) >= 7:
        out.update({f"swd_{k}": v for k, v in sliced_wasserstein(real, fake, seed=seed).items()})
    if classifier is not None:
        out.update(_classifier_metrics(classifier, fake, real, fake_labels, real_labels))
    div = diversity_stats(fake, real, diversity_features, fake_labels=fake_labels, real_labels=real_labels)
    out.update({f"div_{k}": v for k, v in div.items() if k.endswith("ratio")})
    return out
