"""Video masklets: prompts on a middle frame, both directions, several objects, bounds, files; sample_frames."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from dam_model.segmentation import VideoPrompt, load_frames, sample_frames

from .conftest import TEST_IMAGE_SIZE, moving_square_clip


def _track(segmenter, frames, prompts, **kwargs):
    visits = defaultdict(list)  # obj_id -> [(frame, direction), ...] in visiting order
    masks = segmenter.track_video(frames, prompts, on_frame=lambda t, obj, d: visits[obj].append((t, d)), **kwargs)
    return masks, visits


def test_prompt_on_middle_frame_propagates_both_ways(segmenter, sam_model, monkeypatch):
    frames = moving_square_clip(num_frames=5)
    encoded = []
    original = sam_model.forward_image
    monkeypatch.setattr(sam_model, "forward_image", lambda x: encoded.append(1) or original(x))
    masks, visits = _track(segmenter, frames, [VideoPrompt(frame_index=2, obj_id="car", points=[[30, 22]], labels=[1])])
    assert list(masks) == ["car"]
    assert len(masks["car"]) == 5
    assert all(m.shape == (48, 64) and m.dtype == np.bool_ for m in masks["car"])
    assert visits["car"] == [(2, "forward"), (3, "forward"), (4, "forward"), (1, "backward"), (0, "backward")]
    # prompt frame + 2 frames forward + 2 backward, each frame's features computed once per pass
    assert len(encoded) == 5


def test_several_objects_prompted_on_different_frames(segmenter):
    frames = moving_square_clip(num_frames=5)
    prompts = [
        {"frame_index": 1, "obj_id": 1, "points": [[10, 20]], "labels": [1]},
        {"frame": 3, "obj_id": 1, "box": [30, 10, 60, 40]},  # a second prompt frame: conditioning, not tracked
        {"frame": 3, "obj_id": 2, "box": [30, 10, 50, 35]},
        {"frame": 3, "obj_id": 2, "points": [[40, 20]], "labels": [0]},  # merged with the box above
    ]
    masks, visits = _track(segmenter, frames, prompts)
    assert set(masks) == {1, 2}
    assert all(len(per_frame) == 5 and all(m.shape == (48, 64) for m in per_frame) for per_frame in masks.values())
    assert visits[1] == [(t, "forward") for t in range(1, 5)] + [(0, "backward")]
    assert visits[2] == [(3, "forward"), (4, "forward")] + [(t, "backward") for t in (2, 1, 0)]
    # each (frame, object) computed exactly once
    for per_object in visits.values():
        assert sorted(t for t, _ in per_object) == list(range(5))


def test_video_file_with_stride(segmenter, tmp_path):
    import av

    path = tmp_path / "clip.mp4"
    frames = moving_square_clip(num_frames=6)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    store = load_frames(path, TEST_IMAGE_SIZE, stride=2)
    assert len(store) == 3 and (store.height, store.width) == (48, 64)
    assert tuple(store[0].shape) == (3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    masks = segmenter.track_video(path, [VideoPrompt(1, 0, points=[[40, 22]], labels=[1])], stride=2)
    assert len(masks[0]) == 3 and all(m.shape == (48, 64) for m in masks[0])
    with pytest.raises(ValueError, match="clip has 6 frames at stride 1 but max_frames=4; pass stride >= 2"):
        load_frames(path, TEST_IMAGE_SIZE, max_frames=4)


def test_frame_store_is_uint8_and_normalises_on_access():
    store = load_frames(moving_square_clip(num_frames=3), TEST_IMAGE_SIZE)
    assert store.pixels.dtype.is_floating_point is False
    assert store.nbytes == 3 * 3 * TEST_IMAGE_SIZE * TEST_IMAGE_SIZE
    value = store[1]
    assert value.dtype.is_floating_point and float(value.min()) < 0 < float(value.max())


@pytest.mark.parametrize(
    "prompts, kwargs, error, message",
    [
        ([VideoPrompt(9, 0, points=[[1, 1]], labels=[1])], {}, ValueError, "prompt frame 9 is outside the clip's 5 frames"),
        ([VideoPrompt(0, 0, points=[[99, 1]], labels=[1])], {}, ValueError, "outside the 64x48 image"),
        ([], {}, ValueError, "at least one video prompt"),
        ([VideoPrompt(0, 0, box=[1, 1, 9, 9]), VideoPrompt(0, 0, box=[2, 2, 9, 9])], {}, ValueError, "two boxes"),
        ([{"obj_id": 1}], {}, ValueError, "frame_index"),
        ([VideoPrompt(0, 0, points=[[1, 1]], labels=[1])], {"max_frames": 4}, ValueError, "max_frames=4"),
        ([VideoPrompt(0, 0, points=[[1, 1]], labels=[1])], {"time_budget_s": 0.0}, TimeoutError, "exceeded"),
    ],
)
def test_video_errors(segmenter, prompts, kwargs, error, message):
    with pytest.raises(error, match=message):
        segmenter.track_video(moving_square_clip(num_frames=5), prompts, **kwargs)


def test_frames_of_different_sizes_rejected(segmenter):
    frames = moving_square_clip(num_frames=3)
    frames[2] = frames[2][:, :40]
    with pytest.raises(ValueError, match="frame 2 is 40x48, expected 64x48"):
        segmenter.track_video(frames, [VideoPrompt(0, 0, points=[[1, 1]], labels=[1])])


# ---------------------------------------------------------------------------------------------- sample_frames
def _masks(nonempty: list[int], total: int) -> list[np.ndarray]:
    masks = [np.zeros((4, 5), dtype=bool) for _ in range(total)]
    for t in nonempty:
        masks[t][1, 2] = True
    return masks


def test_sample_frames_uniform_over_nonempty_frames():
    usable = [t for t in range(40) if t % 2 == 0 and t not in (10, 12)]  # 18 usable frames
    chosen = sample_frames(_masks(usable, 40), n=8)
    assert len(chosen) == 8 and len(set(chosen)) == 8
    assert all(t in usable for t in chosen)
    positions = [usable.index(t) for t in chosen]
    assert positions == [1, 3, 5, 7, 10, 12, 14, 16]  # centres of 8 equal segments of 18 frames
    gaps = np.diff(positions)
    assert gaps.max() - gaps.min() <= 1  # evenly spread among the usable frames


def test_sample_frames_repeats_when_fewer_than_n():
    chosen = sample_frames(_masks([3, 7, 8], 10), n=8)
    assert len(chosen) == 8
    assert chosen == sorted(chosen) and set(chosen) == {3, 7, 8}
    counts = [chosen.count(t) for t in (3, 7, 8)]
    assert max(counts) - min(counts) <= 1


def test_sample_frames_edge_cases():
    assert sample_frames(_masks([2, 5, 9], 10), n=1) == [5]
    assert sample_frames(_masks([2, 5, 9, 11], 12), n=1) == [9]
    assert sample_frames(_masks([4], 6), n=3) == [4, 4, 4]
    assert sample_frames(_masks(list(range(8)), 8), n=8) == list(range(8))
    with pytest.raises(ValueError, match="all 6 masks are empty"):
        sample_frames(_masks([], 6))
    with pytest.raises(ValueError, match="n must be >= 1"):
        sample_frames(_masks([1], 3), n=0)
