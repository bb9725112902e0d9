"""The job and the server read a region's mask with the same function (ls_io.tasks.region_mask): for the same
tasks they caption the same regions (empty ones skipped alike) and fail the same tasks with the same error kind
and reason."""
from __future__ import annotations

import numpy as np
from PIL import Image

from backend.app import create_app
from backend.settings import Settings
from dam_preannotate.job import JobParts, run_job
from ls_io.media import MediaConfig, MediaFetcher
from pre_fakes import IMAGE_CONFIG, FakeDAM, MemoryLabelStudio, brush_region, job_config, square_mask


def regions_of(task_id: int) -> list[dict]:
    """The regions of task `task_id`, each a case of the mask reading."""
    good = brush_region(square_mask(1), region_id=f"good-{task_id}")
    empty = brush_region(np.zeros((24, 32), dtype=bool), region_id=f"empty-{task_id}")
    bad_rle = {**brush_region(square_mask(2), region_id="bad-rle"), "value": {"format": "rle", "rle": [1, 2, 3],
                                                                             "brushlabels": ["object"]}}
    wrong_size = brush_region(np.ones((20, 30), dtype=bool), region_id="wrong-size")
    no_rle = {**brush_region(square_mask(3), region_id="no-rle"), "value": {"format": "rle", "brushlabels": []}}
    keypoint = {"id": "kp", "type": "keypointlabels", "from_name": "kp", "to_name": "image",
                "value": {"x": 50, "y": 50, "keypointlabels": ["object"]}}
    erased = brush_region(np.zeros((24, 32), dtype=bool), region_id="erased")
    return {1: [good, empty],             # the empty region is skipped, the good one captioned
            2: [good, bad_rle],           # a malformed RLE fails the task: RLEError, bad_region
            3: [wrong_size],              # a brush of another size than the image: bad_region
            4: [no_rle],                  # a brush without an RLE list: bad_region
            5: [empty, erased],            # every region empty: EmptyMask, empty_mask
            6: [keypoint],                # a keypoint without a segmenter: unprocessable
            }[task_id]


def test_job_and_server_read_the_same_masks_and_fail_alike(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(media / "a.png")
    tasks = {tid: {"id": tid, "data": {"image": str(media / "a.png"), "regions": regions_of(tid)},
                   "annotations": [], "predictions": []} for tid in range(1, 7)}
    model = FakeDAM()
    settings = Settings(local_files_root=str(media), media_cache_dir="", dam_model=str(tmp_path / "none"),
                        segmenter="none", warm_up_on_start=False, model_poll_seconds=0, max_new_tokens=8,
                        events_file=str(tmp_path / "events.jsonl"), log_level="WARNING")
    client = create_app(settings, loader=lambda *args: model).test_client()
    reply = client.post("/predict", json={"tasks": list(tasks.values()), "label_config": IMAGE_CONFIG})
    assert reply.status_code == 200, reply.json
    served, server_failed = reply.json["results"], {f["task"]: f for f in reply.json["failed"]}
    assert {tid: f["reason"] for tid, f in server_failed.items()} == {
        2: "bad_region", 3: "bad_region", 4: "bad_region", 5: "empty_mask", 6: "unprocessable"}

    ls = MemoryLabelStudio(tasks)
    fetcher = MediaFetcher(MediaConfig(local_files_root=str(media), media_cache_dir=""))
    summary = run_job(JobParts(cfg=job_config(tmp_path), ls=ls, model=model,
                               model_version=reply.json["model_version"], fetcher=fetcher))

    # Task 1: the same prediction (the empty region skipped by both), item for item.
    [stored] = ls.predictions.values()
    assert stored["task"] == 1
    assert {k: stored[k] for k in ("result", "score", "model_version")} == served[0]
    assert [item["id"] for item in stored["result"]] == ["good-1", "good-1"]
    # Tasks 2-6: failed by both, with the same error kind and the same one-line reason.
    assert {tid: kind for tid, (kind, _) in summary.failed.items()} == {
        tid: f"{f['reason']} 422" for tid, f in server_failed.items()}
    assert {tid: reason for tid, (_, reason) in summary.failed.items()} == {
        tid: f["error"] for tid, f in server_failed.items()}
