"""Model store: lazy single load, promoted-pointer hot swap, in-flight safety, broken versions keep the old model."""
from __future__ import annotations

import json
import os
import re
import threading
import time

from backend.app import backend_of
from backend.model_store import ModelStore, folder_version
from bk_helpers import CAPTURED_CONFIG, FakeDAM, predict_body


def promote(root, version: str) -> None:
    """What dam_loop.steps.promote does: an immutable versions/<v>/ folder, then an atomic pointer flip."""
    folder = root / "versions" / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"v": version}))
    tmp = root / ".current.json.tmp"
    tmp.write_text(json.dumps({"version": version, "path": f"versions/{version}", "promoted_at": "2026-11-25T00:00:00Z",
                               "previous": None, "metrics": {}}))
    os.replace(tmp, root / "current.json")


class Loader:
    def __init__(self, broken=()):
        self.loads: list[str] = []
        self.broken = set(broken)
        self.models: dict[str, FakeDAM] = {}

    def __call__(self, source, device, dtype):
        name = os.path.basename(source)
        self.loads.append(name)
        if name in self.broken:
            raise RuntimeError(f"{name} is corrupt")
        self.models[name] = FakeDAM(tag=name)
        return self.models[name]


def test_lazy_single_load_and_default_version(make_settings, tmp_path):
    folder = tmp_path / "DAM-3B"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    loader = Loader()
    store = ModelStore(make_settings(dam_model=str(folder)), loader=loader)
    version = store.model_version
    assert re.fullmatch(r"dam-[0-9a-f]{8}", version) and loader.loads == []
    threads = [threading.Thread(target=store.get) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert loader.loads == ["DAM-3B"], "one load per process, however many threads ask"
    (folder / "config.json").write_text('{"changed": 1}')
    assert folder_version("dam", str(folder)) != version, "a different config is a different model_version"


def test_pointer_flip_swaps_and_broken_version_keeps_old(make_settings, tmp_path):
    root = tmp_path / "models"
    promote(root, "v1")
    loader = Loader(broken={"v3"})
    store = ModelStore(make_settings(models_root=str(root)), loader=loader)
    assert store.model_version == "v1" and store.get().model.tag == "v1"
    assert store.check_pointer() is False, "unchanged pointer: nothing to do"
    promote(root, "v2")
    assert store.check_pointer() is True and store.model_version == "v2" and store.get().model.tag == "v2"
    promote(root, "v3")
    assert store.check_pointer() is False and store.model_version == "v2", "a broken version never replaces a good one"
    assert "corrupt" in store.last_error
    assert store.check_pointer() is False and loader.loads.count("v3") == 1, "no retry loop on the same pointer"
    (root / "current.json").write_text("{not json")
    assert store.check_pointer() is False and store.get().model.tag == "v2"


def test_poller_swaps_in_background_and_inflight_request_completes(make_app, tmp_path):
    root = tmp_path / "models"
    promote(root, "v1")
    loader = Loader()
    app = make_app(loader=loader, models_root=str(root), model_poll_seconds=0.05)
    client = app.test_client()
    task = {"id": 1, "data": {"image": "images/img1.png"},
            "annotations": [{"result": [{"id": "r1", "type": "rectanglelabels", "from_name": "box", "to_name": "image",
                                         "original_width": 64, "original_height": 48,
                                         "value": {"x": 10, "y": 10, "width": 20, "height": 20}}]}]}
    r = client.post("/predict", json=predict_body([task], CAPTURED_CONFIG.replace(
        "</View>", '<RectangleLabels name="box" toName="image"><Label value="object"/></RectangleLabels></View>')))
    assert r.status_code == 200 and r.json["results"][0]["model_version"] == "v1"
    loader.models["v1"].delay = 0.6  # the next v1 request is slow: the swap happens while it runs
    out = {}
    body = predict_body([task], CAPTURED_CONFIG.replace(
        "</View>", '<RectangleLabels name="box" toName="image"><Label value="object"/></RectangleLabels></View>'))

    def slow():
        out["r"] = app.test_client().post("/predict", json=body)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.15)
    promote(root, "v2")
    deadline = time.time() + 5
    while time.time() < deadline and client.get("/health").json["model_version"] != "v2":
        time.sleep(0.05)
    assert client.get("/health").json["model_version"] == "v2"
    t.join(5)
    inflight = out["r"]
    assert inflight.status_code == 200, "an in-flight request survives the swap"
    assert inflight.json["results"][0]["model_version"] == "v1"
    assert inflight.json["results"][0]["result"][1]["value"]["text"][0].startswith("v1 ")
    r = client.post("/predict", json=body)
    assert r.json["results"][0]["model_version"] == "v2" and r.json["results"][0]["result"][1]["value"]["text"][0].startswith("v2 ")
    assert "v2" in client.get("/versions").json["versions"]
    backend_of(app).store.stop()


def test_promotions_under_load_fail_no_request_and_each_prediction_names_its_writer(make_app, tmp_path):
    """Clicks and batch requests from 6 threads through the batching scheduler while the poller swaps v1 -> v2 -> v3:
    every request answers 200, and every prediction's model_version is the version whose model wrote its captions."""
    root = tmp_path / "models"
    promote(root, "v1")
    loader = Loader()
    # MAX_BATCH_REQUESTS off: three batch threads at once, none turned away (that gate is tested in test_hostile)
    app = make_app(loader=loader, models_root=str(root), model_poll_seconds=0.02, max_batch_requests=0)
    config = CAPTURED_CONFIG.replace(
        "</View>", '<RectangleLabels name="box" toName="image"><Label value="object"/></RectangleLabels></View>')
    rectangle = {"id": "r1", "type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": 64,
                 "original_height": 48, "value": {"x": 10, "y": 10, "width": 20, "height": 20}}
    click = {"id": "k1", "type": "keypointlabels", "from_name": "point", "to_name": "image", "is_positive": True,
             "original_width": 64, "original_height": 48, "value": {"x": 40, "y": 50, "keypointlabels": ["object"]}}
    image = {"image": "images/img1.png"}
    batch = predict_body([{"id": i, "data": image, "annotations": [{"result": [rectangle]}]} for i in range(3)], config)
    clicks = predict_body([{"id": 9, "data": image}], config, {"result": [click]})
    stop = threading.Event()
    replies: list = []

    def annotator(i: int) -> None:
        client = app.test_client()
        while not stop.is_set():
            replies.append(client.post("/predict", json=clicks if i % 2 else batch))

    assert app.test_client().post("/predict", json=clicks).status_code == 200  # v1 loaded
    loader.models["v1"].delay = 0.005  # its calls take a little time, so a swap lands during one
    threads = [threading.Thread(target=annotator, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for version in ("v2", "v3"):
        time.sleep(0.3)
        promote(root, version)
    deadline = time.time() + 5
    while time.time() < deadline and app.test_client().get("/health").json["model_version"] != "v3":
        time.sleep(0.05)
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert replies and [r.status_code for r in replies if r.status_code != 200] == []
    written = set()
    for reply in replies:
        for prediction in reply.json["results"]:
            texts = [item["value"]["text"][0] for item in prediction["result"] if item["type"] == "textarea"]
            assert texts and all(text.startswith(prediction["model_version"] + " ") for text in texts), prediction
            written.add(prediction["model_version"])
    assert written == {"v1", "v2", "v3"}
    backend_of(app).store.stop()
