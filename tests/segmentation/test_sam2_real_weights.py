"""Opt-in checks with a REAL SAM 2.1 checkpoint (slow on CPU; nothing is downloaded).

Runs only when SAM2_CHECKPOINT points at a sam2.1_hiera_*.pt file; SAM2_CONFIG names its config
(default "sam2.1_hiera_t"), SAM2_DEVICE picks the device (default: CUDA when available). Example:
    SAM2_CHECKPOINT=~/ckpt/sam2.1_hiera_tiny.pt SAM2_CONFIG=tiny .venv/bin/python -m pytest tests/segmentation -m real_weights
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from dam_model.segmentation import Sam2Segmenter, VideoPrompt, sample_frames

CHECKPOINT = os.environ.get("SAM2_CHECKPOINT")
pytestmark = [
    pytest.mark.real_weights,
    pytest.mark.skipif(not CHECKPOINT, reason="opt-in: set SAM2_CHECKPOINT (and SAM2_CONFIG) to a real SAM 2.1 checkpoint"),
]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def real_segmenter():
    return Sam2Segmenter.from_checkpoint(
        os.environ.get("SAM2_CONFIG", "sam2.1_hiera_t"), CHECKPOINT, device=os.environ.get("SAM2_DEVICE")
    )


def _square_scene(height: int = 360, width: int = 480, x0: int = 150, y0: int = 100, side: int = 120):
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([80 + xx * 60 // width, 120 + yy * 40 // height, np.full_like(xx, 140)], axis=2).astype(np.uint8)
    square = np.zeros((height, width), dtype=bool)
    square[y0 : y0 + side, x0 : x0 + side] = True
    image[square] = (220, 40, 40)
    return image, square


def test_click_and_box_segment_a_flat_square(real_segmenter):
    image, square = _square_scene()
    click = real_segmenter.predict(image, points=[[210, 160]], labels=[1])
    assert _iou(click.mask, square) > 0.8 and click.score > 0.5
    box = real_segmenter.predict(image, box=[145, 95, 275, 225])
    assert _iou(box.mask, square) > 0.85


def test_video_masklet_follows_the_square_both_ways(real_segmenter):
    frames, squares = [], []
    for t in range(6):
        image, square = _square_scene(x0=60 + 40 * t)
        frames.append(image)
        squares.append(square)
    masks = real_segmenter.track_video(frames, [VideoPrompt(3, "sq", points=[[60 + 120 + 60, 160]], labels=[1])])
    ious = [_iou(m, s) for m, s in zip(masks["sq"], squares)]
    assert min(ious) > 0.6, ious
    assert len(sample_frames(masks["sq"], n=8)) == 8
