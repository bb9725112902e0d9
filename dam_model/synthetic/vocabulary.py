"""The synthetic world's vocabulary: colours, shapes, sizes, grid positions, relations, motions and image sizes.

Every module of the generator and the rule judge read these names; changing one changes what (seed, index) draws,
which must come with a GENERATOR_VERSION bump.
"""
from __future__ import annotations

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (235, 215, 45),
    "green": (45, 165, 65),
    "blue": (45, 85, 215),
    "purple": (135, 60, 185),
    "pink": (240, 120, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
SHAPE_PLURALS: dict[str, str] = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}
SIZES: tuple[str, ...] = ("small", "medium", "large")
# Diameter as a fraction of the image's shorter side. Gaps between ranges keep the size word exact even
# after the small size is raised to MIN_OBJECT_PX on small images (6 / 48 = 0.125 < 0.18).
# Version 2 made objects larger and images larger: at DEFAULT_SIZES a small object is 32-96 px across, so
# its focal crop (3x its box, at least 144 px: DAM's rule) zooms in on it while the full view shrinks it
# to a few pixels; in version 1 (64-160 px images) nearly every crop was the whole image.
SIZE_FRACTIONS: dict[str, tuple[float, float]] = {"small": (0.09, 0.125), "medium": (0.18, 0.24), "large": (0.32, 0.42)}
MIN_OBJECT_PX = 6
MIN_SIDE_PX = 48
ROWS: tuple[str, ...] = ("top", "center", "bottom")
COLUMNS: tuple[str, ...] = ("left", "center", "right")
POSITIONS: tuple[str, ...] = tuple(
    "center" if (r, c) == ("center", "center") else f"{r} {c}" for r in ROWS for c in COLUMNS
)
PAIR_RELATIONS: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost")
MOTIONS: tuple[str, ...] = (
    "moving left to right", "moving right to left", "moving top to bottom", "moving bottom to top", "staying still",
)
# (width, height) choices and their weights for still scenes: 360-576 px on the shorter side, several aspect
# ratios (small objects are 32-72 px, about 1 % of the image's area).
DEFAULT_SIZES: tuple[tuple[int, int], ...] = (
    (384, 384), (512, 384), (384, 512), (448, 448), (576, 432), (432, 576), (640, 480), (480, 640), (640, 360),
    (768, 576),
)
DEFAULT_SIZE_WEIGHTS: tuple[float, ...] = (1.0,) * len(DEFAULT_SIZES)
# Videos stay small (16 frames each): 64-160 px.
VIDEO_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (96, 64), (64, 96), (128, 96), (96, 128), (128, 128), (160, 96))
GENERATOR_VERSION = 2
"""Bumped whenever the same (seed, index) draws different scenes (part of the tiny model's cache key)."""
