"""The server with the batching scheduler wired in: a flood past the queue bound gets 503 + Retry-After + a JSON
reason, /health answers throughout, and every request gets an answer (none lost, none hung)."""
from __future__ import annotations

import threading
import time

import pytest
import requests
from werkzeug.serving import make_server

from bk_helpers import IMAGE_CONFIG


@pytest.fixture
def live_server(make_app, fake_dam, monkeypatch):
    """The app over a slow fake DAM (50 ms a call), a queue of 4 regions, served by a threaded HTTP server."""
    monkeypatch.setenv("QUEUE_MAX_REGIONS", "4")
    monkeypatch.setenv("BATCH_MAX_SIZE", "2")
    monkeypatch.setenv("BULK_BATCH_MAX_SIZE", "2")
    fake_dam.delay = 0.05
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_flood_past_the_queue_bound_gets_503_retry_after_and_health_stays_up(live_server):
    body = {"tasks": [{"id": 1, "data": {"image": "images/img1.png"}}], "label_config": IMAGE_CONFIG,
            "params": {"context": {"result": [{"type": "keypointlabels", "from_name": "point", "to_name": "image",
                                               "is_positive": True, "original_width": 64, "original_height": 48,
                                               "value": {"x": 30, "y": 40, "keypointlabels": ["object"]}}]}}}
    answers: list = []
    lock = threading.Lock()

    def annotator() -> None:
        for _ in range(3):
            response = requests.post(live_server + "/predict", json=body, timeout=30)
            with lock:
                answers.append(response)

    health: list[float] = []
    flooding = threading.Event()
    flooding.set()

    def probe() -> None:
        while flooding.is_set():
            start = time.monotonic()
            assert requests.get(live_server + "/health", timeout=5).status_code == 200
            health.append(time.monotonic() - start)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    threads = [threading.Thread(target=annotator) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    flooding.clear()
    prober.join(10)
    assert len(answers) == 48  # every request got an answer
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 4 and statuses.count(503) >= 1, statuses
    for response in answers:
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) >= 1
            assert "QUEUE_MAX_REGIONS=4" in response.json()["error"]
        else:
            assert response.json()["results"][0]["result"]
    assert health and max(health) < 2.0  # /health never waited behind the model
    metrics = requests.get(live_server + "/metrics", timeout=5).text
    assert 'dam_backend_rejected_total{kind="interactive",reason="queue_full"}' in metrics


def test_one_deadline_covers_a_batch_request_and_the_late_tasks_get_no_prediction(make_app, fake_dam, monkeypatch):
    """BATCH_DEADLINE_S bounds the whole request, not each task: the tasks not captioned in time get [] (Label Studio
    retries them), those done keep their predictions; a single late task is a 504."""
    monkeypatch.setenv("BATCH_DEADLINE_S", "0.5")
    fake_dam.delay = 0.2
    client = make_app().test_client()
    rectangle = {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": 64,
                 "original_height": 48, "value": {"x": 10, "y": 10, "width": 20, "height": 20}}
    tasks = [{"id": i, "data": {"image": "images/img1.png"},
              "annotations": [{"result": [{**rectangle, "id": f"r{i}"}]}]} for i in range(6)]
    start = time.monotonic()
    reply = client.post("/predict", json={"tasks": tasks, "label_config": IMAGE_CONFIG})
    assert reply.status_code == 200 and time.monotonic() - start < 0.5 + 0.2 + 0.3
    results = reply.json["results"]
    done = [r for r in results if r]
    assert 1 <= len(done) <= 3 and results[len(done):] == [[]] * (6 - len(done))
    assert [f["task"] for f in reply.json["failed"]] == list(range(len(done), 6))
    assert {f["reason"] for f in reply.json["failed"]} == {"overloaded"}
    fake_dam.delay = 0.8
    late = client.post("/predict", json={"tasks": tasks[:1], "label_config": IMAGE_CONFIG})
    assert late.status_code == 504 and "deadline" in late.json["error"]
