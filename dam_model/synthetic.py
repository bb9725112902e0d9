"""Seeded synthetic scenes for localized captioning, with exact ground truth.

No pretrained weights reach this project, so it carries its own learning problem: textured images with a few
flat-coloured shapes, a mask per shape (its VISIBLE pixels), the attribute record of each shape and reference
captions at two lengths written in a small, regular grammar that the tiny model and the rule judge share.

Attributes of an image object (keys of ``SceneObject.attributes``):

- ``color``: one of ``COLORS`` (7 names); ``shape``: one of ``SHAPES`` (6 names, the object's "category");
- ``size``: ``small`` / ``medium`` / ``large``, the shape's diameter as a fraction of the image's shorter side
  (ranges in ``SIZE_FRACTIONS``; the ranges leave gaps so the word is never ambiguous);
- ``position``: the 3x3 grid cell of the shape's centre (``POSITIONS``, e.g. "top left", "center right");
- ``context``: a phrase only the rest of the image can confirm: "the leftmost of two red circles" (also
  rightmost / topmost / bottommost) when exactly one other object has the same colour and shape, otherwise
  "next to a blue square" naming the object whose visible centroid is nearest; ``context_relation`` holds it
  as a dict {relation, color, shape}. Relations are computed from the visible masks' centroids.

Captions (the grammar; ``a``/``an`` follows the next word):
    short: "a small red circle"
    long:  "A small red circle in the top left of the image. It is the leftmost of two red circles."
Video objects replace the context with a motion ("moving left to right", ..., "staying still"):
    short: "a small red circle moving left to right"
    long:  "A small red circle moving left to right. It starts in the top left of the image."

Determinism: every random draw comes from ``numpy.random.default_rng([seed, index, stream])`` and the drawing
is numpy arithmetic on pixel centres (no fonts, no anti-aliasing, no trigonometry at run time: the star's
vertices are constants), so the same (seed, index) gives byte-identical images, masks and captions anywhere.
Sizes are given as (width, height) like PIL; arrays are (height, width[, 3]) like numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

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

# Star: outer radius 1, inner radius 0.42, first point up; cos/sin rounded to 4 decimals once, by hand.
_STAR_VERTICES = np.array([
    (0.0, -1.0), (0.2469, -0.3398), (0.9511, -0.309), (0.3994, 0.1298), (0.5878, 0.809),
    (0.0, 0.42), (-0.5878, 0.809), (-0.3994, 0.1298), (-0.9511, -0.309), (-0.2469, -0.3398),
])
_MAX_VISIBLE_LOSS = 0.4  # an object may lose at most 40 % of its pixels to later objects
_MIN_VISIBLE_PX = 12


def article(word: str) -> str:
    """'an' before a vowel sound in this vocabulary ("an orange"), otherwise 'a'."""
    return "an" if word[:1] in "aeiou" else "a"


def context_phrase(relation: dict[str, str]) -> str:
    """The context dict as words: "the leftmost of two red circles" or "next to a blue square"."""
    color, shape = relation["color"], relation["shape"]
    if relation["relation"] == "next_to":
        return f"next to {article(color)} {color} {shape}"
    if relation["relation"] in PAIR_RELATIONS:
        return f"the {relation['relation']} of two {color} {SHAPE_PLURALS[shape]}"
    raise ValueError(f"unknown context relation {relation['relation']!r}")


def short_caption(attributes: dict[str, Any]) -> str:
    """'a small red circle' (+ ' moving left to right' for video objects)."""
    words = f"{attributes['size']} {attributes['color']} {attributes['shape']}"
    if attributes.get("motion"):
        words += f" {attributes['motion']}"
    return f"{article(words)} {words}"


def long_caption(attributes: dict[str, Any]) -> str:
    """One or two sentences: appearance and position, then the context (image) or the start cell (video)."""
    words = f"{attributes['size']} {attributes['color']} {attributes['shape']}"
    head = f"{article(words).capitalize()} {words}"
    if attributes.get("motion"):
        return f"{head} {attributes['motion']}. It starts in the {attributes['position']} of the image."
    text = f"{head} in the {attributes['position']} of the image."
    if attributes.get("context"):
        text += f" It is {attributes['context']}."
    return text


@dataclass
class SceneObject:
    """One object of a still scene.

    mask: bool HxW, the object's visible pixels; full_mask: bool HxW, its whole shape before later objects
    covered part of it; rgb: the flat colour drawn (before pixel noise); attributes: see the module docstring.
    """

    object_id: int
    mask: np.ndarray
    full_mask: np.ndarray
    rgb: tuple[int, int, int]
    attributes: dict[str, Any]
    short_caption: str
    long_caption: str

    @property
    def size_bucket(self) -> str:
        return str(self.attributes["size"])


@dataclass
class Scene:
    """A still image (uint8 HxWx3) and its objects in drawing order (later objects lie on top)."""

    seed: int
    index: int
    image: np.ndarray
    objects: list[SceneObject]
    background: np.ndarray = field(repr=False)

    @property
    def scene_id(self) -> str:
        return f"synthetic-{self.seed}-{self.index}"

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class VideoObject:
    """One moving object: masks bool TxHxW (visible pixels per frame), attributes include ``motion``."""

    object_id: int
    masks: np.ndarray
    rgb: tuple[int, int, int]
    attributes: dict[str, Any]
    short_caption: str
    long_caption: str

    @property
    def size_bucket(self) -> str:
        return str(self.attributes["size"])


@dataclass
class VideoScene:
    """Frames uint8 TxHxWx3 over a static textured background, and the moving objects."""

    seed: int
    index: int
    frames: np.ndarray
    objects: list[VideoObject]

    @property
    def scene_id(self) -> str:
        return f"synthetic-video-{self.seed}-{self.index}"


class RegionSample(NamedTuple):
    """One captioning example: image uint8 HxWx3, mask bool HxW, reference caption, attributes, size bucket."""

    image: np.ndarray
    mask: np.ndarray
    caption: str
    attributes: dict[str, Any]
    size_bucket: str


class VideoRegionSample(NamedTuple):
    """One video example: frames uint8 TxHxWx3, masks bool TxHxW, caption, attributes, size bucket."""

    frames: np.ndarray
    masks: np.ndarray
    caption: str
    attributes: dict[str, Any]
    size_bucket: str


# ----------------------------------------------------------------------------------------------- drawing

def _shape_mask(shape: str, cx: float, cy: float, diameter: float, height: int, width: int) -> np.ndarray:
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
        inside = _inside_polygon(u, v, _STAR_VERTICES)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask[y0:y1, x0:x1] = inside
    return mask


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
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


def _upsample_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
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


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """int16 HxWx3 low-saturation texture: a grey base, two scales of smooth blotches, optional stripes."""
    base = int(rng.integers(80, 176))
    tint = rng.integers(-18, 19, size=3)
    image = np.full((height, width, 3), base, dtype=np.float64) + tint
    for cells, amplitude in ((3, 28), (9, 16)):
        grid = rng.integers(-amplitude, amplitude + 1, size=(cells + 1, cells + 1, 1)).astype(np.float64)
        grid = grid + rng.integers(-6, 7, size=(cells + 1, cells + 1, 3))
        image += _upsample_bilinear(grid, height, width)
    if rng.random() < 0.4:  # faint diagonal stripes
        period = int(rng.integers(6, 16))
        yy, xx = np.mgrid[0:height, 0:width]
        image += (((xx + yy) // period) % 2 * int(rng.integers(6, 14)))[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.int16)


def _finish(canvas: np.ndarray, rng: np.random.Generator, pixel_noise: int) -> np.ndarray:
    """Add per-pixel noise (uniform in [-pixel_noise, pixel_noise]) and convert to uint8."""
    if pixel_noise > 0:
        canvas = canvas + rng.integers(-pixel_noise, pixel_noise + 1, size=canvas.shape, dtype=np.int16)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _jittered_rgb(rng: np.random.Generator, color: str) -> tuple[int, int, int]:
    jitter = rng.integers(-15, 16, size=3)
    return tuple(int(c) for c in np.clip(np.array(COLORS[color]) + jitter, 0, 255))  # type: ignore[return-value]


def _diameter(rng: np.random.Generator, size: str, min_side: int) -> float:
    low, high = SIZE_FRACTIONS[size]
    return max(float(MIN_OBJECT_PX), float(rng.uniform(low, high)) * min_side)


def position_of(cx: float, cy: float, width: int, height: int) -> str:
    """The 3x3 grid cell (a POSITIONS word) holding the point (cx, cy) in pixels."""
    row = ROWS[min(2, int(3 * cy / height))]
    col = COLUMNS[min(2, int(3 * cx / width))]
    return "center" if (row, col) == ("center", "center") else f"{row} {col}"


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(size[0]), int(size[1]))
    if min(width, height) < MIN_SIDE_PX:
        raise ValueError(f"image size {width}x{height} is below the minimum side of {MIN_SIDE_PX} px")
    return width, height


def _pick_size(rng: np.random.Generator, size: tuple[int, int] | None,
               sizes: Sequence[tuple[int, int]] | None) -> tuple[int, int]:
    if size is not None:
        return _check_size(size)
    choices = list(sizes) if sizes is not None else list(DEFAULT_SIZES)
    if not choices:
        raise ValueError("sizes must name at least one (width, height)")
    weights = np.array(DEFAULT_SIZE_WEIGHTS if sizes is None else [1.0] * len(choices))
    return _check_size(choices[int(rng.choice(len(choices), p=weights / weights.sum()))])


# ------------------------------------------------------------------------------------------------ scenes

def generate_scene(seed: int, index: int, *, size: tuple[int, int] | None = None,
                   sizes: Sequence[tuple[int, int]] | None = None, num_objects: int | None = None,
                   duplicate_probability: float = 0.4, pixel_noise: int = 10) -> Scene:
    """A deterministic still scene.

    seed, index: the scene's identity (same pair -> byte-identical output). size: (width, height) in pixels,
    or None to draw one from ``sizes`` (default ``DEFAULT_SIZES``). num_objects: 2..6 (None: 2..5 drawn).
    duplicate_probability: chance that a new object copies an earlier one's colour and shape, which makes
    "the leftmost of two red circles" contexts. pixel_noise: amplitude of the per-pixel noise in grey levels.
    """
    if num_objects is not None and not 2 <= num_objects <= 6:
        raise ValueError(f"num_objects must be in 2..6, got {num_objects}")
    if not 0.0 <= duplicate_probability <= 1.0 or pixel_noise < 0:
        raise ValueError("duplicate_probability must be in [0, 1] and pixel_noise >= 0")
    rng = np.random.default_rng([int(seed), int(index), 0])
    width, height = _pick_size(rng, size, sizes)
    min_side = min(width, height)
    background = _background(rng, height, width)
    count = int(num_objects) if num_objects is not None else int(rng.integers(2, 6))

    placed: list[dict[str, Any]] = []  # drawing order; each: color, shape, size, rgb, cx, cy, d, full
    visible: list[np.ndarray] = []
    for attempt in range(count * 3):
        if len(placed) == count:
            break
        spec = _draw_spec(rng, placed, duplicate_probability)
        spot = _place(rng, spec, width, height, min_side, visible, placed)
        if spot is None:
            continue
        for k in range(len(visible)):
            visible[k] = visible[k] & ~spot["full"]
        visible.append(spot["full"].copy())
        placed.append(spot)
    if len(placed) < 2:  # practically unreachable (2 objects always fit); keep the contract anyway
        raise RuntimeError(f"could not place two objects in scene ({seed}, {index})")

    canvas = background.copy()
    for spot in placed:
        canvas[spot["full"]] = spot["rgb"]
    image = _finish(canvas, rng, pixel_noise)

    relations = _context_relations(placed, visible)
    objects = []
    for object_id, (spot, mask, relation) in enumerate(zip(placed, visible, relations)):
        attributes = {
            "color": spot["color"], "shape": spot["shape"], "size": spot["size"],
            "position": position_of(spot["cx"], spot["cy"], width, height),
            "context": context_phrase(relation), "context_relation": relation,
            "object_id": object_id, "center": [round(spot["cx"], 3), round(spot["cy"], 3)],
            "diameter_px": round(spot["d"], 3),
            "visible_fraction": round(float(mask.sum()) / float(spot["full"].sum()), 4),
        }
        objects.append(SceneObject(object_id, mask, spot["full"], spot["rgb"], attributes,
                                   short_caption(attributes), long_caption(attributes)))
    return Scene(int(seed), int(index), image, objects, background=background.astype(np.uint8))


def _draw_spec(rng: np.random.Generator, placed: list[dict[str, Any]], duplicate_probability: float) -> dict[str, Any]:
    groups: dict[tuple[str, str], int] = {}
    for spot in placed:
        groups[(spot["color"], spot["shape"])] = groups.get((spot["color"], spot["shape"]), 0) + 1
    singles = [key for key, n in groups.items() if n == 1]
    if singles and rng.random() < duplicate_probability:
        color, shape = singles[int(rng.integers(len(singles)))]
    else:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
    return {"color": color, "shape": shape, "size": SIZES[int(rng.integers(3))]}


def _place(rng: np.random.Generator, spec: dict[str, Any], width: int, height: int, min_side: int,
           visible: list[np.ndarray], placed: list[dict[str, Any]], tries: int = 25) -> dict[str, Any] | None:
    """Find a centre for a new top object that leaves every earlier object >= 60 % visible."""
    diameter = _diameter(rng, spec["size"], min_side)
    radius = diameter / 2.0
    for _ in range(tries):
        cell = int(rng.integers(9))
        row, col = divmod(cell, 3)
        # centre drawn from the middle 70 % of a grid cell so the position word is never a borderline call
        cx_low, cx_high = (col + 0.15) * width / 3, (col + 0.85) * width / 3
        cy_low, cy_high = (row + 0.15) * height / 3, (row + 0.85) * height / 3
        cx_low, cx_high = max(cx_low, radius), min(cx_high, width - radius)
        cy_low, cy_high = max(cy_low, radius), min(cy_high, height - radius)
        if cx_low > cx_high or cy_low > cy_high:
            continue
        cx, cy = float(rng.uniform(cx_low, cx_high)), float(rng.uniform(cy_low, cy_high))
        full = _shape_mask(spec["shape"], cx, cy, diameter, height, width)
        if full.sum() < _MIN_VISIBLE_PX // 2:
            continue
        if all(_still_visible(mask & ~full, earlier["full"]) for mask, earlier in zip(visible, placed)):
            return {**spec, "rgb": _jittered_rgb(rng, spec["color"]), "cx": cx, "cy": cy, "d": diameter, "full": full}
    return None


def _still_visible(remaining: np.ndarray, full: np.ndarray) -> bool:
    kept = int(remaining.sum())
    return kept >= min(_MIN_VISIBLE_PX, int(full.sum())) and kept >= (1.0 - _MAX_VISIBLE_LOSS) * int(full.sum())


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def _context_relations(placed: list[dict[str, Any]], visible: list[np.ndarray]) -> list[dict[str, str]]:
    """Per object: a pair relation when exactly two objects share colour and shape, else its nearest neighbour."""
    centroids = [_centroid(mask) for mask in visible]
    relations = []
    for i, spot in enumerate(placed):
        twins = [j for j, other in enumerate(placed)
                 if j != i and (other["color"], other["shape"]) == (spot["color"], spot["shape"])]
        relation = None
        if len(twins) == 1:
            dx = centroids[i][0] - centroids[twins[0]][0]
            dy = centroids[i][1] - centroids[twins[0]][1]
            if max(abs(dx), abs(dy)) >= 2.0:
                word = ("leftmost" if dx < 0 else "rightmost") if abs(dx) >= abs(dy) else ("topmost" if dy < 0 else "bottommost")
                relation = {"relation": word, "color": spot["color"], "shape": spot["shape"]}
        if relation is None:
            distances = [(np.hypot(centroids[i][0] - c[0], centroids[i][1] - c[1]), j)
                         for j, c in enumerate(centroids) if j != i]
            nearest = placed[min(distances)[1]]
            relation = {"relation": "next_to", "color": nearest["color"], "shape": nearest["shape"]}
        relations.append(relation)
    return relations


def generate_dataset(seed: int, n: int, *, start: int = 0, **scene_kwargs: Any) -> list[Scene]:
    """Scenes (seed, start) .. (seed, start + n - 1); keyword arguments go to ``generate_scene``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [generate_scene(seed, index, **scene_kwargs) for index in range(start, start + n)]


def iter_region_samples(scenes: Iterable[Scene], caption: str = "long") -> Iterator[RegionSample]:
    """One RegionSample per object of every scene; caption "long" or "short" picks the reference."""
    if caption not in ("long", "short"):
        raise ValueError(f"caption must be 'long' or 'short', got {caption!r}")
    for scene in scenes:
        for obj in scene.objects:
            text = obj.long_caption if caption == "long" else obj.short_caption
            yield RegionSample(scene.image, obj.mask, text, obj.attributes, obj.size_bucket)


# ------------------------------------------------------------------------------------------------ videos

def generate_video(seed: int, index: int, num_frames: int = 16, *, size: tuple[int, int] | None = None,
                   num_objects: int | None = None, pixel_noise: int = 10) -> VideoScene:
    """A deterministic video: 1..3 shapes moving along straight lines (or standing still) over a texture.

    num_frames: >= 2 (16 by default). size: (width, height), default drawn from VIDEO_SIZES.
    Every object stays at least 50 % visible in every frame; masks are its visible pixels per frame.
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if num_objects is not None and not 1 <= num_objects <= 3:
        raise ValueError(f"num_objects must be in 1..3, got {num_objects}")
    rng = np.random.default_rng([int(seed), int(index), 1])
    width, height = _pick_size(rng, size, VIDEO_SIZES if size is None else None)
    min_side = min(width, height)
    background = _background(rng, height, width)
    count = int(num_objects) if num_objects is not None else int(rng.integers(1, 4))
    tracks: list[dict[str, Any]] = []
    for _ in range(count):
        track = _place_track(rng, width, height, min_side, num_frames, tracks)
        if track is not None:
            tracks.append(track)
    if not tracks:
        raise RuntimeError(f"could not place an object in video ({seed}, {index})")

    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    visible = _visible_tracks(tracks)
    for t in range(num_frames):
        canvas = background.copy()
        for track in tracks:
            canvas[track["full"][t]] = track["rgb"]
        frames[t] = _finish(canvas, rng, pixel_noise)
    objects = []
    for object_id, (track, masks) in enumerate(zip(tracks, visible)):
        attributes = {
            "color": track["color"], "shape": track["shape"], "size": track["size"],
            "position": position_of(track["start"][0], track["start"][1], width, height),
            "motion": track["motion"], "object_id": object_id,
            "start": [round(v, 3) for v in track["start"]], "end": [round(v, 3) for v in track["end"]],
            "diameter_px": round(track["d"], 3),
        }
        objects.append(VideoObject(object_id, masks, track["rgb"], attributes,
                                   short_caption(attributes), long_caption(attributes)))
    return VideoScene(int(seed), int(index), frames, objects)


def _place_track(rng: np.random.Generator, width: int, height: int, min_side: int, num_frames: int,
                 tracks: list[dict[str, Any]], tries: int = 25) -> dict[str, Any] | None:
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = SIZES[int(rng.integers(2))]  # small or medium: large shapes leave no room to travel
    motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    diameter = _diameter(rng, size, min_side)
    radius = diameter / 2.0
    for _ in range(tries):
        cx, cy = float(rng.uniform(radius, width - radius)), float(rng.uniform(radius, height - radius))
        start, end = [cx, cy], [cx, cy]
        axis, extent = (0, width) if motion in MOTIONS[:2] else (1, height)
        if motion != "staying still":
            travel = float(rng.uniform(0.4, 0.7)) * extent
            first = float(rng.uniform(radius, extent - radius - travel)) if extent - 2 * radius > travel else None
            if first is None:
                continue
            forward = motion in ("moving left to right", "moving top to bottom")
            start[axis], end[axis] = (first, first + travel) if forward else (first + travel, first)
        centres = [(start[0] + (end[0] - start[0]) * t / (num_frames - 1),
                    start[1] + (end[1] - start[1]) * t / (num_frames - 1)) for t in range(num_frames)]
        full = np.stack([_shape_mask(shape, x, y, diameter, height, width) for x, y in centres])
        candidate = {"color": color, "shape": shape, "size": size, "motion": motion, "d": diameter,
                     "start": start, "end": end, "full": full}
        if all(_frames_visible(masks, track["full"]) for track, masks in
               zip(tracks + [candidate], _visible_tracks(tracks + [candidate]))):
            return {**candidate, "rgb": _jittered_rgb(rng, color)}
    return None


def _visible_tracks(tracks: list[dict[str, Any]]) -> list[np.ndarray]:
    """Per track, bool TxHxW of its pixels not covered by tracks drawn after it."""
    result = []
    for k, track in enumerate(tracks):
        masks = track["full"].copy()
        for later in tracks[k + 1:]:
            masks &= ~later["full"]
        result.append(masks)
    return result


def _frames_visible(visible: np.ndarray, full: np.ndarray) -> bool:
    kept = visible.reshape(len(visible), -1).sum(axis=1)
    total = full.reshape(len(full), -1).sum(axis=1)
    return bool(np.all(kept >= 0.5 * total) and np.all(kept > 0))


def iter_video_region_samples(videos: Iterable[VideoScene], caption: str = "long") -> Iterator[VideoRegionSample]:
    """One VideoRegionSample per object of every video."""
    if caption not in ("long", "short"):
        raise ValueError(f"caption must be 'long' or 'short', got {caption!r}")
    for video in videos:
        for obj in video.objects:
            text = obj.long_caption if caption == "long" else obj.short_caption
            yield VideoRegionSample(video.frames, obj.masks, text, obj.attributes, obj.size_bucket)


MODEL_ERRORS: tuple[str, ...] = ("none", "color", "shape", "size", "position", "context", "short")


def perturbed_caption(attributes: dict[str, Any], rng: np.random.Generator,
                      error: str | None = None) -> tuple[str, str]:
    """A plausible imperfect model caption for an object, and the kind of error made.

    error: one of MODEL_ERRORS ("none": the reference long caption; "color" / "shape" / "size" / "position":
    that attribute swapped for another value; "context": the context sentence dropped; "short": only the short
    caption), or None to draw one. Used to emit "model caption vs corrected caption" pairs.
    """
    if error is None:
        error = MODEL_ERRORS[int(rng.integers(len(MODEL_ERRORS)))]
    if error not in MODEL_ERRORS:
        raise ValueError(f"unknown error kind {error!r}; expected one of {MODEL_ERRORS}")
    wrong = dict(attributes)
    pools = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS)}
    if error in pools:
        others = [v for v in pools[error] if v != attributes[error]]
        wrong[error] = others[int(rng.integers(len(others)))]
    elif error == "context":
        wrong["context"] = None
    elif error == "short":
        return short_caption(attributes), error
    return long_caption(wrong), error
