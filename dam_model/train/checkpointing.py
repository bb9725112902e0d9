"""Resumable checkpoints, the final model folder and metrics.jsonl, all written so a kill never leaves half a file.

out_dir/checkpoints/step-NNNNNNNN is a plain DAM folder (official layout; LoRA merged) plus trainer_state.pt: the
optimizer, scheduler, step, every rank's RNG states, the config and (with LoRA) the unmerged trainable tensors. It is
built in a temp folder and renamed into place; `resume="auto"` picks the newest complete one. Resuming restores all
of it, so a resumed run replays the uninterrupted one exactly.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from dam_model.fileio import atomic_replace_dir, atomic_write_text
from dam_model.modeling import DescribeAnythingModel
from dam_model.train.config import TrainConfig
from dam_model.train.distributed import DistributedContext
from dam_model.train.parts import plain_for_saving
from dam_model.train.provenance import provenance

CHECKPOINT_DIRNAME = "checkpoints"
FINAL_DIRNAME = "final"
TRAINER_STATE = "trainer_state.pt"
METRICS_NAME = "metrics.jsonl"
STATE_FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_TMP_PREFIX = ".tmp-"


def _staging_dir(parent: Path, name: str) -> Path:
    """A fresh folder name beside the target (same file system, so the final rename is atomic)."""
    return parent / f"{_TMP_PREFIX}{name}.{os.getpid()}.{time.monotonic_ns()}"


# -- finding checkpoints -----------------------------------------------------------------------------------------------
def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in out_dir/checkpoints as (step, path), oldest first; temp folders are ignored."""
    root = Path(out_dir) / CHECKPOINT_DIRNAME
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and child.is_dir() and (child / TRAINER_STATE).is_file() and (child / "config.json").is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


def find_resume_checkpoint(cfg: TrainConfig) -> Path | None:
    """The checkpoint folder to resume from, per cfg.resume ('auto' -> newest complete one, or None)."""
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        found = list_checkpoints(cfg.out_dir)
        return found[-1][1] if found else None
    path = Path(cfg.resume)
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(f"resume path {path} is not a checkpoint (no {TRAINER_STATE})")
    return path


# -- RNG -------------------------------------------------------------------------------------------------------------
def rng_state(cuda_device: torch.device | None = None) -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states; with `cuda_device` (one rank of several) only that GPU's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if cuda_device is not None:
        state["cuda_device"] = torch.cuda.get_rng_state(cuda_device)
    elif torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], cuda_device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_device" in state and cuda_device is not None:
        torch.cuda.set_rng_state(state["cuda_device"], cuda_device)


def rank_cuda_device(ctx: DistributedContext, device: torch.device) -> torch.device | None:
    """The one GPU whose RNG is this rank's to save and restore (None: one process saves every GPU's)."""
    return device if ctx.enabled and device.type == "cuda" else None


# -- model folders ---------------------------------------------------------------------------------------------------
def load_model(source: DescribeAnythingModel | str | Path, device: torch.device) -> DescribeAnythingModel:
    """The model to train, in float32 on `device`: a DescribeAnythingModel (moved, trained in place) or a folder."""
    if isinstance(source, (str, Path)):
        return DescribeAnythingModel.from_pretrained(str(source), device=device, dtype=torch.float32)
    if isinstance(source, DescribeAnythingModel):
        return source.to(device=device, dtype=torch.float32)
    raise ValueError(f"init_model must be a path or a DescribeAnythingModel, got {type(source).__name__}")


def _save_model_folder(model: DescribeAnythingModel, cfg: TrainConfig, folder: Path) -> None:
    """The plain DAM (LoRA merged) via save_pretrained into a folder that must not exist yet."""
    plain_for_saving(model, cfg).save_pretrained(folder)
    if not (folder / "config.json").is_file():
        raise RuntimeError(f"save_pretrained wrote no config.json in {folder}")


def save_checkpoint(model: DescribeAnythingModel, optimizer: Optimizer, scheduler: LRScheduler, step: int,
                    cfg: TrainConfig, extra_state: dict[str, Any] | None = None) -> Path:
    """Write out_dir/checkpoints/step-NNNNNNNN atomically (temp folder, then renamed), then prune old ones."""
    root = Path(cfg.out_dir) / CHECKPOINT_DIRNAME
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    staging = _staging_dir(root, final.name)
    _save_model_folder(model, cfg, staging)
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "config": cfg.to_dict(),
        # LoRA: the official weights are merged, so resuming needs the unmerged trainable tensors.
        "trainable_state": (
            {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad} if cfg.lora_rank else None
        ),
        **(extra_state or {}),
    }
    torch.save(state, staging / TRAINER_STATE)
    atomic_replace_dir(staging, final)  # the same step written twice (a re-run) replaces the old folder whole
    for _, stale in list_checkpoints(cfg.out_dir)[: -cfg.keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoint_all_ranks(model: DescribeAnythingModel, optimizer: Optimizer, scheduler: LRScheduler,
                         step: int, cfg: TrainConfig, ctx: DistributedContext, device: torch.device) -> None:
    """Rank 0 writes the step's checkpoint with every rank's RNG states; every rank waits until it is in place."""
    extra: dict[str, Any] = {"world_size": ctx.world_size}
    if ctx.enabled:
        extra["rng_ranks"] = ctx.gather(rng_state(rank_cuda_device(ctx, device)))
    ctx.on_main(lambda: str(save_checkpoint(model, optimizer, scheduler, step, cfg, extra_state=extra)))


# -- resume ----------------------------------------------------------------------------------------------------------
def _restore_weights(model: DescribeAnythingModel, checkpoint: Path, cfg: TrainConfig, state: dict[str, Any],
                     device: torch.device) -> None:
    """Load a checkpoint's weights into the (possibly LoRA-wrapped) training model, strictly."""
    if cfg.lora_rank:
        saved = state.get("trainable_state")
        if saved is None:
            raise ValueError(f"{checkpoint} was written without LoRA but the config asks for lora_rank={cfg.lora_rank}")
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
        unexpected = [n for n in saved if n not in params]
        if missing or unexpected:
            raise ValueError(f"LoRA state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, tensor in saved.items():
                params[name].copy_(tensor.to(params[name].device))
        return
    model.load_state_dict(load_model(checkpoint, device).state_dict(), strict=True)


def resume_from(checkpoint: Path, model: DescribeAnythingModel, optimizer: Optimizer,
                scheduler: LRScheduler, cfg: TrainConfig, ctx: DistributedContext, device: torch.device) -> int:
    """Restore weights, optimizer, scheduler and this rank's RNG states from `checkpoint`; returns its step."""
    state = torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{checkpoint}: trainer_state format {state.get('format')} != {STATE_FORMAT}")
    saved_world = int(state.get("world_size", 1))
    if saved_world != ctx.world_size:
        raise ValueError(f"{checkpoint} was written by {saved_world} process(es) but this run has "
                         f"{ctx.world_size}: resume with the same number, or resume='none' / another out_dir")
    _restore_weights(model, checkpoint, cfg, state, device)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rank_states = state.get("rng_ranks")
    set_rng_state(rank_states[ctx.rank] if rank_states else state["rng"], rank_cuda_device(ctx, device))
    return int(state["step"])


# -- metrics and the final folder ------------------------------------------------------------------------------------
class MetricsLog:
    """metrics.jsonl appender; on resume, lines from steps after the resumed step are dropped (they are replayed).
    Ranks other than 0 get one with path None: they write nothing."""

    def __init__(self, path: Path | None, resume_step: int = 0) -> None:
        self.path = path
        if path is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def write_final(model: DescribeAnythingModel, cfg: TrainConfig, metrics: dict[str, Any]) -> Path:
    """out_dir/final: plain DAM folder + train_config.json, metrics.json, provenance.json (atomic replace)."""
    out_dir = Path(cfg.out_dir)
    final = out_dir / FINAL_DIRNAME
    staging = _staging_dir(out_dir, FINAL_DIRNAME)
    _save_model_folder(model, cfg, staging)
    (staging / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (staging / "provenance.json").write_text(json.dumps(provenance(cfg, metrics), indent=2, sort_keys=True))
    atomic_replace_dir(staging, final)
    return final
