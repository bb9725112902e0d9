"""Step 4 of the loop (dam-train): fine-tune the serving checkpoint on a built dataset with the shared module dam_model.training.

- Starts from ``--init`` (default: the version current.json points at under MODELS_ROOT).
- Trains on the train split's image regions (samples.jsonl, + pseudo labels) and video tracks (video_samples.jsonl:
  each track's frames and masks go through the model's video query, as describe_video sees them), read as
  dam_model.data samples by dam_loop.dataset.
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

    python -m dam_loop.steps.train --work-root loop_work --max-steps 200       # single process (CPU or one GPU)
    accelerate launch --num_processes 4 -m dam_loop.steps.train --work-root loop_work --max-steps 200   # 4 GPUs
    torchrun --nproc_per_node 4 -m dam_loop.steps.train --work-root loop_work --max-steps 200          # the same

Several processes (the launcher sets WORLD_SIZE, RANK, LOCAL_RANK): data-parallel training, one GPU per process
(cuda:LOCAL_RANK, nccl; gloo on CPU). ``--batch-size`` is per process: a step's global batch is batch size x
grad accum x processes. Rank 0 alone writes the output folder and prints the candidate line. The default output
folder's name includes the number of processes (when more than one), so a re-run resumes only with as many.

Every training flag is declared once, in ``add_train_flags``; nightly adds the same flags to its own parser and
hands them on to the training subprocess with ``train_flags_argv``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from dam_loop.cli import (
    EXIT_OK,
    BadArguments,
    NoSamples,
    add_log_level_arg,
    add_models_root_arg,
    add_work_root_arg,
    env_default,
    env_float,
    env_int,
    positive_int,
    run_main,
    step_parser,
)
from dam_loop.dataset import (is_video, latest_dataset_dir, load_samples, load_video_samples, read_info, read_samples,
                              require_built)
from dam_loop.models_root import resolve_init
from dam_loop.provenance import git_commit
from dam_model.training import TrainConfig, train

log = logging.getLogger("dam_loop.train")

MODULE = "dam_loop.steps.train"  # `python -m MODULE`: how nightly and the launchers start this step

#: --trainable names -> TrainConfig flags
PART_FLAGS = {
    "llm": "train_llm",
    "projector": "train_projector",
    "adapters": "train_context_provider",
    "vision": "train_vision",
    "mask_embedding": "train_mask_embedding",
}
DEFAULT_TRAINABLE = "llm,projector,adapters,mask_embedding"
# The loop checkpoints every 50 steps where TrainConfig's default is 500: a nightly run killed during training
# resumes from its last checkpoint the next night, so little work may be lost.
LOOP_CHECKPOINT_EVERY = 50
# Flags nightly does not hand on as parsed: it passes the start model it resolved itself.
NOT_FORWARDED = {"init"}


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


# ----------------------------------------------------------------------------------------------- training flags
def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """Every training flag, here and nowhere else (train's parser and nightly's call this): TrainConfig's fields
    plus the loop's own (--init, --trainable, --no-pseudo, --val-loss). Deployment settings also come from env."""
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
    g.add_argument("--checkpoint-every", type=int, default=env_int("TRAIN_CHECKPOINT_EVERY", LOOP_CHECKPOINT_EVERY),
                   help=f"steps between resumable checkpoints (env TRAIN_CHECKPOINT_EVERY; default {LOOP_CHECKPOINT_EVERY})")
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


def train_flags_argv(args: argparse.Namespace) -> list[str]:
    """The training flags of parsed ``args`` written back as command-line arguments (for the training subprocess
    nightly starts): every flag add_train_flags declares, except NOT_FORWARDED; unset ones are left out."""
    flags = argparse.ArgumentParser(add_help=False)
    add_train_flags(flags)
    argv: list[str] = []
    for action in flags._actions:  # argparse keeps no public list of a parser's flags
        value = getattr(args, action.dest, None)
        if action.dest in NOT_FORWARDED or value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(action.option_strings[0 if value else 1])  # --x / --no-x
        elif action.nargs == 0:  # store_true
            argv += [action.option_strings[0]] if value else []
        else:
            argv += [action.option_strings[0], str(value)]
    return argv


def train_config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields from the training flags (out_dir and extra are the step's to fill in)."""
    return {
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


def command(launcher: list[str], args: argparse.Namespace, dataset: Path, init: Path | str) -> list[str]:
    """argv that runs this step in a new process: ``launcher`` (this Python, or e.g. `accelerate launch`), module
    form (so `accelerate launch -m` and plain Python both work), the paths, then the training flags of ``args``."""
    return launcher + ["-m", MODULE, "--work-root", str(args.work_root), "--models-root", str(args.models_root),
                       "--dataset", str(dataset), "--init", str(init), "--log-level", args.log_level,
                       *train_flags_argv(args)]


# ----------------------------------------------------------------------------------------------- training
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
    work_root = Path(args.work_root)
    dataset_dir = require_built(Path(args.dataset) if args.dataset else latest_dataset_dir(work_root))
    init = resolve_init(args.init, args.models_root)
    train_rows = load_samples(dataset_dir, "train", include_pseudo=not args.no_pseudo)
    train_rows += load_video_samples(dataset_dir, "train")
    val_rows: list[dict[str, Any]] = []
    if args.val_loss:
        val_rows = load_samples(dataset_dir, "val", include_pseudo=False) + load_video_samples(dataset_dir, "val")
    if not train_rows:
        raise NoSamples(f"{dataset_dir} has no training samples")
    n_videos = sum(map(is_video, train_rows))
    n_val_videos = sum(map(is_video, val_rows))
    dataset_info = read_info(dataset_dir)
    fields = train_config_fields(args)
    out_dir = Path(args.out) if args.out else default_out_dir(work_root, dataset_dir, init, fields, world_size())
    fields["out_dir"] = str(out_dir)
    fields["extra"] = {
        "snapshot_id": dataset_info.get("snapshot_id"),
        "dataset": str(dataset_dir),
        "dataset_counts": dataset_info.get("counts", {}),
        "init_model": str(init),
        "pseudo_samples": sum(r.get("source") == "pseudo" for r in train_rows),
        "video_samples": n_videos,
        "loop_git_commit": git_commit(),
    }
    try:
        cfg = TrainConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise BadArguments(str(exc)) from exc
    log.info("training from %s on %d image regions + %d video tracks (val %d + %d) into %s, %d process(es)", init,
             len(train_rows) - n_videos, n_videos, len(val_rows) - n_val_videos, n_val_videos, out_dir, world_size())
    val = read_samples(dataset_dir, val_rows)
    final = Path(train(cfg, read_samples(dataset_dir, train_rows), val or None, init_model=str(init)))
    log.info("candidate written to %s", final)
    return final


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = step_parser(f"python -m {MODULE}", __doc__)
    add_work_root_arg(parser)
    add_models_root_arg(parser)
    parser.add_argument("--dataset", type=Path, help="built dataset folder (default: the latest snapshot's)")
    parser.add_argument("--out", type=Path, help="training output folder (default: stable name under <work root>/train)")
    add_train_flags(parser)
    add_log_level_arg(parser)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    main_process = process_rank() == 0
    if not main_process:  # the other ranks of a multi-process launch: warnings and errors only
        log.setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    final = run(args)
    if main_process:
        print(json.dumps({"candidate": str(final)}))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_main(run_cli, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
