"""Shared fixtures: one random-weight SAM 2.1 hiera-t at a 128 px input (built once per session), synthetic images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

TEST_IMAGE_SIZE = 128  # model input size S for CPU tests (1024 in production); low-res logits are S/4 = 32


@pytest.fixture(scope="package", autouse=True)
def _one_intra_op_thread():
    """One torch thread for this folder, restored afterwards: on the shared 2-core box a second intra-op
    thread mostly waits (measured: 158 s for this folder with 2 threads vs 28 s with 1, under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def sam_model():
    """Random-weight SAM2VideoPredictor (hiera-t, S = 128), shared read-only by every test."""
    from dam_model.segmentation import build_sam2_model

    return build_sam2_model("sam2.1_hiera_t", checkpoint=None, device="cpu", image_size=TEST_IMAGE_SIZE, seed=0)


@pytest.fixture()
def segmenter(sam_model):
    """A fresh segmenter (own empty cache and counters) over the shared model."""
    from dam_model.segmentation import Sam2Segmenter

    return Sam2Segmenter(sam_model)


def textured_background(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Uniform random RGB noise, HxWx3 uint8."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def moving_square_clip(num_frames: int = 9, height: int = 48, width: int = 64, side: int = 14) -> list[np.ndarray]:
    """A red square sliding left to right over a textured background (same texture every frame)."""
    background = textured_background(height, width, seed=3)
    frames = []
    for t in range(num_frames):
        frame = background.copy()
        x0 = 2 + t * (width - side - 4) // max(num_frames - 1, 1)
        frame[16 : 16 + side, x0 : x0 + side] = (220, 30, 30)
        frames.append(frame)
    return frames
