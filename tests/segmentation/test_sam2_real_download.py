"""Opt-in: SAM 2.1 by hub id for real. Downloads the checkpoint into the Hugging Face cache (HF_HOME), segments a
square with it, then finds it again with HF_HUB_OFFLINE=1 (what a backend does after its first start).

    SAM2_REAL_MODEL=facebook/sam2.1-hiera-tiny .venv/bin/python -m pytest tests/segmentation -m real_weights
(hiera-tiny is 156 MB; facebook/sam2.1-hiera-large, the backend's default, is 898 MB.)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dam_model.segmentation import Sam2Segmenter, download_sam2

MODEL = os.environ.get("SAM2_REAL_MODEL")
ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.real_weights,
    pytest.mark.slow,
    pytest.mark.skipif(not MODEL, reason="opt-in: set SAM2_REAL_MODEL to a SAM 2.1 hub id (downloads it)"),
]


def test_hub_id_downloads_segments_and_then_loads_offline():
    segmenter = Sam2Segmenter.from_pretrained(MODEL, device=os.environ.get("SAM2_DEVICE"))
    height, width = 360, 480
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([80 + xx * 60 // width, 120 + yy * 40 // height, np.full_like(xx, 140)], axis=2).astype(np.uint8)
    square = np.zeros((height, width), dtype=bool)
    square[100:220, 150:270] = True
    image[square] = (220, 40, 40)
    mask = segmenter.predict(image, points=[[210, 160]], labels=[1]).mask
    assert (mask & square).sum() / max((mask | square).sum(), 1) > 0.8

    cached = download_sam2(MODEL)[1]
    offline = subprocess.run(
        [sys.executable, "-c", f"from dam_model.segmentation import download_sam2; print(download_sam2({MODEL!r})[1])"],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    assert offline.returncode == 0, offline.stderr[-2000:]
    assert Path(offline.stdout.strip()) == cached
