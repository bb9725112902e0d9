"""Load test of a deployed DAM backend with locust: annotators clicking, and an occasional bulk "Retrieve predictions".

Install locust yourself, into the project's environment (it is not in the project's locks; the bulk user encodes
brush masks with backend/rle.py, so run from the repository root):    pip install locust
Run (web UI on http://localhost:8089, or add --headless -u 16 -r 2 -t 2m):
    DAM_IMAGE_URL=/data/upload/1/abc.png PYTHONPATH=. locust -f loadtest/locustfile.py --host http://localhost:9090

The backend fetches DAM_IMAGE_URL itself, so give a URL it can read: a Label Studio URL (/data/upload/...,
/data/local-files/?d=...) when LABEL_STUDIO_URL is set, an http(s) URL on an allowed host, or a path under
LOCAL_FILES_ROOT. Settings (environment):
    DAM_IMAGE_URL       image the requests point at (required)
    DAM_IMAGE_SIZE      "WIDTHxHEIGHT" of that image in pixels (default 640x480): brush regions must match it
    DAM_LABEL_CONFIG    label config file (default label_config/image.xml beside this folder)
    DAM_BULK_REGIONS    regions in a bulk request (default 200)
    DAM_BASIC_AUTH      "user:password" when the backend has BASIC_AUTH_USER/PASS
Users: `Annotator` (weight 10) sends the click Label Studio sends for a smart keypoint (one region, interactive);
`BulkRetriever` (weight 1) sends one task with DAM_BULK_REGIONS brush regions (batch). A 503 answer (queue full)
is reported as a failure named "503 overloaded (Retry-After N)", and that user waits Retry-After seconds: count
them to see the backpressure at work; any other non-200 answer is a plain failure.

Figures we measured (tiny DAM, CPU, 2 cores) are in the README's "Measured" table; the scripted side-by-side
comparison is `python scripts/bench.py concurrent`.
"""
import os
import random
import time
from pathlib import Path

import numpy as np
from locust import HttpUser, between, task

from ls_io.rle import encode_rle

HERE = Path(__file__).resolve().parent
IMAGE_URL = os.environ.get("DAM_IMAGE_URL", "")
WIDTH, HEIGHT = (int(v) for v in os.environ.get("DAM_IMAGE_SIZE", "640x480").lower().split("x"))
LABEL_CONFIG = Path(os.environ.get("DAM_LABEL_CONFIG", HERE.parent / "label_config" / "image.xml")).read_text()
BULK_REGIONS = int(os.environ.get("DAM_BULK_REGIONS", "200"))
AUTH = tuple(os.environ["DAM_BASIC_AUTH"].split(":", 1)) if os.environ.get("DAM_BASIC_AUTH") else None
if not IMAGE_URL:
    raise SystemExit("set DAM_IMAGE_URL to an image the backend can fetch (see this file's docstring)")


def rle_of_box(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """Label Studio's brush RLE of a filled box, written with the same encoder the backend reads."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return encode_rle(mask)


def click_body() -> dict:
    """What Label Studio posts for one smart-keypoint click (captured_predict_request_interactive.json)."""
    point = {"original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0, "is_positive": True,
             "value": {"x": random.uniform(5, 95), "y": random.uniform(5, 95), "width": 0.6,
                       "keypointlabels": ["object"], "labels": ["object"]},
             "id": f"kp_{random.getrandbits(32):08x}", "from_name": "point", "to_name": "image",
             "type": "keypointlabels", "origin": "manual"}
    task = {"id": random.randint(1, 10**6), "annotations": [], "drafts": [], "predictions": [],
            "data": {"image": IMAGE_URL}}
    return {"tasks": [task], "label_config": LABEL_CONFIG, "params": {"context": {"result": [point]}}}


def bulk_body() -> dict:
    """One task with BULK_REGIONS brush regions and no context: a "Retrieve predictions" batch request."""
    regions = []
    for i in range(BULK_REGIONS):
        w, h = random.randint(8, WIDTH // 3), random.randint(8, HEIGHT // 3)
        x0, y0 = random.randint(0, WIDTH - w), random.randint(0, HEIGHT - h)
        regions.append({"id": f"r{i}", "type": "brushlabels", "from_name": "mask", "to_name": "image",
                        "original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0,
                        "value": {"format": "rle", "rle": rle_of_box(x0, y0, x0 + w, y0 + h),
                                  "brushlabels": ["object"]}})
    task = {"id": random.randint(1, 10**6), "data": {"image": IMAGE_URL}, "annotations": [{"result": regions}]}
    return {"tasks": [task], "label_config": LABEL_CONFIG, "params": {"context": None}}


class _Predicting(HttpUser):
    abstract = True

    def predict(self, body: dict, name: str) -> None:
        with self.client.post("/predict", json=body, auth=AUTH, name=name, catch_response=True) as response:
            if response.status_code == 200:
                response.success()
            elif response.status_code == 503 and response.headers.get("Retry-After"):
                retry_after = float(response.headers["Retry-After"])
                response.failure(f"503 overloaded (Retry-After {retry_after:g})")
                time.sleep(retry_after)  # a well-behaved client backs off as told
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")


class Annotator(_Predicting):
    """An annotator clicking objects: one interactive request every 1-3 s."""

    weight = 10
    wait_time = between(1, 3)

    @task
    def click(self) -> None:
        self.predict(click_body(), "/predict interactive")


class BulkRetriever(_Predicting):
    """Someone pressing "Retrieve predictions" on a task with many regions, now and then."""

    weight = 1
    wait_time = between(20, 40)

    def on_start(self) -> None:
        self.body = bulk_body()  # built once: encoding 200 masks is client work, not server work

    @task
    def retrieve(self) -> None:
        self.predict(self.body, "/predict batch")
