"""Writing a videorectangle track (ls_io.results.video_keyframe / video_track_value, ls_io.regions.percent_box) and
reading it back with ls_io.tracks gives the boxes and masks it was written from."""
from __future__ import annotations

import numpy as np
import pytest

from ls_io.regions import percent_box, rasterize
from ls_io.results import video_keyframe, video_track_value
from ls_io.tracks import track_boxes, track_masks


def test_percent_box_spans_whole_pixels_and_refuses_an_empty_mask():
    mask = np.zeros((50, 80), dtype=bool)
    mask[10:20, 8:40] = True  # rows 10..19, columns 8..39
    assert percent_box(mask) == {"x": 10.0, "y": 20.0, "width": 40.0, "height": 20.0}
    drawn = rasterize({"type": "rectangle", "value": percent_box(mask)}, 50, 80) > 0
    assert drawn[mask].all()  # the box holds every pixel; rasterize also fills its far edge (row 20, column 40)
    assert np.array_equal(np.argwhere(drawn).min(0), [10, 8]) and np.array_equal(np.argwhere(drawn).max(0), [20, 40])
    with pytest.raises(ValueError):
        percent_box(np.zeros((4, 4), dtype=bool))


def test_keyframes_and_track_value_have_label_studios_fields():
    key = video_keyframe(3, {"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0}, 25)
    assert key == {"frame": 3, "enabled": True, "rotation": 0, "x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0,
                   "time": 0.08}
    assert video_keyframe(1, {"x": 0, "y": 0, "width": 1, "height": 1, "rotation": 30}, 25, enabled=False)["rotation"] == 30
    assert video_keyframe(2, {"x": 0, "y": 0, "width": 1, "height": 1}, 30)["time"] == round(1 / 30, 6)
    value = video_track_value([key], 16, ("car",), 25)
    assert value == {"framesCount": 16, "duration": 0.64, "sequence": [key], "labels": ["car"]}


def test_a_written_track_reads_back_as_the_masks_it_was_written_from():
    height, width, n_frames = 32, 48, 5
    masks = []
    for t in range(n_frames):
        mask = np.zeros((height, width), dtype=bool)
        mask[4 + t : 12 + t, 6 + 2 * t : 20 + 2 * t] = True
        masks.append(mask)
    sequence = [video_keyframe(t + 1, percent_box(m), 25) for t, m in enumerate(masks)]
    value = video_track_value(sequence, n_frames, ["object"], 25)
    boxes = track_boxes(value["sequence"], n_frames)
    for box, mask in zip(boxes, masks):
        assert box == pytest.approx({**percent_box(mask), "rotation": 0.0})
    for got, want in zip(track_masks(boxes, height, width), masks):
        assert got[want].all()  # the read-back mask holds the written one (plus the box's far edge)
        assert np.array_equal(np.argwhere(got).min(0), np.argwhere(want).min(0))
        assert np.array_equal(np.argwhere(got).max(0), np.argwhere(want).max(0) + 1)
