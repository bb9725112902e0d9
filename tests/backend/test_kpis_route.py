"""GET /kpis and the dam_backend_kpi_* gauges: the backend serves the learning-from-edits KPIs the nightly publishes
beside the pointer (MODELS_ROOT/kpis.json), written by the loop's own store classes (local folder and moto S3)."""
from __future__ import annotations

import json
import uuid

import boto3
import pytest

from backend.kpis import KpiSource
from dam_loop.kpis import CaptionEdit, kpi_report
from dam_loop.models_root import LocalModelStore, S3ModelStore
from dam_model.versions import KPIS_NAME
from model_source.s3 import S3Models


def edit(version: str, status: str, distance: float | None, night: str = "2026-12-06") -> CaptionEdit:
    return CaptionEdit(task_id=1, annotation_id=1, region_id=uuid.uuid4().hex[:8], textarea="caption", night=night,
                       status=status, model_version=version, prediction_id=1, matched_by="parent_prediction",
                       predicted="a red square", final="a red square", edit_distance=distance)


def record_of(edits: list[CaptionEdit]) -> dict:
    return {"generated_at": "2026-12-07T02:00:00Z", "snapshot_id": "snap-1", **kpi_report(edits)}


def metric_lines(client) -> list[str]:
    return [line for line in client.get("/metrics").get_data(as_text=True).splitlines()
            if line.startswith("dam_backend_kpi_")]


def test_kpis_published_by_the_loop_are_served_for_the_served_version(tmp_path, make_app):
    root = tmp_path / "models"
    client = make_app(models_root=str(root)).test_client()
    served = client.get("/health").get_json()["model_version"]

    before = client.get("/kpis")
    assert before.status_code == 200 and before.get_json()["kpis"] is None
    assert "no KPIs published yet" in before.get_json()["reason"] and metric_lines(client) == []

    edits = [edit(served, "accepted", 0.0), edit(served, "accepted", 0.0), edit(served, "edited", 0.5),
             edit("older-version", "edited", 0.2)]
    LocalModelStore(root).write_kpis(record_of(edits))
    body = client.get("/kpis").get_json()
    assert body["model_version"] == served and body["error"] is None
    assert body["served"]["acceptance_rate"] == pytest.approx(2 / 3)
    assert body["served"]["mean_edit_distance"] == pytest.approx(0.5 / 3)
    assert set(body["by_model_version"]) == {served, "older-version"} and body["by_night"]["2026-12-06"]["regions"] == 4

    lines = metric_lines(client)
    assert f'dam_backend_kpi_acceptance_rate{{model_version="{served}"}} {2 / 3!r}' in lines
    assert 'dam_backend_kpi_acceptance_rate{model_version="older-version"} 0' in lines
    assert f'dam_backend_kpi_regions{{model_version="{served}",outcome="accepted"}} 2' in lines


def test_an_unreadable_file_keeps_the_last_good_record_and_says_why(tmp_path):
    path = tmp_path / KPIS_NAME
    now = [0.0]
    source = KpiSource(lambda: path.read_bytes() if path.exists() else None, str(path), refresh_s=30,
                       clock=lambda: now[0])
    good = record_of([edit("v1", "accepted", 0.0)])
    path.write_text(json.dumps(good))
    assert source.record()["overall"]["accepted"] == 1
    path.write_text("{not json")
    now[0] = 10.0
    assert source.record()["overall"]["accepted"] == 1 and source.last_error is None  # cached: not re-read yet
    now[0] = 40.0
    assert source.record()["overall"]["accepted"] == 1  # the last good record
    assert source.last_error.startswith(f"cannot read {path}") and source.reply("v1")["error"] == source.last_error


def test_without_a_models_root_the_reply_says_so(make_app):
    body = make_app(models_root="").test_client().get("/kpis").get_json()
    assert body["kpis"] is None and "MODELS_ROOT is not set" in body["reason"]


def test_kpis_on_an_s3_models_root(moto_endpoint, monkeypatch, tmp_path):
    for name, value in {"AWS_ACCESS_KEY_ID": "kpi-key", "AWS_SECRET_ACCESS_KEY": "kpi-secret-value",
                        "AWS_DEFAULT_REGION": "us-east-1", "S3_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    bucket = f"models-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/dam-models"
    S3ModelStore(root).write_kpis(record_of([edit("v7", "edited", 0.25), edit("v7", "accepted", 0.0)]))

    source = KpiSource.for_models_root(S3Models(root, tmp_path / "cache", endpoint_url=moto_endpoint), None)
    body = source.reply("v7")
    assert source.where == f"{root}/{KPIS_NAME}" and body["error"] is None
    assert body["served"]["acceptance_rate"] == 0.5 and body["served"]["mean_edit_distance"] == 0.125
