"""Scenario 5: in a video task (label_config/video.xml), a box drawn on a frame other than the first becomes a
tracked region with a caption once the task's predictions are retrieved (the backend describes video tracks in
batch; interactive calls are for images). Why Playwright: see test_editor.py.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from dam_model.synthetic import generate_video
from lsf_editor import ROOT, open_task, region_rows, run_data_manager_action, screenshot
from ls_io.regions import group_regions

pytestmark = [pytest.mark.browser, pytest.mark.integration]

VIDEO_CONFIG = ROOT / "label_config" / "video.xml"
WIDTH, HEIGHT, FRAMES, RATE = 320, 240, 30, 25  # RATE = video.xml's framerate
BOX_FRAME = 10  # 1-based, as the editor counts


def write_webm(path: Path, frames: np.ndarray) -> None:
    """VP8 in WebM: Chromium plays it (not the lossless FFV1/Matroska of dam_tools.export_video), PyAV decodes it."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "10", "b:v": "1M"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def video_task(editor_stack):
    """A project with one 30-frame video of one moving shape, the backend connected; (project, task, mask at
    BOX_FRAME)."""
    video = generate_video(5, 0, num_frames=FRAMES, size=(WIDTH, HEIGHT), num_objects=1)
    path = editor_stack.run_dir / "media" / f"{video.scene_id}.webm"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_webm(path, video.frames)
    api = editor_stack.api
    project = api.create_project("Browser: video", VIDEO_CONFIG.read_text())
    (task,) = api.upload_files(project, [path])
    api.connect_ml_backend(project, editor_stack.backend.url, title="DAM captions", interactive=True)
    return project, task, np.asarray(video.objects[0].masks[BOX_FRAME - 1], dtype=bool)


def test_box_on_a_later_frame_becomes_a_captioned_track(page, editor_stack, video_task):
    project, task, mask = video_task
    url = editor_stack.ls.url
    open_task(page, url, project, task)
    page.locator(".lsf-frames-control").click()  # the frame counter turns into an input
    frame_input = page.locator(".lsf-frames-control input")
    frame_input.fill(str(BOX_FRAME))
    frame_input.press("Enter")
    assert page.locator(".lsf-frames-control").inner_text().split()[0] == str(BOX_FRAME)
    page.locator(".lsf-label", has_text="object").first.click()

    # The frame is drawn centred in the canvas, at most at its own size.
    canvas = page.locator(".konvajs-content").first.bounding_box()
    scale = min(1.0, canvas["width"] / WIDTH, canvas["height"] / HEIGHT)
    left = canvas["x"] + (canvas["width"] - WIDTH * scale) / 2
    top = canvas["y"] + (canvas["height"] - HEIGHT * scale) / 2
    ys, xs = np.nonzero(mask)
    page.mouse.move(left + (xs.min() - 3) * scale, top + (ys.min() - 3) * scale)
    page.mouse.down()
    page.mouse.move(left + (xs.max() + 4) * scale, top + (ys.max() + 4) * scale, steps=8)
    page.mouse.up()
    with page.expect_response(lambda r: f"/api/tasks/{task}/annotations" in r.url
                              and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Submit").click()
    (track,) = [r for r in answer.value.json()["result"] if r["type"] == "videorectangle"]
    first = track["value"]["sequence"][0]
    assert first["frame"] == BOX_FRAME and first["enabled"], track["value"]["sequence"]
    assert abs(first["x"] * WIDTH / 100 - (xs.min() - 3)) < 2, "the box is where it was drawn"

    # Opening the task (to draw) stored the backend's answer for a task without tracks, an empty prediction of the
    # current model version, and "Retrieve Predictions" skips such tasks: delete it first (README: For annotators).
    run_data_manager_action(page, url, project, [task], "Delete Predictions")
    run_data_manager_action(page, url, project, [task], "Retrieve Predictions")
    (prediction,) = editor_stack.api.predictions(task)
    regions = group_regions(prediction["result"])
    assert list(regions) == [track["id"]] and regions[track["id"]]["caption"].strip(), (
        f"prediction {prediction['result']}; backend log:\n{editor_stack.backend.log_tail()}")
    assert regions[track["id"]]["geometry"]["value"]["sequence"][0]["frame"] == BOX_FRAME

    open_task(page, url, project, task)
    page.get_by_text(prediction["model_version"]).first.click()  # the prediction's tab
    rows = region_rows(page)
    assert [row.captions for row in rows.values()] == [[regions[track["id"]]["caption"]]], rows
    page.locator(".lsf-frames-control").click()
    frame_input.fill(str(BOX_FRAME))
    frame_input.press("Enter")
    page.wait_for_timeout(500)  # the frame is painted
    screenshot(page, "5-video-track")
