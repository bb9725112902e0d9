"""What an annotator sees in Label Studio 1.23.2's editor with label_config/image.xml and the backend connected
(interactive), in headless Chromium.

Playwright (Python, sync API) rather than selenium: every locator action waits for its element to be attached,
visible and stable (a fixed pause only where the canvas repaints), the page's network traffic is an event stream (the
interactive-annotating replies and the `GET /projects/<id>/[object Object]` check read it directly), and it drives
Debian's own chromium binary over CDP, so there is no chromedriver whose version must match the browser's.

Scenarios (screenshots in runs/browser-artifacts/, see conftest.py):
1. a pre-annotated task: every region drawn, every caption readable in the region list without a click;
2. interactive: Auto-Annotation, the point tool, a click on a task without regions: mask + caption within 20 s
   (2 CPU cores, the tiny model answers in ~1 s); an Alt+click (negative) refines the mask before it is accepted;
3. a corrected caption, submitted: exactly one caption per region, the edited one, in Label Studio and in S3;
4. a failure (the image is gone when the backend fetches it): what the editor shows.
The video scenario is in test_video_editor.py.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import boto3
import numpy as np
import pytest
from PIL import Image

from dam_tools.provisioning import provision_project, synthetic_tasks
from lsf_editor import (ROOT, NetworkLog, click_for_suggestion, image_box, inner_point, open_task, page_point,
                        pick_auto_detect, region_row, region_rows, screenshot, select_point_label,
                        turn_on_auto_annotation)
from ls_io.regions import caption_text, group_regions
from ls_io.rle import decode_rle

pytestmark = [pytest.mark.browser, pytest.mark.integration]

IMAGE_CONFIG = ROOT / "label_config" / "image.xml"
WIDTH, HEIGHT = 320, 240
LABELS = ("object", "person", "animal", "vehicle")  # cycled over the regions: one colour per label in the editor
SUGGESTION_BOUND_S = 20.0  # click -> suggestion; measured ~1 s on 2 cores with the tiny model
PRE, INTERACTIVE, FAILURE = (0, 1), 2, 4  # synthetic-11-<index>: 2 has two large separate objects (1807, 1470 px)


@dataclass
class Task:
    id: int
    masks: list[np.ndarray]       # the synthetic objects' masks (also for the tasks imported without regions)
    captions: dict[str, str]      # region id -> caption of the backend's prediction (pre-annotated tasks)
    image_url: str = ""


@dataclass
class Project:
    id: int
    tasks: dict[int, Task]        # by synthetic index


@pytest.fixture(scope="module")
def project(editor_stack) -> Project:
    """Synthetic 320x240 images: two pre-annotated (brush regions labelled round-robin, captioned by "Retrieve
    predictions"), the others without regions."""
    config = IMAGE_CONFIG.read_text()
    tasks = synthetic_tasks(config, editor_stack.run_dir / "media", 5, seed=11, size=(WIDTH, HEIGHT))
    for task in tasks:
        for i, region in enumerate(task.regions):
            region["value"]["brushlabels"] = [LABELS[i % len(LABELS)]]
    pre = [tasks[i] for i in PRE]
    bare = [t.image_path for i, t in enumerate(tasks) if i not in PRE]
    info = provision_project(editor_stack.api, "Browser: image", config, pre, editor_stack.backend.url,
                             s3=editor_stack.s3, extra_task_files=bare)
    ids = dict(zip([*PRE, *(i for i in range(len(tasks)) if i not in PRE)], info.task_ids))
    editor_stack.api.retrieve_predictions(info.project_id, [ids[i] for i in PRE])
    out: dict[int, Task] = {}
    for index, task_id in ids.items():
        masks = [decode_rle(r["value"]["rle"], HEIGHT, WIDTH) > 127 for r in tasks[index].regions]
        captions: dict[str, str] = {}
        for prediction in editor_stack.api.predictions(task_id):
            if prediction["model_version"] == "synthetic-masks":  # uncaptioned: the editor must pre-fill from ours
                editor_stack.api.call("DELETE", f"/api/predictions/{prediction['id']}", expect=(200, 204))
            elif index in PRE:
                captions = {rid: r["caption"] for rid, r in group_regions(prediction["result"]).items()}
        if index in PRE:
            assert len(captions) == len(masks) and all(captions.values()), (
                f"task {task_id}: backend captions {captions}; log:\n{editor_stack.backend.log_tail()}")
        out[index] = Task(task_id, masks, captions, editor_stack.api.task(task_id)["data"]["image"])
    return Project(info.project_id, out)


def canvas_pixels(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator(".konvajs-content").first.screenshot())).convert("RGB"),
                      dtype=np.int16)


def captions_per_region(result: list[dict]) -> dict[str, list[str]]:
    """region id -> every caption text stored for it (the config allows exactly one)."""
    texts: dict[str, list[str]] = {}
    for item in result:
        if item.get("type") == "textarea":
            texts.setdefault(item["id"], []).extend((item.get("value") or {}).get("text") or [])
    return texts


# ------------------------------------------------------------------------------------------------ 1
def test_pre_annotated_task_shows_every_region_and_caption(page, editor_stack, project):
    task = project.tasks[PRE[0]]
    open_task(page, editor_stack.ls.url, project.id, task.id)

    rows = region_rows(page)
    assert len(rows) == len(task.captions), f"region list rows {sorted(rows)}, want {len(task.captions)} regions"
    shown = sorted(caption for row in rows.values() for caption in row.captions)
    assert shown == sorted(task.captions.values()), "every caption is readable in the region list, unclicked"
    assert all(len(row.captions) == 1 and row.add_fields == 0 for row in rows.values()), rows

    # Drawn: at a point inside each region the canvas changes when the regions are hidden.
    with_regions = canvas_pixels(page)
    page.get_by_role("button", name="Hide all regions").click()
    page.wait_for_timeout(300)  # one canvas redraw
    without = canvas_pixels(page)
    page.get_by_role("button", name="Show all regions").click()
    scale = with_regions.shape[1] / WIDTH
    for i, mask in enumerate(task.masks):
        x, y = inner_point(mask)
        px, py = int((x + 0.5) * scale), int((y + 0.5) * scale)
        change = np.abs(with_regions[py, px] - without[py, px]).sum()
        assert change > 30, f"region {i} is not drawn at ({x}, {y}): pixel change {change}"

    region_row(page, 1).locator(".lsf-outliner-item__title").click()  # selected: outlined on the canvas
    page.wait_for_timeout(300)
    screenshot(page, "1-pre-annotated-task")


# ------------------------------------------------------------------------------------------------ 2
def test_click_to_segment_makes_a_captioned_region(page, editor_stack, project):
    task = project.tasks[INTERACTIVE]
    network = NetworkLog().attach(page)
    open_task(page, editor_stack.ls.url, project.id, task.id)
    assert not region_rows(page), "the task starts without regions"
    turn_on_auto_annotation(page)
    pick_auto_detect(page)
    select_point_label(page, expect_selected=True)  # the config preselects the point's only label

    box = image_box(page, WIDTH, HEIGHT)
    first, second = sorted(task.masks, key=lambda m: -m.sum())[:2]
    a, b = inner_point(first), inner_point(second)
    b_other = inner_point(second, away_from=b)  # not on the point already there (that would select it)

    started = time.monotonic()
    reply_a = click_for_suggestion(page, *page_point(box, a, WIDTH, HEIGHT), timeout_s=SUGGESTION_BOUND_S)
    mask_a = suggested_mask(reply_a)
    page.get_by_test_id("bottombar-accept-suggestions-button").wait_for(timeout=5_000)
    suggestion_s = time.monotonic() - started
    assert iou(mask_a, first) > 0.8, f"the click's mask covers the clicked object: IoU {iou(mask_a, first):.2f}"
    screenshot(page, "2a-click-suggestion")

    # Label Studio drops the label after each region; Q (its hotkey) picks it again for the next click.
    select_point_label(page)
    both = suggested_mask(click_for_suggestion(page, *page_point(box, b, WIDTH, HEIGHT)))
    select_point_label(page)
    negative = click_for_suggestion(page, *page_point(box, b_other, WIDTH, HEIGHT), alt=True)
    prompts = json.loads(negative.request.post_data)["context"]["result"]
    assert [p.get("is_positive") for p in prompts] == [True, True, False], prompts
    refined = suggested_mask(negative)
    assert both.sum() > refined.sum() and iou(refined, first) > 0.8, "the negative click took the second object out"

    page.get_by_test_id("bottombar-accept-suggestions-button").click()
    rows = region_rows(page)
    assert len(rows) == 1 and len(rows[1].captions) == 1 and rows[1].captions[0].strip(), rows
    assert suggested_caption(negative) == rows[1].captions[0]
    print(f"click -> suggestion {suggestion_s:.1f} s (bound {SUGGESTION_BOUND_S:.0f} s)")
    screenshot(page, "2b-click-accepted")

    # `GET /projects/<id>/[object Object]`: Label Studio's on-canvas accept/reject buttons of a suggestion load
    # their icons with `img.src = <React component>` (SuggestionControls.jsx); it is no request of ours.
    odd = network.matching("[object")
    assert odd and all(kind == "image" and status == 404 for status, _, kind, _ in odd), odd
    page.get_by_test_id("bottombar-auto-accept-toggle").click()  # no suggestion drawn -> no such request
    before = len(odd)
    third = sorted(task.masks, key=lambda m: -m.sum())[2]
    select_point_label(page)
    click_for_suggestion(page, *page_point(box, inner_point(third), WIDTH, HEIGHT))
    page.wait_for_timeout(1000)
    assert len(network.matching("[object")) == before, "auto-accepted suggestions make no [object Object] request"
    assert len(region_rows(page)) == 2


def suggested_mask(reply) -> np.ndarray:
    brush = next(r for r in reply.json()["data"]["result"] if r["type"] == "brushlabels")
    return decode_rle(brush["value"]["rle"], brush["original_height"], brush["original_width"]) > 127


def suggested_caption(reply) -> str:
    return next(caption_text(r["value"]) for r in reply.json()["data"]["result"] if r["type"] == "textarea")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


# ------------------------------------------------------------------------------------------------ 3
CORRECTED = "a corrected caption typed in the region list"


def test_corrected_caption_replaces_the_old_one(page, editor_stack, project):
    task = project.tasks[PRE[1]]
    open_task(page, editor_stack.ls.url, project.id, task.id)
    field = region_row(page, 1).locator("[data-testid=textarea-region-textarea]")
    original = field.input_value()
    assert original in task.captions.values()
    field.click()
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type(CORRECTED)
    page.keyboard.press("Enter")  # commits the edit
    rows = region_rows(page)
    assert rows[1].captions == [CORRECTED] and rows[1].add_fields == 0, rows[1]
    screenshot(page, "3-corrected-caption")

    with page.expect_response(lambda r: f"/api/tasks/{task.id}/annotations" in r.url
                              and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Submit").click()
    assert answer.value.status == 201, answer.value.text()
    annotation_id = answer.value.json()["id"]
    want = {rid: [CORRECTED if text == original else text] for rid, text in task.captions.items()}
    stored = editor_stack.api.call("GET", f"/api/annotations/{annotation_id}")
    assert captions_per_region(stored["result"]) == want

    s3 = boto3.client("s3", endpoint_url=editor_stack.s3.endpoint, aws_access_key_id=editor_stack.s3.access_key,
                      aws_secret_access_key=editor_stack.s3.secret_key, region_name=editor_stack.s3.region)
    key = f"{editor_stack.s3.prefix}/{annotation_id}"
    exported = json.loads(s3.get_object(Bucket=editor_stack.s3.bucket, Key=key)["Body"].read())
    assert captions_per_region(exported["result"]) == want
    regions = group_regions(exported["result"])  # as the loop reads an export: brush geometry + its caption
    assert {rid: (r["geometry"]["type"], r["caption"]) for rid, r in regions.items()} == {
        rid: ("brushlabels", texts[0]) for rid, texts in want.items()}


# ------------------------------------------------------------------------------------------------ 4
@pytest.fixture(scope="module")
def failed_click(browser, signed_in_state, editor_stack, project) -> dict:
    """A click on a task whose image was deleted from Label Studio after the editor showed it."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, storage_state=signed_in_state)
    page = context.new_page()
    task = project.tasks[FAILURE]
    open_task(page, editor_stack.ls.url, project.id, task.id)
    editor_stack.upload_path(task.image_url).unlink()  # the browser has it; the backend will get 404
    turn_on_auto_annotation(page)
    pick_auto_detect(page)
    box = image_box(page, WIDTH, HEIGHT)
    reply = click_for_suggestion(page, *page_point(box, inner_point(task.masks[0]), WIDTH, HEIGHT))
    page.wait_for_timeout(2000)  # whatever the editor will show, it shows by then
    screenshot(page, "4-failure")
    outcome = {"reply": reply.json(), "text": page.locator("body").inner_text()}
    context.close()
    return outcome


def test_failure_reason_reaches_the_editor(failed_click):
    """The reply the editor gets names the reason (the backend puts it in the HTTP status line, issue 15)."""
    errors = failed_click["reply"].get("errors") or []
    assert any("could not be fetched" in e for e in errors), (
        f"interactive-annotating answered {failed_click['reply']}: without the issue-15 backend change Label "
        "Studio only relays the bare status line (e.g. '502 Server Error: BAD GATEWAY')")


# Label Studio 1.23.2 answers a failed interactive call with HTTP 200 {"errors": [...]}, and its editor keeps only
# response.data (DataManager.jsx, lsf:regionFinishedDrawing -> loadSuggestions): the annotator sees nothing.
EDITOR_DROPS_ERRORS = "Label Studio 1.23.2's editor drops the errors of interactive-annotating: nothing is shown"


def test_failure_reason_is_shown_in_the_editor(failed_click):
    if "could not be fetched" not in failed_click["text"]:
        pytest.xfail(EDITOR_DROPS_ERRORS)  # here, not as a mark: a broken setup must still be an error
