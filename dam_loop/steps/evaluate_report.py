"""The evaluate step's report.html: a self-contained page with the metrics table(s), then sample regions (inline
base64 PNGs with the mask overlaid) with the human caption and both models' captions."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dam_loop.dataset import is_video
from dam_loop.report import STYLE, decision_section
from dam_model.data import read_image, read_mask
from dam_model.fileio import atomic_write_text

HIGHER_IS_BETTER = {"bleu4": True, "rouge_l": True, "cider": True, "edit_effort": False, "edit_effort_char": False,
                    "dlc_positive": True, "dlc_negative": True, "dlc_average": True, "mean_confidence": True}


def overlay_png(image: np.ndarray, mask: np.ndarray, max_side: int = 256) -> str:
    """Base64 PNG of the image with the mask tinted and outlined (downscaled to max_side)."""
    tinted = image.astype(np.float32).copy()
    tinted[mask] = 0.55 * tinted[mask] + 0.45 * np.array([255, 0, 200], np.float32)
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    tinted[edge] = (255, 0, 200)
    picture = Image.fromarray(tinted.clip(0, 255).astype(np.uint8))
    scale = max_side / max(picture.size)
    if scale < 1:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    elif scale > 2:  # tiny synthetic images: enlarge without blurring
        picture = picture.resize((round(picture.width * 2), round(picture.height * 2)), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def row_picture(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) shown for a row: the region's image, or a video track's middle sampled frame."""
    if is_video(row):
        middle = len(row["frame_paths"]) // 2
        return read_image(row["frame_paths"][middle]), read_mask(row["mask_paths"][middle])
    return read_image(row["image_path"]), read_mask(row["mask_path"])


def report_rows(rows: list[dict[str, Any]], n_samples: int) -> list[int]:
    """Indices of the rows shown in the report: the first ones of each kind, up to half of n_samples for video
    tracks when there are image regions too (the rest filled by whichever kind has more), in row order."""
    videos = [i for i, row in enumerate(rows) if is_video(row)]
    images = [i for i, row in enumerate(rows) if not is_video(row)]
    n_videos = min(len(videos), n_samples // 2 if images else n_samples)
    n_images = min(len(images), n_samples - n_videos)
    n_videos = min(len(videos), n_samples - n_images)
    return sorted(images[:n_images] + videos[:n_videos])


def _metrics_table(champion: dict[str, Any], candidate: dict[str, Any], names: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}{'' if HIGHER_IS_BETTER.get(name, True) else ' (lower is better)'}</td>"
        f"<td>{champion.get(name, float('nan')):.4f}</td><td>{candidate.get(name, float('nan')):.4f}</td></tr>"
        for name in names
    )
    return f"<table><tr><th>metric</th><th>champion</th><th>candidate</th></tr>{rows}</table>"


def write_report(path: Path, metrics: dict[str, Any], rows: list[dict[str, Any]], n_samples: int) -> None:
    """Self-contained HTML: the gate's decision (when metrics hold one), metrics table(s) (validation, video,
regression set) + up to n_samples regions (inline PNG overlays, three captions)."""
    names = [k for k in HIGHER_IS_BETTER if k in metrics["candidate"]] + ["score"]
    table = _metrics_table(metrics["champion"], metrics["candidate"], names)
    if "regression" in metrics:
        regression = metrics["regression"]
        table += (f"<h2>Regression set ({regression['n']} regions, {html.escape(regression['dir'])})</h2>"
                  + _metrics_table(regression["champion"], regression["candidate"],
                                   [k for k in HIGHER_IS_BETTER if k in regression["candidate"]]))
    gate = decision_section(metrics["gate"]) if "gate" in metrics else ""
    if "video" in metrics["candidate"]:
        video = metrics["candidate"]["video"]
        table += (f"<h2>Video tracks alone ({metrics.get('n_val_video', 0)})</h2>"
                  + _metrics_table(metrics["champion"]["video"], video, [k for k in HIGHER_IS_BETTER if k in video]))
    cards = []
    for index in report_rows(rows, n_samples):
        row, sample = rows[index], metrics["per_sample"][index]
        picture = overlay_png(*row_picture(row))
        label = "video track" if is_video(row) else "region"
        cards.append(
            f'<div class="card"><img alt="{label} {html.escape(row["id"])}" src="data:image/png;base64,{picture}">'
            f'<dl><dt>human</dt><dd>{html.escape(row["caption"])}</dd>'
            f'<dt>champion</dt><dd>{html.escape(sample["champion_caption"])}</dd>'
            f'<dt>candidate</dt><dd>{html.escape(sample["candidate_caption"])}</dd></dl></div>'
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>DAM evaluation {html.escape(metrics['evaluated_at'])}</title>
<style>{STYLE}</style>
</head><body>
<h1>Candidate vs champion</h1>
{gate}
<p>Validation regions: {metrics['n_val']} ({metrics.get('n_val_video', 0)} video tracks). Promotion score: <b>{html.escape(metrics['score_name'])}</b>
(champion {metrics['champion']['score']:.4f}, candidate {metrics['candidate']['score']:.4f}; reported, the gate above decides).</p>
<p>champion: {html.escape(metrics['champion']['model'])}<br>candidate: {html.escape(metrics['candidate']['model'])}</p>
{table}
<h2>Samples</h2>
{''.join(cards)}
</body></html>
"""
    atomic_write_text(path, page)


