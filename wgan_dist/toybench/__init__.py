"""The 2-D toy benchmark: ring, grid and swiss roll, with PacGAN's mode metrics.

``data`` holds the datasets, ``score`` the metrics (and the JBT sampler), ``run`` one
training run built from the image trainer's own pieces; ``python -m wgan_dist.toy`` is the
command line.
"""
from .data import DATA_SCALE, DATASETS, mode_centres, mode_std, sample_latent, sample_real
from .run import ToyConfig, run_toy
from .score import (METRIC_KEYS, N_EVAL, jacobian_norms, jbt_latents, save_scatter, summarise,
                    toy_metrics)

__all__ = ["DATASETS", "DATA_SCALE", "METRIC_KEYS", "N_EVAL", "ToyConfig", "jacobian_norms",
           "jbt_latents", "mode_centres", "mode_std", "run_toy", "sample_latent", "sample_real",
           "save_scatter", "summarise", "toy_metrics"]
