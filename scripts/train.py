"""Step 4 of the loop: fine-tune the serving checkpoint on a built dataset with the shared module dam_model.training.

- Starts from ``--init`` (default: the version current.json points at under MODELS_ROOT).
- Trains on the train split's image regions (samples.jsonl, + pseudo labels) and video tracks (video_samples.jsonl:
  each track's frames and masks go through the model's video query, as describe_video sees them).
- Full fine-tuning, or LoRA on the LLM (``--lora-rank R``, peft; merged into the weights on save).
- ``--trainable`` picks the parts that learn: llm, projector, adapters (focal cross-attention + MLP + gates),
  vision, mask_embedding.
- bf16 autocast and gradient checkpointing by default on CUDA (``--dtype``, ``--gradient-checkpointing``); fp32 on CPU.
- Output folder (default ``<work root>/train/<snapshot id>-<config hash>``) is stable for a given snapshot, start
  model and configuration, so a killed run started again with the same arguments resumes from its last checkpoint
  (``--resume auto``, the default).
- The result is ``<out>/final/``: a plain DAM folder in the official layout + train_config.json, metrics.json and
  provenance.json (git commit, snapshot id, dataset, config, metrics).

Usage::

    python -m scripts.train --work-root loop_work --max-steps 200             # single process (CPU or one GPU)
    accelerate launch --num_processes 4 scripts/train.py --work-root loop_work --max-steps 200     # 4 GPUs
    torchrun --nproc_per_node 4 -m scripts.train --work-root loop_work --max-steps 200            # the same

Several processes (the launcher sets WORLD_SIZE, RANK, LOCAL_RANK): data-parallel training, one GPU per process
(cuda:LOCAL_RANK, nccl; gloo on CPU). ``--batch-size`` is per process: a step's global batch is batch size x
grad accum x processes. Rank 0 alone writes the output folder and prints the candidate line. The default output
folder's name includes the number of processes (when more than one), so a re-run resumes only with as many.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (accelerate launch scripts/train.py): import from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.loop_common import (  # noqa: E402
    EXIT_FAILURE,
    EXIT_PROMOTED,
    BadArguments,
    LoopError,
    NoSamples,
    add_log_level_arg,
    latest_dataset_dir,
    add_models_root_arg,
    add_work_root_arg,
    env_default,
    env_float,
    env_int,
    git_commit,
    positive_int,
    read_json,
    setup_logging,
)

log = logging.getLogger("scripts.train")

#: --trainable names -> TrainConfig flags
PART_FLAGS = {
    "llm": "train_llm",
    "projector": "train_projector",
    "adapters": "train_context_provider",
    "vision": "train_vision",
    "mask_embedding": "train_mask_embedding",
}
DEFAULT_TRAINABLE = "llm,projector,adapters,mask_embedding"


def world_size() -> int:
    """Processes of this training run (WORLD_SIZE, set by torchrun / accelerate launch; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def process_rank() -> int:
    """This process's rank (RANK, set by the launcher; 0 without one). Rank 0 reports, the others stay quiet."""
    return int(os.environ.get("RANK", "0") or 0)


def parse_trainable(text: str) -> dict[str, bool]:
    """'llm,projector' -> {train_llm: True, train_projector: True, others False}."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PART_FLAGS]
    if unknown:
        raise BadArguments(f"unknown trainable part(s) {unknown}; choose from {sorted(PART_FLAGS)}")
    return {flag: name in names for name, flag in PART_FLAGS.items()}


def resolve_init(init: str | None, models_root: str) -> Path | str:
    """The start checkpoint: ``init`` when given; else the serving version (current.json under MODELS_ROOT); else,
    before the first promotion, env INIT_MODEL. A folder, or a hub id such as nvidia/DAM-3B."""
    if not init:
        from scripts.promote import champion_dir

        champion = champion_dir(models_root)
        if champion is not None:
            return champion
        init = env_default("INIT_MODEL")
        if not init:
            raise BadArguments(f"nothing promoted in {models_root} yet: pass --init or set INIT_MODEL (the starting model)")
    path = Path(init)
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", init):
        return init  # a hub id: DescribeAnythingModel.from_pretrained resolves it
    if not (path / "config.json").exists():
        raise BadArguments(f"{path} is not a DAM model folder (no config.json)")
    return path


def load_split(dataset_dir: Path, split: str, include_pseudo: bool = True) -> list[dict[str, Any]]:
    """Training dicts {image HxWx3 uint8, mask HxW bool, caption, ...} of one split (pseudo labels only in train)."""
    from scripts.build import load_samples, read_image, read_mask

    rows = load_samples(dataset_dir, split, include_pseudo=include_pseudo)
    images: dict[str, Any] = {}
    out = []
    for row in rows:
        if row["image_path"] not in images:
            images[row["image_path"]] = read_image(row["image_path"])
        out.append({**row, "image": images[row["image_path"]], "mask": read_mask(row["mask_path"])})
    return out


def load_video_split(dataset_dir: Path, split: str) -> list[dict[str, Any]]:
    """Training dicts {kind "video", frames [HxWx3 uint8], masks [HxW bool], caption, ...} of one split's video
    tracks (video_samples.jsonl; [] when the dataset has none). Tracks of one video share their decoded frames."""
    from scripts.build import load_video_samples, read_image, read_mask

    frames: dict[str, Any] = {}
    out = []
    for row in load_video_samples(dataset_dir, split):
        for path in row["frame_paths"]:
            if path not in frames:
                frames[path] = read_image(path)
        out.append({**row, "kind": "video", "frames": [frames[p] for p in row["frame_paths"]],
                    "masks": [read_mask(p) for p in row["mask_paths"]]})
    return out


def default_out_dir(work_root: Path, dataset_dir: Path, init: Path | str, config: dict[str, Any],
                    processes: int = 1) -> Path:
    """Stable per (dataset + pseudo labels, start model, config, number of processes when > 1) so a re-run after a
    crash resumes, not restarts (a checkpoint resumes only with the number of processes that wrote it)."""
    stable = {k: v for k, v in config.items() if k not in ("out_dir", "resume", "progress", "device", "num_threads", "extra")}
    init_id = str(Path(init).resolve()) if Path(init).exists() else str(init)
    pseudo = dataset_dir / "pseudo.jsonl"
    pseudo_id = hashlib.sha256(pseudo.read_bytes()).hexdigest() if pseudo.exists() else None
    key: list[Any] = [str(dataset_dir.resolve()), init_id, pseudo_id, stable]
    if processes > 1:
        key.append({"world_size": processes})
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    return Path(work_root) / "train" / f"{dataset_dir.name}-{digest.hexdigest()[:10]}"


def run(args: argparse.Namespace) -> Path:
    """Train and return the final model folder."""
    from dam_model.training import TrainConfig, train

    work_root = Path(args.work_root)
    dataset_dir = Path(args.dataset) if args.dataset else latest_dataset_dir(work_root)
    if not (dataset_dir / "dataset.json").exists():
        raise BadArguments(f"{dataset_dir} is not a built dataset (no dataset.json): run scripts.build")
    init = resolve_init(args.init, args.models_root)
    train_rows = load_split(dataset_dir, "train", include_pseudo=not args.no_pseudo)
    train_videos = load_video_split(dataset_dir, "train")
    val_rows = load_split(dataset_dir, "val", include_pseudo=False) if args.val_loss else []
    val_videos = load_video_split(dataset_dir, "val") if args.val_loss else []
    if not train_rows and not train_videos:
        raise NoSamples(f"{dataset_dir} has no training samples")
    dataset_info = read_json(dataset_dir / "dataset.json")
    fields: dict[str, Any] = {
        "out_dir": "-",
        "lr": args.lr,
        "max_steps": args.max_steps,
        "epochs": None if args.max_steps else args.epochs,
        "batch_size": args.batch_size,
        "grad_accum_steps": args.grad_accum_steps,
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
        "lora_rank": args.lora_rank,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "resume": args.resume,
        "device": args.device,
        "dtype": args.dtype,
        "gradient_checkpointing": args.gradient_checkpointing,
        "num_threads": args.num_threads,
        "progress": not args.no_progress,
        **parse_trainable(args.trainable),
    }
    out_dir = Path(args.out) if args.out else default_out_dir(work_root, dataset_dir, init, fields, world_size())
    fields["out_dir"] = str(out_dir)
    fields["extra"] = {
        "snapshot_id": dataset_info.get("snapshot_id"),
        "dataset": str(dataset_dir),
        "dataset_counts": dataset_info.get("counts", {}),
        "init_model": str(init),
        "pseudo_samples": sum(r.get("source") == "pseudo" for r in train_rows),
        "video_samples": len(train_videos),
        "loop_git_commit": git_commit(),
    }
    try:
        cfg = TrainConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise BadArguments(str(exc)) from exc
    log.info("training from %s on %d image regions + %d video tracks (val %d + %d) into %s, %d process(es)", init,
             len(train_rows), len(train_videos), len(val_rows), len(val_videos), out_dir, world_size())
    val = val_rows + val_videos
    final = Path(train(cfg, train_rows + train_videos, val or None, init_model=str(init)))
    log.info("candidate written to %s", final)
    return final


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Training options shared with scripts.nightly (deployment settings also from env)."""
    g = parser.add_argument_group("training")
    g.add_argument(
        "--init", default=None,
        help="start checkpoint, overriding the default: the serving version, or env INIT_MODEL before the first promotion",
    )
    g.add_argument("--max-steps", type=positive_int, default=env_int("TRAIN_MAX_STEPS", None), help="optimizer steps (env TRAIN_MAX_STEPS)")
    g.add_argument("--epochs", type=float, default=env_float("TRAIN_EPOCHS", 1.0), help="passes when --max-steps is unset (env TRAIN_EPOCHS)")
    g.add_argument("--lr", type=float, default=env_float("TRAIN_LR", 1e-4), help="peak learning rate (env TRAIN_LR)")
    g.add_argument("--batch-size", type=positive_int, default=env_int("TRAIN_BATCH_SIZE", 8), help="regions (or video tracks) per micro-batch and process (env TRAIN_BATCH_SIZE)")
    g.add_argument("--grad-accum-steps", type=positive_int, default=env_int("TRAIN_GRAD_ACCUM", 1), help="micro-batches per step (env TRAIN_GRAD_ACCUM)")
    g.add_argument("--warmup-steps", type=int, default=env_int("TRAIN_WARMUP_STEPS", 0), help="linear warm-up steps")
    g.add_argument("--seed", type=int, default=env_int("TRAIN_SEED", 0), help="data order / augmentation seed")
    g.add_argument("--lora-rank", type=int, default=env_int("TRAIN_LORA_RANK", 0), help="LoRA rank on the LLM (0 = full fine-tune; env TRAIN_LORA_RANK)")
    g.add_argument(
        "--trainable", default=env_default("TRAIN_PARTS", DEFAULT_TRAINABLE),
        help=f"comma list of parts that learn: {', '.join(PART_FLAGS)} (env TRAIN_PARTS; default {DEFAULT_TRAINABLE})",
    )
    g.add_argument("--checkpoint-every", type=int, default=env_int("TRAIN_CHECKPOINT_EVERY", 50), help="steps between resumable checkpoints")
    g.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl lines")
    g.add_argument("--resume", default="auto", help="'auto' (newest checkpoint in the output folder), 'none' or a checkpoint folder")
    g.add_argument("--device", default=env_default("DEVICE", "auto"), help="auto, cpu, cuda, cuda:1 (env DEVICE)")
    g.add_argument("--dtype", default=env_default("TRAIN_DTYPE", "auto"), choices=["auto", "float32", "bfloat16"], help="auto = bf16 autocast on CUDA")
    g.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
        help="recompute activations (default: on with CUDA, off on CPU)",
    )
    g.add_argument("--num-threads", type=int, default=env_int("TORCH_NUM_THREADS", 0), help="torch threads on CPU (0 = torch default)")
    g.add_argument("--no-pseudo", action="store_true", help="ignore pseudo-labelled samples")
    g.add_argument("--val-loss", action="store_true", help="also report the validation loss after training")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_work_root_arg(parser)
    add_models_root_arg(parser)
    parser.add_argument("--dataset", type=Path, help="built dataset folder (default: the latest snapshot's)")
    parser.add_argument("--out", type=Path, help="training output folder (default: stable name under <work root>/train)")
    add_train_args(parser)
    add_log_level_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    main_process = process_rank() == 0
    if not main_process:  # the other ranks of a multi-process launch: warnings and errors only
        log.setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    try:
        final = run(args)
    except LoopError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("training failed")
        return EXIT_FAILURE
    if main_process:
        print(json.dumps({"candidate": str(final)}))
    return EXIT_PROMOTED


if __name__ == "__main__":
    sys.exit(main())
