"""Pseudo-label ablation (issue 18): does the loop's self-training stage help? The same round with and without
pseudo-labels, and at two confidence thresholds, scored on a held-out synthetic seed.

    python -m dam_tools.pseudo_ablation [--human-scenes 40] [--unlabeled-scenes 18] [--steps 100] [--out DIR]

One round, as the nightly runs it, from the same start model (default: the ci tiny DAM, the serving model):
1. a dataset folder in the loop's format (dam_loop.dataset): ``--human-scenes`` scenes of ``--train-seed`` with
   their corrected captions (samples.jsonl, train split) and ``--unlabeled-scenes`` further scenes whose regions
   carry no caption (unlabeled.jsonl: regions an annotator drew but did not describe);
2. per variant, the loop's own pseudo_label step (dam_loop.steps.pseudo_label.pseudo_label, serving model, greedy)
   at threshold ``min_logprob`` (mean token log-probability), with the loop's cap ``--max-fraction``; "none"
   skips it;
3. training with dam_model.train from the start model, the same steps, batch, learning rate and seed for every
   variant (only the pseudo rows differ);
4. greedy captions of every region of ``--eval-scenes`` scenes of ``--eval-seed``, judged by the exact RuleJudge:
   per-region DLC-style average ((positive + negative) / 2).

The held-out seed (60606) and the train seed (4343) are used nowhere else in the project: not by the tiny model
(1000 / 9000), the loop demo (4242 / 777), the regression set (5150) or any test, and no setting was tuned on them.
Printed: per variant the pseudo rows kept, their own accuracy (the judge on the pseudo captions: we know the
unlabeled scenes' truth), the held-out average, and the paired difference to "none" with its 95% BCa interval
(dam_loop.gate.compare_paired: the same paired bootstrap the promotion gate uses). The interval covers the
choice of held-out regions, not training randomness (one training seed per variant).
Rule for the loop's default: pseudo-labels on only when a variant's interval lies above 0.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dam_loop.dataset import DatasetWriter, load_samples, pixels_hash, read_samples
from dam_loop.gate import GateSettings, compare_paired
from dam_loop.steps.pseudo_label import pseudo_label
from dam_model import evaluation as ev
from dam_model import train as training
from dam_model.data import KIND_IMAGE
from dam_model.fileio import atomic_write_json, read_jsonl
from dam_model.modeling import DescribeAnythingModel
from dam_model.synthetic import Scene, generate_dataset
from dam_tools.build_tiny_model import ensure_tiny_model
from dam_tools.loop_demo import judge_scenes

TRAIN_SEED, EVAL_SEED = 4343, 60606  # see the module docstring: used nowhere else
NONE = "none"


def region_row(scene: Scene, index: int, split_scene: int, with_caption: bool) -> tuple[dict[str, Any], Any, Any]:
    """(row, image, mask) of object ``index`` of a scene in the dataset folder's row format."""
    obj = scene.objects[index]
    image_hash, mask_hash = pixels_hash(scene.image), pixels_hash(obj.mask)
    row: dict[str, Any] = {
        "kind": KIND_IMAGE, "id": f"{image_hash[:12]}-{mask_hash[:12]}", "image": f"images/{image_hash[:16]}.png",
        "mask": f"masks/{image_hash[:12]}-{mask_hash[:12]}.png", "split": "train", "task_id": split_scene,
        "region_id": f"s{split_scene}-o{index}", "category": obj.attributes["shape"], "width": scene.width,
        "height": scene.height, "attributes": obj.attributes, "updated_at": "", "annotation_id": split_scene,
    }
    if with_caption:
        row.update(caption=obj.long_caption, short_caption=obj.short_caption, source="human")
    return row, scene.image, obj.mask


def write_round_dataset(out_dir: Path, seed: int, human_scenes: int, unlabeled_scenes: int) -> Path:
    """The round's dataset: captioned train regions and uncaptioned ones (pseudo-label candidates)."""
    writer = DatasetWriter(out_dir)
    samples, unlabeled = [], []
    for scene in generate_dataset(seed, human_scenes + unlabeled_scenes):
        captioned = scene.index < human_scenes
        for index in range(len(scene.objects)):
            row, image, mask = region_row(scene, index, scene.index, captioned)
            if not writer.has(row["image"]):
                writer.write_image(row["image"], image)
            writer.write_mask(row["mask"], mask)
            (samples if captioned else unlabeled).append(row)
    info = {"snapshot_id": f"pseudo-ablation-{seed}", "counts": {"samples": len(samples), "train": len(samples),
                                                                 "val": 0, "unlabeled": len(unlabeled)}}
    return writer.commit(samples, unlabeled, [], info)


def pseudo_rows(dataset: Path, start: Path, threshold: float, max_fraction: float, model: Any
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The loop's pseudo-label step at ``threshold``: its rows (pseudo.jsonl is rewritten per call) and summary."""
    summary = pseudo_label(dataset, start, min_logprob=threshold, max_fraction=max_fraction, device="cpu", model=model)
    return read_jsonl(dataset / "pseudo.jsonl"), summary


def pseudo_accuracy(rows: list[dict[str, Any]]) -> float | None:
    """DLC-style average of the pseudo captions themselves against the regions' true attributes."""
    if not rows:
        return None
    return float(ev.evaluate_captions([r["caption"] for r in rows], [r["attributes"] for r in rows], ev.RuleJudge()).average)


def train_variant(name: str, dataset: Path, pseudo: list[dict[str, Any]], start: Path, args: argparse.Namespace,
                  seed: int) -> Path:
    rows = load_samples(dataset, "train", include_pseudo=False) + [
        {**r, "image_path": str(dataset / r["image"]), "mask_path": str(dataset / r["mask"])} for r in pseudo]
    cfg = training.TrainConfig(out_dir=str(args.out / "train" / f"{name}-seed{seed}"), max_steps=args.steps,
                               batch_size=args.batch_size, lr=args.lr, warmup_steps=min(10, args.steps // 10),
                               seed=seed, checkpoint_every=0, resume="none", device="cpu", num_threads=args.threads,
                               progress=False, train_vision=True, train_mask_embedding=True)
    return Path(training.train(cfg, read_samples(dataset, rows), init_model=str(start)))


def region_scores(reports: list[ev.Report]) -> dict[int, float]:
    """Per held-out region: the DLC-style region average, averaged over the training repeats."""
    return {i: float(np.mean([(r.regions[i].positive + r.regions[i].negative) / 2 for r in reports]))
            for i in range(len(reports[0].regions))}


def print_table(args: argparse.Namespace, start: Path, dataset: Path, variants: dict[str, list[dict[str, Any]]],
                summaries: dict[str, dict[str, Any]], reports: dict[str, list[ev.Report]]) -> list[dict[str, Any]]:
    """The ablation's table (and its rows as dicts)."""
    baseline = region_scores(reports[NONE])
    settings = GateSettings()
    n_human = len(load_samples(dataset, "train", include_pseudo=False))
    n_unlabeled = len(read_jsonl(dataset / "unlabeled.jsonl"))
    print(f"\npseudo-label ablation: start {start}\n  {n_human} corrected + {n_unlabeled} uncaptioned train regions "
          f"(seed {args.train_seed}); {args.steps} steps x batch {args.batch_size}, lr {args.lr:g}, training seeds "
          f"{list(range(args.repeats))}; held-out seed {args.eval_seed}: {len(baseline)} regions; pseudo cap "
          f"{args.max_fraction:g}")
    for name, summary in summaries.items():
        print(f"  {name}: {summary.get('passing_thresholds', 0)} of {summary['candidates']} candidates pass, "
              f"budget {summary['budget']}, kept {summary['kept']} (confidence "
              f"{summary.get('confidence_min', float('nan')):.3f}..{summary.get('confidence_max', float('nan')):.3f})")
    header = (f"{'variant':13} {'pseudo':>6} {'pseudo acc':>10} {'held-out avg':>12} {'per seed':>15}  "
              f"difference to none (95% CI, paired over regions)")
    print(header)
    print("-" * len(header))
    results = []
    for name, runs in reports.items():
        rows = variants.get(name, [])
        accuracy = pseudo_accuracy(rows)
        average = float(np.mean(list(region_scores(runs).values())))
        text, diff = "", None
        if name in variants and name != NONE:
            diff = compare_paired(baseline, region_scores(runs), settings, stream=0)
            text = diff.interval_text(settings.confidence)
        per_seed = " ".join(f"{r.average:.3f}" for r in runs)
        print(f"{name:13} {len(rows) if name in variants else '-':>6} "
              f"{'-' if accuracy is None else f'{accuracy:.3f}':>10} {average:12.3f} {per_seed:>15}  {text}")
        results.append({"variant": name, "pseudo_rows": len(rows), "pseudo_accuracy": accuracy, "average": average,
                        "per_seed": [r.average for r in runs], "regions": len(baseline),
                        "difference": None if diff is None else asdict(diff)})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dam_tools.pseudo_ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=Path, help="start (serving) model (default: the ci tiny DAM, built if missing)")
    parser.add_argument("--out", type=Path, default=Path("pseudo_ablation_out"))
    parser.add_argument("--human-scenes", type=int, default=40, help="scenes with corrected captions")
    parser.add_argument("--unlabeled-scenes", type=int, default=18, help="scenes whose regions have no caption")
    parser.add_argument("--thresholds", type=float, nargs=2, default=[-1.0, -0.15],
                        help="two min_logprob thresholds (the loop's old default, and about the median confidence)")
    parser.add_argument("--max-fraction", type=float, default=0.3, help="the loop's cap on the pseudo share")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=1, help="training seeds per variant (0..N-1); scores averaged")
    parser.add_argument("--eval-scenes", type=int, default=30)
    parser.add_argument("--train-seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be >= 1")
    torch.set_num_threads(args.threads)
    started = time.time()
    start = args.start or Path(ensure_tiny_model("ci"))
    dataset = write_round_dataset(args.out / "dataset", args.train_seed, args.human_scenes, args.unlabeled_scenes)
    serving = DescribeAnythingModel.from_pretrained(str(start), device="cpu")
    serving.eval()
    variants: dict[str, list[dict[str, Any]]] = {NONE: []}
    summaries = {}
    for threshold in args.thresholds:
        name = f"pseudo@{threshold:g}"
        variants[name], summaries[name] = pseudo_rows(dataset, start, threshold, args.max_fraction, serving)
    del serving
    reports = {"start model": [judge_scenes(start, args.eval_seed, args.eval_scenes)]}
    for name, rows in variants.items():
        reports[name] = [judge_scenes(train_variant(name.replace("@", "_"), dataset, rows, start, args, seed),
                                      args.eval_seed, args.eval_scenes) for seed in range(args.repeats)]
    results = print_table(args, start, dataset, variants, summaries, reports)
    helpful = [r["variant"] for r in results if r["difference"] and (r["difference"]["ci_low"] or 0) > 0]
    verdict = f"pseudo-labels help: {', '.join(helpful)}" if helpful else "no variant's interval lies above 0"
    seconds = round(time.time() - started, 1)
    atomic_write_json(args.out / "pseudo_ablation.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                                           "results": results, "verdict": verdict, "seconds": seconds})
    print(f"RESULT pseudo-ablation: {verdict} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
