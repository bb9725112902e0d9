"""Step 3 of the loop (dam-pseudo-label; the paper's semi-supervised stage): caption unannotated regions with the serving model.

Candidates, all from TRAIN-split tasks only (the validation split stays purely human and is never looked at here):

- regions drawn in Label Studio but left without a caption (``unlabeled.jsonl`` written by the build step; mask score 1);
- with ``--sam2-config`` + ``--sam2-checkpoint``: SAM 2 automatic masks on the dataset's training images that do
  not overlap a human region (IoU <= ``--max-iou``); their predicted IoU is the mask score.

Each candidate is captioned (greedy) by the serving model and kept when its caption's mean token log-probability is
>= ``--min-logprob`` and its mask score >= ``--min-mask-score``. At most ``--max-fraction`` of the resulting
training set is pseudo-labelled (the most confident are kept): n_pseudo <= floor(f / (1 - f) * n_human_train).
Kept rows go to ``<dataset>/pseudo.jsonl`` with source="pseudo", confidence, mask_score and the model used.

Usage::

    python -m dam_loop.steps.pseudo_label --work-root loop_work [--dataset DIR] [--model DIR] [--min-logprob -0.15]

Measured (python -m dam_tools.pseudo_ablation, README "Measured"): on a held-out synthetic seed neither threshold
gave an improvement whose 95% interval clears 0 (-1.0: +0.003 [-0.014, +0.022]; -0.15: +0.010 [-0.007, +0.026]),
so the nightly runs this step only when asked (PSEUDO_LABEL=true), and then with the better of the two thresholds.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dam_loop.captioner import load_model
from dam_loop.cli import (
    EXIT_OK,
    BadArguments,
    add_log_level_arg,
    add_models_root_arg,
    add_work_root_arg,
    env_default,
    env_float,
    env_int,
    fraction,
    run_main,
    step_parser,
)
from dam_loop.dataset import (SAMPLES_FILE, UNLABELED_FILE, latest_dataset_dir, pixels_hash, read_rows, require_built,
                              write_pseudo)
from dam_loop.models_root import resolve_init
from dam_loop.provenance import utc_iso
from dam_model.data import KIND_IMAGE, read_image, read_mask, write_mask
from dam_model.segmentation import Sam2Segmenter

log = logging.getLogger("dam_loop.pseudo_label")


DEFAULT_MIN_LOGPROB = -0.15  # the better threshold of the ablation (about the median confidence of the tiny model)


def max_pseudo_count(n_human: int, max_fraction: float) -> int:
    """Largest pseudo count p with p / (n_human + p) <= max_fraction."""
    if max_fraction <= 0 or n_human <= 0:
        return 0
    if max_fraction >= 1:
        return sys.maxsize
    return int(math.floor(max_fraction / (1.0 - max_fraction) * n_human + 1e-9))


def select_pseudo(
    candidates: list[dict[str, Any]], n_human: int, min_logprob: float, min_mask_score: float, max_fraction: float
) -> list[dict[str, Any]]:
    """Filter candidates (dicts with caption, confidence, mask_score) by thresholds, keep the most confident within the ratio."""
    passing = [
        c for c in candidates
        if c["caption"].strip() and c["confidence"] >= min_logprob and c.get("mask_score", 1.0) >= min_mask_score
    ]
    passing.sort(key=lambda c: (-c["confidence"], c["id"]))
    return passing[: max_pseudo_count(n_human, max_fraction)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def caption_regions(model: Any, items: list[tuple[np.ndarray, list[np.ndarray]]], max_new_tokens: int) -> list[list[Any]]:
    """describe_batch over (image, masks) pairs, greedy; returns Caption lists (text, confidence, token_ids)."""
    return model.describe_batch(items, max_new_tokens=max_new_tokens, temperature=0.0)


def sam2_candidates(
    dataset_dir: Path, rows: list[dict[str, Any]], segmenter: Any, max_masks: int, min_area: int, max_iou: float,
) -> list[dict[str, Any]]:
    """Automatic masks (``segmenter.automatic_masks``) on the training images that do not overlap any human region
    by more than ``max_iou``; their masks are saved under masks/auto-*.png, their score is the mask score."""
    by_image: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row)
    out = []
    for image_rel, image_rows in sorted(by_image.items()):
        image = read_image(dataset_dir / image_rel)
        human = [read_mask(dataset_dir / r["mask"]) for r in image_rows]
        for prediction in segmenter.automatic_masks(image, max_masks=max_masks, min_area=min_area):
            mask = np.asarray(prediction.mask, dtype=bool)
            if not mask.any() or any(mask_iou(mask, h) > max_iou for h in human):
                continue
            template = image_rows[0]
            sample_id = f"auto-{template['id'][:12]}-{pixels_hash(mask)[:12]}"
            write_mask(dataset_dir / "masks" / f"{sample_id}.png", mask)
            out.append({
                "kind": KIND_IMAGE, **{k: template[k] for k in ("image", "task_id", "width", "height", "split")},
                "id": sample_id, "mask": f"masks/{sample_id}.png", "region_id": None, "category": None,
                "mask_score": float(prediction.score), "mask_source": "sam2_auto",
            })
    return out


def pseudo_label(
    dataset_dir: Path,
    model_dir: Path,
    min_logprob: float = DEFAULT_MIN_LOGPROB,
    min_mask_score: float = 0.8,
    max_fraction: float = 0.3,
    device: str = "auto",
    max_new_tokens: int = 64,
    sam2: dict[str, Any] | None = None,
    model: Any = None,
    segmenter: Any = None,
) -> dict[str, Any]:
    """Write ``dataset_dir/pseudo.jsonl`` and return a summary {candidates, kept, ...}.

    sam2: {config, checkpoint, max_masks, min_area, max_iou} (or {model: hub id, ...}) to add SAM 2 automatic masks
    (``segmenter`` may be given instead of config/checkpoint); model: an already loaded captioner (default: load ``model_dir``).
    """
    dataset_dir = require_built(Path(dataset_dir))
    human_train = read_rows(dataset_dir, SAMPLES_FILE, "train")
    candidates = [dict(r, mask_score=1.0, mask_source="human") for r in read_rows(dataset_dir, UNLABELED_FILE, "train")]
    if sam2:
        if segmenter is None and sam2.get("model"):  # a hub id: fetched into the HF cache once
            segmenter = Sam2Segmenter.from_pretrained(sam2["model"], device=None if device == "auto" else device)
        elif segmenter is None:
            segmenter = Sam2Segmenter.from_checkpoint(sam2["config"], sam2["checkpoint"], device=None if device == "auto" else device)
        candidates += sam2_candidates(dataset_dir, human_train, segmenter, sam2.get("max_masks", 8),
                                      sam2.get("min_area", 64), sam2.get("max_iou", 0.5))
    budget = max_pseudo_count(len(human_train), max_fraction)
    summary: dict[str, Any] = {"candidates": len(candidates), "human_train": len(human_train), "budget": budget, "kept": 0}
    if not candidates or budget == 0:
        write_pseudo(dataset_dir, [])
        log.info("pseudo-labelling: nothing to do (%s)", summary)
        return summary
    model = model if model is not None else load_model(model_dir, device)
    by_image: dict[str, list[dict[str, Any]]] = {}
    for row in candidates:
        by_image.setdefault(row["image"], []).append(row)
    for image_rel, rows in sorted(by_image.items()):
        image = read_image(dataset_dir / image_rel)
        masks = [read_mask(dataset_dir / r["mask"]) for r in rows]
        (captions,) = caption_regions(model, [(image, masks)], max_new_tokens)
        for row, caption in zip(rows, captions):
            row.update(caption=caption.text.strip(), confidence=float(caption.confidence))
    kept = select_pseudo(candidates, len(human_train), min_logprob, min_mask_score, max_fraction)
    stamp = utc_iso()
    rows_out = [
        {**row, "source": "pseudo", "split": "train", "model": str(model_dir), "labelled_at": stamp}
        for row in kept
    ]
    write_pseudo(dataset_dir, rows_out)
    confidences = [c["confidence"] for c in candidates]
    summary.update(
        kept=len(rows_out),
        passing_thresholds=sum(c["confidence"] >= min_logprob and c["mask_score"] >= min_mask_score for c in candidates),
        confidence_min=min(confidences), confidence_max=max(confidences),
        thresholds={"min_logprob": min_logprob, "min_mask_score": min_mask_score, "max_fraction": max_fraction},
    )
    log.info("pseudo-labelling: %s", summary)
    return summary


def add_pseudo_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pseudo-labelling")
    g.add_argument("--min-logprob", type=float, default=env_float("PSEUDO_MIN_LOGPROB", DEFAULT_MIN_LOGPROB),
                   help="keep captions whose mean token log-probability is >= this (env PSEUDO_MIN_LOGPROB)")
    g.add_argument("--min-mask-score", type=float, default=env_float("PSEUDO_MIN_MASK_SCORE", 0.8),
                   help="keep masks whose score is >= this (human regions score 1; env PSEUDO_MIN_MASK_SCORE)")
    g.add_argument("--max-fraction", type=fraction, default=env_float("PSEUDO_MAX_FRACTION", 0.3),
                   help="max share of pseudo labels in the training set (env PSEUDO_MAX_FRACTION; 0 disables)")
    g.add_argument("--sam2-model", default=env_default("SAM2_MODEL"),
                   help="SAM 2.1 hub id for automatic masks, e.g. facebook/sam2.1-hiera-large (env SAM2_MODEL; "
                        "--sam2-checkpoint wins)")
    g.add_argument("--sam2-config", default=env_default("SAM2_CONFIG"), help="SAM 2 config name for automatic masks (env SAM2_CONFIG)")
    g.add_argument("--sam2-checkpoint", default=env_default("SAM2_CHECKPOINT"), help="SAM 2 checkpoint (env SAM2_CHECKPOINT)")
    g.add_argument("--sam2-max-masks", type=int, default=env_int("SAM2_MAX_MASKS", 8), help="automatic masks per image")
    g.add_argument("--sam2-min-area", type=int, default=env_int("SAM2_MIN_AREA", 64), help="minimum automatic mask area (px)")
    g.add_argument("--max-iou", type=float, default=0.5, help="drop automatic masks overlapping a human region more than this")
    g.add_argument("--pseudo-max-new-tokens", type=int, default=64, help="caption length limit (tokens)")


def sam2_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    limits = {"max_masks": args.sam2_max_masks, "min_area": args.sam2_min_area, "max_iou": args.max_iou}
    if args.sam2_checkpoint and not args.sam2_config:
        raise BadArguments("--sam2-checkpoint needs --sam2-config (or use --sam2-model with a hub id)")
    if args.sam2_checkpoint:
        return {"config": args.sam2_config, "checkpoint": args.sam2_checkpoint, **limits}
    if args.sam2_model:
        return {"model": args.sam2_model, **limits}
    if args.sam2_config:
        raise BadArguments("--sam2-config needs --sam2-checkpoint (or use --sam2-model with a hub id)")
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser("python -m dam_loop.steps.pseudo_label", __doc__)
    add_work_root_arg(parser)
    add_models_root_arg(parser)
    parser.add_argument("--dataset", type=Path, help="built dataset folder (default: the latest snapshot's)")
    parser.add_argument("--model", type=Path, help="captioning model (default: the serving version)")
    parser.add_argument("--device", default=env_default("DEVICE", "auto"), help="auto, cpu, cuda (env DEVICE)")
    add_pseudo_args(parser)
    add_log_level_arg(parser)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    dataset = args.dataset or latest_dataset_dir(Path(args.work_root))
    model_dir = resolve_init(str(args.model) if args.model else None, args.models_root)
    summary = pseudo_label(
        dataset, model_dir, args.min_logprob, args.min_mask_score, args.max_fraction, args.device,
        args.pseudo_max_new_tokens, sam2_settings(args),
    )
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_main(run_cli, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
