"""The Label Studio 1.23 editor (LSF) and data manager as an annotator uses them, for the browser tests.

Selectors are Label Studio's own data-testid / aria-label where it has them, else its BEM class names (`lsf-...`);
each helper waits for what the annotator would wait for (Playwright auto-waits on every locator action).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from playwright.sync_api import Page, Response

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "runs" / "browser-artifacts"
OUTLINER = ".lsf-outliner"


def log_in(page: Page, url: str, username: str, password: str) -> None:
    page.goto(f"{url}/user/login/")
    page.fill("input[name=email]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url and url.startswith("http"), timeout=60_000)


def open_task(page: Page, url: str, project_id: int, task_id: int) -> None:
    """The task in the labeling view, once its object (image canvas or video frame counter) is drawn."""
    page.goto(f"{url}/projects/{project_id}/data?task={task_id}")
    page.locator(OUTLINER).wait_for(timeout=60_000)
    page.locator(".konvajs-content, .lsf-frames-control").first.wait_for(timeout=60_000)
    page.wait_for_load_state("networkidle")


def screenshot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


# ------------------------------------------------------------------------------------------------ region list
@dataclass
class RegionRow:
    index: int
    labels: str
    captions: list[str]  # the texts of its caption fields that are visible in the list, in order
    add_fields: int      # empty "Describe ..." inputs offered to add another caption


def region_rows(page: Page) -> dict[int, RegionRow]:
    """Every row of the region list, scrolling it (Label Studio renders only the rows in view), never clicking."""
    rows: dict[int, RegionRow] = {}
    holder = page.locator(f"{OUTLINER} .lsf-tree-list-holder")
    idle_wheels = 0
    while idle_wheels < 2:
        before = len(rows)
        for node in page.locator(f"{OUTLINER} [role=treeitem]").all():
            index_text = node.locator(".lsf-outliner-item__index").inner_text().strip()
            if not index_text.isdigit():
                continue
            fields = node.locator("[data-testid=textarea-region-textarea]").all()
            rows[int(index_text)] = RegionRow(
                index=int(index_text),
                labels=node.locator(".lsf-outliner-item__title").inner_text().strip(),
                captions=[f.input_value() for f in fields if f.is_visible()],
                add_fields=node.locator("[data-testid=textarea-region-input]").count(),
            )
        if holder.count() == 0:
            break
        holder.first.hover()
        page.mouse.wheel(0, 250)
        page.wait_for_timeout(150)
        idle_wheels = idle_wheels + 1 if len(rows) == before else 0
    if holder.count():
        page.mouse.wheel(0, -250 * (len(rows) + 2))  # back to the top, as it was
        page.wait_for_timeout(150)
    return rows


def region_row(page: Page, index: int):
    """The list row of region ``index`` (1-based, as the list numbers them); it must be rendered (in view)."""
    return page.locator(f"{OUTLINER} [role=treeitem]").filter(
        has=page.locator(".lsf-outliner-item__index", has_text=re.compile(rf"^{index}$")))


# ------------------------------------------------------------------------------------------------ image canvas
def image_box(page: Page, width: int, height: int) -> dict:
    """Where the image is drawn on the page: Label Studio sizes its canvas to the image (zoom "fit")."""
    box = page.locator(".konvajs-content").first.bounding_box()
    assert box and abs(box["width"] / box["height"] - width / height) < 0.02, f"canvas {box} vs image {width}x{height}"
    return box


def page_point(box: dict, point: tuple[float, float], width: int, height: int) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y)'s centre."""
    return box["x"] + (point[0] + 0.5) * box["width"] / width, box["y"] + (point[1] + 0.5) * box["height"] / height


def eroded(mask: np.ndarray, steps: int = 3) -> np.ndarray:
    inner = mask.copy()
    for _ in range(steps):  # 4-neighbour erosion without scipy
        inner[1:, :] &= inner[:-1, :].copy()
        inner[:-1, :] &= inner[1:, :].copy()
        inner[:, 1:] &= inner[:, :-1].copy()
        inner[:, :-1] &= inner[:, 1:].copy()
    return inner if inner.any() else mask


def inner_point(mask: np.ndarray, away_from: tuple[float, float] | None = None) -> tuple[int, int]:
    """A pixel (x, y) well inside ``mask``: nearest its centroid, or farthest from ``away_from`` when given."""
    ys, xs = np.nonzero(eroded(mask))
    if away_from is None:
        distance = (xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2
        i = int(np.argmin(distance))
    else:
        i = int(np.argmax((xs - away_from[0]) ** 2 + (ys - away_from[1]) ** 2))
    return int(xs[i]), int(ys[i])


# ------------------------------------------------------------------------------------------------ interactive mode
def turn_on_auto_annotation(page: Page) -> None:
    page.get_by_test_id("bottombar-auto-annotation-toggle").click()
    page.get_by_test_id("bottombar-auto-accept-toggle").wait_for()  # only shown in Auto-Annotation mode


def pick_auto_detect(page: Page) -> None:
    """The toolbar's Auto-Detect button (M); the config puts the point tool first among the smart tools."""
    page.locator(".lsf-toolbar button.lsf-tool_smart").first.click()
    page.locator(".lsf-toolbar__smart button.lsf-tool_active[aria-label=key-point-tool]").wait_for(state="attached")


POINT_LABEL = "object q"  # image.xml's point label as the editor shows it: value + hotkey


def selected_labels(page: Page) -> list[str]:
    return [re.sub(r"\s+", " ", label.inner_text()).strip() for label in page.locator(".lsf-label_selected").all()]


def select_point_label(page: Page, expect_selected: bool = False) -> None:
    """Make sure the point tool's label is selected (Label Studio unselects it after each region): its hotkey Q."""
    if POINT_LABEL not in selected_labels(page):
        assert not expect_selected, f"selected labels {selected_labels(page)}, want {POINT_LABEL!r}"
        page.evaluate("document.activeElement?.blur()")  # hotkeys are not read while a toggle or field has focus
        page.keyboard.press("q")
    assert POINT_LABEL in selected_labels(page), selected_labels(page)


def click_for_suggestion(page: Page, x: float, y: float, *, alt: bool = False, timeout_s: float = 20.0) -> Response:
    """A click (Alt+click: negative) with the point tool; returns Label Studio's interactive-annotating reply."""
    with page.expect_response(lambda r: "/interactive-annotating" in r.url, timeout=timeout_s * 1000) as reply:
        if alt:
            page.keyboard.down("Alt")
        page.mouse.click(x, y)
        if alt:
            page.keyboard.up("Alt")
    return reply.value


# ------------------------------------------------------------------------------------------------ data manager
def run_data_manager_action(page: Page, url: str, project_id: int, task_ids: list[int], action: str) -> dict:
    """Select tasks in the data manager, run ``action`` (e.g. "Retrieve Predictions") from the selection menu and
    confirm it; returns Label Studio's answer."""
    page.goto(f"{url}/projects/{project_id}/data")
    for task_id in task_ids:
        page.get_by_label(f"Select Task {task_id}").click()
    page.get_by_role("button", name=re.compile(r"Actions|selected", re.I)).first.click()
    page.get_by_text(action, exact=True).click()
    with page.expect_response(lambda r: "/api/dm/actions" in r.url and r.request.method == "POST",
                              timeout=300_000) as answer:
        page.locator("button:visible", has_text=re.compile(rf"^(OK|{action})$")).last.click()
    assert answer.value.ok, answer.value.text()
    return answer.value.json()


@dataclass
class NetworkLog:
    """Responses the page received: (status, method, resource type, url)."""

    entries: list[tuple[int, str, str, str]] = field(default_factory=list)

    def attach(self, page: Page) -> "NetworkLog":
        page.on("response", lambda r: self.entries.append((r.status, r.request.method, r.request.resource_type,
                                                            r.url)))
        return self

    def matching(self, fragment: str) -> list[tuple[int, str, str, str]]:
        return [e for e in self.entries if fragment in e[3]]
