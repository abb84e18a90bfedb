"""The objective of one phase, composed from the pure loss functions.

The trainer walks phases (critic x n_critic, then generator) and calls these; it never
computes a loss term itself. Each returns the scalar to back-propagate and a dict of detached
statistics (tensors, no host sync) for logging.

Conditional models: the critic is called as ``critic(x, y)`` (and ``critic(x, y, logits=True)``
when it has an auxiliary classifier, ``classify``); the penalty differentiates with respect to
the image with the labels held fixed. ``augment`` (DiffAugment with this step's parameters) is
applied to everything the critic sees.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import losses
from ..config import LossConfig

Tensor = torch.Tensor
Stats = dict[str, Tensor]
Augment = Callable[[Tensor], Tensor]


def _evaluate(critic: Callable, x: Tensor, y: Tensor | None,
              classify: bool) -> tuple[Tensor, Tensor | None]:
    """Scores, and class logits when the critic has an auxiliary classifier."""
    if y is None:
        return critic(x), None
    if classify:
        return critic(x, y, logits=True)
    return critic(x, y), None


def _classifier_term(logits: Tensor, y_real: Tensor, y_fake: Tensor, on_fakes: bool,
                     stats: Stats) -> Tensor:
    """The auxiliary classifier's cross-entropy on the reals (and the fakes, ``on_fakes``)."""
    n = y_real.shape[0]
    ac = losses.classification_loss(logits[:n], y_real)
    stats["ac_real"] = ac.detach()
    stats["ac_accuracy"] = (logits[:n].detach().argmax(1) == y_real).float().mean()
    if on_fakes:
        ac_fake = losses.classification_loss(logits[n:], y_fake)
        stats["ac_fake"] = ac_fake.detach()
        ac = ac + ac_fake
    return ac


def _penalty_term(critic: Callable, real: Tensor, fake: Tensor, alpha: Tensor,
                  y_real: Tensor | None, cfg: LossConfig, scale: float | Tensor,
                  stats: Stats) -> Tensor:
    """The gradient penalty on the interpolates between real_i and fake_i.

    Conditional: the interpolate is scored with the real label (any fixed label gives a valid
    constraint on D(., y); the reals' follows the data)."""
    score = critic if y_real is None else (lambda x: critic(x, y_real))
    norms = losses.penalty_gradient_norms(score, losses.interpolate(real, fake, alpha), scale)
    gp = losses.gradient_penalty(norms, cfg.gp_weight, cfg.one_sided)
    stats["gradient_penalty"] = gp.detach()
    stats["grad_norm_mean"] = norms.detach().mean()
    return gp


def critic_phase(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    alpha: Tensor,
    cfg: LossConfig,
    scale: float | Tensor = 1.0,
    *,
    y_real: Tensor | None = None,
    y_fake: Tensor | None = None,
    classify: bool = False,
    augment: Augment | None = None,
    penalty_critic: Callable | None = None,
) -> tuple[Tensor, Stats]:
    """Critic loss (+ gradient penalty + drift + auxiliary classifier) for one batch of reals
    and detached fakes (with their labels when the models are conditional).

    ``penalty_critic`` (default: ``critic``) scores the interpolates: the same parameters in
    an eager module when ``critic`` is compiled, since the penalty's double backward does not
    go through AOTAutograd.

    Reals and fakes go through the critic in one forward: the critic has no batch-coupled
    layers, so this is the same function at half the launches. The penalty takes its own
    forward on the interpolates with create_graph=True, and all terms meet in one backward.
    """
    fake = fake.detach()
    if augment is not None:
        # One transform per pair (real_i, fake_i): every DiffAugment op is affine in the image,
        # so the interpolates below are augmented interpolates, and the penalty holds the
        # critic's gradient to 1 where the critic is evaluated: on augmented images.
        real, fake = augment(real), augment(fake)
    y = None if y_real is None else torch.cat([y_real, y_fake])
    scores, logits = _evaluate(critic, torch.cat([real, fake]), y, classify)
    d_real, d_fake = scores[: real.shape[0]], scores[real.shape[0]:]
    stats: Stats = {"wasserstein": losses.wasserstein_estimate(d_real, d_fake).detach(),
                    "d_real": d_real.detach().float().mean(), "d_fake": d_fake.detach().float().mean()}
    if cfg.kind == "ns":
        loss = losses.ns_critic_loss(d_real, d_fake)
    else:
        loss = losses.critic_loss(d_real, d_fake)
    stats["critic_loss"] = loss.detach()
    if logits is not None:
        loss = loss + cfg.ac_weight * _classifier_term(logits, y_real, y_fake, cfg.ac_fake, stats)
    if cfg.gp_weight > 0:
        loss = loss + _penalty_term(penalty_critic or critic, real, fake, alpha, y_real, cfg,
                                    scale, stats)
    if cfg.drift_weight > 0:
        drift = losses.drift_penalty(d_real, cfg.drift_weight)
        loss = loss + drift
        stats["drift"] = drift.detach()
    return loss, stats


def generator_phase(
    critic: Callable[[Tensor], Tensor], fake: Tensor, cfg: LossConfig, *,
    y: Tensor | None = None, classify: bool = False, augment: Augment | None = None,
) -> tuple[Tensor, Stats]:
    """Generator loss on fakes that carry the generator's graph (and the labels they were
    asked for, which the auxiliary classifier should recognise)."""
    if augment is not None:
        fake = augment(fake)
    d_fake, logits = _evaluate(critic, fake, y, classify)
    loss = losses.ns_generator_loss(d_fake) if cfg.kind == "ns" else losses.generator_loss(d_fake)
    stats: Stats = {"generator_loss": loss.detach()}
    if logits is not None:
        ac = losses.classification_loss(logits, y)
        stats["ac_generator"] = ac.detach()
        loss = loss + cfg.ac_weight * ac
    return loss, stats
