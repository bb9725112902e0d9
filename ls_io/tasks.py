"""A Label Studio task -> the regions to caption and their masks: the one reading shared by the backend's /predict
and the bulk pre-annotation job (dam_preannotate), so both caption exactly the same regions.

- `collect_regions`: geometry items already present in a task (annotations, drafts, predictions, data.regions);
- `image_regions`: those of them that belong to one image object (no video tracks);
- `region_mask`: an item's mask on its image, with a segmenter for the kinds that need one (rectangles are
  refined by it when there is one; keypoints need one), with the failure kinds of ls_io.errors; `region_masks`:
  a task's regions, empty ones skipped; `segment`: one segmenter call.

The segmenter is passed as a zero-argument callable so that the caller decides when (and whether) to load it:
only rectangles and keypoints call it. It returns None when there is no segmenter, else an object with
`predict(image, points=None, labels=None, box=None)` returning `.mask` and `.score` (dam_model's segmenters).
"""
from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from . import results
from .errors import EmptyMask, ModelError, RLEError, StatusError, Unprocessable
from .regions import (BRUSH_TYPES, GEOMETRY_TYPES, KEYPOINT_TYPES, POLYGON_TYPES, RECTANGLE_TYPES, TRACK_TYPES,
                      keypoint_pixel, rasterize, rectangle_box, region_label, region_type)
from .rle import decode_rle

SegmenterSource = Callable[[], Any]


def task_label(task: Any) -> str:
    """The task id for a log line or a reason: an int as is, anything else quoted and cut (ids come from the
    request: never let one forge a log line)."""
    tid = task.get("id") if isinstance(task, dict) else None
    return str(tid) if isinstance(tid, int) else json.dumps(tid)[:40]


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


def segment(seg: Any, image: np.ndarray, **prompts: Any) -> tuple[np.ndarray, float]:
    """(mask HxW bool, score) of one segmenter call; the segmenter's ValueError (a prompt it cannot use) is a
    ModelError (422), a mask of the wrong size a 500."""
    try:
        pred = seg.predict(image, **prompts)
    except ValueError as exc:
        raise ModelError(f"the segmenter could not use the prompts: {exc}") from None
    mask = np.asarray(pred.mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise StatusError(f"segmenter returned a {mask.shape} mask for a {image.shape[:2]} image")
    return mask, float(pred.score)


def region_mask(item: dict[str, Any], image: np.ndarray,
                segmenter: SegmenterSource) -> tuple[np.ndarray, float | None]:
    """(mask HxW bool, mask score or None) of an existing region item on `image`: the one reading of a region's
    mask (the backend's /predict, interactive brushes and the bulk job call it).

    Raises, each with its ls_io.errors kind: Unprocessable "bad_region" (a brush without an RLE list or of another
    size than the image, an unsupported type), RLEError "bad_region" (malformed RLE), Unprocessable (a keypoint
    without a segmenter), ModelError (the segmenter refuses the prompt), EmptyMask (the mask covers no pixel).
    A rectangle whose segmenter mask is empty falls back to the rectangle itself (the annotator's region)."""
    height, width = image.shape[:2]
    kind = region_type(item)
    value = item.get("value") if isinstance(item.get("value"), dict) else {}
    rid = region_label(item)
    if kind in BRUSH_TYPES:
        ow, oh = item.get("original_width"), item.get("original_height")
        if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
            raise Unprocessable(f"brush region {rid} has no RLE list", kind="bad_region")
        if (ow, oh) != (width, height):
            raise Unprocessable(f"brush region {rid} is {ow}x{oh} but the image is {width}x{height}",
                                kind="bad_region")
        try:
            mask, score = decode_rle(value["rle"], height, width) > 0, None
        except RLEError as exc:
            raise RLEError(f"brush region {rid}: {exc}") from None
    elif kind in POLYGON_TYPES:
        mask, score = rasterize(item, height, width) > 0, None
    elif kind in RECTANGLE_TYPES:
        box = rectangle_box(value, width, height)
        seg = segmenter()
        mask, score = (rasterize(item, height, width) > 0, None) if seg is None else segment(seg, image, box=box)
        if seg is not None and not mask.any():
            mask, score = rasterize(item, height, width) > 0, None
    elif kind in KEYPOINT_TYPES:
        seg = segmenter()
        if seg is None:
            raise Unprocessable("keypoint regions need a segmenter (SEGMENTER=sam2 or color)")
        point = keypoint_pixel(value, width, height)
        mask, score = segment(seg, image, points=np.array([point], dtype=np.float32),
                              labels=np.array([1], dtype=np.int32))
    else:
        raise Unprocessable(f"unsupported region type {kind!r}", kind="bad_region")
    if not mask.any():
        raise EmptyMask(f"{kind or 'region'} {rid} has no pixels: nothing to describe")
    return mask, score


def region_masks(items: list[dict[str, Any]], image: np.ndarray, segmenter: SegmenterSource,
                 skip: Callable[[dict[str, Any], EmptyMask], None]) -> tuple[list[dict[str, Any]], list[np.ndarray],
                                                                            list[float | None]]:
    """(kept items, their masks, their mask scores) of a task's regions: a region with no pixels is passed to
    `skip` (log it, count it) and left out; EmptyMask when every region is empty. Other errors propagate: one bad
    region fails the task (the backend's batch rule, the job's too)."""
    kept, masks, scores = [], [], []
    for item in items:
        try:
            mask, score = region_mask(item, image, segmenter)
        except EmptyMask as exc:
            skip(item, exc)
            continue
        kept.append(item)
        masks.append(mask)
        scores.append(score)
    if items and not masks:
        raise EmptyMask(f"every region of the task is empty ({len(items)}): nothing to describe")
    return kept, masks, scores
