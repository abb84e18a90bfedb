"""wgan_dist: WGAN-GP image generators from a folder of images to a multi-node run."""

__version__ = "0.1.0"
