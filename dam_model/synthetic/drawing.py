"""Pixel drawing shared by still scenes and videos: shapes as masks, the textured background, noise, sizes.

Drawing is numpy arithmetic on pixel centres (no fonts, no anti-aliasing, no trigonometry at run time), so the
same random draws give byte-identical pixels on every machine.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .vocabulary import (
    COLORS, COLUMNS, DEFAULT_SIZE_WEIGHTS, DEFAULT_SIZES, MIN_OBJECT_PX, MIN_SIDE_PX, ROWS, SHAPES, SIZE_FRACTIONS,
)

# Star: outer radius 1, inner radius 0.42, first point up; cos/sin rounded to 4 decimals once, by hand.
_STAR_VERTICES = np.array([
    (0.0, -1.0), (0.2469, -0.3398), (0.9511, -0.309), (0.3994, 0.1298), (0.5878, 0.809),
    (0.0, 0.42), (-0.5878, 0.809), (-0.3994, 0.1298), (-0.9511, -0.309), (-0.2469, -0.3398),
])


def shape_mask(shape: str, cx: float, cy: float, diameter: float, height: int, width: int) -> np.ndarray:
    """bool HxW: pixels whose centre lies inside the shape of the given centre and diameter (pixels)."""
    radius = diameter / 2.0
    mask = np.zeros((height, width), dtype=bool)
    x0, x1 = max(0, int(np.floor(cx - radius)) - 1), min(width, int(np.ceil(cx + radius)) + 1)
    y0, y1 = max(0, int(np.floor(cy - radius)) - 1), min(height, int(np.ceil(cy + radius)) + 1)
    if x0 >= x1 or y0 >= y1:
        return mask
    u = ((np.arange(x0, x1, dtype=np.float64) + 0.5 - cx) / radius)[None, :]
    v = ((np.arange(y0, y1, dtype=np.float64) + 0.5 - cy) / radius)[:, None]
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        inside = u * u + v * v <= 1.0
    elif shape == "square":
        inside = (au <= 0.82) & (av <= 0.82)
    elif shape == "diamond":
        inside = au + av <= 1.0
    elif shape == "triangle":  # apex up at v = -1, base at v = 0.72
        inside = (v <= 0.72) & (1.87 * au <= v + 1.0)
    elif shape == "cross":
        inside = ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    elif shape == "star":
        inside = inside_polygon(u, v, _STAR_VERTICES)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask[y0:y1, x0:x1] = inside
    return mask


def inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd crossing test of the grid u (1xW) x v (Hx1) against a closed polygon (Kx2)."""
    inside = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    count = len(vertices)
    for k in range(count):
        xa, ya = vertices[k]
        xb, yb = vertices[(k + 1) % count]
        if ya == yb:
            continue
        straddles = (ya > v) != (yb > v)
        x_cross = xa + (v - ya) * (xb - xa) / (yb - ya)
        inside ^= straddles & (u < x_cross)
    return inside


def upsample_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (h, w, C) float grid to (height, width, C), corners aligned."""
    gh, gw = grid.shape[:2]
    ys = np.linspace(0.0, gh - 1.0, height)
    xs = np.linspace(0.0, gw - 1.0, width)
    y0 = np.minimum(ys.astype(np.int64), gh - 2)
    x0 = np.minimum(xs.astype(np.int64), gw - 2)
    wy = (ys - y0)[:, None, None]
    wx = (xs - x0)[None, :, None]
    rows = grid[:, x0] * (1.0 - wx) + grid[:, x0 + 1] * wx  # (gh, width, C): interpolate along x first
    return rows[y0] * (1.0 - wy) + rows[y0 + 1] * wy


def background_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """int16 HxWx3 low-saturation texture: a grey base, two scales of smooth blotches, optional stripes."""
    base = int(rng.integers(80, 176))
    tint = rng.integers(-18, 19, size=3)
    image = np.full((height, width, 3), base, dtype=np.float64) + tint
    for cells, amplitude in ((3, 28), (9, 16)):
        grid = rng.integers(-amplitude, amplitude + 1, size=(cells + 1, cells + 1, 1)).astype(np.float64)
        grid = grid + rng.integers(-6, 7, size=(cells + 1, cells + 1, 3))
        image += upsample_bilinear(grid, height, width)
    if rng.random() < 0.4:  # faint diagonal stripes
        period = int(rng.integers(6, 16))
        yy, xx = np.mgrid[0:height, 0:width]
        image += (((xx + yy) // period) % 2 * int(rng.integers(6, 14)))[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.int16)


def finish_pixels(canvas: np.ndarray, rng: np.random.Generator, pixel_noise: int) -> np.ndarray:
    """Add per-pixel noise (uniform in [-pixel_noise, pixel_noise]) and convert to uint8."""
    if pixel_noise > 0:
        canvas = canvas + rng.integers(-pixel_noise, pixel_noise + 1, size=canvas.shape, dtype=np.int16)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def jittered_rgb(rng: np.random.Generator, color: str) -> tuple[int, int, int]:
    jitter = rng.integers(-15, 16, size=3)
    return tuple(int(c) for c in np.clip(np.array(COLORS[color]) + jitter, 0, 255))  # type: ignore[return-value]


def draw_diameter(rng: np.random.Generator, size: str, min_side: int) -> float:
    low, high = SIZE_FRACTIONS[size]
    return max(float(MIN_OBJECT_PX), float(rng.uniform(low, high)) * min_side)


def position_of(cx: float, cy: float, width: int, height: int) -> str:
    """The 3x3 grid cell (a POSITIONS word) holding the point (cx, cy) in pixels."""
    row = ROWS[min(2, int(3 * cy / height))]
    col = COLUMNS[min(2, int(3 * cx / width))]
    return "center" if (row, col) == ("center", "center") else f"{row} {col}"


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(size[0]), int(size[1]))
    if min(width, height) < MIN_SIDE_PX:
        raise ValueError(f"image size {width}x{height} is below the minimum side of {MIN_SIDE_PX} px")
    return width, height


def pick_size(rng: np.random.Generator, size: tuple[int, int] | None,
               sizes: Sequence[tuple[int, int]] | None) -> tuple[int, int]:
    if size is not None:
        return check_size(size)
    choices = list(sizes) if sizes is not None else list(DEFAULT_SIZES)
    if not choices:
        raise ValueError("sizes must name at least one (width, height)")
    weights = np.array(DEFAULT_SIZE_WEIGHTS if sizes is None else [1.0] * len(choices))
    return check_size(choices[int(rng.choice(len(choices), p=weights / weights.sum()))])
