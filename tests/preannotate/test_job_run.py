"""One run of the job over an in-memory Label Studio: the prediction of a task is item for item the backend's,
failed tasks get no prediction and land in the failed-tasks file with a reason, selections, and the summary."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from backend.app import create_app
from backend.settings import Settings
from dam_preannotate.config import read_task_ids_file
from dam_preannotate.job import JobParts, run_job
from dam_preannotate.journal import replay
from ls_io.media import MediaConfig, MediaFetcher
from pre_fakes import IMAGE_CONFIG, VERSION, FakeDAM, Images, MemoryLabelStudio, brush_region, job_config, \
    make_tasks, square_mask


def test_a_task_gets_exactly_the_prediction_the_backend_would_return(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    image = np.random.default_rng(3).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(image).save(media / "a.png")
    regions = [brush_region(square_mask(i), region_id=f"region-{i}") for i in range(3)]
    task = {"id": 5, "data": {"image": str(media / "a.png"), "regions": regions}, "annotations": [],
            "predictions": []}
    model = FakeDAM()
    settings = Settings(local_files_root=str(media), media_cache_dir="", dam_model=str(tmp_path / "none"),
                        segmenter="none", warm_up_on_start=False, model_poll_seconds=0, max_new_tokens=8,
                        events_file=str(tmp_path / "events.jsonl"), log_level="WARNING")
    app = create_app(settings, loader=lambda *args: model).test_client()
    reply = app.post("/predict", json={"tasks": [task], "label_config": IMAGE_CONFIG})
    assert reply.status_code == 200, reply.json
    served = reply.json["results"][0]

    ls = MemoryLabelStudio({5: task})
    fetcher = MediaFetcher(MediaConfig(local_files_root=str(media), media_cache_dir=""))
    cfg = job_config(tmp_path, max_new_tokens=8)
    run_job(JobParts(cfg=cfg, ls=ls, model=model, model_version=served["model_version"], fetcher=fetcher))
    [stored] = ls.predictions.values()
    assert {k: stored[k] for k in ("result", "score", "model_version")} == served
    assert [item["id"] for item in stored["result"]] == [r["id"] for r in regions for _ in (0, 1)]


def test_failed_tasks_get_no_prediction_and_are_listed_for_a_rerun(run, tmp_path, journal_records):
    tasks = make_tasks(range(1, 9))
    tasks[8]["data"]["regions"] = []  # nothing to caption
    ls = MemoryLabelStudio(tasks)
    ls.reject_tasks = {6}  # Label Studio refuses this one's prediction (a 4xx on its import)
    summary = run(ls, images=Images(missing=["img://3"]), post_batch=10)
    assert sorted(ls.of_version()) == [1, 2, 4, 5, 7]
    assert summary.done == 5 and summary.no_regions == 1
    assert {task: kind for task, (kind, _) in summary.failed.items()} == {
        3: "media_unreachable 502", 6: "Label Studio refused the prediction"}
    assert "HTTP 404" in summary.failed[3][1]
    failed_file = tmp_path / "journal" / "project-1" / VERSION / "failed-rank0.jsonl"
    rows = [json.loads(line) for line in failed_file.read_text().splitlines()]
    assert [row["task"] for row in rows] == [3, 6] and "HTTP 404" in rows[0]["reason"]
    assert read_task_ids_file(failed_file) == {3, 6}
    report = summary.report(VERSION)
    assert "failed 2" in report and "media_unreachable 502 x1" in report and "task 3: media download" in report
    assert {r["task"] for r in journal_records() if r["event"] == "failed"} == {3, 6}

    # The rerun of the failed file, once the image is back and the prediction acceptable, finishes them.
    ls.reject_tasks = set()
    rerun = run(ls, task_ids_file=str(failed_file))
    assert rerun.selected == 2 and rerun.done == 2 and not rerun.failed
    assert sorted(ls.of_version()) == [1, 2, 3, 4, 5, 6, 7]
    assert failed_file.read_text() == ""


def test_an_id_selection_takes_only_those_tasks_and_reports_unknown_ids(run):
    ls = MemoryLabelStudio(make_tasks(range(1, 9)))
    summary = run(ls, task_ids="2, 5,99")
    assert sorted(ls.of_version()) == [2, 5]
    assert list(summary.failed) == [99] and "not in project" in summary.failed[99][1]


def test_tasks_are_fetched_page_by_page_and_prepared_with_a_bound(run, monkeypatch):
    ls = MemoryLabelStudio(make_tasks(range(1, 24)))
    pages = []
    fetch = ls.fetch_tasks
    monkeypatch.setattr(ls, "fetch_tasks", lambda project, ids: pages.append(list(ids)) or fetch(project, ids))
    summary = run(ls, page_size=5, prefetch_tasks=3)
    assert summary.done == 23 and max(len(p) for p in pages) == 5
    assert sorted(t for p in pages for t in p) == list(range(1, 24))


def test_a_second_run_recomputes_nothing(run, tmp_path):
    ls = MemoryLabelStudio(make_tasks(range(1, 7)))
    run(ls)
    model = FakeDAM()
    again = run(ls, model=model)
    assert again.skipped_journal == 6 and again.done == 0 and model.calls == []
    assert replay(tmp_path / "journal" / "project-1" / VERSION).done == set(range(1, 7))
