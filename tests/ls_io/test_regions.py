"""ls_io.regions: region types, labels, captions, grouping, and percent geometry -> pixels (rotation included)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ls_io.errors import BadRequest, Unprocessable
from ls_io.regions import (GEOMETRY_TYPES, MASK_TYPES, caption_text, group_regions, keypoint_pixel, labels_of,
                           rasterize, rectangle_box, rectangle_corners)
from ls_io.rle import encode_rle


def test_rectangle_geometry_percent_and_rotation():
    # Moved from tests/backend/test_api.py (backend.model._pct_box is now ls_io.regions.rectangle_box).
    assert rectangle_box({"x": 10, "y": 20, "width": 25, "height": 50}, 64, 48) == pytest.approx([6.4, 9.6, 22.4, 33.6])
    rotated = rectangle_box({"x": 10, "y": 20, "width": 25, "height": 50, "rotation": 90}, 64, 48)
    assert rotated == pytest.approx([0.0, 9.6, 6.4, 25.6]), "rotated clockwise about the top-left corner"

    with pytest.raises(BadRequest):
        rectangle_box({"x": 10, "y": 20, "width": 0, "height": 50}, 64, 48)


def flat(points) -> list[float]:
    return [c for point in points for c in point]


def test_rectangle_corners_rotate_clockwise_about_the_top_left_corner():
    # 200x100 image: x=10% -> 20 px, y=20% -> 20 px, width=30% of 200 -> 60 px, height=40% of 100 -> 40 px.
    value = {"x": 10, "y": 20, "width": 30, "height": 40}
    assert flat(rectangle_corners(value, 200, 100)) == pytest.approx(flat([(20, 20), (80, 20), (80, 60), (20, 60)]))
    # +90 degrees, y pointing down: the top edge now runs DOWN from (20, 20), the left edge runs LEFT.
    turned = rectangle_corners({**value, "rotation": 90}, 200, 100)
    assert flat(turned) == pytest.approx(flat([(20, 20), (20, 80), (-20, 80), (-20, 20)]))
    # +30 degrees: the top-right corner is (20 + 60 cos 30, 20 + 60 sin 30); the pivot never moves.
    tilted = rectangle_corners({**value, "rotation": 30}, 200, 100)
    assert tilted[0] == pytest.approx((20, 20))
    assert tilted[1] == pytest.approx((20 + 60 * math.cos(math.radians(30)), 20 + 30.0))
    # Corner order and rotation are the same ones rectangle_box takes the bounds of.
    assert rectangle_box({**value, "rotation": 90}, 200, 100) == pytest.approx([0.0, 20.0, 20.0, 80.0])
    with pytest.raises(BadRequest, match="numeric"):
        rectangle_corners({"x": "left", "y": 0, "width": 1, "height": 1}, 10, 10)


def test_rasterize_rectangle_polygon_and_brush():
    rect = rasterize({"type": "rectanglelabels", "value": {"x": 10, "y": 20, "width": 30, "height": 40}}, 100, 100)
    assert rect.dtype == np.uint8 and set(np.unique(rect)) == {0, 255}
    ys, xs = np.nonzero(rect)
    assert (ys.min(), xs.min()) == (20, 10) and abs(ys.max() - 60) <= 1 and abs(xs.max() - 40) <= 1
    # Rotated 90 degrees about (50, 50): 10 px wide to the LEFT of x=50, 20 px tall DOWN from y=50.
    turned = rasterize({"type": "rectangle", "value": {"x": 50, "y": 50, "width": 20, "height": 10, "rotation": 90}},
                       100, 100) > 0
    ys, xs = np.nonzero(turned)
    assert 39 <= xs.min() <= 41 and xs.max() <= 51 and 49 <= ys.min() <= 51 and 69 <= ys.max() <= 71
    polygon = {"type": "polygonlabels", "value": {"points": [[10, 10], [60, 10], [60, 60], [10, 60]]}}
    mask = rasterize(polygon, 50, 100)  # percent of a 100 wide, 50 tall image: x 10..60, y 5..30 px
    assert mask[20, 30] == 255 and mask[2, 2] == 0 and mask[40, 80] == 0
    with pytest.raises(Unprocessable, match="3 points"):
        rasterize({"type": "polygon", "value": {"points": [[1, 1], [2, 2]]}}, 10, 10)
    square = np.zeros((12, 16), np.uint8)
    square[2:6, 3:9] = 255
    brush = {"type": "brushlabels", "value": {"format": "rle", "rle": encode_rle(square), "brushlabels": ["a"]}}
    assert np.array_equal(rasterize(brush, 12, 16), square)
    with pytest.raises(Unprocessable, match="brush format"):
        rasterize({"type": "brush", "value": {"format": "png"}}, 12, 16)


def test_keypoints_are_points_not_areas():
    assert keypoint_pixel({"x": 50, "y": 25}, 64, 48) == pytest.approx((32.0, 12.0))
    assert keypoint_pixel({"x": 100, "y": 100}, 64, 48) == pytest.approx((63.0, 47.0)), "kept inside the image"
    with pytest.raises(BadRequest, match="outside"):
        keypoint_pixel({"x": 101, "y": 5}, 64, 48)
    with pytest.raises(BadRequest, match="numeric"):
        keypoint_pixel({"x": None, "y": 5}, 64, 48)
    # A keypoint is a prompt for a segmenter: rasterize refuses it (a ValueError, as for any unsupported type).
    with pytest.raises(ValueError, match="unsupported region type"):
        rasterize({"type": "keypointlabels", "value": {"x": 5, "y": 5}}, 10, 10)
    with pytest.raises(ValueError, match="unsupported region type"):
        rasterize({"type": "ellipselabels", "value": {}}, 10, 10)


def test_geometry_types_are_one_set():
    assert {"brushlabels", "brush", "polygonlabels", "polygon", "rectanglelabels", "rectangle"} == MASK_TYPES
    assert GEOMETRY_TYPES == MASK_TYPES | {"keypointlabels", "keypoint", "videorectangle"}
    assert "textarea" not in GEOMETRY_TYPES and "labels" not in GEOMETRY_TYPES


def test_labels_captions_and_grouping():
    assert labels_of({"type": "brushlabels", "value": {"brushlabels": ["cat"]}}) == ["cat"]
    assert labels_of({"type": "videorectangle", "value": {"labels": ["car", 3]}}) == ["car", "3"]
    assert labels_of({"type": "rectanglelabels", "value": {"rectanglelabels": [], "labels": ["x"]}}) == ["x"]
    assert labels_of({"type": "textarea", "value": {"text": ["a"]}}) == []
    assert caption_text({"text": ["a  red", "cube\n"]}) == "a red cube"
    assert caption_text({"text": "  one line "}) == "one line"
    result = [
        {"id": "r1", "type": "brushlabels", "value": {"format": "rle", "rle": [], "brushlabels": ["cat"]}},
        {"id": "r1", "type": "textarea", "value": {"text": ["a cat"], "brushlabels": ["ignored"]}},
        {"id": "r1", "type": "labels", "value": {"labels": ["cat", "pet"]}},
        {"id": "r1", "type": "textarea", "value": {"text": ["sleeping"]}},
        {"id": "r2", "type": "textarea", "value": {"text": ["no geometry"]}},
        {"id": "r3", "type": "videorectangle", "value": {"sequence": [], "labels": ["car"]}},
    ]
    regions = group_regions(result)
    assert list(regions) == ["r1", "r3"], "regions without a geometry item are dropped, order kept"
    assert regions["r1"]["geometry"] is result[0]
    assert regions["r1"]["caption"] == "a cat sleeping" and regions["r1"]["labels"] == ["cat", "pet"]
    assert regions["r3"] == {"geometry": result[5], "caption": "", "labels": ["car"]}
