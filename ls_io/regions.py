"""Regions of a Label Studio result list: which items are geometry, their labels and captions, and their pixels.

Geometry is in percent of the image (0-100) from the top-left corner, as Label Studio writes it. A rectangle's
(x, y) is its top-left corner BEFORE rotation, and `rotation` (degrees) turns it clockwise on screen (y points
down) about that corner: web/libs/editor/src/regions/RectRegion.js draws a Konva Rect at (x, y) with that
rotation, and documents value.x/y as "the top left corner before rotation". The corners are computed in pixels
(width in percent of the image width, height in percent of the image height), then rotated.

Argument order of sizes: functions that return pixel coordinates take (width, height), like (x, y):
rectangle_corners, rectangle_box, keypoint_pixel; functions about masks take (height, width), like an array's
shape: rasterize (and ls_io.tracks' box_visible, track_masks); percent_box reads the size from the mask.

Region types (GEOMETRY_TYPES, one set for the server and the loop):
- brush, polygon, rectangle (MASK_TYPES): `rasterize` turns them into a mask;
- keypoint (KEYPOINT_TYPES): a click, not an area: a prompt for a segmenter (`keypoint_pixel`); `rasterize`
  refuses it;
- videorectangle (TRACK_TYPES): a box track over video frames (ls_io.tracks).
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw

from .errors import BadRequest, Unprocessable
from .rle import decode_rle

BRUSH_TYPES = frozenset({"brushlabels", "brush"})
POLYGON_TYPES = frozenset({"polygonlabels", "polygon"})
RECTANGLE_TYPES = frozenset({"rectanglelabels", "rectangle"})
KEYPOINT_TYPES = frozenset({"keypointlabels", "keypoint"})
TRACK_TYPES = frozenset({"videorectangle"})
MASK_TYPES = BRUSH_TYPES | POLYGON_TYPES | RECTANGLE_TYPES
GEOMETRY_TYPES = MASK_TYPES | KEYPOINT_TYPES | TRACK_TYPES

# Where an item keeps its labels: under its own type ("brushlabels": [...]) or, for tags that merge a <Labels>
# control into the region (video tracks), under "labels".
_LABEL_KEYS = ("brushlabels", "rectanglelabels", "keypointlabels", "polygonlabels", "labels")


def region_type(item: dict[str, Any]) -> str:
    """The item's `type`, lower-cased ("" when absent)."""
    return str(item.get("type", "")).lower()


def region_label(item: dict[str, Any]) -> str:
    """A region's id for a log line or a reason: printable and cut (ids come from the request: never let one
    forge a log line)."""
    rid = item.get("id")
    return rid[:64] if isinstance(rid, str) and rid.isprintable() else json.dumps(rid)[:64]


def labels_of(item: dict[str, Any]) -> list[str]:
    """The labels of a result item: the first non-empty list among its own type's key, then the known label keys."""
    value = item.get("value") or {}
    own = region_type(item)
    for key in (own, *_LABEL_KEYS) if own.endswith("labels") else _LABEL_KEYS:
        if isinstance(value.get(key), list) and value[key]:
            return [str(v) for v in value[key]]
    return []


def caption_text(value: dict[str, Any]) -> str:
    """The text of a textarea value ({"text": [...]} or {"text": "..."}), joined on one line."""
    text = value.get("text", "")
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    return " ".join(str(text).split())


def group_regions(result: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{region id: {"geometry": item, "caption": str, "labels": [str]}} in first-seen order, for the regions that
    have a geometry item. A region is every item sharing an id: its first geometry item, its textarea items (the
    caption, joined) and the labels of its other items (deduplicated, in order)."""
    regions: dict[str, dict[str, Any]] = {}
    for item in result or []:
        region = regions.setdefault(str(item.get("id", "")), {"geometry": None, "caption": "", "labels": []})
        kind = region_type(item)
        if kind in GEOMETRY_TYPES and region["geometry"] is None:
            region["geometry"] = item
        if kind == "textarea":
            region["caption"] = " ".join(filter(None, [region["caption"], caption_text(item.get("value") or {})]))
            continue
        region["labels"] += [label for label in labels_of(item) if label not in region["labels"]]
    return {rid: r for rid, r in regions.items() if r["geometry"] is not None}


def _number(value: dict[str, Any], key: str, what: str) -> float:
    try:
        number = float(value[key])
    except (KeyError, TypeError, ValueError):
        raise BadRequest(f"{what} needs numeric {key}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{what} has a non-finite {key}")
    return number


def rectangle_corners(value: dict[str, Any], width: int, height: int) -> list[tuple[float, float]]:
    """Pixel corners (top-left, top-right, bottom-right, bottom-left before rotation) of a percent rectangle
    {x, y, width, height, rotation}, rotated clockwise about its top-left corner. BadRequest when not numeric."""
    x, y = _number(value, "x", "rectangle") * width / 100.0, _number(value, "y", "rectangle") * height / 100.0
    w = _number(value, "width", "rectangle") * width / 100.0
    h = _number(value, "height", "rectangle") * height / 100.0
    angle = math.radians(_number({"rotation": value.get("rotation") or 0.0}, "rotation", "rectangle"))
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    if not all(math.isfinite(c) for corner in corners for c in corner):  # 1e308 percent overflows in pixels
        raise BadRequest("rectangle has a non-finite or empty geometry")
    return corners


def rectangle_box(value: dict[str, Any], width: int, height: int) -> np.ndarray:
    """The pixel box (x0, y0, x1, y1) float32 that holds a percent rectangle (its rotated corners), clipped to the
    image: the box prompt for a segmenter. BadRequest when not numeric or empty."""
    corners = rectangle_corners(value, width, height)
    if float(value["width"]) <= 0 or float(value["height"]) <= 0:
        raise BadRequest("rectangle has a non-finite or empty geometry")
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return np.array([max(0.0, min(xs)), max(0.0, min(ys)), min(width - 1.0, max(xs)), min(height - 1.0, max(ys))],
                    dtype=np.float32)


def percent_box(mask: np.ndarray) -> dict[str, float]:
    """The bounding box of a non-empty HxW mask as a percent rectangle {x, y, width, height} (the inverse of
    rectangle_box for an axis-aligned box). A pixel is a unit square, so pixels x0..x1 span x0 to x1 + 1."""
    mask = np.asarray(mask)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("an empty mask has no box")
    height, width = mask.shape
    return {"x": 100.0 * int(xs.min()) / width, "y": 100.0 * int(ys.min()) / height,
            "width": 100.0 * (int(xs.max()) + 1 - int(xs.min())) / width,
            "height": 100.0 * (int(ys.max()) + 1 - int(ys.min())) / height}


def keypoint_pixel(value: dict[str, Any], width: int, height: int) -> tuple[float, float]:
    """A percent keypoint {x, y} in pixels (x the column, y the row), kept inside the image. BadRequest when not
    numeric or outside 0..100."""
    try:
        x, y = float(value["x"]), float(value["y"])
    except (KeyError, TypeError, ValueError):
        raise BadRequest("keypoint needs numeric x and y") from None
    if not (0.0 <= x <= 100.0 and 0.0 <= y <= 100.0):
        raise BadRequest(f"keypoint ({x}, {y}) lies outside the image (percent 0..100)")
    return min(x / 100.0 * width, width - 1.0), min(y / 100.0 * height, height - 1.0)


def rasterize(item: dict[str, Any], height: int, width: int) -> np.ndarray:
    """A brush, polygon or rectangle item -> uint8 HxW mask, 0 or 255 (a rotated rectangle is filled as rotated).
    Unprocessable (a ValueError) for other types, a brush that is not RLE, or a polygon under 3 points."""
    kind, value = region_type(item), item.get("value") or {}
    if kind in BRUSH_TYPES:
        if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
            raise Unprocessable(f"unsupported brush format {value.get('format')!r} (expected an RLE list)")
        return np.where(decode_rle(value["rle"], height, width) > 0, 255, 0).astype(np.uint8)
    if kind in POLYGON_TYPES:
        try:
            points = [(float(px) * width / 100.0, float(py) * height / 100.0) for px, py in value["points"]]
        except (KeyError, TypeError, ValueError):
            raise BadRequest("polygon needs points [[x, y], ...] in percent") from None
        if len(points) < 3:
            raise Unprocessable("polygon with fewer than 3 points")
        if not all(math.isfinite(c) for point in points for c in point):
            raise BadRequest("polygon has a non-finite point")
    elif kind in RECTANGLE_TYPES:
        points = rectangle_corners(value, width, height)
    elif kind in KEYPOINT_TYPES:
        raise Unprocessable(f"unsupported region type {kind!r}: a keypoint marks a point, not an area "
                            "(prompt a segmenter with keypoint_pixel)")
    else:
        raise Unprocessable(f"unsupported region type {kind!r}")
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    return np.asarray(canvas, dtype=np.uint8)
