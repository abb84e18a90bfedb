"""The built-in dataset: procedurally drawn, class-labelled sketches in QuickDraw's own form.

Every drawing is built the way a QuickDraw player would draw it: a handful of strokes
(polylines), stored in QuickDraw's *simplified* format -- a list of ``[[x0, x1, ...],
[y0, y1, ...]]`` integer lists in a 0..255 canvas -- and then rendered as bright strokes (255)
on a black (0) background, like ``full/numpy_bitmap/<category>.npy``.

Variation per drawing: shape proportions (variant parameters per category), per-point
jitter, a random affine (rotation, anisotropic scale, shear), random scale and position in
the canvas, stroke thickness, randomly missing strokes and stray extra strokes.

Determinism: drawing ``i`` of category ``c`` depends only on ``(seed, c, i)`` (its generator
is seeded with ``numpy.random.default_rng([seed, c, i])``), so it is the same whatever the
number of drawings requested, and any worker process can render any drawing on its own.

``make_builtin`` groups the classes: labels are ``[0]*n + [1]*n + ...`` in ``CATEGORIES``
order (which is alphabetical, so label ``i`` is also ``sorted(CATEGORIES)[i]``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES: tuple[str, ...] = (
    "bicycle", "cup", "fish", "house", "star", "sun", "tree", "umbrella",
)

# Render this many times larger, then box-average down: exact area antialiasing.
SUPERSAMPLE = 4
CANVAS = 256  # QuickDraw coordinates live in 0..255

Poly = np.ndarray  # (P, 2) float points in a unit frame, y pointing down
Strokes = list  # QuickDraw simplified: [[xs], [ys]] per stroke


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def render_strokes(strokes: Sequence, size: int, thickness: float) -> np.ndarray:
    """Render QuickDraw-simplified strokes to a uint8 ``(size, size)`` image.

    ``strokes`` is a list of ``[[x0, x1, ...], [y0, y1, ...]]`` in 0..255 canvas coordinates.
    ``thickness`` is the pen width in *canvas* units (a 256-wide canvas), so a drawing looks
    the same at every output size; 16 gives roughly QuickDraw's 28 px bitmaps (~1.7 px).
    Raises ``ValueError`` on a malformed stroke list.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    big = size * SUPERSAMPLE
    k = big / CANVAS
    width = max(1, int(round(thickness * k)))
    r = width / 2.0
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    if not isinstance(strokes, (list, tuple)):
        raise ValueError("drawing is not a list of strokes")
    for stroke in strokes:
        if not isinstance(stroke, (list, tuple, np.ndarray)) or len(stroke) < 2:
            raise ValueError("stroke is not a pair [xs, ys]")
        xs, ys = stroke[0], stroke[1]
        if len(xs) != len(ys) or len(xs) == 0:
            raise ValueError("stroke has mismatched or empty coordinate lists")
        try:
            # +0.5: canvas coordinate c covers [c, c+1), so draw through the pixel centre.
            pts = [((float(x) + 0.5) * k, (float(y) + 0.5) * k) for x, y in zip(xs, ys)]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"non-numeric coordinate ({exc})") from None
        if len(pts) > 1:
            draw.line(pts, fill=255, width=width)
        # A disc on every vertex gives round joints and caps (PIL cuts both square), and
        # makes a 1-point stroke a dot; it is ~3x faster than PIL's joint="curve".
        for px, py in pts:
            draw.ellipse((px - r, py - r, px + r, py + r), fill=255)
    return np.asarray(img.reduce(SUPERSAMPLE))


def fit_strokes(strokes: Sequence, margin: float = 0.1) -> Strokes:
    """Scale/centre a drawing into the 0..255 canvas, keeping aspect, with a relative margin.

    QuickDraw's simplified drawings are top-left aligned; its bitmaps are centred with a
    margin. The ``.ndjson`` reader uses this so rendered drawings match the bitmap files.
    """
    arrs = [np.asarray([s[0], s[1]], dtype=np.float64) for s in strokes]
    allp = np.concatenate(arrs, axis=1)
    lo, hi = allp.min(axis=1), allp.max(axis=1)
    extent = max(float((hi - lo).max()), 1e-6)
    scale = (CANVAS - 1) * (1 - 2 * margin) / extent
    centre = (lo + hi) / 2
    out = []
    for a in arrs:
        p = np.rint((a - centre[:, None]) * scale + (CANVAS - 1) / 2).astype(int)
        out.append([p[0].tolist(), p[1].tolist()])
    return out


# ---------------------------------------------------------------------------------------------
# Shape primitives (unit frame, roughly [-1, 1], y down)
# ---------------------------------------------------------------------------------------------
_UNIT = {n: np.arange(n) / (n - 1) for n in range(2, 65)}  # np.linspace is slow for tiny n


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int) -> Poly:
    t = a0 + (a1 - a0) * _UNIT[n]
    out = np.empty((n, 2))
    out[:, 0] = cx + rx * np.cos(t)
    out[:, 1] = cy + ry * np.sin(t)
    return out


def _pl(*pts: tuple[float, float]) -> Poly:
    return np.asarray(pts, dtype=np.float64)


def _bicycle(rng: np.random.Generator) -> list[Poly]:
    r = rng.uniform(0.32, 0.45)
    back, front = (-0.55, 0.3), (0.55, 0.3)
    crank = (rng.uniform(-0.12, 0.05), 0.3)
    head = (rng.uniform(0.28, 0.4), rng.uniform(-0.3, -0.15))
    seat = (rng.uniform(-0.28, -0.15), rng.uniform(-0.3, -0.15))
    return [
        _arc(*back, r, r, 0, 2 * np.pi, 24),
        _arc(*front, r, r, 0, 2 * np.pi, 24),
        _pl(back, crank, head, seat, back),
        _pl(head, front),
        _pl(seat, (seat[0] - 0.04, seat[1] - 0.18)),
        _pl((seat[0] - 0.18, seat[1] - 0.18), (seat[0] + 0.1, seat[1] - 0.18)),
        _pl(head, (head[0] - 0.05, head[1] - 0.22), (head[0] + 0.12, head[1] - 0.26)),
    ]


def _cup(rng: np.random.Generator) -> list[Poly]:
    top, bot = rng.uniform(0.4, 0.55), rng.uniform(0.3, 0.45)
    h = rng.uniform(0.5, 0.75)
    hr = rng.uniform(0.2, 0.32)
    strokes = [
        _pl((-top, -h), (-bot, h), (bot, h), (top, -h)),
        _arc(0, -h, top, rng.uniform(0.04, 0.12), 0, 2 * np.pi, 20),
        _arc((top + bot) / 2, 0, hr, h * 0.45, -np.pi / 2, np.pi / 2, 10),
    ]
    if rng.random() < 0.4:  # steam
        x = rng.uniform(-0.2, 0.2)
        ys = np.linspace(-h - 0.15, -h - 0.6, 6)
        strokes.append(np.stack([x + 0.07 * np.sin(np.arange(6) * 2.2), ys], axis=1))
    return strokes


def _fish(rng: np.random.Generator) -> list[Poly]:
    bh = rng.uniform(0.3, 0.5)
    tail = rng.uniform(0.3, 0.45)
    t = np.linspace(0, 1, 12)
    x = -0.8 + 1.25 * t
    upper = np.stack([x, -bh * np.sin(np.pi * t)], axis=1)
    lower = np.stack([x[::-1], bh * np.sin(np.pi * t[::-1])], axis=1)
    strokes = [
        np.concatenate([upper, lower]),
        _pl((0.45, 0.0), (0.85, -tail), (0.85, tail), (0.45, 0.0)),
        _arc(-0.5, -0.08, 0.05, 0.05, 0, 2 * np.pi, 8),
    ]
    if rng.random() < 0.5:  # gill
        strokes.append(_arc(-0.55, 0.0, 0.25, bh * 0.6, -0.9, 0.9, 6))
    return strokes


def _house(rng: np.random.Generator) -> list[Poly]:
    w, top = rng.uniform(0.5, 0.7), rng.uniform(-0.2, 0.0)
    apex = rng.uniform(-0.85, -0.55)
    dw = rng.uniform(0.1, 0.2)
    strokes = [
        _pl((-w, top), (-w, 0.8), (w, 0.8), (w, top), (-w, top)),
        _pl((-w - 0.12, top + 0.05), (0.0, apex), (w + 0.12, top + 0.05)),
        _pl((-dw, 0.8), (-dw, 0.35), (dw, 0.35), (dw, 0.8)),
        _pl((0.3, 0.05), (0.5, 0.05), (0.5, 0.25), (0.3, 0.25), (0.3, 0.05)),
    ]
    if rng.random() < 0.4:  # chimney
        cy = top + (apex - top) * 0.45
        strokes.append(_pl((0.35, cy), (0.35, apex + 0.05), (0.5, apex + 0.05), (0.5, cy + 0.12)))
    return strokes


def _star(rng: np.random.Generator) -> list[Poly]:
    inner = rng.uniform(0.32, 0.5)
    a = -np.pi / 2 + np.arange(11) * np.pi / 5
    r = np.where(np.arange(11) % 2 == 0, 1.0, inner)
    return [np.stack([r * np.cos(a), r * np.sin(a)], axis=1)]


def _sun(rng: np.random.Generator) -> list[Poly]:
    r = rng.uniform(0.35, 0.5)
    n = int(rng.integers(7, 13))
    a = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
    d = np.stack([np.cos(a), np.sin(a)], axis=1)  # (n, 2) ray directions
    rays = np.stack([d * (r + 0.15), d * rng.uniform(0.8, 1.0, size=(n, 1))], axis=1)
    return [_arc(0, 0, r, r, 0, 2 * np.pi, 22), *rays]


def _tree(rng: np.random.Generator) -> list[Poly]:
    tw = rng.uniform(0.08, 0.16)
    strokes = [_pl((-tw, 1.0), (-tw, 0.3)), _pl((tw, 1.0), (tw, 0.3))]
    if rng.random() < 0.6:  # leafy crown: scalloped cloud
        n, t = int(rng.integers(6, 10)), np.linspace(0, 2 * np.pi, 40)
        rad = 0.55 * (0.85 + 0.18 * np.abs(np.sin(n * t / 2)))
        crown = np.stack([rad * np.cos(t), -0.3 + rad * 0.9 * np.sin(t)], axis=1)
        strokes.insert(0, crown)
    else:  # pine: stacked triangles
        for j, y in enumerate((0.3, -0.15, -0.55)):
            hw = 0.7 - 0.18 * j
            strokes.insert(j, _pl((-hw, y), (0.0, y - 0.55), (hw, y), (-hw, y)))
    return strokes


def _umbrella(rng: np.random.Generator) -> list[Poly]:
    h = rng.uniform(0.55, 0.8)
    k = int(rng.integers(3, 6))
    canopy = [_arc(0, 0, 1.0, h, np.pi, 2 * np.pi, 18)]
    # Scallops along the bottom, right to left: k half-ellipses bulging upwards.
    half = 1.0 / k
    t = -np.pi * _UNIT[6]
    cx = 1.0 - half - 2 * half * np.arange(k)[:, None]
    sc = np.stack([cx + half * np.cos(t), np.broadcast_to(0.12 * np.sin(t), (k, 6))], axis=2)
    canopy.append(sc.reshape(-1, 2))
    hook = rng.uniform(0.1, 0.2)
    return [
        np.concatenate(canopy),
        _pl((0.0, 0.0), (0.0, 0.8)),
        _arc(-hook, 0.8, hook, hook, 0, np.pi, 8),
        _pl((0.0, -h), (0.0, -h - 0.12)),
    ]


_SHAPES: dict[str, Callable[[np.random.Generator], list[Poly]]] = {
    "bicycle": _bicycle, "cup": _cup, "fish": _fish, "house": _house,
    "star": _star, "sun": _sun, "tree": _tree, "umbrella": _umbrella,
}
assert tuple(sorted(_SHAPES)) == CATEGORIES == tuple(sorted(CATEGORIES))


# ---------------------------------------------------------------------------------------------
# Variation and the public generators
# ---------------------------------------------------------------------------------------------
def _vary(polys: list[Poly], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Drop strokes, add strays, jitter points, random affine -> (points (P, 2), stroke ends).

    All strokes are processed as one concatenated array (one RNG call, one matmul): the
    per-stroke version cost more than the rendering itself.
    """
    # At most one missing stroke, never the first (it carries the silhouette): more than
    # that and e.g. a bicycle degenerates into one circle, no longer its class.
    kept = list(polys)
    if len(kept) > 1 and rng.random() < 0.3:
        del kept[int(rng.integers(1, len(kept)))]
    if rng.random() < 0.2:
        start = rng.uniform(-0.9, 0.9, size=2)
        steps = rng.normal(0, 0.15, size=(int(rng.integers(1, 4)), 2))
        kept.append(np.concatenate([start[None], start + np.cumsum(steps, axis=0)]))
    ends = np.cumsum([len(p) for p in kept])
    pts = np.concatenate(kept)
    ang = rng.normal(0, 0.2)
    c, s = np.cos(ang), np.sin(ang)
    sx, sy = rng.uniform(0.8, 1.2, size=2)
    m = np.array([[c, -s], [s, c]]) @ np.array([[sx, rng.normal(0, 0.1)], [0, sy]])
    noise = rng.normal(0, 1.0, size=(2, len(pts), 2))
    # Smooth wobble (a random walk restarted at each stroke) plus per-point noise.
    walk = np.cumsum(noise[0] * 0.012, axis=0)
    starts = np.concatenate([[0], ends[:-1]])
    base = np.concatenate([[[0.0, 0.0]], walk])[starts]
    walk -= np.repeat(base, np.diff(np.concatenate([[0], ends])), axis=0)
    return (pts + walk + noise[1] * 0.015) @ m.T, ends


def _to_canvas(pts: np.ndarray, ends: np.ndarray, rng: np.random.Generator) -> Strokes:
    """Fit to a random box of the 0..255 canvas and round to QuickDraw integer strokes."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = max(float((hi - lo).max()), 1e-6)
    scale = rng.uniform(0.62, 0.86) * (CANVAS - 1) / extent
    free = (CANVAS - 1) - (hi - lo) * scale
    offset = free * rng.uniform(0.3, 0.7, size=2) - lo * scale
    q = np.clip(np.rint(pts * scale + offset), 0, CANVAS - 1).astype(int)
    xs, ys = q[:, 0].tolist(), q[:, 1].tolist()
    starts = [0] + ends[:-1].tolist()
    return [[xs[a:b], ys[a:b]] for a, b in zip(starts, ends.tolist())]


def builtin_drawing(class_idx: int, index: int, seed: int = 0) -> tuple[Strokes, float]:
    """Strokes (QuickDraw simplified format) and pen thickness of drawing ``index`` of a class."""
    rng = np.random.default_rng([seed, class_idx, index])
    polys = _SHAPES[CATEGORIES[class_idx]](rng)
    strokes = _to_canvas(*_vary(polys, rng), rng)
    return strokes, float(rng.uniform(11.0, 21.0))


def render_sample(class_idx: int, index: int, seed: int = 0, size: int = 28) -> np.ndarray:
    """Render one built-in drawing to uint8 ``(size, size)``."""
    strokes, thickness = builtin_drawing(class_idx, index, seed)
    return render_strokes(strokes, size, thickness)


def make_builtin(n_per_class: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` drawings of every category: (images uint8 (N, size, size), labels int64).

    Classes are grouped: the first ``n_per_class`` rows are ``CATEGORIES[0]``, and so on.
    """
    n = len(CATEGORIES) * n_per_class
    images = np.zeros((n, size, size), dtype=np.uint8)
    for c in range(len(CATEGORIES)):
        for i in range(n_per_class):
            images[c * n_per_class + i] = render_sample(c, i, seed, size)
    labels = np.repeat(np.arange(len(CATEGORIES), dtype=np.int64), n_per_class)
    return images, labels
