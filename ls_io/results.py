"""Build Label Studio result items: brushlabels (RLE) first, then the per-region textarea with the SAME id."""
from __future__ import annotations

import math
import uuid
from typing import Any, Iterable

import numpy as np

from .label_config import Control, ParsedConfig
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


def _common(control: Control, cfg: ParsedConfig, region_id: str, width: int, height: int, version: str) -> dict[str, Any]:
    return {
        "id": region_id,
        "from_name": control.name,
        "to_name": cfg.obj.name,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "origin": "prediction",
        "model_version": version,
    }


def brush_result(cfg: ParsedConfig, region_id: str, mask: np.ndarray, labels: Iterable[str], version: str,
                 score: float | None = None) -> dict[str, Any]:
    """A brushlabels item for an H x W mask (foreground written as 255)."""
    if cfg.brush is None:
        raise ValueError("label config has no <BrushLabels> to carry a mask")
    h, w = mask.shape
    item = _common(cfg.brush, cfg, region_id, w, h, version)
    item["type"] = cfg.brush.tag
    item["value"] = {"format": "rle", "rle": encode_rle(np.asarray(mask) > 0), cfg.brush.tag: list(labels)}
    if score is not None:
        item["score"] = score
    return item


def echo_result(item: dict[str, Any], version: str) -> dict[str, Any]:
    """An existing region re-emitted (geometry unchanged) so a stored prediction shows its caption on it."""
    out = {k: v for k, v in item.items() if k not in {"score", "readonly", "parentID"}}
    out["origin"] = "prediction"
    out["model_version"] = version
    return out


def textarea_result(cfg: ParsedConfig, region_id: str, text: str, width: int, height: int, version: str,
                    score: float | None = None) -> dict[str, Any]:
    """The per-region caption: a textarea item with the region's id."""
    item = _common(cfg.textarea, cfg, region_id, width, height, version)
    item["type"] = "textarea"
    item["value"] = {"text": [text]}
    if score is not None:
        item["score"] = score
    return item


def prediction(result: list[dict[str, Any]], scores: list[float], version: str) -> dict[str, Any]:
    """One entry of /predict's `results`: result items, the mean region score, model_version."""
    return {"result": result, "score": round(float(np.mean(scores)), 6) if scores else 0.0, "model_version": version}
