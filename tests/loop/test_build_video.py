"""dam_loop.steps.build on Label Studio video tracks: videorectangle keyframes -> Label Studio's per-frame boxes -> 8 frames
sampled like the backend does for DAM's describe_video, a box mask per frame, the caption (video_samples.jsonl)."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from backend.app import create_app
from backend.settings import Settings
from dam_loop.dataset import load_samples, load_video_samples, read_video_sample, split_for
from dam_loop.steps.build import build_dataset
from dam_loop.steps.pull import S3Source, pull, source_client
from dam_model.fileio import atomic_write_bytes, read_json, read_jsonl
from dam_model.segmentation import sample_frames
from dam_model.synthetic import generate_video
from ls_io.regions import percent_box
from ls_io.tracks import track_boxes
from ls_io.video_io import video_bytes  # lossless FFV1: decoded frames equal the generator's pixels

from .conftest import REPO, put_objects

N_FRAMES = 16
WIDTH, HEIGHT = 96, 64
TRACK_A = "2f0c6a43-8d5e-4b7a-9a51-0d6a1f3e7b21"
TRACK_B = "9b1d2c77-41e0-4f3b-8c2a-5e7f6d4c3b10"


def keyframe(frame: int, box: dict[str, float], enabled: bool = True) -> dict:
    return {"frame": frame, "enabled": enabled, "rotation": 0, "time": round((frame - 1) / 25, 4), **box}


def video_annotation(annotation_id: int, task_id: int, tracks: list[tuple[str, list[dict], str]],
                     attributes: dict | None = None, url: str = "videos/clip.mkv") -> dict:
    """A per-annotation S3 export object (label_config/video.xml names) as Label Studio 1.23 writes it."""
    result = []
    for region_id, sequence, caption in tracks:
        result.append({"id": region_id, "type": "videorectangle", "from_name": "track", "to_name": "video",
                       "origin": "manual", "value": {"framesCount": N_FRAMES, "duration": N_FRAMES / 25,
                                                     "sequence": sequence, "labels": ["object"]}})
        result.append({"id": region_id, "type": "textarea", "from_name": "caption", "to_name": "video",
                       "origin": "manual", "value": {"text": [caption]}})
    data = {"video": url}
    if attributes is not None:
        data["attributes"] = attributes
    return {"id": annotation_id, "result": result, "was_cancelled": False, "ground_truth": False,
            "created_at": "2026-02-01T10:00:00.000000Z", "updated_at": "2026-02-01T10:00:05.000000Z",
            "completed_by": {"id": 1, "email": "annotator@example.com"}, "parent_prediction": None,
            "task": {"id": task_id, "data": data, "meta": {}, "project": 3}}


def pull_and_build(work, admin_s3, bucket, **kwargs):
    source = S3Source(bucket=bucket, prefix="ls", endpoint_url=admin_s3.meta.endpoint_url)
    result = pull(source_client(source), source, work)
    return build_dataset(work, result.snapshot_id, **kwargs)


def expected_box(sequence_boxes: dict[int, dict[str, float]], frame: int) -> dict[str, float]:
    """Linear interpolation between the two keyframes around LS frame ``frame`` (written out independently)."""
    before = max(f for f in sequence_boxes if f <= frame)
    after = [f for f in sequence_boxes if f > frame]
    if not after or before == frame:
        return sequence_boxes[before]
    nxt = min(after)
    t = (frame - before) / (nxt - before)
    return {k: sequence_boxes[before][k] + t * (sequence_boxes[nxt][k] - sequence_boxes[before][k])
            for k in ("x", "y", "width", "height")}


def assert_mask_is_box(mask: np.ndarray, box: dict[str, float]) -> None:
    ys, xs = np.nonzero(mask)
    x0, y0 = box["x"] * WIDTH / 100, box["y"] * HEIGHT / 100
    x1, y1 = x0 + box["width"] * WIDTH / 100, y0 + box["height"] * HEIGHT / 100
    assert abs(xs.min() - x0) <= 1 and abs(ys.min() - y0) <= 1, (xs.min(), ys.min(), box)
    assert abs(xs.max() - x1) <= 1 and abs(ys.max() - y1) <= 1, (xs.max(), ys.max(), box)
    assert mask.sum() == (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)  # a filled rectangle


@pytest.fixture()
def clip(media_root):
    """A 16-frame synthetic video with two moving objects, written losslessly under LOCAL_FILES_ROOT."""
    video = generate_video(5, 0, num_frames=N_FRAMES, size=(WIDTH, HEIGHT), num_objects=2)
    assert len(video.objects) == 2
    atomic_write_bytes(media_root / "videos" / "clip.mkv", video_bytes(video.frames))
    return video


def test_video_tracks_build_sampled_frames_with_interpolated_box_masks(tmp_path, admin_s3, bucket, clip):
    obj_a, obj_b = clip.objects
    # Track A: two enabled keyframes on the first and last frames, boxes of the object there: interpolated between.
    a_keys = {1: percent_box(obj_a.masks[0]), N_FRAMES: percent_box(obj_a.masks[-1])}
    # Track B: enabled at 1, disabled at 6 (hidden on 7..10), enabled again at 11 and held to the end (LS rule).
    b_keys = {1: percent_box(obj_b.masks[0]), 6: percent_box(obj_b.masks[5]), 11: percent_box(obj_b.masks[10])}
    tracks = [
        (TRACK_A, [keyframe(f, b) for f, b in a_keys.items()], obj_a.long_caption),
        (TRACK_B, [keyframe(1, b_keys[1]), keyframe(6, b_keys[6], enabled=False), keyframe(11, b_keys[11])],
         obj_b.long_caption),
    ]
    attributes = {TRACK_A: obj_a.attributes, TRACK_B: obj_b.attributes}
    annotation = video_annotation(501, 77, tracks, attributes)
    cancelled = dict(copy.deepcopy(annotation), id=502, was_cancelled=True)
    cancelled["task"]["id"] = 78
    uncaptioned = video_annotation(503, 79, [(TRACK_A, tracks[0][1], "  ")])
    put_objects(admin_s3, bucket, {f"ls/{a['id']}": json.dumps(a).encode() for a in (annotation, cancelled, uncaptioned)})

    dataset = pull_and_build(tmp_path / "work", admin_s3, bucket, val_fraction=0.5)
    info = read_json(dataset / "dataset.json")
    counts = info["counts"]
    assert counts["annotations"] == 3 and counts["cancelled"] == 1
    assert counts["video_regions"] == 3 and counts["video_empty_caption"] == 1
    assert counts["video_samples"] == 2 and counts["videos"] == 1 and counts["skipped"] == 0
    assert counts["video_train"] + counts["video_val"] == 2
    assert counts["samples"] == 0 and load_samples(dataset) == []  # image steps see no video rows
    assert info["video"]["frames_per_sample"] == 8

    rows = {r["region_id"]: r for r in load_video_samples(dataset)}
    assert set(rows) == {TRACK_A, TRACK_B} and all(r["task_id"] == 77 for r in rows.values())  # cancelled: skipped
    # Track A is visible on all 16 frames -> the backend's rule picks the centres of 8 equal segments.
    assert rows[TRACK_A]["frame_indices"] == sample_frames([np.ones(1, bool)] * N_FRAMES, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    # Track B is visible on LS frames 1..6 (6: the disabled keyframe itself) and 11..16 -> 0-based 0..5, 10..15.
    assert rows[TRACK_B]["frame_indices"] == [0, 2, 3, 5, 10, 12, 13, 15]
    for region_id, keys, obj in ((TRACK_A, a_keys, obj_a), (TRACK_B, b_keys, obj_b)):
        row = rows[region_id]
        assert row["kind"] == "video" and row["source"] == "human" and row["caption"] == obj.long_caption
        assert row["category"] == "object" and row["video"] == "videos/clip.mkv"
        assert row["attributes"] == obj.attributes and row["split"] == split_for(77, 0.5)
        assert (row["num_frames"], row["width"], row["height"]) == (N_FRAMES, WIDTH, HEIGHT)
        assert len(row["frames"]) == len(row["masks"]) == len(row["boxes"]) == 8
        frames, masks = read_video_sample(row)
        for index, frame, mask, box in zip(row["frame_indices"], frames, masks, row["boxes"]):
            np.testing.assert_array_equal(frame, clip.frames[index])  # frame f of Label Studio = decoded frame f - 1
            want = expected_box(keys, index + 1)
            assert all(abs(box[k] - want[k]) < 1e-3 for k in want), (index, box, want)
            assert_mask_is_box(mask, want)
            if region_id == TRACK_A:  # linear motion between the keyframes: the box does sit on the moving object
                visible = obj.masks[index]
                assert (mask & visible).sum() >= 0.8 * visible.sum(), index
    # Every distinct sampled frame is one PNG, shared by both tracks; one mask file per (track, distinct frame).
    distinct = {i for r in rows.values() for i in r["frame_indices"]}
    assert len(list((dataset / "frames").iterdir())) == counts["video_frames"] == len(distinct)
    assert len(list((dataset / "masks").iterdir())) == sum(len(set(r["frame_indices"])) for r in rows.values())
    assert {r["id"] for r in read_jsonl(dataset / "video_samples.jsonl")} == {r["id"] for r in rows.values()}


def test_track_boxes_follow_label_studio_rules():
    box = {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "rotation": 0.0}
    moved = {"x": 50.0, "y": 20.0, "width": 30.0, "height": 20.0, "rotation": 10.0}
    one = track_boxes([keyframe(3, box)], 6)
    assert one[:2] == [None, None] and one[2:] == [box] * 4  # nothing before; the last enabled keyframe holds to the end
    two = track_boxes([keyframe(5, moved), keyframe(1, box)], 6)  # any order
    assert two[0] == box and two[4] == moved and two[5] == moved
    assert two[2] == {"x": 30.0, "y": 20.0, "width": 30.0, "height": 30.0, "rotation": 5.0}
    off = track_boxes([keyframe(1, box, enabled=False), keyframe(4, moved)], 6)
    assert off == [box, None, None, moved, moved, moved]  # a disabled keyframe shows on its own frame only
    assert track_boxes([keyframe(9, box)], 6) == [None] * 6
    short = track_boxes([keyframe(1, box), keyframe(10, moved)], 4)  # the next keyframe lies past the end
    assert short[3] == pytest.approx({k: box[k] + (moved[k] - box[k]) * 3 / 9 for k in box})


def test_unusable_tracks_are_skipped_and_remote_videos_use_the_scratch_folder(tmp_path, admin_s3, bucket, clip, media_root):
    fetched: list[Path] = []

    def fetch_video(url: str, task_id, scratch: Path) -> Path:
        """Stands in for a download: the file lands in the scratch folder build_dataset owns."""
        scratch.mkdir(parents=True, exist_ok=True)
        target = scratch / f"download-{len(fetched)}.mkv"
        shutil.copy(media_root / "videos" / "clip.mkv", target)
        fetched.append(target)
        return target

    box = percent_box(clip.objects[0].masks[0])
    objects = {
        "ls/601": video_annotation(601, 90, [(TRACK_A, [keyframe(1, box), keyframe(16, box)], "a red circle")],
                                   url="https://media.example.com/clip.mkv"),
        "ls/602": video_annotation(602, 91, [(TRACK_B, [], "no keyframes")]),
        "ls/603": video_annotation(603, 92, [(TRACK_B, [keyframe(1, {"x": 120, "y": 5, "width": 10, "height": 10})],
                                              "outside the frame")]),
    }
    put_objects(admin_s3, bucket, {k: json.dumps(v).encode() for k, v in objects.items()})
    dataset = pull_and_build(tmp_path / "work", admin_s3, bucket, fetch_video=fetch_video, video_frames=4)
    counts = read_json(dataset / "dataset.json")["counts"]
    assert counts["video_samples"] == 1 and counts["skipped"] == 2
    reasons = " ".join(s["reason"] for s in read_json(dataset / "dataset.json")["skipped"])
    assert "no keyframes" in reasons and "every frame" in reasons
    (row,) = load_video_samples(dataset)
    assert "attributes" not in row and len(row["frames"]) == 4  # no data.attributes: no judge for this one
    assert fetched and not fetched[0].parent.exists()  # the scratch folder is removed after the build
    assert not list(dataset.parent.glob(".s*"))  # neither scratch nor staging folders are left behind


class RecordingDAM:
    """Stands in for DAM behind the backend: keeps the frames and masks describe_video is given."""

    config = SimpleNamespace(image_query="<image>\nDescribe the masked region in detail.")

    def __init__(self) -> None:
        self.video_calls: list[tuple[list[np.ndarray], list[np.ndarray]]] = []

    def describe_video(self, frames, masks, **_):
        self.video_calls.append(([np.array(f) for f in frames], [np.array(m, dtype=bool) for m in masks]))
        return SimpleNamespace(text="a described track", confidence=-0.1, token_ids=[])


def test_a_video_task_reads_the_same_in_the_backend_and_the_dataset_builder(tmp_path, admin_s3, bucket, clip,
                                                                            media_root):
    """Issue 14's acceptance: one task, two readers. The backend (no segmenter: the track's own boxes are the masks)
    and the build step pick the same frames and mask them the same way, by Label Studio's rule: frames 2-3
    interpolate (rotation the short way round, 0 -> -10), the keyframe at 4 has no `enabled` so it counts as
    disabled and hides the track on 5-7, the last keyframe (8, enabled) holds to the end of the editor's timeline
    (framesCount 14, shorter than the 16-frame file)."""
    sequence = [
        {"frame": 1, "enabled": True, "x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "rotation": 0},
        {"frame": 4, "x": 40.0, "y": 25.0, "width": 25.0, "height": 35.0, "rotation": 350},
        {"frame": 8, "enabled": True, "x": 50.0, "y": 10.0, "width": 20.0, "height": 30.0, "rotation": 20},
    ]
    annotation = video_annotation(801, 81, [(TRACK_A, sequence, "the tracked object")])
    annotation["result"][0]["value"]["framesCount"] = 14
    put_objects(admin_s3, bucket, {"ls/801": json.dumps(annotation).encode()})
    (row,) = load_video_samples(pull_and_build(tmp_path / "work", admin_s3, bucket))
    built_frames, built_masks = read_video_sample(row)

    dam = RecordingDAM()
    settings = Settings(local_files_root=str(media_root), media_cache_dir="", segmenter="none", video_frames=8,
                        events_file=str(tmp_path / "events.jsonl"), train_log_dir=str(tmp_path / "logs"),
                        warm_up_on_start=False, model_poll_seconds=0, dam_model=str(tmp_path / "no-model"))
    app = create_app(settings, loader=lambda source, device, dtype: dam)
    task = {"id": 81, "data": annotation["task"]["data"], "annotations": [{"id": 801, "result": annotation["result"]}]}
    label_config = (REPO / "label_config" / "video.xml").read_text()
    reply = app.test_client().post("/predict", json={"tasks": [task], "label_config": label_config})
    assert reply.status_code == 200, reply.json
    ((served_frames, served_masks),) = dam.video_calls

    # Visible (0-based): 0-3 and 7-13, eleven frames; the centres of 8 equal segments of them.
    visible = [index < 4 or 7 <= index < 14 for index in range(N_FRAMES)]
    assert row["frame_indices"] == sample_frames([np.array([v]) for v in visible], 8) == [0, 2, 3, 7, 9, 10, 11, 13]
    assert len(served_frames) == len(built_frames) == 8
    for index, served_frame, built_frame, served_mask, built_mask in zip(
            row["frame_indices"], served_frames, built_frames, served_masks, built_masks):
        np.testing.assert_array_equal(served_frame, clip.frames[index])  # the same frame ...
        np.testing.assert_array_equal(built_frame, clip.frames[index])
        np.testing.assert_array_equal(served_mask, built_mask)  # ... with the same mask
        assert served_mask.any(), index
    assert row["boxes"][1]["rotation"] == pytest.approx(-20 / 3, abs=1e-3)  # LS frame 3: two thirds of 0 -> -10
