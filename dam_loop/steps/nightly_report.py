"""What the nightly report shows, gathered from the run's files (dam_loop.report draws it):

- the gate's decision (``summary.json`` / ``metrics.json`` ``gate``);
- per-category accuracy over the last rounds: each round's ``category_accuracy`` in its summary.json, the mean
  region score (dam_loop.gate.region_score) per category of the model SERVING after that round (the candidate if
  promoted, else the champion), on the regression set when there is one (fixed regions: rounds compare), else on
  the validation split; a category is the synthetic shape, else the Label Studio label;
- the KPIs per night from ``<work root>/kpis.json``;
- ``EXAMPLES`` validation regions: those the candidate changed most for the better and for the worse.

Written to ``<run dir>/nightly.html`` and copied to ``<work root>/nightly.html`` (the latest).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dam_loop.gate import region_score
from dam_loop.report import RegionExample, write_nightly_report
from dam_loop.steps.evaluate import load_val_rows
from dam_loop.steps.evaluate_report import row_picture
from dam_model.fileio import read_json

EXAMPLES = 6
ROUNDS = 10  # rounds on the category plot
METRIC_LABEL = "mean region score of the serving model"


def category_accuracy(metrics: dict[str, Any], promoted: bool) -> dict[str, float]:
    """{category: mean region score} of the model serving after the decision (regression set, else validation)."""
    role = "candidate" if promoted else "champion"
    per_sample = (metrics.get("regression") or {}).get("per_sample") or metrics["per_sample"]
    groups: dict[str, list[float]] = {}
    for sample in per_sample:
        if sample.get("category") is not None:
            groups.setdefault(str(sample["category"]), []).append(region_score(sample[role]))
    return {name: float(np.mean(scores)) for name, scores in sorted(groups.items())}


def category_history(work_root: Path, current_run: str, current: dict[str, float]) -> dict[str, dict[str, float]]:
    """{run id: category accuracy} of the last ROUNDS rounds, oldest first, this one included."""
    history: dict[str, dict[str, float]] = {}
    runs = Path(work_root) / "runs"
    for run_dir in sorted(runs.iterdir()) if runs.exists() else []:
        summary_path = run_dir / "summary.json"
        if run_dir.name != current_run and summary_path.exists():
            accuracy = read_json(summary_path).get("category_accuracy")
            if accuracy:
                history[run_dir.name] = accuracy
    history[current_run] = current
    return dict(list(history.items())[-ROUNDS:])


def pick_examples(per_sample: list[dict[str, Any]], n: int = EXAMPLES) -> list[dict[str, Any]]:
    """Up to n samples: half where the candidate gained most, half where it lost most, then the rest in order."""
    def change(sample: dict[str, Any]) -> float:
        return region_score(sample["candidate"]) - region_score(sample["champion"])

    ranked = sorted(per_sample, key=change)
    gained = [s for s in reversed(ranked) if change(s) > 0][: n // 2]
    lost = [s for s in ranked if change(s) < 0][: n - len(gained)]
    chosen = {id(s) for s in gained + lost}
    rest = [s for s in per_sample if id(s) not in chosen]
    return (gained + lost + rest)[:n]


def region_examples(metrics: dict[str, Any], dataset_dir: Path, max_samples: int | None) -> list[RegionExample]:
    rows = {row["id"]: row for row in load_val_rows(Path(dataset_dir), max_samples)}
    examples = []
    for sample in pick_examples([s for s in metrics["per_sample"] if s["id"] in rows]):
        image, mask = row_picture(rows[sample["id"]])
        examples.append(RegionExample(sample["id"], image, mask, sample["champion_caption"],
                                      sample["candidate_caption"], sample["human_caption"]))
    return examples


def write_report(work_root: Path, run_dir: Path, gate: dict[str, Any], metrics: dict[str, Any], dataset_dir: Path,
                 history: dict[str, dict[str, float]], kpis: dict[str, Any] | None,
                 max_samples: int | None = None) -> Path:
    """Render nightly.html into the run folder and copy it to the work root; returns the run's copy."""
    subtitle = (f"run {run_dir.name}: {metrics['n_val']} validation regions, "
                f"{(metrics.get('regression') or {}).get('n', 0)} regression-set regions; "
                f"champion {metrics['champion']['model']}, candidate {metrics['candidate']['model']}")
    path = write_nightly_report(
        run_dir / "nightly.html", gate, category_accuracy=history,
        kpis_by_night=(kpis or {}).get("by_night") or {}, kpis_by_model_version=(kpis or {}).get("by_model_version"),
        examples=region_examples(metrics, dataset_dir, max_samples),
        title="DAM nightly report", subtitle=subtitle, metric_label=METRIC_LABEL)
    shutil.copyfile(path, Path(work_root) / "nightly.html")
    return path
