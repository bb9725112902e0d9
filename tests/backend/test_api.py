"""The ML-backend protocol through Flask's test client, on Label Studio 1.23's captured payloads."""
from __future__ import annotations

import base64
import copy
import json
import re
import time
import uuid

import numpy as np
import pytest

from backend.app import backend_of
from ls_io.rle import decode_rle, encode_rle
from ls_io.tracks import track_boxes, track_masks
from ls_io.video_io import video_bytes

from bk_helpers import (CAPTURED_CONFIG, Caption, IMAGE_CONFIG, RENAMED_CONFIG, VIDEO_CONFIG, load_payload, png_bytes,
                       predict_body, scene)

LEGACY = "e2e0123456789abcdef0123456789abcdef0123"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def square_mask(h=48, w=64, y=(10, 30), x=(8, 28)) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[y[0] : y[1], x[0] : x[1]] = 255
    return m


def brush_item(rid, mask, from_name="mask", to_name="image", label="object"):
    return {"id": rid, "from_name": from_name, "to_name": to_name, "type": "brushlabels",
            "original_width": mask.shape[1], "original_height": mask.shape[0], "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": [label]}}


def captured_interactive(config=CAPTURED_CONFIG):
    body = load_payload("captured_predict_request_interactive.json")["body"]
    body["label_config"] = config
    return body


@pytest.fixture
def ls_app(make_app, fake_ls):
    """An app whose Label Studio is a fake server holding the captured tasks' images (legacy token)."""
    ls = fake_ls(legacy_token=LEGACY)
    ls.files["/data/upload/1/f7b8c0b1-img1.png"] = png_bytes(scene())
    ls.files["/data/upload/1/131f93b7-img2.png"] = png_bytes(scene())
    ls.files["/data/local-files/?d=images/img1.png"] = png_bytes(scene())
    app = make_app(label_studio_url=ls.url, label_studio_api_key=LEGACY)
    return app, ls


# ------------------------------------------------------------------ health / setup
def test_health_and_root(client, fake_dam):
    for path in ("/", "/health"):
        r = client.get(path)
        assert r.status_code == 200 and r.json["status"] == "UP" and r.json["model_class"] == "DAMBackend"
    assert not fake_dam.calls


@pytest.mark.parametrize("config", [IMAGE_CONFIG, VIDEO_CONFIG, CAPTURED_CONFIG, RENAMED_CONFIG])
def test_setup_captured_request_is_fast_and_does_not_load(make_app, config):
    loads = []

    def slow_loader(src, dev, dt):
        loads.append(src)
        time.sleep(2.0)
        raise RuntimeError("never mind")

    client = make_app(loader=slow_loader).test_client()
    body = load_payload("captured_setup_request.json")["body"]
    body["schema"] = config
    start = time.perf_counter()
    r = client.post("/setup", json=body)
    assert time.perf_counter() - start < 1.0, "setup must never wait for the model"
    assert r.status_code == 200 and re.fullmatch(r"dam-[0-9a-f]{8}", r.json["model_version"])


@pytest.mark.parametrize("xml, missing", [
    ('<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i"/></View>', "TextArea"),
    ('<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i"/>'
     '<TextArea name="t" toName="i"/></View>', "perRegion"),
    ('<View><Text name="t" value="$text"/></View>', "<Image> or <Video>"),
    ('<View><Video name="v" value="$v"/><TextArea name="t" toName="v" perRegion="true"/></View>', "VideoRectangle"),
    ('<View><Image name="i"', "not valid XML"),
])
def test_setup_rejects_configs_naming_what_is_missing(client, xml, missing):
    r = client.post("/setup", json={"project": "1.1", "schema": xml})
    assert r.status_code == 422 and missing in r.json["error"]


@pytest.mark.parametrize("data, status", [(b"{not json", 400), (b"[1, 2]", 400), (b'{"project": 1}', 400)])
def test_setup_malformed(client, data, status):
    r = client.post("/setup", data=data, content_type="application/json")
    assert r.status_code == status and "error" in r.json


def test_setup_hostname_and_token_used_when_env_has_none(make_app, fake_ls):
    """Without LABEL_STUDIO_URL, /setup's hostname + access_token (the creator's legacy token) fetch the media."""
    ls = fake_ls(legacy_token=LEGACY)
    ls.files["/data/upload/1/f7b8c0b1-img1.png"] = png_bytes(scene())
    client = make_app().test_client()
    body = load_payload("captured_setup_request.json")["body"]
    body.update(schema=CAPTURED_CONFIG, hostname=ls.url, access_token=LEGACY)
    assert client.post("/setup", json=body).status_code == 200
    task = {"id": 1, "data": {"image": "/data/upload/1/f7b8c0b1-img1.png"},
            "annotations": [{"result": [brush_item("r1", square_mask())]}]}
    r = client.post("/predict", json=predict_body([task], CAPTURED_CONFIG))
    assert r.status_code == 200 and len(r.json["results"][0]["result"]) == 2
    assert ls.requests[-1]["auth"] == f"Token {LEGACY}"


# ------------------------------------------------------------------ batch
def test_captured_batch_without_regions_stores_no_prediction(ls_app, fake_dam):
    """Tasks with nothing to caption get [] (Label Studio stores no prediction), not an empty prediction of this
    version, which would make the next "Retrieve predictions" skip them once the annotator drew regions."""
    app, _ = ls_app
    body = load_payload("captured_predict_request_batch.json")["body"]
    body["label_config"] = CAPTURED_CONFIG
    r = app.test_client().post("/predict", json=body)
    assert r.status_code == 200
    assert r.json["results"] == [[], []] and r.json["failed"] == []
    assert not fake_dam.calls


def test_batch_captions_every_region_with_one_call_per_image(ls_app, fake_dam):
    app, ls = ls_app
    task = copy.deepcopy(load_payload("captured_predict_request_batch.json")["body"]["tasks"][0])
    ann = load_payload("annotation_request.json")
    ann["result"][0]["value"]["rle"] = encode_rle(square_mask())  # the capture trims the RLE
    ann["result"][1]["value"]["rle"] = ann["result"][0]["value"]["rle"]
    task["annotations"] = [ann]
    task["drafts"] = [{"result": [brush_item("draft_1", square_mask(y=(0, 5), x=(0, 5))),
                                  brush_item("elsewhere", square_mask(), to_name="another_image")]}]
    stored = load_payload("stored_prediction_task.json")
    stored["result"][0]["value"]["rle"] = encode_rle(square_mask(y=(40, 48), x=(50, 64)))
    task["predictions"] = [stored]
    r = app.test_client().post("/predict", json=predict_body([task], CAPTURED_CONFIG))
    assert r.status_code == 200, r.json
    result = r.json["results"][0]["result"]
    assert len(fake_dam.calls) == 1 and fake_dam.calls[0]["n"] == 3, "one batched describe per image"
    ids = [item["id"] for item in result]
    assert ids == ["ann_region_1", "ann_region_1", "draft_1", "draft_1", "stubr1", "stubr1"]
    types = [item["type"] for item in result]
    assert types == ["brushlabels", "textarea"] * 3, "geometry first, then its caption"
    assert result[1]["value"]["text"] == ["fake region of 400 px"]
    assert result[5]["value"]["text"] == ["fake region of 112 px"]
    version = r.json["results"][0]["model_version"]
    assert all(item["model_version"] == version for item in result)
    assert all(item["from_name"] == "caption" for item in result[1::2])
    assert 0 < r.json["results"][0]["score"] <= 1


def test_batch_one_broken_task_keeps_the_others(ls_app, fake_dam):
    app, ls = ls_app
    tasks = load_payload("captured_predict_request_batch.json")["body"]["tasks"]
    good = copy.deepcopy(tasks[0])
    good["annotations"] = [{"result": [brush_item("r1", square_mask())]}]
    broken = copy.deepcopy(tasks[1])
    broken["annotations"] = [{"result": [brush_item("r2", square_mask(h=10, w=10, y=(0, 2), x=(0, 2)))]}]
    missing = copy.deepcopy(tasks[1])
    missing["data"]["image"] = "/data/upload/1/nope.png"
    missing["annotations"] = [{"result": [brush_item("r3", square_mask())]}]
    r = app.test_client().post("/predict", json=predict_body([good, broken, missing], CAPTURED_CONFIG))
    assert r.status_code == 200
    res = r.json["results"]
    # Issue 15: a task that failed gets [] (Label Studio stores NO prediction, so it is retried), not {"result": []}.
    assert len(res) == 3 and len(res[0]["result"]) == 2 and res[1] == [] and res[2] == []
    assert [(f["task"], f["reason"]) for f in r.json["failed"]] == [(broken["id"], "bad_region"),
                                                                    (missing["id"], "media_not_found")]


@pytest.mark.parametrize("mutate, status, words", [
    (lambda t: t["annotations"][0]["result"][0]["value"].update(rle=[1, 2, 3]), 422, "RLE"),
    (lambda t: t["annotations"][0]["result"][0]["value"].update(rle=[0, 0, 48, 0, 57, 27, "x"]), 422, "RLE"),
    (lambda t: t["annotations"][0]["result"][0].update(original_width=32), 422, "32x48"),
    # Issue 15: the host answered "not there": the task's problem (422), not an upstream failure (502).
    (lambda t: t["data"].update(image="/data/upload/1/absent.png"), 422, "image could not be fetched: HTTP 404"),
    (lambda t: t.update(data="oops"), 400, "data"),
])
def test_single_task_errors_have_statuses(ls_app, mutate, status, words):
    app, _ = ls_app
    task = copy.deepcopy(load_payload("captured_predict_request_batch.json")["body"]["tasks"][0])
    task["annotations"] = [{"result": [brush_item("r1", square_mask())]}]
    mutate(task)
    r = app.test_client().post("/predict", json=predict_body([task], CAPTURED_CONFIG))
    assert r.status_code == status and words in r.json["error"], r.json
    assert "\n" not in r.json["error"]
    assert app.test_client().get("/health").status_code == 200  # still serving


@pytest.mark.parametrize("body", [{"tasks": "nope"}, {"tasks": [1]}, {"tasks": [{}], "label_config": 5},
                                  {"tasks": [{}], "params": {"context": [1]}}])
def test_predict_unknown_shapes(client, body):
    body.setdefault("label_config", IMAGE_CONFIG)
    assert client.post("/predict", json=body).status_code == 400


def test_oversized_media_is_413(make_app, fake_ls):
    ls = fake_ls(legacy_token=LEGACY)
    ls.files["/data/upload/1/big.png"] = png_bytes(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8))
    app = make_app(label_studio_url=ls.url, label_studio_api_key=LEGACY, media_max_bytes=10_000)
    task = {"id": 9, "data": {"image": "/data/upload/1/big.png"},
            "annotations": [{"result": [brush_item("r", square_mask(300, 300))]}]}
    r = app.test_client().post("/predict", json=predict_body([task], CAPTURED_CONFIG))
    assert r.status_code == 413 and "limit" in r.json["error"]


def test_no_region_auto_mode(make_app, fake_dam):
    app = make_app(no_region_mode="auto", auto_max_masks=2)
    task = {"id": 3, "data": {"image": "images/img1.png"}}
    r = app.test_client().post("/predict", json=predict_body([task]))
    assert r.status_code == 200
    result = r.json["results"][0]["result"]
    assert [i["type"] for i in result] == ["brushlabels", "textarea"] * 2
    assert fake_dam.calls[0]["n"] == 2
    for geo, text in zip(result[::2], result[1::2]):
        assert geo["id"] == text["id"] and uuid.UUID(geo["id"]).version == 4


# ------------------------------------------------------------------ interactive
def test_captured_interactive_keypoint_makes_mask_then_caption(ls_app, fake_dam, fake_seg):
    app, ls = ls_app
    r = app.test_client().post("/predict", json=captured_interactive())
    assert r.status_code == 200, r.json
    pred = r.json["results"][0]
    brush, text = pred["result"]
    assert brush["type"] == "brushlabels" and text["type"] == "textarea", "geometry must come first"
    assert brush["id"] == text["id"] and uuid.UUID(brush["id"]).version == 4
    assert (brush["from_name"], brush["to_name"], text["from_name"]) == ("mask", "image", "caption")
    assert brush["original_width"] == 64 and brush["original_height"] == 48 and brush["image_rotation"] == 0
    mask = decode_rle(brush["value"]["rle"], 48, 64)
    assert set(np.unique(mask)) == {0, 255}, "foreground must be 255 to be visible"
    assert mask[24, 16] == 255  # the click at 25 % x 50 % of 64x48
    assert fake_seg.calls[0]["points"] == [[16.0, 24.0]] and fake_seg.calls[0]["labels"] == [1]
    assert brush["value"]["brushlabels"] == ["object"]
    assert text["value"]["text"] == [f"fake region of {int((mask > 0).sum())} px"]
    assert brush["model_version"] == text["model_version"] == pred["model_version"]
    assert 0 < pred["score"] <= 1 and brush["score"] == pytest.approx(np.exp(-0.1) * 0.9, abs=1e-5)
    assert any(q["auth"] == f"Token {LEGACY}" for q in ls.requests), "the LS media needs the token"


def test_interactive_negative_and_positive_clicks_make_one_region(ls_app, fake_dam, fake_seg):
    app, _ = ls_app
    body = captured_interactive()
    pos = body["params"]["context"]["result"][0]
    neg = copy.deepcopy(pos)
    neg.update(id="kp_neg", is_positive=False, value={**pos["value"], "x": 30.0})
    body["params"]["context"]["result"].append(neg)
    r = app.test_client().post("/predict", json=body)
    assert r.status_code == 200
    assert len(r.json["results"][0]["result"]) == 2, "several prompts make one region"
    assert fake_seg.calls[-1]["labels"] == [1, 0]
    mask = decode_rle(r.json["results"][0]["result"][0]["value"]["rle"], 48, 64)
    assert mask[24, 19] == 0 and mask[24, 12] == 255, "the negative click removed its square"


def test_interactive_smart_rectangle_and_renamed_tags(make_app, fake_seg, fake_dam):
    app = make_app(category_hint=True)
    ctx = {"result": [{"original_width": 64, "original_height": 48, "image_rotation": 0, "id": "rect1",
                       "from_name": "bx", "to_name": "pic", "type": "rectanglelabels", "origin": "manual",
                       "value": {"x": 10, "y": 20, "width": 25, "height": 50, "rotation": 0, "rectanglelabels": ["cat"]}}]}
    task = {"id": 4, "data": {"photo": "images/img1.png"}, "annotations": [], "drafts": [], "predictions": []}
    r = app.test_client().post("/predict", json=predict_body([task], RENAMED_CONFIG, ctx))
    assert r.status_code == 200, r.json
    brush, text = r.json["results"][0]["result"]
    assert (brush["from_name"], brush["to_name"], text["from_name"]) == ("paint", "pic", "desc")
    assert brush["value"]["brushlabels"] == ["cat"]
    assert fake_seg.calls[0]["box"] == pytest.approx([6.4, 9.6, 22.4, 33.6])
    assert fake_dam.calls[0]["query"] == "<image>\nDescribe the masked region (a cat) in detail."


def test_interactive_brush_gets_a_caption_on_its_id(client, fake_dam):
    ctx = {"result": [brush_item("brush_9", square_mask())]}
    task = {"id": 5, "data": {"image": "images/img1.png"}}
    r = client.post("/predict", json=predict_body([task], IMAGE_CONFIG, ctx))
    assert r.status_code == 200
    brush, text = r.json["results"][0]["result"]
    assert brush["id"] == text["id"] == "brush_9" and text["value"]["text"] == ["fake region of 400 px"]
    assert brush["value"]["rle"] == encode_rle(square_mask())


# ------------------------------------------------------------------ video
def test_video_track_gets_a_caption(make_app, fake_dam, media_root, tmp_path):
    import av

    path = media_root / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            img = scene()
            frame = av.VideoFrame.from_ndarray(np.roll(img, i, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    track = {"id": "track_1", "from_name": "track", "to_name": "video", "type": "videorectangle",
             "value": {"framesCount": 12, "duration": 1.2, "labels": ["object"], "sequence": [
                 {"frame": 1, "x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0, "enabled": True, "time": 0.0},
                 {"frame": 10, "x": 20, "y": 20, "width": 30, "height": 40, "rotation": 0, "enabled": False, "time": 0.9}]}}
    task = {"id": 7, "data": {"video": "clip.mp4"}, "annotations": [{"result": [track]}]}
    for segmenter in ("fake", None):
        fake_dam.video_calls.clear()
        app = make_app(segmenter=segmenter)
        r = app.test_client().post("/predict", json=predict_body([task], VIDEO_CONFIG))
        assert r.status_code == 200, r.json
        geo, text = r.json["results"][0]["result"]
        assert geo["type"] == "videorectangle" and text["type"] == "textarea"
        assert geo["id"] == text["id"] == "track_1" and text["to_name"] == "video"
        assert fake_dam.video_calls and fake_dam.video_calls[0][0] == 8, "DAM video gets 8 sampled frames"


def test_video_track_is_read_with_label_studio_keyframe_rule(make_app, fake_dam, media_root):
    """Without a segmenter the masks are ls_io.tracks' boxes: held after the last enabled keyframe to the end of
    the clip, hidden after a disabled one (the backend once showed the last keyframe on its own frame only)."""
    clip = np.zeros((12, 48, 64, 3), np.uint8)
    clip[..., 0] = (np.arange(12) * 10)[:, None, None]  # frame i carries i * 10: the sampled indices can be read
    (media_root / "clip.mkv").write_bytes(video_bytes(clip))
    sequence = [{"frame": 1, "x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0, "enabled": True},
                {"frame": 4, "x": 40, "y": 20, "width": 30, "height": 40, "rotation": 30, "enabled": True}]
    seen = []
    fake_dam.describe_video = lambda frames, masks, **_: seen.append((frames, masks)) or Caption("v", -0.2)
    for track_sequence, last_frame in ((sequence, 12), (sequence + [{**sequence[1], "frame": 9, "enabled": False}], 9)):
        track = {"id": "t", "from_name": "track", "to_name": "video", "type": "videorectangle",
                 "value": {"framesCount": 12, "sequence": track_sequence}}
        task = {"id": 8, "data": {"video": "clip.mkv"}, "annotations": [{"result": [track]}]}
        r = make_app(segmenter=None).test_client().post("/predict", json=predict_body([task], VIDEO_CONFIG))
        assert r.status_code == 200, r.json
        frames, masks = seen.pop()
        indices = [int(f[0, 0, 0]) // 10 for f in frames]
        expected = track_masks(track_boxes(track_sequence, 12), 48, 64)
        assert max(indices) == last_frame - 1, indices
        assert all(np.array_equal(mask, expected[i]) for i, mask in zip(indices, masks))


# ------------------------------------------------------------------ auth, webhook, versions, metrics
def test_basic_auth_everywhere(make_app):
    client = make_app(basic_auth_user="ls", basic_auth_pass="s3cret").test_client()
    assert client.get("/health").status_code == 401
    assert client.get("/health", headers=basic("ls", "wrong")).status_code == 401
    assert client.get("/health", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert client.get("/health", headers=basic("ls", "s3cret")).status_code == 200
    assert client.post("/setup", json={"schema": IMAGE_CONFIG}).status_code == 401
    assert client.post("/predict", json={}).status_code == 401
    assert client.get("/metrics").status_code == 401
    r = client.post("/setup", json={"schema": IMAGE_CONFIG}, headers=basic("ls", "s3cret"))
    assert r.status_code == 200
    public = make_app(basic_auth_user="ls", basic_auth_pass="s3cret", health_public=True).test_client()
    assert public.get("/health").status_code == 200 and public.get("/versions").status_code == 401


def test_webhook_token_records_and_starts_training_out_of_process(make_app, tmp_path):
    marker = tmp_path / "trained.txt"
    cmd = f"python -c \"import time, pathlib; time.sleep(1.0); pathlib.Path(r'{marker}').write_text('ok')\""
    app = make_app(webhook_secret="hook-secret", basic_auth_user="ls", basic_auth_pass="pw", train_command=cmd)
    client = app.test_client()
    created = load_payload("captured_webhook_annotation_created.json")["body"]
    assert client.post("/webhook", json=created).status_code == 401, "no header, no token"
    assert client.post("/webhook?token=nope", json=created).status_code == 401
    r = client.post("/webhook?token=hook-secret", json=created)
    assert r.status_code == 201
    lines = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert lines[-1]["action"] == "ANNOTATION_CREATED" and lines[-1]["task"] == 1 and lines[-1]["annotation"] == 1
    start = time.perf_counter()
    r = client.post("/webhook?token=hook-secret", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert time.perf_counter() - start < 0.8 and r.json["training"]["status"] == "started"
    r2 = client.post("/webhook?token=hook-secret", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert r2.json["training"]["status"] == "already_running", "never two trainings at once"
    assert backend_of(app).jobs.wait(30) == 0 and marker.read_text() == "ok"
    assert client.post("/webhook?token=hook-secret", data=b"{", content_type="application/json").status_code == 400


def test_versions_and_metrics(ls_app):
    app, _ = ls_app
    client = app.test_client()
    client.post("/predict", json=captured_interactive())
    client.post("/predict", json={"tasks": "x"})
    versions = client.get("/versions").json
    assert versions["versions"][0] == versions["current"]
    text = client.get("/metrics").data.decode()
    assert 'dam_backend_requests_total{route="/predict",status="200"} 1' in text
    assert 'dam_backend_requests_total{route="/predict",status="400"} 1' in text
    assert re.search(r'dam_backend_request_seconds_bucket\{route="/predict",le="\+Inf"\} 2', text)
    assert f'dam_backend_model_info{{model_version="{versions["current"]}"}} 1' in text
    assert "dam_backend_model_load_seconds{" in text and "# TYPE dam_backend_request_seconds histogram" in text


def test_model_load_failure_is_503_and_worker_survives(make_app):
    def broken(src, dev, dt):
        raise FileNotFoundError("no weights here")

    client = make_app(loader=broken).test_client()
    task = {"id": 1, "data": {"image": "images/img1.png"}, "annotations": [{"result": [brush_item("r", square_mask())]}]}
    r = client.post("/predict", json=predict_body([task]))
    assert r.status_code == 503 and "no weights here" in r.json["error"]
    assert client.get("/health").json["last_error"]


# ------------------------------------------------------------------ the real (tiny, random) DAM
def test_tiny_random_dam_end_to_end(make_app, random_dam_dir):
    """Real DescribeAnythingModel (random weights) + the region-growing segmenter, interactive then batch."""
    from dam_model.segmentation import RegionGrowSegmenter

    from backend.model_store import default_loader

    app = make_app(loader=default_loader, dam_model=str(random_dam_dir), segmenter=RegionGrowSegmenter(),
                   max_new_tokens=6)
    client = app.test_client()
    body = predict_body([{"id": 3, "data": {"image": "images/img1.png"}}], CAPTURED_CONFIG,
                        {"result": [captured_interactive()["params"]["context"]["result"][0]]})
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.json
    brush, text = r.json["results"][0]["result"]
    mask = decode_rle(brush["value"]["rle"], 48, 64)
    assert (mask[10:30, 8:28] == 255).all() and mask.sum() == 400 * 255, "region growing found the red square"
    assert isinstance(text["value"]["text"][0], str) and 0 < r.json["results"][0]["score"] <= 1
    assert re.fullmatch(r"dam-[0-9a-f]{8}", brush["model_version"])
    task = {"id": 3, "data": {"image": "images/img1.png"}, "annotations": [{"result": [brush, text]}]}
    r = client.post("/predict", json=predict_body([task], CAPTURED_CONFIG))
    assert r.status_code == 200 and [i["type"] for i in r.json["results"][0]["result"]] == ["brushlabels", "textarea"]


def test_rectangle_only_config_captions_the_rectangle(make_app, fake_dam):
    config = """<View><Image name="img" value="$image"/>
      <RectangleLabels name="rect" toName="img" smart="true"><Label value="object"/></RectangleLabels>
      <TextArea name="txt" toName="img" perRegion="true"/></View>"""
    rect = {"id": "rect_7", "from_name": "rect", "to_name": "img", "type": "rectanglelabels", "original_width": 64,
            "original_height": 48, "value": {"x": 10, "y": 20, "width": 25, "height": 50, "rectanglelabels": ["object"]}}
    client = make_app().test_client()
    r = client.post("/predict", json=predict_body([{"id": 1, "data": {"image": "images/img1.png"}}], config,
                                                   {"result": [rect]}))
    assert r.status_code == 200, r.json
    geo, text = r.json["results"][0]["result"]
    assert geo["type"] == "rectanglelabels" and geo["id"] == text["id"] == "rect_7" and text["from_name"] == "txt"
    kp = {"id": "k", "from_name": "kp", "to_name": "img", "type": "keypointlabels", "is_positive": True,
          "value": {"x": 50, "y": 50, "keypointlabels": ["object"]}}
    r = client.post("/predict", json=predict_body([{"id": 1, "data": {"image": "images/img1.png"}}], config,
                                                   {"result": [kp]}))
    assert r.status_code == 422 and "BrushLabels" in r.json["error"]


def test_a_clicked_image_keeps_its_full_view_for_the_next_click(make_app):
    backend = backend_of(make_app())
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    writable = image.copy()
    image.setflags(write=False)  # as the decoded-image cache hands it out
    first = backend._shared_view(image, 16)
    assert backend._shared_view(image, 16) is first and backend._shared_view(image, 8).shape == (3, 8, 8)
    assert backend._shared_view(writable, 16) is not backend._shared_view(writable, 16)  # may change: not kept
    assert np.array_equal(first, backend._shared_view(writable, 16))
