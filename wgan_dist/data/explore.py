"""Look at a shard set: counts per class and a grid of random samples, one row per class
(``python -m wgan_dist.shard --explore DIR``)."""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterator

import numpy as np

from .format import decode_image, image_entry, iter_samples, read_manifest, shard_paths


def _samples(shard_dir: str, manifest: dict) -> Iterator[dict]:
    for path in shard_paths(shard_dir, manifest):
        yield from iter_samples(str(path))


def _pick(labels: list[int | None], rows: list, per_class: int, seed: int) -> list[list[int]]:
    """Sample indices for each row: up to ``per_class`` random ones of the row's label, never
    the same sample twice (an unlabelled set repeats the label None in every row)."""
    rng = np.random.default_rng(seed)
    by_label: dict = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    picks = []
    for label in rows:
        pool = by_label.get(label, [])
        take = min(per_class, len(pool))
        pick = sorted(rng.choice(len(pool), size=take, replace=False)) if take else []
        picked = set(pick)
        by_label[label] = [i for k, i in enumerate(pool) if k not in picked]
        picks.append([pool[k] for k in pick])
    return picks


def explore(shard_dir: str, grid_path: str | None = None, per_class: int = 8,
            seed: int = 0) -> dict:
    """Count a shard set's samples per class and save a grid of random ones, a row per class."""
    import torch
    from torchvision.utils import make_grid, save_image

    m = read_manifest(shard_dir)
    names, res, ch = m["class_names"], m["resolution"], m["channels"]
    # First pass: labels only (no image is decoded); second pass: decode the picked ones.
    labels = [int(s["cls"]) if "cls" in s else None for s in _samples(shard_dir, m)]
    counts = Counter(labels)
    rows = sorted(counts, key=lambda x: -1 if x is None else x)
    if not m["labelled"]:  # one class: show a square of samples instead of a single row
        rows = [None] * per_class
    picks = _pick(labels, rows, per_class, seed)
    wanted = {i for row in picks for i in row}
    images = {i: decode_image(image_entry(s)[1], image_entry(s)[0], res, ch)
              for i, s in enumerate(_samples(shard_dir, m)) if i in wanted}
    blank = np.zeros((res, res, ch), np.uint8)
    tiles = [t for row in picks for t in [images[i] for i in row] + [blank] * (per_class - len(row))]
    grid_path = grid_path or os.path.join(shard_dir, "explore.png")
    if tiles:
        t = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255.0
        save_image(make_grid(t, nrow=per_class, padding=2, pad_value=0.5), grid_path)
    per_cls = {(names[k] if k is not None and k < len(names) else "(unlabelled)"): n
               for k, n in sorted(counts.items(), key=lambda kv: -1 if kv[0] is None else kv[0])}
    return {"total": len(labels), "manifest_total": m["total"], "per_class": per_cls,
            "class_names": names, "grid": grid_path if tiles else None,
            "rows": [names[k] if k is not None else "(unlabelled)" for k in rows]}
