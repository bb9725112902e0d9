"""A nightly round on video-only data: synthetic videos exported by dam_tools.export_synthetic as Label Studio video
tasks (label_config/video.xml: a videorectangle track with a keyframe per frame + the per-region caption) go
through pull -> build -> pseudo-label -> train -> evaluate -> promote (`python -m dam_loop.steps.nightly`, as the scheduler
runs it) against a moto S3 server process; and build() over the exported tasks gives back the generator's boxes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dam_loop.cli import EXIT_PROMOTED
from dam_loop.dataset import load_samples, load_video_samples, read_video_sample, split_for
from dam_model.fileio import read_json
from dam_model.modeling import DescribeAnythingModel
from dam_model.segmentation import sample_frames
from dam_model.synthetic import generate_video
from dam_tools.export_video import video_file_name, video_region_ids
from ls_io.regions import percent_box

from .conftest import TEST_SECRET, bucket_bytes, put_objects
from .test_build_video import pull_and_build
from .test_loop_e2e import last_summary, nightly

N_FRAMES = 16  # frames per exported video; build samples 8 of them (DEFAULT_VIDEO_FRAMES), the tiny DAM's num_video_frames


@pytest.fixture()
def loop_env(tmp_path, s3_env, bucket, media_root, loop_start_model) -> dict[str, str]:
    """The nightly's environment (as tests/loop/test_loop_e2e.py's): the bucket, work and models folders, the random
    tiny DAM as INIT_MODEL (num_video_frames 8), the exported videos under LOCAL_FILES_ROOT."""
    return {"S3_BUCKET": bucket, "S3_PREFIX": "ls", "LOOP_WORK_ROOT": str(tmp_path / "work"),
            "MODELS_ROOT": str(tmp_path / "models"), "INIT_MODEL": str(loop_start_model),
            "LOCAL_FILES_ROOT": str(media_root), "MEDIA_CACHE_DIR": ""}


def _videos(seed: int, n: int) -> dict[str, object]:
    """{data.video URL: VideoScene} of the videos the export factory writes for (seed, n)."""
    videos = [generate_video(seed, index, num_frames=N_FRAMES) for index in range(n)]
    return {f"videos/{video_file_name(v)}": v for v in videos}


def _pixel_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_exported_video_tasks_build_back_to_the_generated_boxes(tmp_path, admin_s3, bucket, video_export_factory):
    """Both S3 formats: build() decodes the exported video losslessly and rasterises each track's box on each
    sampled frame; that box is the generator's per-frame box of the object (within one pixel)."""
    objects = video_export_factory(61, 3, fmt="annotation", prefix="ls", num_frames=N_FRAMES)
    objects |= video_export_factory(62, 2, fmt="task", prefix="ls", num_frames=N_FRAMES, first_task_id=100,
                                    caption="short")
    put_objects(admin_s3, bucket, objects)
    videos = _videos(61, 3) | _videos(62, 2)
    n_tracks = sum(len(v.objects) for v in videos.values())

    dataset = pull_and_build(tmp_path / "work", admin_s3, bucket, val_fraction=0.5)
    counts = read_json(dataset / "dataset.json")["counts"]
    assert counts["annotations"] == 5 and counts["skipped"] == 0 and counts["samples"] == 0
    assert counts["video_regions"] == counts["video_samples"] == n_tracks and counts["videos"] == 5
    rows = load_video_samples(dataset)
    assert len(rows) == n_tracks and load_samples(dataset) == []
    every_frame = sample_frames([np.ones(1, bool)] * N_FRAMES, 8)  # the object is visible on every frame
    for row in rows:
        video = videos[row["video"]]
        obj = video.objects[video_region_ids(video).index(row["region_id"])]
        short = row["task_id"] >= 100
        assert row["caption"] == (obj.short_caption if short else obj.long_caption)
        assert row["attributes"] == obj.attributes and row["category"] == "object"
        assert row["split"] == split_for(row["task_id"], 0.5)
        assert (row["num_frames"], row["height"], row["width"]) == video.frames.shape[:3]
        assert row["frame_indices"] == every_frame
        frames, masks = read_video_sample(row)
        for index, frame, mask, box in zip(row["frame_indices"], frames, masks, row["boxes"]):
            np.testing.assert_array_equal(frame, video.frames[index])  # lossless: the generator's pixels
            want = percent_box(obj.masks[index])
            assert all(abs(box[k] - want[k]) < 1e-3 for k in want), (index, box, want)
            got, expected = _pixel_box(mask), _pixel_box(obj.masks[index])
            assert all(abs(g - e) <= 1 for g, e in zip(got, expected)), (row["id"], index, got, expected)
            assert mask[obj.masks[index]].all()  # the box covers every visible pixel of the object


def test_nightly_round_on_video_only_data(tmp_path, admin_s3, bucket, video_export_factory, loop_env):
    """Six exported video tasks and nothing else: the round builds video tracks only, trains on them, evaluates
    both models with describe_video, promotes (--force-promote: a bootstrap round from a random model on a few tracks promotes), and
    leaves the source bucket byte-identical."""
    put_objects(admin_s3, bucket, video_export_factory(71, 6, fmt="annotation", prefix="ls", num_frames=N_FRAMES))
    assert {split_for(task_id, 0.34) for task_id in range(1, 7)} == {"train", "val"}  # FAST's --val-fraction
    before = bucket_bytes(admin_s3, bucket)
    work, models = Path(loop_env["LOOP_WORK_ROOT"]), Path(loop_env["MODELS_ROOT"])
    n_tracks = sum(len(v.objects) for v in _videos(71, 6).values())

    run = nightly(loop_env, "--max-steps", "2", "--force-promote", "--pseudo-label", "--version", "v1")
    assert run.returncode == EXIT_PROMOTED, run.stdout[-2000:] + run.stderr[-3000:]
    summary = last_summary(work)
    assert summary["exit_code"] == EXIT_PROMOTED

    # build: video tracks only, in both splits
    build = summary["steps"]["build"]
    dataset = Path(build["dataset"])
    counts = read_json(dataset / "dataset.json")["counts"]
    assert counts == {k: build[k] for k in counts}
    assert counts["samples"] == 0 and counts["skipped"] == 0 and counts["regions"] == 0
    assert counts["video_samples"] == n_tracks and counts["videos"] == 6
    assert counts["video_train"] > 0 and counts["video_val"] > 0
    assert summary["steps"]["pseudo_label"]["candidates"] == 0  # no un-captioned image regions to label

    # train: a candidate folder trained on the video train split
    candidate = Path(summary["steps"]["train"]["candidate"])
    assert (candidate / "config.json").exists() and (candidate / "provenance.json").exists()
    train_metrics = read_json(candidate / "metrics.json")
    assert train_metrics["train_video_samples"] == counts["video_train"] == train_metrics["train_samples"]

    # evaluate: every validation sample is a video track, judged on its attributes (dlc_average)
    run_dir = work / "runs" / summary["run_id"]
    metrics = read_json(run_dir / "eval" / "metrics.json")
    assert metrics["n_val"] == metrics["n_val_video"] == counts["video_val"]
    assert metrics["score_name"] == "dlc_average"
    for model in ("candidate", "champion"):
        video = metrics[model]["video"]
        assert video["dlc_regions"] == counts["video_val"] and {"cider", "dlc_average"} <= set(video)
    assert {s["kind"] for s in metrics["per_sample"]} == {"video"}
    assert "Video tracks alone" in (run_dir / "eval" / "report.html").read_text()
    evaluation = summary["steps"]["evaluate"]
    assert evaluation["candidate"]["score"] > evaluation["champion"]["score"] - 1  # forced past the gate

    # promote: the candidate is the served version, and it describes a video track
    pointer = read_json(models / "current.json")
    assert pointer["version"] == "v1" and pointer["metrics"]["score_name"] == "dlc_average"
    provenance = read_json(models / "versions" / "v1" / "provenance.json")
    assert provenance["snapshot_id"] == summary["snapshot_id"]
    assert provenance["evaluation"]["n_val_video"] == counts["video_val"]
    served = DescribeAnythingModel.from_pretrained(models / "versions" / "v1", device="cpu")
    frames, masks = read_video_sample(load_video_samples(dataset, "val")[0])
    assert served.config.num_video_frames == len(frames) == 8
    assert isinstance(served.describe_video(frames, masks, max_new_tokens=4).text, str)

    log_text = (run_dir / "nightly.log").read_text()
    assert "=== train" in log_text and "=== promote" in log_text
    assert TEST_SECRET not in log_text + run.stdout + run.stderr
    # The source bucket is byte-identical: the loop only listed and read it.
    assert bucket_bytes(admin_s3, bucket) == before
