"""Video projects: the job captions a synthetic video task (dam_tools.export_video, a lossless clip on disk) with the
backend's own reading (ls_io.video_tasks): exactly one prediction, equal to /predict's for the same task (same
track ids, same 8 frames, same masks), and a video task that cannot be captioned fails alike in both."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from backend.app import create_app
from backend.settings import Settings
from dam_model.synthetic import generate_video
from dam_preannotate.job import JobParts, run_job
from dam_preannotate.models import LazySegmenter
from dam_tools.export_video import build_video_export, video_file_name
from ls_io.media import MediaConfig, MediaFetcher
from ls_io.video_io import video_bytes
from pre_fakes import ROOT, MemoryLabelStudio, job_config

VIDEO_CONFIG = (ROOT / "label_config" / "video.xml").read_text()


class VideoDAM:
    """describe_video stand-in: a caption naming the frames and masks it got; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
        self.config = SimpleNamespace(image_query="<image>\nDescribe the masked region in detail.")

    def describe_video(self, frames, masks, *, query=None, **_):
        assert query is None
        frames = [np.array(f) for f in frames]
        masks = [np.array(m, dtype=bool) for m in masks]
        self.calls.append((frames, masks))
        text = f"{len(frames)} frames, sums {[int(f.sum()) % 9973 for f in frames]}, " \
               f"areas {[int(m.sum()) for m in masks]}"
        return SimpleNamespace(text=text, confidence=-0.3, token_ids=[])


def video_tasks(media) -> dict[int, dict]:
    """Task 1: a synthetic 16-frame clip with its annotated tracks (a keyframe per frame); task 2: the same tracks
    on a video that is not there."""
    video = generate_video(7, 0, num_frames=16)
    (media / "videos").mkdir(parents=True)
    (media / "videos" / video_file_name(video)).write_bytes(video_bytes(video.frames))
    tasks, annotations, _ = build_video_export([video])
    result = [item for item in annotations[0]["result"] if item["type"] == "videorectangle"]
    assert result, "the synthetic video has tracks"
    good = {"id": 1, "data": tasks[0]["data"], "annotations": [{"id": 11, "result": result}], "predictions": []}
    missing = {"id": 2, "data": {"video": "videos/not-there.mkv"}, "annotations": [{"id": 12, "result": result}],
               "predictions": []}
    return {1: good, 2: missing}


def test_a_video_task_gets_exactly_the_backends_prediction(tmp_path):
    media = tmp_path / "media"
    tasks = video_tasks(media)
    track_ids = [item["id"] for item in tasks[1]["annotations"][0]["result"]]

    served_dam = VideoDAM()
    settings = Settings(local_files_root=str(media), media_cache_dir="", dam_model=str(tmp_path / "none"),
                        segmenter="none", video_frames=8, warm_up_on_start=False, model_poll_seconds=0,
                        max_new_tokens=8, events_file=str(tmp_path / "events.jsonl"), log_level="WARNING")
    client = create_app(settings, loader=lambda *args: served_dam).test_client()
    reply = client.post("/predict", json={"tasks": list(tasks.values()), "label_config": VIDEO_CONFIG})
    assert reply.status_code == 200, reply.json
    served = reply.json["results"][0]
    [server_failure] = reply.json["failed"]
    assert server_failure["task"] == 2 and server_failure["reason"] == "media_not_found"

    job_dam = VideoDAM()
    ls = MemoryLabelStudio(tasks, label_config=VIDEO_CONFIG)
    fetcher = MediaFetcher(MediaConfig(local_files_root=str(media), media_cache_dir=""))
    summary = run_job(JobParts(cfg=job_config(tmp_path, video_frames=8), ls=ls, model=job_dam,
                               model_version=reply.json["model_version"], fetcher=fetcher))

    # Exactly one prediction, item for item the backend's: each track echoed, then its caption on the same id.
    [stored] = ls.predictions.values()
    assert stored["task"] == 1
    assert {k: stored[k] for k in ("result", "score", "model_version")} == served
    assert [item["id"] for item in stored["result"]] == [rid for rid in track_ids for _ in (0, 1)]
    assert [item["type"] for item in stored["result"]] == ["videorectangle", "textarea"] * len(track_ids)
    # The same 8 frames and masks went to describe_video, track by track.
    assert len(job_dam.calls) == len(served_dam.calls) == len(track_ids)
    for (job_frames, job_masks), (served_frames, served_masks) in zip(job_dam.calls, served_dam.calls):
        assert len(job_frames) == len(served_frames) == 8
        for a, b in zip(job_frames + job_masks, served_frames + served_masks):
            np.testing.assert_array_equal(a, b)
        assert all(m.any() for m in job_masks)
    # The task the server could not caption fails in the job with the same kind and reason.
    assert summary.done == 1 and summary.regions == len(track_ids) and summary.model_calls == len(track_ids)
    assert summary.failed == {2: (f"{server_failure['reason']} 422", server_failure["error"])}

    # A second run adds nothing: the task holds a prediction of this model_version.
    again = run_job(JobParts(cfg=job_config(tmp_path / "second", video_frames=8), ls=ls, model=job_dam,
                             model_version=reply.json["model_version"], fetcher=fetcher))
    assert again.skipped_predicted == 1 and len(ls.predictions) == 1


class FakeVideoSegmenter:
    """track_video stand-in (SAM 2's masklets): per prompt, a square at the prompted box's corner that moves one pixel
    a frame; records the prompts."""

    def __init__(self) -> None:
        self.prompts: list[list[dict]] = []

    def predict(self, image, **_):  # the image Segmenter protocol (unused by video tasks)
        raise AssertionError("video tracks are segmented with track_video")

    def track_video(self, frames, prompts, **_):
        self.prompts.append([{**p, "box": [float(v) for v in p["box"]]} for p in prompts])
        height, width = np.asarray(frames[0]).shape[:2]
        out = {}
        for p in prompts:
            x0, y0 = int(p["box"][0]), int(p["box"][1])
            masks = []
            for index in range(len(frames)):
                mask = np.zeros((height, width), dtype=bool)
                if index >= p["frame_index"]:
                    top, left = min(y0 + index, height - 4), min(x0 + index, width - 4)
                    mask[top:top + 4, left:left + 4] = True
                masks.append(mask)
            out[p["obj_id"]] = masks
        return out


def test_with_a_video_segmenter_both_follow_the_tracks_with_its_masklets(tmp_path):
    media = tmp_path / "media"
    tasks = {1: video_tasks(media)[1]}
    served_dam, served_seg = VideoDAM(), FakeVideoSegmenter()
    settings = Settings(local_files_root=str(media), media_cache_dir="", dam_model=str(tmp_path / "none"),
                        segmenter="color", video_frames=8, warm_up_on_start=False, model_poll_seconds=0,
                        max_new_tokens=8, events_file=str(tmp_path / "events.jsonl"), log_level="WARNING")
    client = create_app(settings, loader=lambda *args: served_dam, segmenter_factory=lambda: served_seg).test_client()
    reply = client.post("/predict", json={"tasks": list(tasks.values()), "label_config": VIDEO_CONFIG})
    assert reply.status_code == 200, reply.json

    job_dam, job_seg = VideoDAM(), FakeVideoSegmenter()
    ls = MemoryLabelStudio(tasks, label_config=VIDEO_CONFIG)
    fetcher = MediaFetcher(MediaConfig(local_files_root=str(media), media_cache_dir=""))
    segmenter = LazySegmenter("sam2", "", "", "cpu", factory=lambda: job_seg)
    run_job(JobParts(cfg=job_config(tmp_path), ls=ls, model=job_dam, model_version=reply.json["model_version"],
                     fetcher=fetcher, segmenter=segmenter))
    [stored] = ls.predictions.values()
    assert {k: stored[k] for k in ("result", "score", "model_version")} == reply.json["results"][0]
    assert job_seg.prompts == served_seg.prompts and len(job_seg.prompts) == 1
    for (_, job_masks), (_, served_masks) in zip(job_dam.calls, served_dam.calls):
        for a, b in zip(job_masks, served_masks):
            np.testing.assert_array_equal(a, b)
        assert all(int(m.sum()) == 16 for m in job_masks), "the masklet's squares, not the track's boxes"
    assert LazySegmenter("none", "", "", "cpu").video() is None
