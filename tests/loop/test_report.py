"""The nightly report (dam_loop.report) renders: the HTML file holds the decision, PNG plots and the examples."""
from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed yet: add it to requirements.txt (issue 18)")

from PIL import Image  # noqa: E402

from dam_loop.gate import decide  # noqa: E402
from dam_loop.kpis import CaptionEdit, kpis_by  # noqa: E402
from dam_loop.report import RegionExample, accuracy_per_category, region_crop_png, write_nightly_report  # noqa: E402


class PageParts(HTMLParser):
    """Every <img> (alt, src) and every element's text, with the ids of the sections it sits in."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.cards: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        if attributes.get("class") == "card":
            self.cards.append(attributes.get("data-region", ""))

    def handle_data(self, data):
        self.text.append(data)


def decoded_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix):])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def scene(color: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((48, 64, 3), 90, dtype=np.uint8)
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:22, 30:44] = True
    image[mask] = color
    return image, mask


def edit(night: str, status: str, distance: float | None) -> CaptionEdit:
    return CaptionEdit(1, 1, f"r-{night}-{status}", "caption", night, status, "v1", 1, "parent_prediction",
                       "a red square", "a red square", distance)


def test_the_report_shows_decision_plot_kpis_and_examples(tmp_path):
    rng = np.random.default_rng(0)
    champion = {f"r{i}": float(v) for i, v in enumerate(rng.uniform(0.3, 0.8, 141))}
    candidate = {k: min(1.0, v + 0.07 + float(rng.normal(0, 0.05))) for k, v in champion.items()}
    decision = decide(champion, candidate)
    edits = [edit("2026-11-25", "accepted", 0.0), edit("2026-11-25", "edited", 0.4),
             edit("2026-11-26", "accepted", 0.0)]
    examples = [RegionExample("region-a", *scene((220, 30, 30)), "a red square", "a red square at the top",
                              "a red square near the top"),
                RegionExample("region-b", *scene((30, 30, 220)), "a circle", "a blue <circle>", "a blue circle")]
    path = write_nightly_report(
        tmp_path / "report.html", decision,
        category_accuracy={"run-1": {"circle": 0.5, "square": 0.6}, "run-2": {"circle": 0.55, "square": 0.62},
                           "run-3": {"circle": 0.61, "square": 0.66, "star": 0.4}},
        kpis_by_night=kpis_by(edits, "night"), examples=examples, subtitle="run 2026-11-26")

    page = path.read_text(encoding="utf-8")
    parts = PageParts()
    parts.feed(page)
    text = " ".join(parts.text)
    assert "PROMOTED" in text and decision.reason in text
    assert "n=141" in decision.reason and "95% CI" in decision.reason
    plots = {image["alt"]: image["src"] for image in parts.images}
    category_plot = decoded_png(plots["accuracy per category over the last rounds"])
    assert category_plot.width > 200 and category_plot.height > 100
    decoded_png(plots["acceptance rate and edit distance per night"])
    decoded_png(plots["improvement interval against the margin"])
    assert parts.cards == ["region-a", "region-b"]
    assert decoded_png(plots["region region-a"]).size[0] > 0
    for caption in ("a red square at the top", "a red square near the top", "a blue <circle>"):
        assert caption in text  # escaped in the file, the same text once parsed
    assert "a blue <circle>" not in page  # captions are escaped
    assert "2026-11-25" in text and "0.5000" in text  # the KPI table: 1 of 2 accepted that night
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched


def test_a_night_without_promotion_or_data_still_renders(tmp_path):
    decision = decide({f"r{i}": 0.5 for i in range(12)}, {f"r{i}": 0.6 for i in range(12)})
    page = write_nightly_report(tmp_path / "r.html", decision.to_dict()).read_text()
    assert "NOT PROMOTED" in page and "too_few_regions" in page
    assert "no evaluated rounds yet" in page and "no corrected annotations yet" in page and "no examples" in page


def test_the_crop_zooms_on_the_region_and_marks_it():
    image, mask = scene((220, 30, 30))
    picture = Image.open(io.BytesIO(region_crop_png(image, mask))).convert("RGB")
    assert max(picture.size) == 192
    pixels = np.asarray(picture)
    assert (pixels == (255, 0, 200)).all(axis=2).any()  # the outline
    assert picture.size[0] / picture.size[1] == pytest.approx(14 / 12, rel=0.1)  # the box plus context, not the image


def test_accuracy_per_category_groups_region_scores():
    scores = {"a": 1.0, "b": 0.5, "c": 0.25, "d": 0.9}
    assert accuracy_per_category(scores, {"a": "square", "b": "square", "c": "circle"}) == {"circle": 0.25, "square": 0.75}
