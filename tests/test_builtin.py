"""The built-in sketch dataset: determinism, shapes, QuickDraw conventions."""
from __future__ import annotations

import numpy as np
import pytest

from wgan_dist.data import builtin
from conftest import save_quickdraw_npy
from wgan_dist.data.builtin import CATEGORIES, make_builtin, render_strokes


def test_categories_sorted_and_enough() -> None:
    assert len(CATEGORIES) >= 6
    assert list(CATEGORIES) == sorted(CATEGORIES)  # label i == sorted class name i


@pytest.mark.parametrize("size", [28, 32, 64, 128])
def test_shapes_dtype_and_every_category(size: int) -> None:
    n = 2 if size == 128 else 3
    x, y = make_builtin(n, seed=1, size=size)
    assert x.shape == (n * len(CATEGORIES), size, size) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.shape == (len(x),)
    assert list(y) == [c for c in range(len(CATEGORIES)) for _ in range(n)]  # grouped
    for img in x:  # bright strokes on a 0 background, like QuickDraw's bitmaps
        assert np.bincount(img.ravel()).argmax() == 0
        assert (img > 200).sum() >= 3
        assert (img == 0).mean() > 0.5


def test_deterministic_and_independent_of_n() -> None:
    a, _ = make_builtin(4, seed=7)
    b, _ = make_builtin(4, seed=7)
    c, _ = make_builtin(2, seed=7)
    np.testing.assert_array_equal(a, b)
    k = len(CATEGORIES)
    np.testing.assert_array_equal(a.reshape(k, 4, 28, 28)[:, :2], c.reshape(k, 2, 28, 28))


def test_seeds_and_samples_differ() -> None:
    a, _ = make_builtin(3, seed=0)
    b, _ = make_builtin(3, seed=1)
    assert not np.array_equal(a, b)
    assert len({x.tobytes() for x in a}) == len(a)  # no duplicated drawings


def test_strokes_are_quickdraw_simplified() -> None:
    strokes, thickness = builtin.builtin_drawing(0, 0, seed=0)
    assert thickness > 0 and strokes
    for xs, ys in strokes:
        assert len(xs) == len(ys) >= 2
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in xs + ys)


def test_render_strokes() -> None:
    img = render_strokes([[[10, 245], [128, 128]]], 28, 16.0)
    assert img.shape == (28, 28) and img.dtype == np.uint8
    assert img[14].max() == 255 and img[0].max() == 0  # a horizontal bar through the middle
    dot = render_strokes([[[128], [128]]], 32, 20.0)  # one-point stroke: a dot
    assert dot.max() > 200
    with pytest.raises(ValueError):
        render_strokes([[[1, 2], [3]]], 28, 16.0)


def test_save_quickdraw_npy(tmp_path) -> None:
    paths = save_quickdraw_npy(tmp_path, 3, seed=2, prefix="full_numpy_bitmap_")
    assert len(paths) == len(CATEGORIES)
    arr = np.load(paths[0])
    assert arr.shape == (3, 784) and arr.dtype == np.uint8
    x, _ = make_builtin(3, seed=2)
    np.testing.assert_array_equal(arr, x[:3].reshape(3, 784))
    assert (tmp_path / f"full_numpy_bitmap_{CATEGORIES[0]}.npy").exists()
