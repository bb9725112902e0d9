"""End to end against a REAL Label Studio 1.23.2 (not a mock): project with label_config/image.xml, synthetic
tasks whose brush regions are pre-annotations, the backend connected in interactive mode, "Retrieve predictions",
an interactive keypoint call, and an annotation exported to S3 (moto).

Runs in CI through ./manage.sh test (marked ``integration``; ~1-3 min, most of it Label Studio's first start).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from ls_io.label_config import parse_label_config
from ls_io.rle import decode_rle
from dam_tools.provisioning import ProvisionedProject, SyntheticTask, provision_project, synthetic_tasks

pytestmark = pytest.mark.integration

N_TASKS = 3
REGION_MODEL_VERSION = "synthetic-masks"


@pytest.fixture(scope="module")
def project(stack) -> tuple[ProvisionedProject, list[SyntheticTask]]:
    """A project with N_TASKS synthetic images carrying brush regions, one image without any region,
    the S3 target storage and the backend connected (interactive)."""
    tasks = synthetic_tasks(stack.label_config, stack.run_dir / "media", N_TASKS + 1, seed=11, size=(96, 72))
    with_regions, bare = tasks[:N_TASKS], tasks[N_TASKS]
    assert all(t.regions for t in with_regions)
    info = provision_project(stack.api, "DAM integration test", stack.label_config, with_regions, stack.backend.url,
                             s3=stack.s3, region_model_version=REGION_MODEL_VERSION,
                             extra_task_files=[bare.image_path])
    assert len(info.task_ids) == N_TASKS + 1
    return info, with_regions


def serving_version(stack) -> str:
    """The model_version the backend announces on /setup (what Label Studio stores on its predictions)."""
    reply = requests.post(stack.backend.url + "/setup", json={"project": "1.0", "schema": stack.label_config,
                                                             "hostname": stack.ls.url, "access_token": "",
                                                             "extra_params": None}, timeout=30)
    assert reply.status_code == 200, reply.text
    version = reply.json()["model_version"]
    assert isinstance(version, str) and version
    return version


def backend_predictions(stack, task_id: int, version: str) -> list[dict]:
    return [p for p in stack.api.predictions(task_id) if p.get("model_version") == version]


def pairs_by_id(result: list[dict]) -> dict[str, tuple[dict, dict]]:
    """region id -> (brushlabels item, textarea item); asserts the geometry comes BEFORE its caption."""
    first_seen: dict[str, dict] = {}
    pairs: dict[str, tuple[dict, dict]] = {}
    for item in result:
        rid = item["id"]
        if item["type"] == "brushlabels":
            first_seen.setdefault(rid, item)
        elif item["type"] == "textarea":
            assert rid in first_seen, f"textarea {rid} comes before (or without) its brush region"
            pairs[rid] = (first_seen[rid], item)
    return pairs


def test_backend_is_connected_interactive(stack, project):
    info, _ = project
    ml = stack.api.ml_backend(info.ml_backend_id)
    assert ml["is_interactive"] is True
    assert ml.get("state") in {"CO", "CONNECTED", "Connected"}, f"state {ml.get('state')}: {stack.backend.log_tail()}"


def test_retrieve_predictions_stores_captioned_brush_regions(stack, project):
    info, tasks = project
    version = serving_version(stack)
    stack.api.retrieve_predictions(info.project_id, info.task_ids)

    for task_id, task in zip(info.task_ids, tasks):
        stored = backend_predictions(stack, task_id, version)
        assert len(stored) == 1, (
            f"task {task_id}: predictions {[p.get('model_version') for p in stack.api.predictions(task_id)]}, "
            f"want one with {version!r}; backend log:\n{stack.backend.log_tail()}")
        pairs = pairs_by_id(stored[0]["result"])
        assert set(pairs) == {r["id"] for r in task.regions}, "every input region is captioned, under its own id"
        for region in task.regions:
            brush, caption = pairs[region["id"]]
            assert brush["value"]["format"] == "rle"
            want = decode_rle(region["value"]["rle"], region["original_height"], region["original_width"])
            got = decode_rle(brush["value"]["rle"], brush["original_height"], brush["original_width"])
            assert np.array_equal(got > 127, want > 127), "the stored mask is the region's mask"
            assert got.max() == 255, "foreground must be 255 (a 0/1 mask is invisible in the editor)"
            text = caption["value"]["text"]
            assert isinstance(text, list) and len(text) == 1 and text[0].strip(), caption
            assert caption["from_name"] == parse_label_config(stack.label_config).textarea.name

    bare_task = info.task_ids[N_TASKS]
    for prediction in backend_predictions(stack, bare_task, version):  # NO_REGION_MODE=skip: nothing captioned
        assert not [r for r in prediction["result"] if r["type"] == "textarea"], prediction

    # Retrieving again with an unchanged model_version is a no-op (Label Studio skips those tasks).
    stack.api.retrieve_predictions(info.project_id, info.task_ids[:1])
    assert len(backend_predictions(stack, info.task_ids[0], version)) == 1


def _point_inside(mask: np.ndarray) -> tuple[float, float]:
    """A pixel (x, y) of ``mask`` nearest its centroid: inside even for concave or occluded shapes."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return float(xs[i]) + 0.5, float(ys[i]) + 0.5


def test_interactive_keypoint_returns_mask_and_caption(stack, project):
    info, tasks = project
    cfg = parse_label_config(stack.label_config)
    assert cfg.keypoint is not None, "label_config/image.xml needs a smart KeyPointLabels for this test"
    region = max(tasks[0].regions, key=lambda r: (decode_rle(r["value"]["rle"], r["original_height"],
                                                             r["original_width"]) > 0).sum())
    width, height = region["original_width"], region["original_height"]
    target = decode_rle(region["value"]["rle"], height, width) > 127
    x, y = _point_inside(target)
    keypoint = {
        "id": "kp-integration-1", "from_name": cfg.keypoint.name, "to_name": cfg.keypoint.to_name,
        "type": "keypointlabels", "origin": "manual", "is_positive": True,
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": 100.0 * x / width, "y": 100.0 * y / height, "width": 0.6,
                  "keypointlabels": list(cfg.keypoint.labels[:1])},
    }
    reply = stack.api.interactive(info.ml_backend_id, info.task_ids[0], [keypoint])
    data = reply["data"] if isinstance(reply, dict) and "data" in reply else reply
    assert data.get("model_version") == serving_version(stack), json.dumps(data)[:500]
    pairs = pairs_by_id(data["result"])
    assert len(pairs) == 1, f"one new region from one keypoint: {json.dumps(data)[:800]}"
    (brush, caption), = pairs.values()
    mask = decode_rle(brush["value"]["rle"], brush["original_height"], brush["original_width"]) > 127
    inter, union = np.logical_and(mask, target).sum(), np.logical_or(mask, target).sum()
    assert inter / union > 0.5, f"keypoint mask IoU with the clicked object {inter / union:.2f}"
    assert caption["value"]["text"][0].strip()
    # interactive suggestions are not stored as predictions
    assert not [p for p in stack.api.predictions(info.task_ids[0])
                if any(r.get("id") == brush["id"] for r in p.get("result", []))]


def test_submitted_annotation_is_exported_to_s3(stack, project):
    import boto3

    info, tasks = project
    version = serving_version(stack)
    prediction = backend_predictions(stack, info.task_ids[1], version)[0]
    corrected = [dict(r) for r in prediction["result"]]
    for item in corrected:
        if item["type"] == "textarea":
            item["value"] = {"text": ["a corrected caption written by an annotator"]}
    annotation_id = stack.api.create_annotation(info.task_ids[1], corrected)

    s3 = boto3.client("s3", endpoint_url=stack.s3.endpoint, aws_access_key_id=stack.s3.access_key,
                      aws_secret_access_key=stack.s3.secret_key, region_name=stack.s3.region)
    key = f"{stack.s3.prefix}/{annotation_id}"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.s3.bucket).get("Contents", [])]
    assert key in keys, f"exported keys {keys}; Label Studio log:\n{stack.ls.log_tail()}"
    exported = json.loads(s3.get_object(Bucket=stack.s3.bucket, Key=key)["Body"].read())
    texts = [t for r in exported["result"] if r["type"] == "textarea" for t in r["value"]["text"]]
    assert texts and all(t == "a corrected caption written by an annotator" for t in texts)
    assert exported["task"]["id"] == info.task_ids[1]
