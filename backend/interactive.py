"""Interactive /predict (context.result holds what the annotator just drew): one new region, or a reason why not.

Smart keypoints (TOP-LEVEL is_positive gives the polarity) and/or a smart rectangle make ONE new region: the
segmenter's mask -> brushlabels (RLE, 255), then a textarea with the same uuid4 id. A brush drawn by the annotator
gets a caption (its brush item is echoed first).

No region is an error, not an empty 200: Label Studio 1.23 hands the editor `response.data.result` on success and
`errors` (built from the status line, see backend/bodies.py) on failure, so only an error carries the reason:
- only negative clicks -> 422 "only negative clicks: add a positive point on the object";
- clicks whose mask is empty -> 422 "the clicks selected no pixels: add a positive point";
- a smart rectangle whose mask is empty -> the rectangle itself is the mask (as in batch); a rectangle of no area
  -> 422 "the rectangle selected no pixels: draw it around the object";
- a drawn brush with no pixels -> 422 naming the region.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ls_io import results as R
from ls_io.label_config import ParsedConfig
from ls_io.regions import (BRUSH_TYPES, KEYPOINT_TYPES, RECTANGLE_TYPES, keypoint_pixel, labels_of, rasterize,
                           rectangle_box, region_type)
from ls_io.tasks import region_mask, segment

from .batching import INTERACTIVE
from .errors import EmptyMask, Unprocessable

if TYPE_CHECKING:  # type hints only: model.py imports this module
    from .model import DAMBackend
    from .model_store import LoadedModel

NO_POSITIVE = "only negative clicks: add a positive point on the object"
CLICKS_EMPTY = "the clicks selected no pixels: add a positive point"
RECTANGLE_EMPTY = "the rectangle selected no pixels: draw it around the object"


def brush_labels(cfg: ParsedConfig, prompt_labels: list[str]) -> list[str]:
    """The new brush region's labels: the prompts' labels the brush control knows, else its first label."""
    if cfg.brush is None or not cfg.brush.labels:
        return prompt_labels
    matching = [l for l in dict.fromkeys(prompt_labels) if l in cfg.brush.labels]
    return matching or [cfg.brush.labels[0]]


def predict(backend: "DAMBackend", task: dict[str, Any], ctx: list[Any], cfg: ParsedConfig,
            loaded: "LoadedModel") -> dict[str, Any]:
    """The prediction for one interactive request (see the module docstring for what is refused and why)."""
    if cfg.is_video:
        raise Unprocessable("interactive prompts are for images; video tracks are described in batch")
    image = backend.image_of(task, cfg)
    height, width = image.shape[:2]
    items = [r for r in ctx if isinstance(r, dict) and r.get("to_name", cfg.obj.name) == cfg.obj.name]
    points, point_labels, box, prompt_labels, rect_item = [], [], None, [], None
    brushes = []
    for item in items:
        kind = region_type(item)
        value = item.get("value") if isinstance(item.get("value"), dict) else {}
        if kind in KEYPOINT_TYPES:
            points.append(keypoint_pixel(value, width, height))
            positive = item.get("is_positive") is not False
            point_labels.append(1 if positive else 0)
            prompt_labels += labels_of(item) if positive else []
        elif kind in RECTANGLE_TYPES:
            box = rectangle_box(value, width, height)  # the last rectangle wins: one region per request
            prompt_labels += labels_of(item)
            rect_item = item
        elif kind in BRUSH_TYPES:
            brushes.append(item)
    if points and box is None and not any(point_labels):
        raise EmptyMask(NO_POSITIVE)  # a negative click only removes: the segmenter would select nothing
    masks, queries, scores_mask, emit = [], [], [], []
    for item in brushes:
        mask, _ = region_mask(item, image, backend.segmenter)  # EmptyMask names the region
        masks.append(mask)
        queries.append(backend.query_for(labels_of(item)))
        scores_mask.append(None)
        emit.append(("echo", item))
    if points or box is not None:
        mask, mscore = _prompted_mask(backend, image, points, point_labels, box, rect_item)
        labels = brush_labels(cfg, prompt_labels)
        masks.append(mask)
        queries.append(backend.query_for(labels))
        scores_mask.append(mscore)
        emit.append(("new", labels))
    if not masks:
        return R.prediction([], [], loaded.version)
    captions, version = backend.describe(loaded, image, masks, queries, kind=INTERACTIVE)
    out, scores = [], []
    for (what, payload), mask, cap, mscore in zip(emit, masks, captions, scores_mask):
        score = R.region_score(cap.confidence, mscore)
        if what == "echo":
            region_id = str(payload.get("id") or R.new_region_id())
            out.append(R.echo_result({**payload, "id": region_id}, version))
        elif cfg.brush is None:
            # No brush in the config: a smart rectangle keeps its own geometry and gets the caption.
            if rect_item is None:
                raise Unprocessable("label config has no <BrushLabels> to hold the predicted mask")
            region_id = str(rect_item.get("id") or R.new_region_id())
            out.append(R.echo_result({**rect_item, "id": region_id}, version))
        else:
            region_id = R.new_region_id()
            out.append(R.brush_result(cfg, region_id, mask, payload, version, score))
        out.append(R.textarea_result(cfg, region_id, cap.text, width, height, version, score))
        scores.append(score)
    return R.prediction(out, scores, version)


def _prompted_mask(backend: "DAMBackend", image: np.ndarray, points: list, point_labels: list[int],
                   box: np.ndarray | None, rect_item: dict[str, Any] | None) -> tuple[np.ndarray, float | None]:
    """The new region's mask from the clicks and/or the rectangle; EmptyMask with what to do when it is empty."""
    height, width = image.shape[:2]
    seg = backend.segmenter()
    if seg is None:
        if points:
            raise Unprocessable("smart keypoints need a segmenter (SEGMENTER=sam2 or color)")
        mask, score = rasterize(rect_item, height, width) > 0, None
    else:
        mask, score = segment(
            seg, image,
            points=np.array(points, dtype=np.float32) if points else None,
            labels=np.array(point_labels, dtype=np.int32) if points else None,
            box=box,
        )
        if not mask.any() and not points and rect_item is not None:
            mask, score = rasterize(rect_item, height, width) > 0, None  # the rectangle is the region
    if not mask.any():
        raise EmptyMask(CLICKS_EMPTY if points else RECTANGLE_EMPTY)
    return mask, score
