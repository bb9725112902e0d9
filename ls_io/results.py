"""Build Label Studio result items: brushlabels (RLE) first, then the per-region textarea with the SAME id.
Values: brush_value (an RLE mask), video_track_value / video_keyframe (a videorectangle track).

`region_item` is the one shape of an item (predictions here; annotations and imported regions elsewhere: pass
origin="manual" or None); `brush_result`/`textarea_result` are the backend's predicted items.
"""
from __future__ import annotations

import math
import uuid
from typing import Any, Iterable

import numpy as np

from .label_config import ParsedConfig
from .rle import encode_rle


def new_region_id() -> str:
    """A full uuid4 (short ids collide across regions and tasks)."""
    return str(uuid.uuid4())


def caption_score(confidence: float) -> float:
    """DAM confidence (mean token log-probability, <= 0) mapped to 0..1 as exp(mean logprob)."""
    if confidence is None or not math.isfinite(confidence):
        return 0.0
    return float(min(1.0, max(0.0, math.exp(min(0.0, confidence)))))


def region_score(confidence: float, mask_score: float | None = None) -> float:
    """Caption score times the mask score (SAM 2's predicted IoU, clipped to 0..1) when the mask was predicted."""
    score = caption_score(confidence)
    if mask_score is not None and math.isfinite(mask_score):
        score *= min(1.0, max(0.0, float(mask_score)))
    return round(score, 6)


def region_item(region_id: str, from_name: str, to_name: str, kind: str, value: dict[str, Any], *,
                size: tuple[int, int] | None = None, origin: str | None = None, model_version: str | None = None,
                score: float | None = None) -> dict[str, Any]:
    """One result item as Label Studio stores it. size: (width, height) in pixels -> original_width/height and
    image_rotation 0 (image items; video items have none); origin "prediction" or "manual" (annotations);
    model_version: every predicted item carries it (Label Studio stores a prediction's version from its items)."""
    item: dict[str, Any] = {"id": region_id, "from_name": from_name, "to_name": to_name}
    if size is not None:
        item.update(original_width=int(size[0]), original_height=int(size[1]), image_rotation=0)
    if origin is not None:
        item["origin"] = origin
    if model_version is not None:
        item["model_version"] = model_version
    item["type"] = kind
    item["value"] = value
    if score is not None:
        item["score"] = score
    return item


def brush_value(mask: np.ndarray, labels: Iterable[str], label_key: str = "brushlabels") -> dict[str, Any]:
    """A brush value: the H x W mask as RLE with foreground 255 (non-zero pixels), and its labels."""
    return {"format": "rle", "rle": encode_rle(np.asarray(mask) > 0), label_key: list(labels)}


def video_keyframe(frame: int, box: dict[str, float], rate: float, *, enabled: bool = True) -> dict[str, Any]:
    """One keyframe of a videorectangle `value.sequence`: LS frame `frame` (1-based) at time (frame - 1) / rate
    seconds, a percent box {x, y, width, height} (rotation 0 unless the box has one). ls_io.tracks reads it back."""
    return {"frame": int(frame), "enabled": bool(enabled), "rotation": 0, **box, "time": round((frame - 1) / rate, 6)}


def video_track_value(sequence: list[dict[str, Any]], frames_count: int, labels: Iterable[str],
                      rate: float) -> dict[str, Any]:
    """A videorectangle value: the editor's timeline length (framesCount) and duration, keyframes, labels."""
    return {"framesCount": int(frames_count), "duration": frames_count / rate, "sequence": sequence,
            "labels": list(labels)}


def brush_result(cfg: ParsedConfig, region_id: str, mask: np.ndarray, labels: Iterable[str], version: str,
                 score: float | None = None) -> dict[str, Any]:
    """A predicted brushlabels item for an H x W mask (foreground written as 255)."""
    if cfg.brush is None:
        raise ValueError("label config has no <BrushLabels> to carry a mask")
    h, w = mask.shape
    return region_item(region_id, cfg.brush.name, cfg.obj.name, cfg.brush.tag, brush_value(mask, labels, cfg.brush.tag),
                       size=(w, h), origin="prediction", model_version=version, score=score)


def echo_result(item: dict[str, Any], version: str) -> dict[str, Any]:
    """An existing region re-emitted (geometry unchanged) so a stored prediction shows its caption on it."""
    out = {k: v for k, v in item.items() if k not in {"score", "readonly", "parentID"}}
    out["origin"] = "prediction"
    out["model_version"] = version
    return out


def textarea_result(cfg: ParsedConfig, region_id: str, text: str, width: int, height: int, version: str,
                    score: float | None = None) -> dict[str, Any]:
    """The predicted per-region caption: a textarea item with the region's id."""
    return region_item(region_id, cfg.textarea.name, cfg.obj.name, "textarea", {"text": [text]}, size=(width, height),
                       origin="prediction", model_version=version, score=score)


def prediction(result: list[dict[str, Any]], scores: list[float], version: str) -> dict[str, Any]:
    """One entry of /predict's `results`: result items, the mean region score, model_version."""
    return {"result": result, "score": round(float(np.mean(scores)), 6) if scores else 0.0, "model_version": version}
