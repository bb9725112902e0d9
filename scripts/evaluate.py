"""Step 5 of the loop: candidate vs champion on the frozen validation split, with an HTML report and metrics.json.

Both models caption every validation region (greedy decoding, same settings): image regions with ``describe_batch``,
video tracks (video_samples.jsonl) with ``describe_video`` on the track's frames and masks. Both kinds are pooled
into one set of metrics (plus a ``video`` block with the video tracks alone when there are any). Per model:

- ``bleu4``, ``rouge_l``, ``cider`` (CIDEr-D): against the human-corrected caption (dam_model.evaluation);
- ``edit_effort``: annotators' effort, the mean normalised edit distance between the model's caption and the
  human-corrected one (0 = nothing to fix, 1 = rewrite everything); lower is better;
- ``dlc_positive``, ``dlc_negative``, ``dlc_average``: the DLC-style rule judge, on regions whose task data carry an
  attribute record (synthetic data: ``data.attributes[<region id>]``), with ``dlc_regions`` saying how many.

THE PROMOTION SCORE (``score``, higher is better) is ``dlc_average`` when at least one validation region has
attributes, otherwise ``cider``. ``score_name`` says which; both models are always scored the same way.

Outputs in ``--out``: ``metrics.json`` ({score_name, candidate: {...}, champion: {...}, n_val, n_val_video,
per_sample: [...]}) and
``report.html`` (self-contained: the metrics table, then sample regions as inline base64 PNGs with the mask overlaid,
the human caption and both models' captions).

Usage::

    python -m scripts.evaluate --candidate DIR [--champion DIR] --dataset DIR --out DIR
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from scripts.loop_common import (
    EXIT_FAILURE,
    EXIT_PROMOTED,
    BadArguments,
    LoopError,
    NoSamples,
    add_log_level_arg,
    add_models_root_arg,
    atomic_write_json,
    atomic_write_text,
    env_default,
    env_int,
    setup_logging,
    utc_iso,
)

log = logging.getLogger("scripts.evaluate")

HIGHER_IS_BETTER = {"bleu4": True, "rouge_l": True, "cider": True, "edit_effort": False, "edit_effort_char": False,
                    "dlc_positive": True, "dlc_negative": True, "dlc_average": True, "mean_confidence": True}


def is_video(row: dict[str, Any]) -> bool:
    """A video track row (video_samples.jsonl) rather than an image region."""
    return row.get("kind") == "video"


def load_val_rows(dataset_dir: Path, max_samples: int | None = None) -> list[dict[str, Any]]:
    """Human-captioned validation rows: image regions first, then video tracks; max_samples caps each kind."""
    from scripts.build import load_samples, load_video_samples

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
    import torch

    from dam_model.modeling import DescribeAnythingModel
    from scripts.build import read_image, read_mask, read_video_sample

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = DescribeAnythingModel.from_pretrained(str(model_dir), device=device)
    model.eval()
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
    from dam_model import evaluation as ev

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
    from dam_model import evaluation as ev

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


# ----------------------------------------------------------------------------------------------- report
def overlay_png(image: np.ndarray, mask: np.ndarray, max_side: int = 256) -> str:
    """Base64 PNG of the image with the mask tinted and outlined (downscaled to max_side)."""
    from PIL import Image

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
    from scripts.build import read_image, read_mask

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
    """Self-contained HTML: metrics table(s) + up to n_samples regions (inline PNG overlays, three captions)."""
    names = [k for k in HIGHER_IS_BETTER if k in metrics["candidate"]] + ["score"]
    table = _metrics_table(metrics["champion"], metrics["candidate"], names)
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
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px}}
.card{{display:inline-block;vertical-align:top;width:300px;margin:8px;border:1px solid #ddd;padding:6px}}dt{{font-weight:bold}}</style>
</head><body>
<h1>Candidate vs champion</h1>
<p>Validation regions: {metrics['n_val']} ({metrics.get('n_val_video', 0)} video tracks). Promotion score: <b>{html.escape(metrics['score_name'])}</b>
(champion {metrics['champion']['score']:.4f}, candidate {metrics['candidate']['score']:.4f}).</p>
<p>champion: {html.escape(metrics['champion']['model'])}<br>candidate: {html.escape(metrics['candidate']['model'])}</p>
{table}
<h2>Samples</h2>
{''.join(cards)}
</body></html>
"""
    atomic_write_text(path, page)


# ----------------------------------------------------------------------------------------------- evaluate
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
) -> dict[str, Any]:
    """Score both models on the dataset's validation split (image regions and video tracks); write metrics.json and
    report.html into out_dir."""
    rows = load_val_rows(Path(dataset_dir), max_samples)
    if not rows:
        raise NoSamples(f"{dataset_dir} has no validation samples")
    videos = [i for i, row in enumerate(rows) if is_video(row)]
    metrics: dict[str, Any] = {"evaluated_at": utc_iso(), "n_val": len(rows), "n_val_video": len(videos),
                               "dataset": str(dataset_dir)}
    per_model: dict[str, tuple[dict[str, Any], list[dict[str, Any]], list[str]]] = {}
    judge_impl = make_judge(judge)
    for role, model_dir in (("champion", champion), ("candidate", candidate)):
        log.info("captioning %d validation regions with the %s (%s)", len(rows), role, model_dir)
        captions = caption_all(model_dir, rows, device, max_new_tokens)
        texts = [c.text for c in captions]
        confidences = [float(c.confidence) for c in captions]
        scores, samples = score_captions(rows, texts, confidences, judge_impl)
        if videos:  # the video tracks alone, for the report (the promotion score pools both kinds)
            scores["video"], _ = score_captions([rows[i] for i in videos], [texts[i] for i in videos],
                                                [confidences[i] for i in videos], judge_impl)
        per_model[role] = (scores, samples, texts)
    # Score the same way for both: the judge runs on the same rows for both models.
    score_name, _ = promotion_score(per_model["candidate"][0])
    for role, model_dir in (("champion", champion), ("candidate", candidate)):
        scores = per_model[role][0]
        metrics[role] = {**scores, "score": float(scores[score_name]), "model": str(model_dir)}
    metrics["score_name"] = score_name
    metrics["per_sample"] = [
        {
            "id": row["id"],
            "kind": "video" if is_video(row) else "image",
            "task_id": row.get("task_id"),
            "human_caption": row["caption"],
            "champion_caption": per_model["champion"][2][i],
            "candidate_caption": per_model["candidate"][2][i],
            "champion": per_model["champion"][1][i],
            "candidate": per_model["candidate"][1][i],
        }
        for i, row in enumerate(rows)
    ]
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_report(out_dir / "report.html", metrics, rows, report_samples)
    log.info("%s: champion %.4f, candidate %.4f", score_name, metrics["champion"]["score"], metrics["candidate"]["score"])
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
    parser = argparse.ArgumentParser(
        prog="python -m scripts.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_models_root_arg(parser)
    parser.add_argument("--candidate", required=True, help="candidate model folder")
    parser.add_argument("--champion", help="champion model folder (default: the serving version)")
    parser.add_argument("--dataset", type=Path, required=True, help="built dataset folder (its val split is used)")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json and report.html")
    parser.add_argument("--device", default=env_default("DEVICE", "auto"), help="auto, cpu, cuda (env DEVICE)")
    add_eval_args(parser)
    add_log_level_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        champion = args.champion
        if champion is None:
            from scripts.promote import champion_dir

            champion = champion_dir(args.models_root)
            if champion is None:
                raise BadArguments("no --champion and nothing promoted yet")
        metrics = evaluate(args.candidate, champion, args.dataset, args.out, args.device, args.eval_max_samples,
                           args.eval_max_new_tokens, args.report_samples, args.judge)
    except LoopError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("evaluation failed")
        return EXIT_FAILURE
    print(json.dumps({k: metrics[k] for k in ("score_name", "n_val")} | {
        "candidate": metrics["candidate"]["score"], "champion": metrics["champion"]["score"]}, indent=2))
    return EXIT_PROMOTED


if __name__ == "__main__":
    sys.exit(main())
