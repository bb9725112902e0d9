"""The DAM paper's focal-prompt ablation in miniature: focal crop + cross-attention vs global view only.

    python -m dam_tools.ablation [--steps N] [--train-scenes N] [--eval-scenes N] [--out DIR]

Both variants start from the SAME random init (same seed), train for the SAME number of steps on the SAME
regions with the SAME prompts; they differ only in what the vision side sees:
- focal:  full view + mask, plus the focal crop (3x the mask box) encoded with the cross-attention adapters;
- global: full view + mask only (every region forced onto the plain path: no crop, no adapters).
Scenes are the generator's defaults (360-576 px on the shorter side): a small object covers only a few pixels
of the 64-px global view, while its focal crop zooms in: the regime where the paper says the focal prompt matters. Evaluation: greedy captions on a held-out seed,
scored by the exact RuleJudge; the global variant is evaluated on the plain path too.

Prints a table and ``RESULT ablation ratio=<focal small-object score / global small-object score>``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dam_model import train as training
from dam_model.modeling import DescribeAnythingModel
from dam_tools.build_tiny_model import (PROFILES, evaluate_model, fresh_tiny_model, region_samples,
                                        synthetic_eval_regions, train_tiny_tokenizer)

PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # variant processes run `-m dam_tools.ablation` from here


def run_variant(name: str, global_only: bool, args: argparse.Namespace, tokenizer: Any, train_samples: list[Any],
                eval_samples: list[Any], eval_regions: list[Any]) -> dict[str, Any]:
    """Train one variant from the shared seed and evaluate it; returns its report plus timings."""
    profile = PROFILES[args.profile]
    model = fresh_tiny_model(profile, tokenizer, seed=args.seed)
    fields = {**profile.train, "max_steps": args.steps, "warmup_steps": min(profile.train["warmup_steps"], args.steps // 10),
              "checkpoint_every": 0, "seed": args.seed, "global_only": global_only, "resume": "none",
              "out_dir": str(args.out / name)}
    started = time.time()
    final = training.train(training.TrainConfig(**fields), train_samples, init_model=model)
    train_seconds = time.time() - started
    trained = DescribeAnythingModel.from_pretrained(str(final), device="cpu", dtype=torch.float32)
    started = time.time()
    report = evaluate_model(trained, eval_samples, eval_regions, profile.max_new_tokens, global_only=global_only)
    return {"variant": name, "report": report, "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(time.time() - started, 1)}


def _run_in_subprocesses(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each variant in its own `python -m dam_tools.ablation --only NAME` process; results read back from json."""
    base = ["--steps", str(args.steps), "--train-scenes", str(args.train_scenes), "--eval-scenes",
            str(args.eval_scenes), "--profile", args.profile, "--seed", str(args.seed), "--out", str(args.out)]
    procs = [subprocess.Popen([sys.executable, "-m", "dam_tools.ablation", *base, "--jobs", "1", "--only", name],
                              cwd=PACKAGE_PARENT) for name in ("focal", "global")]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"ablation variant processes exited with {codes}")
    return [json.loads((args.out / f"{name}.json").read_text()) for name in ("focal", "global")]


def small_score(report: dict[str, Any]) -> float:
    """The DLC-style average on small objects."""
    return float(report["by_size"]["small"]["average"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per variant (equal budget)")
    parser.add_argument("--train-scenes", type=int, default=400)
    parser.add_argument("--eval-scenes", type=int, default=30)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci", help="model size and optimiser settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("ablation_out"))
    parser.add_argument("--jobs", type=int, choices=[1, 2], default=1,
                        help="2 = train the two variants in two processes at once (same results, less wall time)")
    parser.add_argument("--only", choices=["focal", "global"], help=argparse.SUPPRESS)  # one variant (used by --jobs 2)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    profile = PROFILES[args.profile]
    train_samples = region_samples(1000 + args.seed, args.train_scenes)
    eval_samples = region_samples(9000 + args.seed, args.eval_scenes)
    eval_regions = synthetic_eval_regions(9000 + args.seed, args.eval_scenes)
    tokenizer = train_tiny_tokenizer(train_samples, profile.vocab_size, args.out / "tokenizer")

    variants = [(name, global_only) for name, global_only in (("focal", False), ("global", True))
                if args.only in (None, name)]
    if args.jobs == 2 and args.only is None:
        results = _run_in_subprocesses(args)
    else:
        results = [run_variant(name, global_only, args, tokenizer, train_samples, eval_samples, eval_regions)
                   for name, global_only in variants]
    if args.only is not None:
        (args.out / f"{args.only}.json").write_text(json.dumps(results[0], sort_keys=True, default=str))
        return 0

    print(f"\nablation: {args.steps} steps, {len(train_samples)} train regions, "
          f"{len(eval_samples)} held-out regions (profile {args.profile})")
    header = f"{'variant':8} {'avg':>6} {'pos':>6} {'neg':>6} {'small':>6} {'medium':>6} {'large':>6} {'train s':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        rep, by = r["report"], r["report"]["by_size"]
        sizes = [by.get(s, {}).get("average", float("nan")) for s in ("small", "medium", "large")]
        print(f"{r['variant']:8} {rep['average']:6.3f} {rep['positive']:6.3f} {rep['negative']:6.3f} "
              + " ".join(f"{v:6.3f}" for v in sizes) + f" {r['train_seconds']:8.1f}")
    focal, global_ = small_score(results[0]["report"]), small_score(results[1]["report"])
    ratio = focal / global_ if global_ > 0 else float("inf")
    (args.out / "ablation.json").write_text(json.dumps({"steps": args.steps, "results": results, "ratio": ratio},
                                                       indent=2, sort_keys=True, default=str))
    print(f"RESULT ablation ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
