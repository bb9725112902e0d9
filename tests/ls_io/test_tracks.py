"""ls_io.tracks against hand-worked sequences that state Label Studio's rule (VideoRectangleRegion.getShape,
VideoRegion.isInLifespan, utils/props.ts interpolateProp): frames are 1-based, list index = frame - 1."""
from __future__ import annotations

import numpy as np
import pytest

from ls_io.errors import BadRequest
from ls_io.regions import rasterize
from ls_io.tracks import box_visible, normalize_angle, timeline_length, track_boxes, track_masks


def key(frame: int, x: float, enabled: bool | None = True, rotation: float = 0.0, **extra) -> dict:
    """A keyframe whose box is 10x20 at (x, 30); `enabled=None` leaves the key out."""
    item = {"frame": frame, "x": x, "y": 30.0, "width": 10.0, "height": 20.0, "rotation": rotation, **extra}
    if enabled is not None:
        item["enabled"] = enabled
    return item


def xs(boxes) -> list:
    return [None if b is None else round(b["x"], 6) for b in boxes]


def test_linear_between_enabled_keyframes_and_held_after_the_last():
    # Keyframes at 1 (x=10) and 5 (x=50), both enabled: frame 3 is the midpoint; after frame 5 the box stays.
    boxes = track_boxes([key(1, 10), key(5, 50)], 8)
    assert xs(boxes) == [10, 20, 30, 40, 50, 50, 50, 50]
    assert boxes[2] == {"x": 30.0, "y": 30.0, "width": 10.0, "height": 20.0, "rotation": 0.0}


def test_nothing_before_the_first_keyframe_and_any_order():
    assert xs(track_boxes([key(6, 40), key(3, 10)], 7)) == [None, None, 10, 20, 30, 40, 40]
    assert track_boxes([key(9, 10)], 6) == [None] * 6, "a keyframe past the end shows nothing"
    assert track_boxes([], 3) == [None] * 3


def test_a_disabled_keyframe_hides_the_track_until_the_next_keyframe():
    # 1 enabled, 4 disabled, 7 enabled (x = 10, 40, 70): frames 2-3 move toward keyframe 4 (the shape ignores
    # `enabled`); frame 4 shows its own box; 5-6 are hidden; 7 shows again and holds to the end.
    boxes = track_boxes([key(1, 10), key(4, 40, enabled=False), key(7, 70)], 9)
    assert xs(boxes) == [10, 20, 30, 40, None, None, 70, 70, 70]


def test_after_the_last_keyframe_only_if_it_is_enabled():
    assert xs(track_boxes([key(1, 10), key(3, 30, enabled=False)], 5)) == [10, 20, 30, None, None]
    assert xs(track_boxes([key(2, 10, enabled=False)], 4)) == [None, 10, None, None]


def test_a_keyframe_without_enabled_counts_as_disabled():
    # The editor reads the missing key as false: the box shows on its own keyframes only.
    assert xs(track_boxes([key(1, 10, enabled=None), key(3, 30, enabled=None)], 4)) == [10, None, 30, None]


def test_rotation_goes_the_short_way_round():
    # utils/props.ts' own example: -170 at frame 0 and 170 at frame 20 give -175 at frame 5 (shifted to 1-based).
    boxes = track_boxes([key(1, 10, rotation=-170), key(21, 10, rotation=170)], 21)
    assert boxes[5]["rotation"] == pytest.approx(-175.0)
    # 170 -> -170 over four frames crosses 180, not 0: 175, 180, -175.
    turning = track_boxes([key(1, 0, rotation=170), key(5, 0, rotation=-170)], 5)
    assert [round(b["rotation"], 6) for b in turning] == [170, 175, 180, -175, -170]
    # 0 -> 10 is plain linear; keyframes keep their own value (350 is not rewritten as -10).
    plain = track_boxes([key(1, 0, rotation=0), key(3, 0, rotation=10), key(4, 0, rotation=350)], 4)
    assert [b["rotation"] for b in plain] == [0.0, 5.0, 10.0, 350.0]


def test_normalize_angle_maps_into_minus_180_to_180():
    assert [normalize_angle(a) for a in (0, 180, -180, 190, -190, 360, 540, -540, 725)] == [
        0, 180, 180, -170, 170, 0, 180, 180, 5]


def test_two_keyframes_on_one_frame_first_shapes_last_decides():
    # On frame 2 the first keyframe gives the box; the last one (disabled) decides what follows.
    boxes = track_boxes([key(1, 10), key(2, 20), key(2, 99, enabled=False), key(4, 40)], 5)
    assert xs(boxes) == [10, 20, None, 40, 40]


def test_malformed_keyframes():
    with pytest.raises(BadRequest, match="numeric width"):
        track_boxes([{"frame": 1, "x": 1, "y": 1, "width": "wide", "height": 1, "enabled": True}], 2)
    with pytest.raises(BadRequest, match="frame"):
        track_boxes([{"frame": "first", "x": 1}], 2)
    no_rotation = {"frame": 1, "x": 1, "y": 2, "width": 3, "height": 4, "enabled": True}
    assert track_boxes([no_rotation, "junk", {"x": 5}], 1)[0]["rotation"] == 0.0


def test_timeline_length_caps_at_frames_count():
    assert timeline_length({"framesCount": 5}, 12) == 5
    assert timeline_length({"framesCount": 20}, 12) == 12
    assert timeline_length({}, 12) == 12 and timeline_length({"framesCount": True}, 12) == 12


def test_track_masks_rasterise_each_box_as_a_rectangle():
    box = {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "rotation": 30.0}
    masks = track_masks([box, None, {**box, "x": 120.0}], 50, 80)
    assert [m.dtype for m in masks] == [np.bool_] * 3 and all(m.shape == (50, 80) for m in masks)
    assert np.array_equal(masks[0], rasterize({"type": "rectangle", "value": box}, 50, 80) > 0)
    assert not masks[1].any() and not masks[2].any(), "hidden, or entirely off the frame"
    assert box_visible(box, 50, 80) and not box_visible({**box, "width": 0.0}, 50, 80)
