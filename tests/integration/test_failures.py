"""Failures against a REAL Label Studio 1.23.2 (issue 15): a task whose image 404s gets NO stored prediction and
is captioned by the next "Retrieve predictions" once the image is served (the others are not recomputed), and an
interactive error's reason is in what Label Studio returns to the editor.

The images live on a small HTTP host of the test's own (a hidden Label Studio upload answers 500, not 404, in
1.23.2), which the backend may reach through MEDIA_ALLOWED_HOSTS. Runs through ./manage.sh test (marked
``integration``; ~1-2 min, most of it Label Studio's first start).
"""
from __future__ import annotations

import functools
import http.server
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from ls_io.label_config import parse_label_config
from ls_io.rle import encode_rle

pytestmark = pytest.mark.integration

BACKEND_ENV = {"MEDIA_ALLOWED_HOSTS": "127.0.0.1"}  # the test's image host (a named host skips the private check)
N_TASKS = 10
FAILING = 3  # the task whose image answers 404 at first
SIZE = (96, 72)  # width, height
REGION_MODEL_VERSION = "synthetic-masks"
LEGACY_TOKEN_RE = re.compile(r"\b[0-9a-f]{40}\b")


def draw(i: int) -> tuple[Image.Image, np.ndarray]:
    """Image i: a coloured square on a plain background, and the square's mask (0/255)."""
    width, height = SIZE
    image = np.full((height, width, 3), 40 + 15 * i, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    y0, x0 = 10 + 2 * i, 12 + 3 * i
    mask[y0:y0 + 30, x0:x0 + 36] = 255
    image[mask > 0] = (230, 40 + 20 * i, 30)
    return Image.fromarray(image), mask


class ImageHost:
    """Serves a folder on 127.0.0.1; a file not written yet answers 404."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def publish(self, i: int) -> None:
        draw(i)[0].save(self.folder / f"img-{i:02d}.png")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def host(stack):
    served = ImageHost(stack.run_dir / "failure-media")
    yield served
    served.close()


@pytest.fixture(scope="module")
def project(stack, host):
    """N_TASKS tasks whose images are on the host (all but FAILING published), each with its square as a
    pre-annotated brush region, and the backend connected (interactive)."""
    cfg = parse_label_config(stack.label_config)
    width, height = SIZE
    tasks = []
    for i in range(N_TASKS):
        if i != FAILING:
            host.publish(i)
        region = {"id": f"region-{i:02d}", "from_name": cfg.brush.name, "to_name": cfg.brush.to_name,
                  "type": "brushlabels", "original_width": width, "original_height": height, "image_rotation": 0,
                  "value": {"format": "rle", "rle": encode_rle(draw(i)[1]), "brushlabels": [cfg.brush.labels[0]]}}
        tasks.append({"data": {"image": f"{host.url}/img-{i:02d}.png"},
                      "predictions": [{"model_version": REGION_MODEL_VERSION, "score": 1.0, "result": [region]}]})
    project_id = stack.api.create_project("DAM failures", stack.label_config)
    task_ids = stack.api.import_tasks(project_id, tasks)
    ml_id = stack.api.connect_ml_backend(project_id, stack.backend.url, title="DAM captions", interactive=True)
    return project_id, ml_id, task_ids


def serving_version(stack) -> str:
    reply = requests.post(stack.backend.url + "/setup", json={"project": "1.0", "schema": stack.label_config},
                          timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()["model_version"]


def stored(stack, task_id: int, version: str) -> list[dict]:
    return [p for p in stack.api.predictions(task_id) if p.get("model_version") == version]


def metric(stack, name: str, **labels: str) -> float:
    text = requests.get(stack.backend.url + "/metrics", timeout=10).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(want + " ")]
    return values[0] if values else 0.0


def test_failed_task_gets_no_prediction_and_the_next_retrieve_captions_only_it(stack, host, project):
    project_id, _, task_ids = project
    version = serving_version(stack)
    failing = task_ids[FAILING]
    others = [t for t in task_ids if t != failing]
    assert requests.get(f"{host.url}/img-{FAILING:02d}.png", timeout=10).status_code == 404

    stack.api.retrieve_predictions(project_id, task_ids)

    log = stack.backend.log_tail(300)
    for task_id in others:
        assert len(stored(stack, task_id, version)) == 1, f"task {task_id}; backend log:\n{log}"
    assert stored(stack, failing, version) == [], "a failed task must not hold an (empty) prediction"
    lines = [line for line in log.splitlines() if f"task {failing}: no prediction" in line]
    assert len(lines) == 1 and "(media_not_found): image could not be fetched: HTTP 404" in lines[0], log
    assert LEGACY_TOKEN_RE.search(lines[0]) is None, "no token in the log line"
    assert metric(stack, "dam_backend_failed_tasks_total", reason="media_not_found") == 1
    kept = {t: stored(stack, t, version)[0]["id"] for t in others}
    described_before = metric(stack, "dam_backend_regions_described_total", kind="image")

    host.publish(FAILING)  # the image is fixed
    stack.api.retrieve_predictions(project_id, task_ids)

    fixed = stored(stack, failing, version)
    assert len(fixed) == 1, stack.backend.log_tail(60)
    texts = [r["value"]["text"][0] for r in fixed[0]["result"] if r["type"] == "textarea"]
    assert len(texts) == 1 and texts[0].strip()
    assert {t: [p["id"] for p in stored(stack, t, version)] for t in others} == {t: [i] for t, i in kept.items()}, \
        "the other nine keep their single prediction"
    assert metric(stack, "dam_backend_regions_described_total", kind="image") == described_before + 1, \
        "only the fixed task was captioned: Label Studio did not resend the others"


def test_interactive_error_reason_is_what_label_studio_returns_to_the_editor(stack, host, project):
    project_id, ml_id, _ = project
    cfg = parse_label_config(stack.label_config)
    width, height = SIZE

    def click(x: float, y: float, positive: bool = True) -> dict:
        return {"id": "kp-fail", "from_name": cfg.keypoint.name, "to_name": cfg.keypoint.to_name,
                "type": "keypointlabels", "origin": "manual", "is_positive": positive, "original_width": width,
                "original_height": height, "image_rotation": 0,
                "value": {"x": 100.0 * x / width, "y": 100.0 * y / height, "width": 0.6,
                          "keypointlabels": [cfg.keypoint.labels[0]]}}

    # A new task whose image is not published yet: the editor's click reaches a backend that cannot fetch it.
    task_id, = stack.api.import_tasks(project_id, [{"data": {"image": f"{host.url}/img-{N_TASKS:02d}.png"}}])
    reply = stack.api.interactive(ml_id, task_id, [click(55, 45)])
    assert "data" not in reply and len(reply["errors"]) == 1, reply
    assert reply["errors"][0].startswith("422 Client Error: image could not be fetched: HTTP 404"), reply

    host.publish(N_TASKS)
    reply = stack.api.interactive(ml_id, task_id, [click(55, 45, positive=False)])
    assert reply["errors"][0].startswith(
        "422 Client Error: only negative clicks: add a positive point on the object for url: "), reply

    reply = stack.api.interactive(ml_id, task_id, [click(55, 45)])  # a positive click on a served image: a region
    assert "errors" not in reply and [r["type"] for r in reply["data"]["result"]] == ["brushlabels", "textarea"]


def test_a_task_without_regions_holds_no_prediction_and_is_captioned_once_it_has_one(stack, host):
    """Nothing to caption stores nothing (not an empty prediction of this version, which Label Studio's "Retrieve
    predictions" would skip), so the task is captioned once an annotator drew a region."""
    cfg = parse_label_config(stack.label_config)
    width, height = SIZE
    host.publish(0)
    project_id = stack.api.create_project("DAM no regions", stack.label_config)
    (task_id,) = stack.api.import_tasks(project_id, [{"data": {"image": f"{host.url}/img-00.png"}}])
    stack.api.connect_ml_backend(project_id, stack.backend.url, title="DAM captions", interactive=True)
    version = serving_version(stack)

    stack.api.retrieve_predictions(project_id, [task_id])
    assert stack.api.predictions(task_id) == [], "nothing to caption: no prediction stored"

    region = {"id": "drawn-1", "from_name": cfg.brush.name, "to_name": cfg.brush.to_name, "type": "brushlabels",
              "original_width": width, "original_height": height, "image_rotation": 0,
              "value": {"format": "rle", "rle": encode_rle(draw(0)[1]), "brushlabels": [cfg.brush.labels[0]]}}
    stack.api.call("POST", f"/api/tasks/{task_id}/annotations", json={"result": [region]})
    stack.api.retrieve_predictions(project_id, [task_id])
    (prediction,) = stored(stack, task_id, version)
    captions = [r for r in prediction["result"] if r["type"] == "textarea" and r["id"] == "drawn-1"]
    assert len(captions) == 1 and captions[0]["value"]["text"][0].strip()
