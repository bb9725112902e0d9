"""Still scenes: a textured image with 2..6 flat-coloured shapes, each with its visible mask, attributes, captions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .captions import check_caption_style, context_phrase, long_caption, short_caption
from .drawing import background_texture, draw_diameter, finish_pixels, jittered_rgb, pick_size, position_of, shape_mask
from .vocabulary import COLORS, SHAPES, SIZES

_MAX_VISIBLE_LOSS = 0.4  # an object may lose at most 40 % of its pixels to later objects
_MIN_VISIBLE_PX = 12


@dataclass
class SceneObject:
    """One object of a still scene.

    mask: bool HxW, the object's visible pixels; full_mask: bool HxW, its whole shape before later objects
    covered part of it; rgb: the flat colour drawn (before pixel noise); attributes: see dam_model.synthetic.
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


def generate_scene(seed: int, index: int, *, size: tuple[int, int] | None = None,
                   sizes: Sequence[tuple[int, int]] | None = None, num_objects: int | None = None,
                   duplicate_probability: float = 0.4, pixel_noise: int = 10, caption_style: str = "full") -> Scene:
    """A deterministic still scene.

    seed, index: the scene's identity (same pair -> byte-identical output). size: (width, height) in pixels,
    or None to draw one from ``sizes`` (default ``DEFAULT_SIZES``). num_objects: 2..6 (None: 2..5 drawn).
    duplicate_probability: chance that a new object copies an earlier one's colour and shape, which makes
    "the leftmost of two red circles" contexts. pixel_noise: amplitude of the per-pixel noise in grey levels.
    caption_style: what the long captions assert (``CAPTION_STYLES``); it draws nothing, so pixels and attributes
    are the same in every style.
    """
    check_caption_style(caption_style)
    if num_objects is not None and not 2 <= num_objects <= 6:
        raise ValueError(f"num_objects must be in 2..6, got {num_objects}")
    if not 0.0 <= duplicate_probability <= 1.0 or pixel_noise < 0:
        raise ValueError("duplicate_probability must be in [0, 1] and pixel_noise >= 0")
    rng = np.random.default_rng([int(seed), int(index), 0])
    width, height = pick_size(rng, size, sizes)
    min_side = min(width, height)
    background = background_texture(rng, height, width)
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
    image = finish_pixels(canvas, rng, pixel_noise)

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
                                   short_caption(attributes), long_caption(attributes, caption_style)))
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
    diameter = draw_diameter(rng, spec["size"], min_side)
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
        full = shape_mask(spec["shape"], cx, cy, diameter, height, width)
        if full.sum() < _MIN_VISIBLE_PX // 2:
            continue
        if all(_still_visible(mask & ~full, earlier["full"]) for mask, earlier in zip(visible, placed)):
            return {**spec, "rgb": jittered_rgb(rng, spec["color"]), "cx": cx, "cy": cy, "d": diameter, "full": full}
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
