"""The gate end to end (`python -m dam_loop.steps.nightly` against a moto S3 server process): the serving model
(the trained tiny DAM) against a candidate that is the same model (trained one step at lr 1e-12) is NOT promoted,
summary.json / metrics.json / the evaluation report say why with the interval and n, the regression set was made
and checked, the KPIs of the export's predictions are written, and nightly.html renders the decision, the plots
and the example regions."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

from dam_loop.cli import EXIT_NOT_BETTER
from dam_loop.regression_set import SYNTHETIC, VALIDATION
from dam_model.fileio import read_json
from dam_model.synthetic import SHAPES

from .conftest import put_objects, run_module
from .test_loop_e2e import last_summary, loop_env, nightly  # noqa: F401  (loop_env: the fixture, shared)
from .test_report import PageParts

SAME_MODEL = ["--max-steps", "1", "--lr", "1e-12", "--no-pseudo-label", "--eval-max-new-tokens", "40",
              "--val-fraction", "0.5", "--min-val-regions", "10", "--regression-synthetic-scenes", "4"]


def png_size(src: str) -> tuple[int, int]:
    assert src.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size


def test_same_model_is_not_promoted_and_the_report_says_why(tmp_path, admin_s3, bucket, export_factory, loop_env,
                                                           loop_champion_model):
    models, work = Path(loop_env["MODELS_ROOT"]), Path(loop_env["LOOP_WORK_ROOT"])
    served = run_module("dam_loop.steps.promote", "--models-root", str(models), "promote", "--candidate",
                        str(loop_champion_model), "--force", "--version", "trained")
    assert served.returncode == 0, served.stderr
    # Task format with the backend's (perturbed) predictions: every annotation names its parent prediction.
    put_objects(admin_s3, bucket, export_factory(81, 12, fmt="task", prefix="ls", with_model_captions=True))

    run = nightly(loop_env, *SAME_MODEL)
    assert run.returncode == EXIT_NOT_BETTER, run.stderr[-3000:]
    summary = last_summary(work)
    run_dir = work / "runs" / summary["run_id"]
    gate = summary["gate"]
    assert gate["promote"] is False and gate["outcome"] == "not_better" and gate["forced"] is False
    assert gate["n"] >= 10 and gate["mean_diff"] == 0.0 and gate["ci_low"] <= 0.0  # the same captions everywhere
    assert "does not clear the margin" in gate["reason"] and f"n={gate['n']}" in gate["reason"]
    assert summary["steps"]["promote"] == {"promoted": False, "outcome": "not_better", "reason": gate["reason"]}
    assert gate["reason"] in (run_dir / "nightly.log").read_text()
    assert summary["gate_settings"]["min_val_regions"] == 10 and summary["gate_settings"]["replay_ratio"] == 0.2
    assert read_json(models / "current.json")["version"] == "trained"

    # The regression set: synthetic benchmark regions of every shape plus sampled validation regions, checked.
    metrics = read_json(run_dir / "eval" / "metrics.json")
    assert {k: v for k, v in metrics["gate"].items()} == {k: v for k, v in gate.items() if k != "forced"}
    regression_set = read_json(work / "regression_set" / "dataset.json")
    assert regression_set["counts"][SYNTHETIC] > 0 and regression_set["counts"][VALIDATION] > 0
    assert set(SHAPES) <= set(regression_set["categories"])
    assert metrics["regression"]["n"] == regression_set["counts"]["samples"] == gate["regression"]["n"]
    assert gate["regression"]["checked"] and gate["regression"]["mean_diff"] == 0.0
    assert set(metrics["region_scores"]["val"]["candidate"]) == {s["id"] for s in metrics["per_sample"]}
    evaluation_page = (run_dir / "eval" / "report.html").read_text()
    assert "NOT PROMOTED" in evaluation_page and "Regression set" in evaluation_page

    # KPIs: the export carried the predictions; the annotators' references differ from the perturbed captions.
    kpis = read_json(work / "kpis.json")
    served_version = kpis["by_model_version"]["synthetic-model"]
    assert served_version["edited"] > 0 and served_version["mean_edit_distance"] > 0
    assert kpis["predictions"]["tasks_from_export"] == 12 and kpis["overall"]["new"] == 0
    assert summary["steps"]["kpis"]["edited"] == served_version["edited"]

    # nightly.html: the decision, the plots, six example regions with three captions each.
    page = (run_dir / "nightly.html").read_text()
    assert page == (work / "nightly.html").read_text()
    parts = PageParts()
    parts.feed(page)
    text = " ".join(parts.text)
    assert "NOT PROMOTED" in text and gate["reason"] in text
    plots = {image["alt"]: image["src"] for image in parts.images}
    width, height = png_size(plots["accuracy per category over the last rounds"])
    assert width > 200 and height > 100
    png_size(plots["acceptance rate and edit distance per night"])
    png_size(plots["improvement interval against the margin"])
    assert len(parts.cards) == 6 and set(parts.cards) <= {s["id"] for s in metrics["per_sample"]}
    for region in parts.cards:
        png_size(plots[f"region {region}"])
    sample = next(s for s in metrics["per_sample"] if s["id"] == parts.cards[0])
    assert sample["human_caption"] in text and sample["candidate_caption"] in text
    assert "synthetic-model" in text  # the KPI table per model_version
    assert json.loads(json.dumps(summary["category_accuracy"])) and set(summary["category_accuracy"]) <= set(SHAPES)
