"""Step 5 of the loop (dam-evaluate): candidate vs champion on the frozen validation split, with an HTML report and metrics.json.

Both models caption every validation region (greedy decoding, same settings): image regions with ``describe_batch``,
video tracks (video_samples.jsonl) with ``describe_video`` on the track's frames and masks. Both kinds are pooled
into one set of metrics (plus a ``video`` block with the video tracks alone when there are any). Per model:

- ``bleu4``, ``rouge_l``, ``cider`` (CIDEr-D): against the human-corrected caption (dam_model.evaluation);
- ``edit_effort``: annotators' effort, the mean normalised edit distance between the model's caption and the
  human-corrected one (0 = nothing to fix, 1 = rewrite everything); lower is better;
- ``dlc_positive``, ``dlc_negative``, ``dlc_average``: the DLC-style rule judge, on regions whose task data carry an
  attribute record (synthetic data: ``data.attributes[<region id>]``), with ``dlc_regions`` saying how many.

``score`` (higher is better) is ``dlc_average`` when at least one validation region has attributes, otherwise
``cider``; ``score_name`` says which; both models are always scored the same way. It is reported, it does not
decide: THE PROMOTION DECISION is the gate's (dam_loop.gate): a paired bootstrap over per-region scores
(``region_scores``: the DLC-style region average where judged, else 1 - word edit effort) of both models on the
same validation regions, and the non-inferiority check on the regression set (``--regression-set``, a frozen
sample of earlier validation data, dam_loop.regression_set) when one is given. Gate flags: dam_loop.gate_flags.

Outputs in ``--out``: ``metrics.json`` ({score_name, candidate: {...}, champion: {...}, n_val, n_val_video,
per_sample: [...], region_scores: {score, val: {champion, candidate}, regression?: {...}}, regression?: {dir, n,
champion, candidate, per_sample}, gate: GateDecision.to_dict()}) and ``report.html`` (written by evaluate_report;
self-contained: the gate's decision with its interval and n, the metrics tables, then sample regions as inline
base64 PNGs with the mask overlaid, the human caption and both models' captions).

Usage::

    python -m dam_loop.steps.evaluate --candidate DIR [--champion DIR] --dataset DIR --out DIR
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dam_loop.captioner import load_model
from dam_loop.cli import (
    EXIT_OK,
    BadArguments,
    NoSamples,
    add_log_level_arg,
    add_models_root_arg,
    env_default,
    env_int,
    run_main,
    step_parser,
)
from dam_loop.dataset import is_video, load_samples, load_video_samples, read_video_sample
from dam_loop.gate import REGION_SCORE, GateSettings, decide_from_metrics, region_scores
from dam_loop.gate_flags import add_gate_args, gate_settings_from_args
from dam_loop.models_root import champion_dir
from dam_loop.provenance import utc_iso
from dam_loop.regression_set import load_regression_rows, region_category
from dam_loop.steps.evaluate_report import write_report
from dam_model import evaluation as ev
from dam_model.data import read_image, read_mask
from dam_model.fileio import atomic_write_json

log = logging.getLogger("dam_loop.evaluate")


def load_val_rows(dataset_dir: Path, max_samples: int | None = None) -> list[dict[str, Any]]:
    """Human-captioned validation rows: image regions first, then video tracks; max_samples caps each kind."""
    images = [r for r in load_samples(Path(dataset_dir), "val", include_pseudo=False) if r.get("source", "human") == "human"]
    videos = [{**r, "kind": "video"} for r in load_video_samples(Path(dataset_dir), "val")
              if r.get("source", "human") == "human"]
    if max_samples:
        images, videos = images[:max_samples], videos[:max_samples]
    return images + videos


def caption_all(model_dir: str | Path, rows: list[dict[str, Any]], device: str, max_new_tokens: int,
                batch_regions: int = 16) -> list[Any]:
    """Greedy captions (Caption objects) of every row, in row order; regions of one image share a describe call,
    a video track is one describe_video call on its frames and masks."""
    model = load_model(model_dir, device)
    by_image: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        if not is_video(row):
            by_image.setdefault(row["image_path"], []).append(index)
    out: list[Any] = [None] * len(rows)
    groups = list(by_image.items())
    with torch.inference_mode():
        for index, row in enumerate(rows):
            if is_video(row):
                frames, masks = read_video_sample(row)
                out[index] = model.describe_video(frames, masks, max_new_tokens=max_new_tokens, temperature=0.0)
        start = 0
        while start < len(groups):  # several images per generate call, about batch_regions regions
            chunk, regions = [], 0
            while start < len(groups) and (not chunk or regions + len(groups[start][1]) <= batch_regions):
                chunk.append(groups[start])
                regions += len(groups[start][1])
                start += 1
            items = [(read_image(path), [read_mask(rows[i]["mask_path"]) for i in indices]) for path, indices in chunk]
            results = model.describe_batch(items, max_new_tokens=max_new_tokens, temperature=0.0)
            for (_, indices), captions in zip(chunk, results):
                for i, caption in zip(indices, captions):
                    out[i] = caption
    del model
    return out


def make_judge(kind: str) -> Any:
    """'rule' (exact on the synthetic caption grammar) or 'chat' (OpenAI-compatible endpoint: DAM_JUDGE_BASE_URL,
    DAM_JUDGE_MODEL, DAM_JUDGE_API_KEY)."""
    if kind == "rule":
        return ev.RuleJudge()
    if kind == "chat":
        return ev.ChatJudge()
    raise BadArguments(f"unknown judge {kind!r} (rule or chat)")


def score_captions(
    rows: list[dict[str, Any]], predictions: list[str], confidences: list[float], judge: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Corpus metrics of ``predictions`` against each row's human caption, plus the DLC-style judge on the rows
    that carry attributes. Returns (metrics, per-sample dicts: edit effort and, where judged, the judge's scores).

    Metrics: bleu4, rouge_l, cider (CIDEr-D), edit_effort (word level, mean), edit_effort_char, mean_confidence,
    and when judged: dlc_positive, dlc_negative, dlc_average, dlc_regions, dlc_recognition_rate.
    """
    references = [row["caption"] for row in rows]
    corpus = ev.caption_metrics(predictions, references)
    metrics: dict[str, Any] = {
        "bleu4": float(corpus["bleu4"]), "rouge_l": float(corpus["rouge_l"]), "cider": float(corpus["cider_d"]),
        "edit_effort": float(corpus["edit_effort_word"]), "edit_effort_char": float(corpus["edit_effort_char"]),
        "mean_confidence": float(np.mean(confidences)) if confidences else 0.0,
    }
    per_sample: list[dict[str, Any]] = [{"edit_effort": float(ev.edit_effort(p, r))} for p, r in zip(predictions, references)]
    judged = [i for i, row in enumerate(rows) if row.get("attributes")]
    if judged:
        report = ev.evaluate_captions([predictions[i] for i in judged], [rows[i]["attributes"] for i in judged],
                                      judge if judge is not None else ev.RuleJudge())
        for i, region in zip(judged, report.regions):
            per_sample[i]["dlc"] = {"positive": region.positive, "negative": region.negative, "recognized": region.recognized}
        metrics.update(dlc_positive=float(report.positive), dlc_negative=float(report.negative),
                       dlc_average=float(report.average), dlc_regions=len(judged),
                       dlc_recognition_rate=float(report.recognition_rate))
    return metrics, per_sample


def promotion_score(metrics: dict[str, Any]) -> tuple[str, float]:
    """('dlc_average', v) when the judge ran, else ('cider', v)."""
    name = "dlc_average" if "dlc_average" in metrics else "cider"
    return name, float(metrics[name])


def caption_and_score(model_dir: str | Path, row_sets: list[list[dict[str, Any]]], device: str, max_new_tokens: int,
                      judge: Any) -> list[tuple[dict[str, Any], list[dict[str, Any]], list[str]]]:
    """One model (loaded once) on several row sets (the validation split, the regression set): per set (metrics,
    per-sample scores, caption texts); a video block is added when a set has video tracks."""
    everything = [row for rows in row_sets for row in rows]
    captions = caption_all(model_dir, everything, device, max_new_tokens)
    out, start = [], 0
    for rows in row_sets:
        texts = [c.text for c in captions[start:start + len(rows)]]
        confidences = [float(c.confidence) for c in captions[start:start + len(rows)]]
        start += len(rows)
        if not rows:
            out.append(({}, [], []))
            continue
        scores, samples = score_captions(rows, texts, confidences, judge)
        videos = [i for i, row in enumerate(rows) if is_video(row)]
        if videos:  # the video tracks alone, for the report (the promotion score pools both kinds)
            scores["video"], _ = score_captions([rows[i] for i in videos], [texts[i] for i in videos],
                                                [confidences[i] for i in videos], judge)
        out.append((scores, samples, texts))
    return out


def per_sample_records(rows: list[dict[str, Any]], per_model: dict[str, tuple[Any, Any, Any]]) -> list[dict[str, Any]]:
    """One record per row: ids, category, the human caption, both models' captions and scores."""
    return [
        {
            "id": row["id"],
            "kind": row["kind"],
            "task_id": row.get("task_id"),
            "category": region_category(row),
            "human_caption": row["caption"],
            "champion_caption": per_model["champion"][2][i],
            "candidate_caption": per_model["candidate"][2][i],
            "champion": per_model["champion"][1][i],
            "candidate": per_model["candidate"][1][i],
        }
        for i, row in enumerate(rows)
    ]


def evaluate(
    candidate: str | Path,
    champion: str | Path,
    dataset_dir: Path,
    out_dir: Path,
    device: str = "auto",
    max_samples: int | None = None,
    max_new_tokens: int = 64,
    report_samples: int = 12,
    judge: str = "rule",
    regression_dir: Path | None = None,
    gate_settings: GateSettings = GateSettings(),
) -> dict[str, Any]:
    """Score both models on the dataset's validation split (image regions and video tracks) and on the regression
    set (when ``regression_dir`` holds one), decide with the gate; write metrics.json and report.html into out_dir."""
    rows = load_val_rows(Path(dataset_dir), max_samples)
    if not rows:
        raise NoSamples(f"{dataset_dir} has no validation samples")
    regression_rows = load_regression_rows(regression_dir)
    metrics: dict[str, Any] = {"evaluated_at": utc_iso(), "n_val": len(rows), "n_val_video": sum(map(is_video, rows)),
                               "dataset": str(dataset_dir)}
    per_model: dict[str, tuple[dict[str, Any], list[dict[str, Any]], list[str]]] = {}
    regression: dict[str, tuple[dict[str, Any], list[dict[str, Any]], list[str]]] = {}
    judge_impl = make_judge(judge)
    for role, model_dir in (("champion", champion), ("candidate", candidate)):
        log.info("captioning %d validation and %d regression-set regions with the %s (%s)", len(rows),
                 len(regression_rows), role, model_dir)
        per_model[role], regression[role] = caption_and_score(model_dir, [rows, regression_rows], device,
                                                              max_new_tokens, judge_impl)
    # Score the same way for both: the judge runs on the same rows for both models.
    score_name, _ = promotion_score(per_model["candidate"][0])
    for role, model_dir in (("champion", champion), ("candidate", candidate)):
        scores = per_model[role][0]
        metrics[role] = {**scores, "score": float(scores[score_name]), "model": str(model_dir)}
    metrics["score_name"] = score_name
    metrics["per_sample"] = per_sample_records(rows, per_model)
    metrics["region_scores"] = {"score": REGION_SCORE, "val": {role: region_scores(metrics["per_sample"], role)
                                                               for role in ("champion", "candidate")}}
    if regression_rows:
        records = per_sample_records(regression_rows, regression)
        metrics["regression"] = {"dir": str(regression_dir), "n": len(regression_rows),
                                 "champion": regression["champion"][0], "candidate": regression["candidate"][0],
                                 "per_sample": records}
        metrics["region_scores"]["regression"] = {role: region_scores(records, role) for role in ("champion", "candidate")}
    decision = decide_from_metrics(metrics, gate_settings)
    metrics["gate"] = decision.to_dict()
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_report(out_dir / "report.html", metrics, rows, report_samples)
    log.info("%s: champion %.4f, candidate %.4f; gate: %s", score_name, metrics["champion"]["score"],
             metrics["candidate"]["score"], decision.reason)
    return metrics


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("evaluation")
    g.add_argument("--eval-max-samples", type=int, default=env_int("EVAL_MAX_SAMPLES", None),
                   help="cap on validation image regions, and separately on video tracks (env EVAL_MAX_SAMPLES; default all)")
    g.add_argument("--eval-max-new-tokens", type=int, default=env_int("EVAL_MAX_NEW_TOKENS", 64), help="caption length limit (tokens)")
    g.add_argument("--report-samples", type=int, default=12, help="sample regions shown in report.html")
    g.add_argument("--judge", choices=["rule", "chat"], default=env_default("DLC_JUDGE", "rule"),
                   help="DLC-style judge: rule (synthetic grammar) or chat (DAM_JUDGE_BASE_URL endpoint; env DLC_JUDGE)")


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser("python -m dam_loop.steps.evaluate", __doc__)
    add_models_root_arg(parser)
    parser.add_argument("--candidate", required=True, help="candidate model folder")
    parser.add_argument("--champion", help="champion model folder (default: the serving version)")
    parser.add_argument("--dataset", type=Path, required=True, help="built dataset folder (its val split is used)")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json and report.html")
    parser.add_argument("--device", default=env_default("DEVICE", "auto"), help="auto, cpu, cuda (env DEVICE)")
    parser.add_argument("--regression-set", type=Path, default=env_default("REGRESSION_SET"),
                        help="a regression set folder (dam_loop.regression_set) to evaluate too (env REGRESSION_SET)")
    add_eval_args(parser)
    add_gate_args(parser)
    add_log_level_arg(parser)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    champion = args.champion or champion_dir(args.models_root)
    if champion is None:
        raise BadArguments("no --champion and nothing promoted yet")
    metrics = evaluate(args.candidate, champion, args.dataset, args.out, args.device, args.eval_max_samples,
                       args.eval_max_new_tokens, args.report_samples, args.judge, args.regression_set,
                       gate_settings_from_args(args))
    print(json.dumps({k: metrics[k] for k in ("score_name", "n_val")} | {
        "candidate": metrics["candidate"]["score"], "champion": metrics["champion"]["score"],
        "gate": metrics["gate"]["reason"]}, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_main(run_cli, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
