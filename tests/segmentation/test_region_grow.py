"""The classical region-growing fallback on flat-coloured shapes over a textured background; the factory."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from dam_model.segmentation import RegionGrowSegmenter, build_segmenter

from .conftest import textured_background


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _scene():
    """Noise background, a blue disc, and two separate green rectangles of the same colour."""
    image = textured_background(120, 160, seed=11)
    rows, cols = np.mgrid[:120, :160]
    disc = (rows - 40) ** 2 + (cols - 45) ** 2 <= 22**2
    left = np.zeros((120, 160), dtype=bool)
    left[75:110, 20:70] = True
    right = np.zeros((120, 160), dtype=bool)
    right[70:105, 95:150] = True
    image[disc] = (30, 60, 200)
    image[left | right] = (40, 180, 60)
    return image, disc, left, right


def test_positive_click_recovers_flat_shape():
    image, disc, left, _ = _scene()
    segmenter = RegionGrowSegmenter()
    disc_prediction = segmenter.predict(image, points=[[45, 40]], labels=[1])
    assert _iou(disc_prediction.mask, disc) > 0.9
    assert disc_prediction.mask.shape == (120, 160) and disc_prediction.mask.dtype == np.bool_
    rect_prediction = segmenter.predict(image, points=[[40, 90]], labels=[1])
    assert _iou(rect_prediction.mask, left) > 0.9
    # solidity: a rectangle is convex (~1); the score is a documented heuristic in (0, 1]
    assert 0.95 <= rect_prediction.score <= 1.0
    assert rect_prediction.logits.shape == (120, 160)


def test_box_alone_takes_dominant_colour_component():
    image, disc, _, _ = _scene()
    prediction = RegionGrowSegmenter().predict(image, box=[15, 10, 75, 70])
    assert _iou(prediction.mask, disc) > 0.9


def test_negative_point_removes_second_object_of_same_colour():
    image, _, left, right = _scene()
    segmenter = RegionGrowSegmenter()
    box = [10, 65, 155, 115]
    both = segmenter.predict(image, box=box)
    assert _iou(both.mask, left | right) > 0.9
    only_left = segmenter.predict(image, box=box, points=[[120, 85]], labels=[0])
    assert _iou(only_left.mask, left) > 0.9
    assert not (only_left.mask & right).any()
    # same with positive clicks on both and a negative one on the right
    clicks = segmenter.predict(image, points=[[40, 90], [120, 85], [121, 86]], labels=[1, 1, 0])
    assert _iou(clicks.mask, left) > 0.9


def test_box_restricts_growing():
    image, _, left, _ = _scene()
    prediction = RegionGrowSegmenter().predict(image, points=[[40, 90]], labels=[1], box=[20, 75, 45, 110])
    expected = left.copy()
    expected[:, 45:] = False
    assert _iou(prediction.mask, expected) > 0.9


def test_growing_is_the_euclidean_connected_region_also_where_a_channel_wise_fill_overshoots():
    """On a noisy gradient the fast path's channel-wise flood fill takes pixels beyond the Euclidean tolerance;
    the result must still be exactly the 4-connected region of pixels within it, read off the whole image."""
    rng = np.random.default_rng(5)
    ramp = np.add.outer(np.arange(90), np.arange(130))[:, :, None] * np.array([0.3, 0.5, 0.7])
    image = np.clip(ramp + rng.integers(0, 25, (90, 130, 3)), 0, 255).astype(np.uint8)
    segmenter = RegionGrowSegmenter(tolerance=30)
    for x, y in [(10, 10), (64, 45), (129, 89), (100, 20)]:
        distance = np.sqrt(((image.astype(np.float64) - image[y, x]) ** 2).sum(axis=2))
        _, components = cv2.connectedComponents((distance <= 30).astype(np.uint8), connectivity=4)
        expected = components == components[y, x]
        assert np.array_equal(segmenter.predict(image, points=[[x, y]], labels=[1]).mask, expected)


def test_bad_inputs():
    image, *_ = _scene()
    with pytest.raises(ValueError, match="outside the 160x120 image"):
        RegionGrowSegmenter().predict(image, points=[[170, 5]], labels=[1])
    with pytest.raises(ValueError, match="tolerance"):
        RegionGrowSegmenter(tolerance=0)


def test_factory():
    assert isinstance(build_segmenter("region", tolerance=20), RegionGrowSegmenter)
    with pytest.raises(ValueError, match="unknown segmenter kind 'sam3'; valid kinds: sam2, region"):
        build_segmenter("sam3")
