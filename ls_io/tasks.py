"""A Label Studio task -> the regions to caption and their masks: the one reading shared by the backend's /predict
and the bulk pre-annotation job (dam_preannotate), so both caption exactly the same regions.

- `collect_regions`: geometry items already present in a task (annotations, drafts, predictions, data.regions);
- `image_regions`: those of them that belong to one image object (no video tracks);
- `region_mask`: an item's mask on its image, with a segmenter for the kinds that need one (rectangles are
  refined by it when there is one; keypoints need one).

The segmenter is passed as a zero-argument callable so that the caller decides when (and whether) to load it:
only rectangles and keypoints call it. It returns None when there is no segmenter, else an object with
`predict(image, points=None, labels=None, box=None)` returning `.mask` and `.score` (dam_model's segmenters).
"""
from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from . import results
from .errors import RLEError, Unprocessable
from .regions import (BRUSH_TYPES, GEOMETRY_TYPES, KEYPOINT_TYPES, POLYGON_TYPES, RECTANGLE_TYPES, TRACK_TYPES,
                      keypoint_pixel, rasterize, rectangle_box, region_type)
from .rle import decode_rle

SegmenterSource = Callable[[], Any]


def collect_regions(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Geometry items already present in a task, first occurrence of each id wins:
    annotations, then drafts, then predictions, then task.data["regions"] (region data imported with the task)."""
    seen: dict[str, dict[str, Any]] = {}
    sources: list[Any] = []
    for key in ("annotations", "drafts", "predictions"):
        entries = task.get(key)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and not entry.get("was_cancelled"):
                sources.append(entry.get("result") or [])
    data = task.get("data")
    if isinstance(data, dict) and isinstance(data.get("regions"), list):
        sources.append(data["regions"])
    for result in sources:
        if not isinstance(result, list):
            continue
        for item in result:
            if not isinstance(item, dict) or region_type(item) not in GEOMETRY_TYPES:
                continue
            rid = item.get("id")
            rid = rid if isinstance(rid, str) else json.dumps(rid) if rid is not None else ""
            if rid and rid in seen:
                continue
            seen[rid or results.new_region_id()] = item
    return list(seen.values())


def image_regions(task: dict[str, Any], to_name: str) -> list[dict[str, Any]]:
    """The task's regions on the image object `to_name` (items without to_name belong to it), tracks left out."""
    return [item for item in collect_regions(task)
            if region_type(item) not in TRACK_TYPES and item.get("to_name", to_name) == to_name]


def region_mask(item: dict[str, Any], image: np.ndarray,
                segmenter: SegmenterSource) -> tuple[np.ndarray, float | None]:
    """(mask HxW bool, mask score or None) of a region item on `image`. Unprocessable when the item cannot be
    turned into a mask (bad RLE, size mismatch, a keypoint without a segmenter, an unknown type)."""
    height, width = image.shape[:2]
    kind = region_type(item)
    value = item.get("value") or {}
    if kind in BRUSH_TYPES:
        ow, oh = item.get("original_width"), item.get("original_height")
        if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
            raise Unprocessable(f"brush region {item.get('id')} has no RLE list")
        if (ow, oh) != (width, height):
            raise Unprocessable(f"brush region {item.get('id')} is {ow}x{oh} but the image is {width}x{height}")
        try:
            return decode_rle(value["rle"], height, width) > 0, None
        except RLEError as exc:
            raise Unprocessable(f"brush region {item.get('id')}: {exc}") from None
    if kind in POLYGON_TYPES:
        return rasterize(item, height, width) > 0, None
    if kind in RECTANGLE_TYPES:
        box = rectangle_box(value, width, height)
        seg = segmenter()
        if seg is None:
            return rasterize(item, height, width) > 0, None
        pred = seg.predict(image, box=box)
        return np.asarray(pred.mask, dtype=bool), float(pred.score)
    if kind in KEYPOINT_TYPES:
        seg = segmenter()
        if seg is None:
            raise Unprocessable("keypoint regions need a segmenter (SEGMENTER=sam2 or color)")
        point = keypoint_pixel(value, width, height)
        pred = seg.predict(image, points=np.array([point], dtype=np.float32), labels=np.array([1], dtype=np.int32))
        return np.asarray(pred.mask, dtype=bool), float(pred.score)
    raise Unprocessable(f"unsupported region type {kind!r}")
