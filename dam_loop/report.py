"""The nightly report: ONE self-contained HTML page a lead reads in a minute (no external files, no scripts).

Sections, top to bottom:
1. the decision and why: PROMOTED / NOT PROMOTED, the gate's one-line reason, and the numbers behind it (n, both
   means, the improvement and its interval against the margin, the regression check), with the intervals drawn;
2. per-category accuracy over the last rounds (one line per category);
3. learning-from-edits KPIs over nights: acceptance rate and mean edit distance (plot and table);
4. a few example regions: the image crop around the region with its mask outlined (context dimmed), and the
   champion's, the candidate's and the human caption side by side.

Plots are matplotlib PNGs and crops are PIL PNGs, embedded as base64 data URIs. Inputs are plain data (a
GateDecision or its to_dict(), {round: {category: accuracy}}, {night: EditKpis or dict}, RegionExample arrays
and strings): the nightly step gathers them, this module only draws.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from dam_loop.gate import GateDecision
from dam_loop.kpis import EditKpis
from dam_model.fileio import atomic_write_text

MASK_OUTLINE = np.array([255, 0, 200], dtype=np.float32)  # magenta: visible on the synthetic scenes' colours
OUTSIDE_BRIGHTNESS = 0.45
CROP_CONTEXT = 0.5  # the crop shows the mask's box plus this share of its size on every side
CROP_SIDE = 192  # pixels of the longer side of a shown crop
PLOT_DPI = 100


@dataclass(frozen=True)
class RegionExample:
    """One region shown in the report: the image, the region's mask and three captions."""

    region_id: str
    image: np.ndarray
    """H x W x 3 uint8 RGB."""
    mask: np.ndarray
    """H x W bool (True = the region)."""
    champion_caption: str
    candidate_caption: str
    human_caption: str

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"image must be H x W x 3 uint8, got {self.image.shape} {self.image.dtype}")
        if self.mask.shape != self.image.shape[:2]:
            raise ValueError(f"mask {self.mask.shape} does not match the image {self.image.shape[:2]}")


def accuracy_per_category(region_scores: Mapping[str, float], region_categories: Mapping[str, str]) -> dict[str, float]:
    """{category: mean score} of one round, e.g. the DLC-style region scores (dam_loop.gate.dlc_region_scores)
    grouped by the region's synthetic shape (``attributes["shape"]``); regions without a category are left out."""
    groups: dict[str, list[float]] = {}
    for region_id, score in region_scores.items():
        category = region_categories.get(region_id)
        if category is not None:
            groups.setdefault(str(category), []).append(float(score))
    return {category: float(np.mean(scores)) for category, scores in sorted(groups.items())}


# ----------------------------------------------------------------------------------------------- pictures
def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(figure: Figure) -> bytes:
    """PNG bytes of a matplotlib figure (Figure objects directly: no pyplot global state, no GUI backend)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    return buffer.getvalue()


def region_crop_png(image: np.ndarray, mask: np.ndarray) -> bytes:
    """PNG of the region: the mask's box plus context (dimmed), the mask outlined, scaled to CROP_SIDE."""
    mask = mask.astype(bool)
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:
        pad_y = int(math.ceil((rows[-1] - rows[0] + 1) * CROP_CONTEXT))
        pad_x = int(math.ceil((cols[-1] - cols[0] + 1) * CROP_CONTEXT))
        top, bottom = max(0, rows[0] - pad_y), min(height, rows[-1] + 1 + pad_y)
        left, right = max(0, cols[0] - pad_x), min(width, cols[-1] + 1 + pad_x)
    else:  # an empty mask: show the whole image rather than nothing
        top, bottom, left, right = 0, height, 0, width
    crop, region = image[top:bottom, left:right].astype(np.float32), mask[top:bottom, left:right]
    crop[~region] *= OUTSIDE_BRIGHTNESS  # dim the context, keep the region's own colours (captions name them)
    inner = region.copy()  # outline = region pixels with a 4-neighbour outside the region
    inner[1:, :] &= region[:-1, :]
    inner[:-1, :] &= region[1:, :]
    inner[:, 1:] &= region[:, :-1]
    inner[:, :-1] &= region[:, 1:]
    crop[region & ~inner] = MASK_OUTLINE
    picture = Image.fromarray(crop.clip(0, 255).astype(np.uint8))
    scale = CROP_SIDE / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)  # small crops stay crisp
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def interval_plot_png(decision: Mapping[str, Any]) -> bytes | None:
    """The improvement's interval against the margin (and the regression interval against -regression margin)."""
    rows = []
    if decision.get("ci_low") is not None:
        rows.append(("validation", decision["mean_diff"], decision["ci_low"], decision["ci_high"], decision["margin"]))
    regression = decision.get("regression") or {}
    if regression.get("ci_low") is not None:
        rows.append(("regression set", regression["mean_diff"], regression["ci_low"], regression["ci_high"],
                     -regression["margin"]))
    if not rows:
        return None
    figure = Figure(figsize=(6.0, 0.7 + 0.6 * len(rows)))
    axes = figure.add_subplot()
    for y, (label, mean, low, high, limit) in enumerate(reversed(rows)):
        axes.plot([low, high], [y, y], color="#333", linewidth=3)
        axes.plot([mean], [y], "o", color="#0074D9")
        axes.plot([limit, limit], [y - 0.35, y + 0.35], "--", color="#FF4136")
    axes.axvline(0.0, color="#aaa", linewidth=0.8)
    axes.set_yticks(range(len(rows)), [row[0] for row in reversed(rows)])
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.set_xlabel("candidate - champion (bar: interval, dot: mean, dashed: margin)")
    return figure_png(figure)


def category_plot_png(category_accuracy: Mapping[str, Mapping[str, float]], metric_label: str) -> bytes | None:
    """One line per category over the rounds (rounds in the order given, oldest first)."""
    rounds = list(category_accuracy)
    categories = sorted({name for scores in category_accuracy.values() for name in scores})
    if not rounds or not categories:
        return None
    figure = Figure(figsize=(7.0, 3.2))
    axes = figure.add_subplot()
    positions = np.arange(len(rounds))
    for category in categories:
        values = [category_accuracy[r].get(category, np.nan) for r in rounds]  # a gap where not measured
        axes.plot(positions, np.asarray(values, dtype=float), marker="o", label=category)
    axes.set_xticks(positions, rounds, rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0.0, 1.0)
    axes.set_ylabel(metric_label)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return figure_png(figure)


def kpi_plot_png(kpis: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """Acceptance rate and mean edit distance per night (gaps where a night had nothing to compare)."""
    if not kpis:
        return None
    nights = list(kpis)
    positions = np.arange(len(nights))

    def series(name: str) -> np.ndarray:
        return np.asarray([np.nan if kpis[n].get(name) is None else kpis[n][name] for n in nights], dtype=float)

    figure = Figure(figsize=(7.0, 3.0))
    axes = figure.add_subplot()
    axes.plot(positions, series("acceptance_rate"), marker="o", color="#2ECC40", label="acceptance rate (higher is better)")
    axes.plot(positions, series("mean_edit_distance"), marker="s", color="#FF851B", label="mean edit distance (lower is better)")
    axes.set_xticks(positions, nights, rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0.0, 1.0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure_png(figure)


# ----------------------------------------------------------------------------------------------- html
def _number(value: Any, signed: bool = False) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _image(png: bytes | None, alt: str, missing: str) -> str:
    if png is None:
        return f"<p class='muted'>{html.escape(missing)}</p>"
    return f'<img alt="{html.escape(alt)}" src="{png_data_uri(png)}">'


def decision_section(decision: Mapping[str, Any]) -> str:
    promoted = bool(decision["promote"])
    regression = decision.get("regression") or {}
    confidence = decision.get("confidence", 0.95)
    interval = (f"[{_number(decision.get('ci_low'), True)}, {_number(decision.get('ci_high'), True)}]"
                if decision.get("ci_low") is not None else "&ndash;")
    regression_interval = (f"{_number(regression.get('mean_diff'), True)} in [{_number(regression.get('ci_low'), True)}, "
                           f"{_number(regression.get('ci_high'), True)}], n={regression.get('n', 0)}"
                           if regression.get("ci_low") is not None else "not measured")
    rows = [
        ("validation regions (paired)", f"{decision['n']} (minimum {decision.get('min_val_regions', '?')})"),
        ("champion mean", _number(decision.get("champion_mean"))),
        ("candidate mean", _number(decision.get("candidate_mean"))),
        ("improvement (mean difference)", _number(decision.get("mean_diff"), True)),
        (f"{confidence:.0%} interval", interval),
        ("margin (lower bound must be above)", _number(decision.get("margin"))),
        ("regression set", f"{html.escape(str(regression.get('reason', 'not checked')))}<br>{regression_interval}"),
        ("method", html.escape(str(decision.get("method", "")))),
    ]
    table = "".join(f"<tr><th>{html.escape(name)}</th><td>{value}</td></tr>" for name, value in rows)
    verdict = "PROMOTED" if promoted else "NOT PROMOTED"
    return (f'<section id="decision"><h2>Decision</h2>'
            f'<p class="verdict {"good" if promoted else "bad"}">{verdict} <span class="muted">'
            f'({html.escape(str(decision.get("outcome", "")))})</span></p>'
            f'<p class="reason">{html.escape(str(decision["reason"]))}</p><table>{table}</table>'
            f'{_image(interval_plot_png(decision), "improvement interval against the margin", "no interval (too few regions)")}'
            f"</section>")


def kpi_table(kpis: Mapping[str, Mapping[str, Any]], first: str) -> str:
    header = (f"<tr><th>{html.escape(first)}</th><th>regions</th><th>accepted</th><th>edited</th><th>deleted</th>"
              "<th>new</th><th>acceptance rate</th><th>mean edit distance</th></tr>")
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{k['regions']}</td><td>{k['accepted']}</td><td>{k['edited']}</td>"
        f"<td>{k['deleted']}</td><td>{k['new']}</td><td>{_number(k.get('acceptance_rate'))}</td>"
        f"<td>{_number(k.get('mean_edit_distance'))}</td></tr>" for name, k in kpis.items())
    return f"<table>{header}{rows}</table>"


def kpi_section(kpis: Mapping[str, Mapping[str, Any]], by_version: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    versions = (f"<h3>per model_version</h3>{kpi_table(by_version, 'model_version')}" if by_version else "")
    return (f'<section id="kpis"><h2>Learning from edits, per night</h2>'
            f'<p class="muted">Of the captions the model proposed and the annotators kept the region of: the share '
            f'left unchanged (acceptance rate) and the normalised character edit distance (0 = kept, 1 = rewritten).</p>'
            f'{_image(kpi_plot_png(kpis), "acceptance rate and edit distance per night", "no corrected annotations yet")}'
            f"{kpi_table(kpis, 'night')}{versions}</section>")


def example_card(example: RegionExample) -> str:
    captions = "".join(f"<dt>{role}</dt><dd class='{role}'>{html.escape(text)}</dd>" for role, text in (
        ("champion", example.champion_caption), ("candidate", example.candidate_caption), ("human", example.human_caption)))
    return (f'<div class="card" data-region="{html.escape(example.region_id)}">'
            f'<img alt="region {html.escape(example.region_id)}" src="{png_data_uri(region_crop_png(example.image, example.mask))}">'
            f"<dl>{captions}</dl></div>")


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 9px;text-align:left}.verdict{font-size:1.6em;font-weight:bold}
.good{color:#1a7f37}.bad{color:#b42318}.muted{color:#777}.reason{font-size:1.1em}
.card{display:inline-block;vertical-align:top;width:300px;margin:8px;border:1px solid #ddd;padding:6px}
dt{font-weight:bold}dd{margin:0 0 .4em 0}"""


def render_nightly_report(decision: GateDecision | Mapping[str, Any], *,
                          category_accuracy: Mapping[str, Mapping[str, float]] | None = None,
                          kpis_by_night: Mapping[str, EditKpis | Mapping[str, Any]] | None = None,
                          kpis_by_model_version: Mapping[str, EditKpis | Mapping[str, Any]] | None = None,
                          examples: Sequence[RegionExample] = (), title: str = "DAM nightly report",
                          subtitle: str = "", metric_label: str = "DLC-style average") -> str:
    """The report as one HTML string.

    category_accuracy: {round (oldest first): {category: accuracy in [0, 1]}};
    kpis_by_night: {night: EditKpis} (dam_loop.kpis.kpis_by(edits, "night")) or their to_dict();
    kpis_by_model_version: the same per model_version (a table under the nightly ones);
    examples: a few regions with both models' and the human caption.
    """
    record = decision.to_dict() if isinstance(decision, GateDecision) else dict(decision)
    kpis = {night: k.to_dict() if isinstance(k, EditKpis) else dict(k) for night, k in (kpis_by_night or {}).items()}
    by_version = {v: k.to_dict() if isinstance(k, EditKpis) else dict(k) for v, k in (kpis_by_model_version or {}).items()}
    category_png = category_plot_png(category_accuracy or {}, metric_label)
    cards = "".join(example_card(example) for example in examples) or "<p class='muted'>no examples</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1><p class="muted">{html.escape(subtitle)}</p>
{decision_section(record)}
<section id="categories"><h2>Accuracy per category, last rounds</h2>
{_image(category_png, "accuracy per category over the last rounds", "no evaluated rounds yet")}</section>
{kpi_section(kpis, by_version)}
<section id="examples"><h2>Example regions</h2>{cards}</section>
</body></html>
"""


def write_nightly_report(path: str | Path, decision: GateDecision | Mapping[str, Any], **sections: Any) -> Path:
    """Render (see render_nightly_report) and write atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, render_nightly_report(decision, **sections))
    return path
