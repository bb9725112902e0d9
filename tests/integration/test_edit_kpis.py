"""Learning from edits against a REAL Label Studio 1.23.2: the backend's predictions are retrieved, an annotator
submits the predicted regions with ONE caption rewritten (an annotation naming its parent_prediction, through Label
Studio's API), Label Studio exports it to S3 (moto) in its default format (no predictions in the object), and the
next nightly's KPI step (predictions from GET /api/predictions/?task=N) shows that edit in the acceptance rate and
the edit distance of the backend's model_version.

Runs in CI through ./manage.sh test (marked ``integration``; Label Studio's first start is most of its time).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import requests

from dam_loop.cli import EXIT_NOT_BETTER
from dam_loop.kpis import caption_edit_distance, night_of
from dam_model.fileio import read_json
from dam_tools.provisioning import provision_project, synthetic_tasks

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N_TASKS = 3
EDITED_CAPTION = "a caption the annotator rewrote completely"


def serving_version(stack) -> str:
    """The model_version the backend announces on /setup (what Label Studio stores on its predictions)."""
    reply = requests.post(stack.backend.url + "/setup", json={"project": "1.0", "schema": stack.label_config,
                                                             "hostname": stack.ls.url, "access_token": "",
                                                             "extra_params": None}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()["model_version"]


def backend_predictions(stack, task_id: int, version: str) -> list[dict]:
    return [p for p in stack.api.predictions(task_id) if p.get("model_version") == version]


def split_bucket(task_id: int) -> float:
    """dam_loop.dataset.SPLIT_RULE's number of a task (val iff it is below --val-fraction)."""
    return int(hashlib.sha256(f"task:{task_id}".encode()).hexdigest()[:8], 16) / 2**32


def test_an_annotators_edit_shows_up_in_the_next_nights_kpis(stack, tmp_path, trained_dam_dir):
    tasks = synthetic_tasks(stack.label_config, stack.run_dir / "media-kpis", N_TASKS, seed=23)
    info = provision_project(stack.api, "DAM edit KPIs", stack.label_config, tasks, stack.backend.url, s3=stack.s3)
    version = serving_version(stack)
    stack.api.retrieve_predictions(info.project_id, info.task_ids)

    # The annotator submits every task from the backend's prediction; on the first task one caption is rewritten.
    predicted: dict[str, str] = {}
    edited_region = None
    for number, task_id in enumerate(info.task_ids):
        (served,) = backend_predictions(stack, task_id, version)
        result = [dict(item) for item in served["result"]]
        for item in result:
            if item["type"] == "textarea":
                predicted[item["id"]] = item["value"]["text"][0]
                if number == 0 and edited_region is None:
                    edited_region = item["id"]
                    item["value"] = {**item["value"], "text": [EDITED_CAPTION]}
        created = stack.api.call("POST", f"/api/tasks/{task_id}/annotations",
                                 json={"result": result, "parent_prediction": served["id"]})
        assert created["parent_prediction"] == served["id"], created
    assert edited_region is not None and len(predicted) >= 2

    # Label Studio exported the annotations in its default format: the task, but not its predictions.
    s3 = boto3.client("s3", endpoint_url=stack.s3.endpoint, aws_access_key_id=stack.s3.access_key,
                      aws_secret_access_key=stack.s3.secret_key, region_name=stack.s3.region)
    exported = [json.loads(s3.get_object(Bucket=stack.s3.bucket, Key=o["Key"])["Body"].read())
                for o in s3.list_objects_v2(Bucket=stack.s3.bucket, Prefix=stack.s3.prefix + "/").get("Contents", [])]
    ours = [o for o in exported if o["task"]["id"] in info.task_ids]
    assert len(ours) == N_TASKS and all("predictions" not in o["task"] for o in ours)
    assert all(o["parent_prediction"] is not None for o in ours)

    # The next night, as the scheduler runs it. One task in the validation split (the smallest split number).
    work = tmp_path / "work"
    val_fraction = min(split_bucket(t) for t in info.task_ids) + 1e-9
    # MODELS_ROOT is the backend's own: the night publishes kpis.json there, and the backend serves it.
    env = dict(os.environ, **stack.s3.loop_env(), LOOP_WORK_ROOT=str(work), MODELS_ROOT=str(stack.run_dir / "models"),
               INIT_MODEL=str(trained_dam_dir), LABEL_STUDIO_URL=stack.ls.url,
               LABEL_STUDIO_API_KEY=stack.credentials.token, MEDIA_CACHE_DIR="", PYTHONUNBUFFERED="1")
    night = subprocess.run(
        [sys.executable, "-m", "dam_loop.steps.nightly", "--max-steps", "1", "--batch-size", "2", "--device", "cpu",
         "--num-threads", "2", "--no-pseudo-label", "--val-fraction", f"{val_fraction:.12f}",
         "--eval-max-new-tokens", "16", "--regression-synthetic-scenes", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert night.returncode == EXIT_NOT_BETTER, night.stderr[-4000:]  # a few regions: trained, not promoted

    kpis = read_json(work / "kpis.json")
    assert kpis["predictions"]["tasks_from_api"] >= N_TASKS and kpis["predictions"]["tasks_from_export"] == 0
    served_kpis = kpis["by_model_version"][version]  # attributed to the version the backend served
    assert served_kpis["edited"] == 1 and served_kpis["accepted"] == len(predicted) - 1 and served_kpis["new"] == 0
    assert served_kpis["acceptance_rate"] == pytest.approx((len(predicted) - 1) / len(predicted))
    expected_distance = caption_edit_distance(predicted[edited_region], EDITED_CAPTION) / len(predicted)
    assert served_kpis["mean_edit_distance"] == pytest.approx(expected_distance)
    tonight = night_of(ours[0])
    assert kpis["by_night"][tonight]["edited"] == 1
    summary = read_json(sorted((work / "runs").iterdir())[-1] / "summary.json")
    assert summary["steps"]["kpis"]["edited"] == 1 and summary["gate"]["outcome"] == "too_few_regions"
    page = (work / "nightly.html").read_text()
    assert version in page and tonight in page  # the report's KPI tables

    # The backend serves what the night published: GET /kpis and the /metrics gauges, for the version it serves.
    served = requests.get(stack.backend.url + "/kpis", timeout=30).json()
    assert served["model_version"] == version and served["served"] == served_kpis, served
    assert served["by_night"][tonight]["edited"] == 1 and served["error"] is None
    metrics = requests.get(stack.backend.url + "/metrics", timeout=30).text
    rate = f'dam_backend_kpi_acceptance_rate{{model_version="{version}"}} '
    assert any(line.startswith(rate) and float(line.split()[-1]) == pytest.approx(served_kpis["acceptance_rate"])
               for line in metrics.splitlines()), metrics[-2000:]
    assert f'dam_backend_kpi_regions{{model_version="{version}",outcome="edited"}} 1' in metrics
