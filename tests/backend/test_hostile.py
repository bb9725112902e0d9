"""Hostile input (issue 15): every case gets the right status and reason (or a correct answer), the reason is in
the HTTP status line (the only thing Label Studio shows the editor), no reply holds a traceback, /health stays up.

Cases are tables: /predict bodies, task media over HTTP, images as annotators' files, batch failures, interactive
prompts, video, /setup, /webhook, /train, other routes, and the ls_io decoders and fetcher directly.
"""
from __future__ import annotations

import functools
import io
import json
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import av
import numpy as np
import pytest
from PIL import Image

from dam_model.segmentation import MaskPrediction

from backend.bodies import json_depth, parse_json_object, status_line
from ls_io.errors import BadRequest, MediaRefused, MediaUndecodable, PayloadTooLarge, UpstreamError
from ls_io.media import MediaFetcher, decode_image
from ls_io.rle import encode_rle
from ls_io.video_io import decode_video, video_bytes

from bk_helpers import CAPTURED_CONFIG, VIDEO_CONFIG, png_bytes, predict_body, scene

LEGACY = "0123456789abcdef0123456789abcdef01234567"


# ------------------------------------------------------------------ building blocks
def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def square(h: int = 48, w: int = 64, y=(10, 30), x=(8, 28)) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y[0]:y[1], x[0]:x[1]] = 255
    return mask


def brush(rid: str, mask: np.ndarray) -> dict[str, Any]:
    return {"id": rid, "from_name": "mask", "to_name": "image", "type": "brushlabels",
            "original_width": int(mask.shape[1]), "original_height": int(mask.shape[0]), "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": ["object"]}}


def keypoint(x: float, y: float, positive: bool = True, rid: str = "kp") -> dict[str, Any]:
    return {"id": rid, "from_name": "point", "to_name": "image", "type": "keypointlabels", "is_positive": positive,
            "original_width": 64, "original_height": 48, "value": {"x": x, "y": y, "width": 1.0,
                                                                   "keypointlabels": ["object"]}}


def task(image: str = "images/img1.png", regions: list | None = None, tid: Any = 1) -> dict[str, Any]:
    return {"id": tid, "data": {"image": image}, "annotations": [{"result": regions or []}]}


def nested(depth: int) -> bytes:
    return b'{"tasks": ' + b"[" * depth + b"]" * depth + b"}"


@functools.lru_cache(maxsize=1)
def media_files() -> dict[str, bytes]:
    """Files under LOCAL_FILES_ROOT (task paths "files/<name>") as annotators really upload them."""
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    good_png = png_bytes(noisy)
    palette = Image.new("P", (64, 48), 0)
    palette.putpalette([0, 0, 0, 220, 30, 30] + [0] * 762)
    for yy in range(10, 30):
        for xx in range(8, 28):
            palette.putpixel((xx, yy), 1)
    frames = [Image.fromarray(scene()), Image.fromarray(np.zeros((48, 64, 3), np.uint8))]
    return {
        "exif6.jpg": png_bytes(scene(), exif_orientation=6),  # stored 64x48, shown upright as 48x64
        "cmyk.jpg": encode(Image.fromarray(scene()).convert("CMYK"), "JPEG"),
        "grey16.png": encode(Image.fromarray((scene()[:, :, 0].astype(np.uint16) * 257))),
        "palette.png": encode(palette, transparency=0),
        "anim.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "one.png": png_bytes(np.full((1, 1, 3), 128, np.uint8)),
        "truncated.png": good_png[: len(good_png) // 2],
        "text.png": b"this is not an image at all",
        "bomb.png": png_bytes(np.zeros((1000, 1000, 3), np.uint8)),
        "clip.mkv": video_bytes(np.stack([scene()] * 12)),
        "unknown_codec.mkv": video_bytes(np.stack([scene()] * 3)).replace(b"FFV1", b"ZZZ9"),
        "garbage.mp4": b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50,
    }


@pytest.fixture
def env(make_app, fake_ls, media_root, fake_dam, fake_seg):
    """A fake Label Studio (legacy token) with media, local files, and `app(**settings)` over the fakes."""
    ls = fake_ls(legacy_token=LEGACY)
    ls.files["/data/upload/1/ok.png"] = png_bytes(scene())
    ls.statuses["/data/upload/1/broken.png"] = 500
    ls.delays["/data/upload/1/slow.png"] = 1.5
    ls.files["/data/upload/1/slow.png"] = png_bytes(scene())
    (media_root / "files").mkdir()
    for name, data in media_files().items():
        (media_root / "files" / name).write_bytes(data)
    describe = fake_dam.describe

    def never_empty(image, masks, **kw):  # dam_model.focal raises on an empty mask: the backend must check first
        assert all(np.any(m) for m in masks), "an empty mask reached the model"
        return describe(image, masks, **kw)

    fake_dam.describe = never_empty

    def app(**overrides):
        overrides.setdefault("media_timeout", 0.5)
        return make_app(label_studio_url=ls.url, label_studio_api_key=LEGACY, **overrides)

    return type("Env", (), {"ls": ls, "app": staticmethod(app), "dam": fake_dam, "seg": fake_seg,
                            "root": media_root})


def check(client, reply, status: int, reason: str) -> None:
    """The status; for errors the one-line reason in the body AND the status line; never a traceback; /health up."""
    text = reply.get_data(as_text=True)
    assert reply.status_code == status, f"{reply.status}: {text[:400]}"
    assert "Traceback" not in text and 'File "' not in text
    if status >= 400:
        body = reply.get_json()
        assert isinstance(body, dict) and reason in body["error"], body
        assert "\n" not in body["error"] and body["reason"]
        assert reason in reply.status, f"the status line carries the reason: {reply.status!r}"
        assert reply.status.isascii() and len(reply.status) <= 160
    assert client.get("/health").status_code == 200, "the worker keeps serving"


# ------------------------------------------------------------------ /predict: the body itself
@dataclass
class Case:
    body: Callable[[], Any]  # bytes (raw) or a JSON-able object
    status: int
    reason: str
    settings: dict = field(default_factory=dict)


RECT_FAR = {"id": "b", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": 1e308, "y": 10, "width": 10, "height": 10, "rectanglelabels": ["object"]}}
RECT_TURNED = {**RECT_FAR, "value": {**RECT_FAR["value"], "x": 10, "rotation": "quarter"}}
BODY_CASES = {
    "5000_deep": Case(lambda: nested(5000), 400, "nests 5001 levels deep"),
    "65_deep_inside_a_task": Case(lambda: json.dumps(predict_body([{"id": 1, "data": {"x": json.loads(
        "[" * 64 + "]" * 64)}}], CAPTURED_CONFIG)).encode(), 400, "over the limit of 64"),
    "not_json": Case(lambda: b"{tasks: [", 400, "not valid JSON"),
    "json_array": Case(lambda: b"[1, 2]", 400, "must be a JSON object"),
    "empty_body": Case(lambda: b"", 400, "body is empty"),
    "invalid_utf8": Case(lambda: b'{"tasks": ["\xff\xfe"]}', 400, "not valid JSON"),
    "int_of_5000_digits": Case(lambda: b'{"tasks": [' + b"7" * 5000 + b"]}", 400, "not valid JSON"),
    "tasks_not_a_list": Case(lambda: {"tasks": {"id": 1}, "label_config": CAPTURED_CONFIG}, 400, "'tasks' (a list)"),
    "tasks_over_the_limit": Case(lambda: predict_body([task(tid=i) for i in range(4)], CAPTURED_CONFIG), 400,
                                 "MAX_TASKS_PER_REQUEST", {"max_tasks_per_request": 3}),
    "context_over_the_limit": Case(lambda: predict_body([task()], CAPTURED_CONFIG,
                                                        {"result": [keypoint(10, 10)] * 6}), 400,
                                   "MAX_CONTEXT_REGIONS", {"max_context_regions": 5}),
    "body_over_the_byte_limit": Case(lambda: predict_body([task(regions=[brush("r", square())])] * 50,
                                                          CAPTURED_CONFIG), 413, "MAX_REQUEST_BYTES",
                                     {"max_request_bytes": 20_000}),
    "label_config_not_xml": Case(lambda: predict_body([task()], "<View><Image"), 422, "not valid XML"),
    "unknown_model_version": Case(lambda: {**predict_body([task()], CAPTURED_CONFIG), "model_version": "dam-gone"},
                                  404, "model version dam-gone is not served"),
    "keypoint_x_not_a_number": Case(lambda: predict_body([task()], CAPTURED_CONFIG,
                                                         {"result": [{**keypoint(1, 1), "value": {"x": "left",
                                                                                                  "y": 3}}]}),
                                    400, "numeric"),
    # found by mutating the captured payloads' leaves (each was a 500 before):
    "rectangle_x_1e308": Case(lambda: predict_body([task()], CAPTURED_CONFIG, {"result": [RECT_FAR]}), 400,
                              "non-finite or empty geometry"),
    "rectangle_rotation_a_word": Case(lambda: predict_body([task()], CAPTURED_CONFIG, {"result": [RECT_TURNED]}),
                                      400, "numeric rotation"),
    "image_path_5000_chars": Case(lambda: predict_body([task("x" * 5000, [brush("r", square())])], CAPTURED_CONFIG),
                                  400, "local media path is not usable"),
    "image_path_with_nul": Case(lambda: predict_body([task("files/a\x00.png", [brush("r", square())])],
                                                     CAPTURED_CONFIG), 400, "local media path is not usable"),
}


@pytest.mark.parametrize("name", sorted(BODY_CASES))
def test_predict_body(env, name):
    case = BODY_CASES[name]
    client = env.app(**case.settings).test_client()
    body = case.body()
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    check(client, client.post("/predict", data=raw, content_type="application/json"), case.status, case.reason)


# ------------------------------------------------------------------ /predict: one task's media
MEDIA_CASES = {
    "http_404": ("/data/upload/1/absent.png", {}, 422, "image could not be fetched: HTTP 404"),
    "http_500": ("/data/upload/1/broken.png", {}, 502, "image could not be fetched: HTTP 500"),
    "timeout": ("/data/upload/1/slow.png", {}, 504, "image could not be fetched: timed out"),
    "connection_refused": ("http://127.0.0.1:9/x.png", {"media_allow_private": True}, 502, "unreachable"),
    "private_address": ("http://127.0.0.1:9/x.png", {}, 403, "media URL refused: private address"),
    "outside_allow_list": ("http://example.org/x.png", {"media_allowed_hosts": "cdn.example.com"}, 403,
                           "not in MEDIA_ALLOWED_HOSTS"),
    "path_outside_root": ("../../etc/passwd", {}, 403, "outside LOCAL_FILES_ROOT"),
    "local_file_missing": ("files/nope.png", {}, 422, "local file nope.png not found"),
    "unsupported_scheme": ("ftp://example.org/x.png", {}, 400, "unsupported media URL scheme"),
    "bytes_over_limit": ("files/bomb.png", {"media_max_bytes": 1000}, 413, "byte limit"),
    "decompression_bomb": ("files/bomb.png", {"media_max_pixels": 100_000}, 413, "pixel limit"),
    "truncated_png": ("files/truncated.png", {}, 422, "image could not be decoded"),
    "not_an_image": ("files/text.png", {}, 422, "image could not be decoded"),
}


@pytest.mark.parametrize("name", sorted(MEDIA_CASES))
def test_predict_task_media(env, name):
    url, settings, status, reason = MEDIA_CASES[name]
    client = env.app(**settings).test_client()
    reply = client.post("/predict", json=predict_body([task(url, [brush("r", square())])], CAPTURED_CONFIG))
    check(client, reply, status, reason)
    assert LEGACY not in reply.get_data(as_text=True)


# ------------------------------------------------------------------ images as annotators' files: correct answers
IMAGE_CASES = {  # file -> (stored size of the region the editor made (w, h), what the model must see (h, w))
    "exif_rotated_phone_photo": ("exif6.jpg", (48, 64), (64, 48)),
    "cmyk_jpeg": ("cmyk.jpg", (64, 48), (48, 64)),
    "grey_16_bit": ("grey16.png", (64, 48), (48, 64)),
    "palette_with_transparency": ("palette.png", (64, 48), (48, 64)),
    "animated_gif": ("anim.gif", (64, 48), (48, 64)),
    "one_pixel": ("one.png", (1, 1), (1, 1)),
}


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_images_as_annotators_files(env, name):
    path, (width, height), shape = IMAGE_CASES[name]
    client = env.app().test_client()
    mask = np.full((height, width), 255, np.uint8)
    reply = client.post("/predict", json=predict_body([task(f"files/{path}", [brush("r", mask)])], CAPTURED_CONFIG))
    check(client, reply, 200, "")
    assert [i["type"] for i in reply.json["results"][0]["result"]] == ["brushlabels", "textarea"]
    assert env.dam.calls[-1]["shape"] == shape + (3,), "masks are read on the image as the editor shows it"


def test_exif_photo_region_in_stored_orientation_is_refused_with_sizes(env):
    client = env.app().test_client()
    reply = client.post("/predict", json=predict_body([task("files/exif6.jpg", [brush("r", square())])],
                                                      CAPTURED_CONFIG))
    check(client, reply, 422, "is 64x48 but the image is 48x64")


# ------------------------------------------------------------------ batch: failures stay visible and retryable
def metric(client, name: str, reason: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(f'{name}{{reason="{reason}"}} '):
            return float(line.split()[-1])
    return 0.0


def test_batch_failed_task_gets_no_prediction_and_is_logged_and_counted(env, caplog):
    client = env.app().test_client()
    tasks = [task("/data/upload/1/ok.png", [brush("a", square())], tid=1),
             task("/data/upload/1/absent.png", [brush("b", square())], tid=2),
             task("files/text.png", [brush("c", square())], tid=3)]
    reply = client.post("/predict", json=predict_body(tasks, CAPTURED_CONFIG))
    check(client, reply, 200, "")
    results = reply.json["results"]
    assert len(results) == 3 and len(results[0]["result"]) == 2 and results[1] == [] and results[2] == []
    assert reply.json["failed"] == [
        {"task": 2, "reason": "media_not_found", "error": "image could not be fetched: HTTP 404 (127.0.0.1:"
         + env.ls.url.rsplit(":", 1)[1] + ")"},
        {"task": 3, "reason": "media_undecodable", "error": reply.json["failed"][1]["error"]}]
    lines = [r.getMessage() for r in caplog.records if "no prediction" in r.getMessage()]
    assert lines == [f"task 2: no prediction (media_not_found): {reply.json['failed'][0]['error']}",
                     f"task 3: no prediction (media_undecodable): {reply.json['failed'][1]['error']}"]
    assert metric(client, "dam_backend_failed_tasks_total", "media_not_found") == 1
    assert metric(client, "dam_backend_failed_tasks_total", "media_undecodable") == 1
    assert metric(client, "dam_backend_failed_tasks_total", "media_refused") == 0, "every reason is exported"


def test_batch_empty_brush_region_is_skipped_and_the_task_keeps_the_others(env):
    client = env.app().test_client()
    empty = np.zeros((48, 64), np.uint8)
    tasks = [task(regions=[brush("empty", empty), brush("full", square())], tid=1),
             task(regions=[brush("only_empty", empty)], tid=2)]
    reply = client.post("/predict", json=predict_body(tasks, CAPTURED_CONFIG))
    check(client, reply, 200, "")
    assert [i["id"] for i in reply.json["results"][0]["result"]] == ["full", "full"]
    assert reply.json["results"][1] == [] and reply.json["failed"][0]["reason"] == "empty_mask"
    assert metric(client, "dam_backend_skipped_regions_total", "empty_mask") == 2


def test_batch_model_value_error_fails_the_task_not_the_request(env):
    client = env.app().test_client()

    def picky(image, masks, **_):
        raise ValueError("mask size 3x3 differs from image size 64x48")

    env.dam.describe = picky
    reply = client.post("/predict", json=predict_body([task(tid=1, regions=[brush("r", square())]),
                                                       task(tid=2, regions=[brush("s", square())])],
                                                      CAPTURED_CONFIG))
    check(client, reply, 200, "")
    assert reply.json["results"] == [[], []] and {f["reason"] for f in reply.json["failed"]} == {"model_error"}
    single = client.post("/predict", json=predict_body([task(regions=[brush("r", square())])], CAPTURED_CONFIG))
    check(client, single, 422, "could not describe")


def test_busy_worker_answers_503_with_retry_after(env):
    app = env.app(max_batch_requests=1, retry_after_seconds=7)
    env.dam.delay = 1.0
    first: dict[str, Any] = {}
    body = predict_body([task(regions=[brush("r", square())])], CAPTURED_CONFIG)
    worker = threading.Thread(target=lambda: first.update(r=app.test_client().post("/predict", json=body)))
    worker.start()
    deadline = time.time() + 5
    while not env.dam.calls and time.time() < deadline:
        time.sleep(0.02)
    client = app.test_client()
    busy = client.post("/predict", json=body)
    check(client, busy, 503, "busy with 1 batch requests")
    assert busy.headers["Retry-After"] == "7" and busy.json["reason"] == "overloaded"
    interactive = client.post("/predict", json=predict_body([task()], CAPTURED_CONFIG, {"result": [keypoint(25, 50)]}))
    assert interactive.status_code == 200, "an annotator's click is never turned away"
    worker.join(10)
    assert first["r"].status_code == 200


def test_model_that_cannot_load_is_503_with_retry_after(env):
    def broken(src, dev, dt):
        raise FileNotFoundError("no weights in /models/v9")

    client = env.app(loader=broken).test_client()
    reply = client.post("/predict", json=predict_body([task(regions=[brush("r", square())])], CAPTURED_CONFIG))
    check(client, reply, 503, "failed to load")
    assert reply.headers["Retry-After"] == "30"


# ------------------------------------------------------------------ interactive: the annotator reads why
INTERACTIVE_CASES = {
    "only_negative_click": ([keypoint(25, 50, positive=False)], {}, 422,
                            "only negative clicks: add a positive point"),
    "positive_and_negative_on_one_spot": ([keypoint(25, 50), keypoint(25, 50, positive=False, rid="n")], {}, 422,
                                          "the clicks selected no pixels: add a positive point"),
    "empty_brush_drawn": ([brush("drawn", np.zeros((48, 64), np.uint8))], {}, 422, "has no pixels"),
    "rectangle_of_no_area": ([{"id": "b", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
                               "value": {"x": 10, "y": 10, "width": 0, "height": 0, "rectanglelabels": ["object"]}}],
                             {"segmenter": None}, 400, "empty geometry"),
    "rectangle_off_the_image": ([{"id": "b", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
                              "value": {"x": 120, "y": 10, "width": 10, "height": 10,
                                        "rectanglelabels": ["object"]}}],
                            {"segmenter": None}, 422, "the rectangle selected no pixels"),
    "keypoint_without_segmenter": ([keypoint(25, 50)], {"segmenter": None}, 422, "need a segmenter"),
}


@pytest.mark.parametrize("name", sorted(INTERACTIVE_CASES))
def test_interactive_refusals_name_the_reason(env, name):
    context, settings, status, reason = INTERACTIVE_CASES[name]
    client = env.app(**settings).test_client()
    config = CAPTURED_CONFIG.replace("</View>", '<RectangleLabels name="box" toName="image" smart="true">'
                                                '<Label value="object"/></RectangleLabels></View>')
    reply = client.post("/predict", json=predict_body([task()], config, {"result": context}))
    check(client, reply, status, reason)
    assert not env.dam.calls, "the model is never reached with nothing to describe"


def test_interactive_media_error_and_model_error_reach_the_status_line(env):
    client = env.app().test_client()
    reply = client.post("/predict", json=predict_body([task("/data/upload/1/absent.png")], CAPTURED_CONFIG,
                                                      {"result": [keypoint(25, 50)]}))
    check(client, reply, 422, "image could not be fetched: HTTP 404")
    assert reply.status.startswith("422 image could not be fetched: HTTP 404")

    def broken(image, masks, **_):
        raise ValueError("mask is empty (no foreground pixel): nothing to describe")

    env.dam.describe = broken
    reply = client.post("/predict", json=predict_body([task()], CAPTURED_CONFIG, {"result": [keypoint(25, 50)]}))
    check(client, reply, 422, "the model could not describe the region")


def test_smart_rectangle_with_an_empty_segmenter_mask_is_the_rectangle(env):
    class Blind:
        def predict(self, image, **_):
            return MaskPrediction(mask=np.zeros(image.shape[:2], bool), score=0.1, logits=np.zeros((1, 4, 4)))

    client = env.app(segmenter=Blind()).test_client()
    rect = {"id": "b", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": 25, "y": 25, "width": 50, "height": 50, "rectanglelabels": ["object"]}}
    config = CAPTURED_CONFIG.replace("</View>", '<RectangleLabels name="box" toName="image" smart="true">'
                                                '<Label value="object"/></RectangleLabels></View>')
    reply = client.post("/predict", json=predict_body([task()], config, {"result": [rect]}))
    check(client, reply, 200, "")
    assert env.dam.calls[-1]["n"] == 1


# ------------------------------------------------------------------ video
def video_task(path: str, sequence: list[dict], frames_count: int = 12) -> dict[str, Any]:
    track = {"id": "t1", "from_name": "track", "to_name": "video", "type": "videorectangle",
             "value": {"framesCount": frames_count, "sequence": sequence, "labels": ["object"]}}
    return {"id": 7, "data": {"video": path}, "annotations": [{"result": [track]}]}


KEY = {"frame": 1, "x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0, "enabled": True}
VIDEO_CASES = {
    "codec_pyav_cannot_decode": ("files/unknown_codec.mkv", [KEY], 12, 422, "no decoder for its codec"),
    "not_a_video": ("files/garbage.mp4", [KEY], 12, 422, "video could not be decoded"),
    "keyframes_past_the_end": ("files/clip.mkv", [{**KEY, "frame": 500}], 600, 422, "empty on every frame"),
    "video_404": ("/data/upload/1/absent.mp4", [KEY], 12, 422, "video could not be fetched: HTTP 404"),
    "track_without_keyframes": ("files/clip.mkv", [], 12, 422, "has no sequence"),
    "sequence_not_a_list": ("files/clip.mkv", -1, 12, 422, "has no sequence"),
}


@pytest.mark.parametrize("name", sorted(VIDEO_CASES))
def test_video_failures(env, name):
    path, sequence, frames_count, status, reason = VIDEO_CASES[name]
    client = env.app().test_client()
    reply = client.post("/predict", json=predict_body([video_task(path, sequence, frames_count)], VIDEO_CONFIG))
    check(client, reply, status, reason)


def test_video_interactive_is_refused_with_a_reason(env):
    client = env.app().test_client()
    reply = client.post("/predict", json=predict_body([video_task("files/clip.mkv", [KEY])], VIDEO_CONFIG,
                                                      {"result": [keypoint(1, 1)]}))
    check(client, reply, 422, "interactive prompts are for images")


# ------------------------------------------------------------------ /setup, /webhook, /train, other routes
ROUTE_CASES = {
    "setup_without_schema": ("/setup", {"project": "1.1"}, 400, "needs 'schema'"),
    "setup_schema_a_number": ("/setup", {"schema": 5}, 400, "needs 'schema'"),
    "setup_schema_not_xml": ("/setup", {"schema": "<View"}, 422, "not valid XML"),
    "setup_5000_deep": ("/setup", nested(5000), 400, "levels deep"),
    "setup_not_json": ("/setup", b"\x00\x01", 400, "not valid JSON"),
    "webhook_without_action": ("/webhook", {"project": {"id": 1}}, 400, "needs 'action'"),
    "webhook_action_a_list": ("/webhook", {"action": ["START_TRAINING"]}, 400, "needs 'action'"),
    "webhook_5000_deep": ("/webhook", nested(5000), 400, "levels deep"),
    "webhook_training_command_missing": ("/webhook", {"action": "START_TRAINING", "project": {"id": 1}}, 503,
                                         "training could not start"),
    "train_annotations_not_a_list": ("/train", {"annotations": {"a": 1}}, 400, "must be a list"),
    "train_not_json": ("/train", b"{", 400, "not valid JSON"),
    "train_5000_deep": ("/train", nested(5000), 400, "levels deep"),
}


@pytest.mark.parametrize("name", sorted(ROUTE_CASES))
def test_routes(env, name):
    path, body, status, reason = ROUTE_CASES[name]
    client = env.app(train_command="/nonexistent/train-command --now").test_client()
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    check(client, client.post(path, data=raw, content_type="application/json"), status, reason)


def test_setup_and_train_accept_what_label_studio_sends(env, tmp_path):
    client = env.app(train_command="python -c pass").test_client()
    reply = client.post("/setup", json={"project": "1.1", "schema": CAPTURED_CONFIG, "hostname": 5,
                                        "access_token": None, "extra_params": "x"})
    check(client, reply, 200, "")
    reply = client.post("/train", json={"annotations": [], "project": "1.1", "label_config": CAPTURED_CONFIG})
    check(client, reply, 201, "")
    assert reply.json["training"]["status"] in {"started", "already_running"}


@pytest.mark.parametrize("method, path, status", [("GET", "/nope", 404), ("GET", "/predict", 405),
                                                  ("DELETE", "/setup", 405)])
def test_unknown_routes_answer_json(env, method, path, status):
    client = env.app().test_client()
    check(client, client.open(path, method=method), status, "")


# ------------------------------------------------------------------ bodies and status lines, directly
def test_status_line_is_one_printable_ascii_line_of_bounded_length():
    assert status_line(422, "image could not be fetched: HTTP 404 (ls:8080)") == \
        "422 image could not be fetched: HTTP 404 (ls:8080)"
    line = status_line(422, "caf\u00e9 \r\n region\x00 " + "y" * 300)
    assert line.startswith("422 caf? region y") and line.endswith("...") and len(line) == 154 and line.isprintable()
    assert status_line(500, "") == "500 Internal Server Error" and status_line(599, "\n") == "599 Error"


def test_json_depth_ignores_brackets_inside_strings():
    assert json_depth(b'{"caption": "[[[{{{ \\" ]]]"}') == 1 and json_depth(b"[]") == 1 and json_depth(b"7") == 0
    assert json_depth(b'[["\\\\"], "]", [[[]]]]') == 4
    with pytest.raises(BadRequest, match="nests 70 levels"):
        parse_json_object(b"[" * 70 + b"]" * 70, 64)


# ------------------------------------------------------------------ the ls_io decoders and fetcher, directly
def test_decoders_read_images_as_the_editor_shows_them():
    files = media_files()
    grey = decode_image(files["grey16.png"], 10**6)
    assert grey[20, 20, 0] == 220 and grey[0, 0, 0] == 200, "16-bit samples are scaled, not clipped to white"
    pal = decode_image(files["palette.png"], 10**6)
    assert tuple(pal[0, 0]) == (255, 255, 255) and tuple(pal[20, 20]) == (220, 30, 30), "transparent over white"
    gif = decode_image(files["anim.gif"], 10**6)
    assert gif[20, 20, 0] > 150, "the first frame of an animation"
    cmyk = decode_image(files["cmyk.jpg"], 10**6)
    assert abs(int(cmyk[20, 20, 0]) - 220) < 20 and int(cmyk[20, 20, 1]) < 60
    assert decode_image(files["exif6.jpg"], 10**6).shape == (64, 48, 3)
    assert decode_image(files["one.png"], 10**6).shape == (1, 1, 3)
    broken_exif = files["exif6.jpg"].replace(b"Exif\x00\x00", b"Exif\x00\x00\xff\xff", 1)
    assert decode_image(broken_exif, 10**6).ndim == 3, "an unreadable EXIF block is ignored, as browsers do"


@pytest.mark.parametrize("name, error, status", [("truncated.png", MediaUndecodable, 422),
                                                 ("text.png", MediaUndecodable, 422),
                                                 ("bomb.png", PayloadTooLarge, 413)])
def test_decoders_refuse_with_a_status(name, error, status):
    with pytest.raises(error) as raised:
        decode_image(media_files()[name], 100_000)
    assert raised.value.status == status


def test_video_decoder_lays_variable_frame_rate_on_label_studio_timeline(tmp_path):
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "bgr0"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, ms in enumerate([0, 100, 150, 500]):  # a phone's variable frame times
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), i * 50, np.uint8), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert [int(f[0, 0, 0]) for f in decode_video(path)] == [0, 50, 100, 150], "decode order"
    assert [int(f[0, 0, 0]) for f in decode_video(path, frame_rate=10)] == [0, 50, 100, 100, 100, 150], \
        "Label Studio's frame f is what plays at (f - 1) / frameRate"
    (tmp_path / "cfr.mkv").write_bytes(video_bytes(np.stack([np.full((8, 8, 3), i, np.uint8) for i in range(12)])))
    assert [int(f[0, 0, 0]) for f in decode_video(tmp_path / "cfr.mkv", frame_rate=25)] == list(range(12))


def test_fetcher_errors_never_carry_credentials_or_queries(make_settings, fake_ls):
    other = fake_ls()
    settings = make_settings(media_allow_private=True, media_cache_dir="")
    fetcher = MediaFetcher(settings)
    port = other.url.rsplit(":", 1)[1]
    with pytest.raises(Exception) as raised:
        fetcher.fetch_bytes(f"http://alice:hunter2@127.0.0.1:{port}/x.png?X-Amz-Signature=s3cr3t")
    assert raised.value.status == 422 and "HTTP 404" in str(raised.value)
    assert "hunter2" not in str(raised.value) and "s3cr3t" not in str(raised.value)
    refusing = MediaFetcher(make_settings(media_cache_dir=""))
    with pytest.raises(MediaRefused):
        refusing.fetch_bytes(f"http://127.0.0.1:{port}/x.png")
    with pytest.raises(UpstreamError):
        MediaFetcher(make_settings(media_allow_private=True, media_timeout=0.5)).fetch_bytes("http://127.0.0.1:9/a")


# ------------------------------------------------------------------ every leaf of the real shapes, mutated
WEIRD_LEAVES = [None, -1, 1e308, "x" * 300, [], {"a": [1]}]
TRACK = {"id": "t1", "from_name": "track", "to_name": "video", "type": "videorectangle",
         "value": {"framesCount": 12, "sequence": [KEY]}}
RECT_CONFIG = CAPTURED_CONFIG.replace("</View>", '<RectangleLabels name="box" toName="image" smart="true">'
                                                 '<Label value="object"/></RectangleLabels></View>')
SHAPES = {
    "batch": lambda: predict_body([task(regions=[brush("r1", square()), {**RECT_FAR, "value": {
        **RECT_FAR["value"], "x": 10, "rotation": 0}}])], RECT_CONFIG),
    "interactive": lambda: predict_body([task()], RECT_CONFIG, {"result": [keypoint(25, 50), brush("r1", square())]}),
    "video": lambda: predict_body([{"id": 7, "data": {"video": "files/clip.mkv"}, "annotations": [{"result": [TRACK]}]}],
                                  VIDEO_CONFIG),
}


def leaf_paths(obj, path=()):
    """Every key/index path of a JSON value (lists: their first 2 items; the RLE's numbers are not walked)."""
    if path:
        yield path
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key not in {"rle", "label_config"}:
                yield from leaf_paths(value, path + (key,))
    elif isinstance(obj, list):
        for index, value in enumerate(obj[:2]):
            yield from leaf_paths(value, path + (index,))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_no_mutated_leaf_of_a_real_payload_gives_a_500(env, shape):
    """Each value of a real payload replaced by each odd value: an answer (any status below 500, or 503), never a
    500, never a traceback. This is how the 1e308 rectangle, the non-list sequence and the long path were found."""
    client = env.app().test_client()
    failures = []
    for path in leaf_paths(SHAPES[shape]()):
        for weird in WEIRD_LEAVES:
            body = SHAPES[shape]()
            target = body
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = weird
            reply = client.post("/predict", json=body)
            if reply.status_code >= 500 or "Traceback" in reply.get_data(as_text=True):
                failures.append((path, repr(weird)[:20], reply.status_code, reply.get_json()))
    assert not failures, failures[:5]
    assert client.get("/health").status_code == 200
