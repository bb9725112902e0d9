"""Helpers of the backend tests: label configs, captured payloads, a recording fake DAM and segmenter; images and
the fake Label Studio HTTP server come from tests/fake_label_studio.py (shared with tests/ls_io) and are re-exported.
Imported as `bk_helpers` (tests/backend is on sys.path)."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fake_label_studio import FakeLabelStudio, make_jwt, png_bytes, scene  # noqa: F401 - re-exported

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[1].parent.parent / "shared"
PAYLOADS = SHARED / "reference" / "label-studio-payloads"

IMAGE_CONFIG = (ROOT / "label_config" / "image.xml").read_text()
VIDEO_CONFIG = (ROOT / "label_config" / "video.xml").read_text()
# The captured payloads trim the label config; this is the shape Label Studio sent (names from the capture).
CAPTURED_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="object"/></BrushLabels>
  <KeyPointLabels name="point" toName="image" smart="true"><Label value="object"/></KeyPointLabels>
  <TextArea name="caption" toName="image" perRegion="true" editable="true"/>
</View>"""
# Same tags, other names and order: nothing may depend on names.
RENAMED_CONFIG = """<View>
  <Header value="Describe"/>
  <TextArea name="desc" toName="pic" perRegion="true" rows="3"/>
  <RectangleLabels name="bx" toName="pic" smart="true"><Label value="cat"/><Label value="object"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="pic" smart="true"><Label value="cat"/></KeyPointLabels>
  <BrushLabels name="paint" toName="pic"><Label value="cat"/><Label value="object"/></BrushLabels>
  <Image name="pic" value="$photo"/>
</View>"""


def load_payload(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / name).read_text())


@dataclass
class Caption:
    text: str
    confidence: float
    token_ids: list[int] = field(default_factory=list)


class FakeDAM:
    """Records describe calls; a caption states the mask area so tests can tell regions apart."""

    def __init__(self, tag: str = "fake") -> None:
        self.tag = tag
        self.calls: list[dict[str, Any]] = []
        self.video_calls: list[tuple[int, int]] = []
        self.delay = 0.0
        self.config = type("Cfg", (), {"image_query": "<image>\nDescribe the masked region in detail."})()

    def describe(self, image, masks, *, query=None, max_new_tokens=128, **_):
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        for m in masks:
            assert m.shape == image.shape[:2], "mask must match the image"
        self.calls.append({"n": len(masks), "query": query, "shape": image.shape})
        if self.delay:
            time.sleep(self.delay)
        return [Caption(f"{self.tag} region of {int(np.count_nonzero(m))} px", -0.1) for m in masks]

    def describe_video(self, frames, masks, **_):
        assert len(frames) == len(masks)
        self.video_calls.append((len(frames), int(sum(np.count_nonzero(m) for m in masks))))
        return Caption(f"{self.tag} video object over {len(frames)} frames", -0.2)


class FakeSegmenter:
    """Square masks around positive clicks minus squares around negative ones; box prompts fill the box."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def predict(self, image, points=None, labels=None, box=None, mask_input=None):
        from dam_model.segmentation import MaskPrediction

        h, w = image.shape[:2]
        self.calls.append({"points": None if points is None else np.asarray(points).tolist(),
                           "labels": None if labels is None else np.asarray(labels).tolist(),
                           "box": None if box is None else np.asarray(box).tolist()})
        mask = np.zeros((h, w), dtype=bool)
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
        if points is not None:
            for (x, y), lab in zip(np.asarray(points), np.asarray(labels)):
                sl = (slice(max(0, int(y) - 5), int(y) + 6), slice(max(0, int(x) - 5), int(x) + 6))
                mask[sl] = bool(lab)
        return MaskPrediction(mask=mask, score=0.9, logits=np.zeros((1, 4, 4), np.float32))

    def automatic_masks(self, image, max_masks=50, min_area=100):
        from dam_model.segmentation import MaskPrediction

        h, w = image.shape[:2]
        out = []
        for i in range(3):
            m = np.zeros((h, w), dtype=bool)
            m[: h // 2, i * w // 3 : (i + 1) * w // 3] = True
            out.append(MaskPrediction(mask=m, score=0.8, logits=np.zeros(0, np.float32)))
        return out[:max_masks]

    def track_video(self, frames, prompts, **_):
        out = {}
        for p in prompts:
            x0, y0, x1, y1 = (int(round(v)) for v in p["box"])
            masks = []
            for f in frames:
                m = np.zeros(f.shape[:2], dtype=bool)
                m[y0 : y1 + 1, x0 : x1 + 1] = True
                masks.append(m)
            out[p["obj_id"]] = masks
        return out


def predict_body(tasks, config=IMAGE_CONFIG, context=None) -> dict[str, Any]:
    return {"tasks": copy.deepcopy(tasks), "project": "1.1795628620", "label_config": config,
            "params": {"login": None, "password": None, "context": context}}


