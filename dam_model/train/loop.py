"""The training loop: any DAM preset on image regions and video tracks, for the tiny model and the nightly fine-tune.

Reads like a recipe (each step lives in its own module of dam_model.train):
1. `TrainConfig` says everything (validated, printed as one dict).
2. Samples (dam_model.data.RegionSample / TrackSample) are preprocessed once into the 8-channel DAM input.
3. Each optimizer step draws its batch from a seeded per-epoch permutation and its prompts from a seeded
   per-(step, slot) generator, so the data a step sees depends on (seed, step) only: resuming replays exactly.
4. Loss is the LM loss on caption tokens only.
5. Checkpoints are plain DAM folders plus trainer_state.pt, renamed into place; `resume="auto"` picks the newest.
6. The final folder is a plain DAM checkpoint (LoRA merged) with its config, metrics and provenance beside it.
7. Several processes (WORLD_SIZE > 1) train data-parallel with DistributedDataParallel: the global batch of a step
   (batch_size * grad_accum_steps * world size) is cut into one contiguous share per rank, and only rank 0 writes
   files. A step of W ranks with grad_accum_steps A sees the same samples, prompts and micro-batches as a
   one-process run with A * W.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from dam_model.data import Sample
from dam_model.modeling import DescribeAnythingModel
from dam_model.train.checkpointing import (METRICS_NAME, MetricsLog, checkpoint_all_ranks, find_resume_checkpoint,
                                           load_model, resume_from, write_final)
from dam_model.train.config import TrainConfig
from dam_model.train.data import RegionData, check_samples
from dam_model.train.distributed import (DistributedContext, accumulating, close_distributed, init_distributed,
                                         wrap_model)
from dam_model.train.parts import prepare_for_training
from dam_model.train.schedule import make_optimizer, total_steps

OnStep = Callable[[int, float], None]


def train(cfg: TrainConfig, train_samples: Iterable[Sample], val_samples: Iterable[Sample] | None = None,
          init_model: DescribeAnythingModel | str | Path | None = None, on_step: OnStep | None = None) -> Path:
    """Train a DAM and return out_dir/final: a plain DAM folder (official layout) + train_config/metrics/provenance json.

    init_model: a DescribeAnythingModel (random init from `from_config(cfg, tokenizer)`, trained in place)
    or a checkpoint path (fine-tuning). A resumable checkpoint in out_dir takes precedence for the weights.
    Samples: dam_model.data.RegionSample / TrackSample; image regions and video tracks mix freely in a batch.
    on_step(step, loss) runs after every optimizer step and its checkpoint (a hook for callers and for tests
    that simulate a kill by raising).

    Launched as several processes (WORLD_SIZE > 1: `torchrun --nproc_per_node N` or `accelerate launch
    --num_processes N`), every rank calls train() with the same arguments: data-parallel training where rank 0
    alone writes out_dir (checkpoints, metrics.jsonl, final/) and every rank returns the final path. A resume
    needs the world size that wrote the checkpoint. The process group is created here unless the caller made one.
    """
    if init_model is None:
        raise ValueError("init_model is required: a DescribeAnythingModel or a checkpoint folder")
    # Every rank holds (and preprocesses) all samples; it draws only its own share of each step from them.
    train_list = check_samples(train_samples)
    val_list = check_samples(val_samples, "validation") if val_samples is not None else []
    ctx, device = init_distributed(cfg)
    try:
        return _train(cfg, train_list, val_list, init_model, on_step, ctx, device)
    finally:
        close_distributed(ctx)


def _train(cfg: TrainConfig, train_list: list[Sample], val_list: list[Sample],
           init_model: DescribeAnythingModel | str | Path, on_step: OnStep | None, ctx: DistributedContext,
           device: torch.device) -> Path:
    start_time = time.time()
    say = print if ctx.is_main else (lambda *args, **kwargs: None)
    say("train config:", json.dumps(cfg.to_dict(), sort_keys=True), flush=True)
    if ctx.enabled:
        say(f"data parallel: {ctx.world_size} processes, global batch {cfg.global_batch_size(ctx.world_size)}",
            flush=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if ctx.is_main:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    steps = total_steps(cfg, len(train_list), ctx.world_size)
    model, optimizer, scheduler, start_step, trainable = _build(cfg, init_model, steps, ctx, device, say)
    module = wrap_model(model, ctx, device)  # what forward and backward go through (DDP with several ranks)
    data = _region_data(train_list, model, cfg, rank=ctx.rank, world_size=ctx.world_size)
    val_data = _region_data(val_list, model, cfg, augment=False) if val_list else None
    metrics = MetricsLog(Path(cfg.out_dir) / METRICS_NAME if ctx.is_main else None, start_step)
    say(f"training {steps} steps on {len(train_list)} samples ({data.num_videos} video), "
        f"device {device}, trainable {json.dumps(trainable)}", flush=True)
    bar = (tqdm(total=steps, initial=start_step, desc="train", dynamic_ncols=True)
           if ctx.is_main and cfg.progress and sys.stderr.isatty() else None)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    last_loss, window, window_start = float("nan"), [], time.time()
    for step in range(start_step, steps):
        step_loss = 0.0
        for micro in range(cfg.grad_accum_steps):
            batch = {k: v.to(device) for k, v in data.batch(step, micro).items()}
            with accumulating(module, last_micro=micro == cfg.grad_accum_steps - 1), autocast(cfg, device):
                loss = module(**batch).loss
            (loss.float() / cfg.grad_accum_steps).backward()  # DDP averages over ranks on the last micro-batch
            step_loss += loss.item() / cfg.grad_accum_steps
        step_loss = ctx.mean(step_loss, device)  # the global batch's loss, the same on every rank
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done, last_loss = step + 1, step_loss
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss is {step_loss} at step {done}")
        window.append(step_loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
        if val_data is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < steps:
            metrics.write({"step": done, "val_loss": evaluate_loss(model, val_data, cfg, device, ctx=ctx)})
        if done % max(cfg.log_every, 1) == 0 or done == steps:
            now, mean_loss = time.time(), sum(window) / len(window)
            metrics.write({"step": done, "loss": mean_loss, "last_loss": step_loss, "lr": scheduler.get_last_lr()[0],
                           "grad_norm": float(grad_norm), "sec_per_step": (now - window_start) / len(window)})
            if bar is None and cfg.progress and cfg.log_every:
                say(f"step {done}/{steps} loss {mean_loss:.4f}", flush=True)
            window, window_start = [], now
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == steps:
            checkpoint_all_ranks(model, optimizer, scheduler, done, cfg, ctx, device)
        if on_step is not None:
            on_step(done, step_loss)
    if bar is not None:
        bar.close()

    final_metrics: dict[str, Any] = {"steps": steps, "train_loss_last": last_loss, "train_samples": len(train_list),
                                     "train_video_samples": data.num_videos, "world_size": ctx.world_size,
                                     "global_batch_size": cfg.global_batch_size(ctx.world_size),
                                     "seconds": round(time.time() - start_time, 1)}
    if val_data is not None:
        final_metrics["val_loss"] = evaluate_loss(model, val_data, cfg, device, ctx=ctx)
        metrics.write({"step": steps, "val_loss": final_metrics["val_loss"]})
    return Path(ctx.on_main(lambda: str(write_final(model, cfg, final_metrics))))


def _build(cfg: TrainConfig, init_model: DescribeAnythingModel | str | Path, steps: int, ctx: DistributedContext,
           device: torch.device, say: Callable[..., None]
           ) -> tuple[DescribeAnythingModel, torch.optim.Optimizer, LRScheduler, int, dict[str, int]]:
    """(model ready to train, optimizer, scheduler, first step, trainable counts), resumed if out_dir holds a
    checkpoint (weights, optimizer, scheduler and RNG states as they were after its step)."""
    # Seed before building anything random (LoRA init); a resume then restores the exact RNG states.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    model = load_model(init_model, device)
    if model.tokenizer is None:
        raise ValueError("model has no tokenizer attached (build it with from_config(cfg, tokenizer) or from_pretrained)")
    checkpointing = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else device.type == "cuda"
    trainable = prepare_for_training(model, cfg, device, checkpointing)
    optimizer, scheduler = make_optimizer(model, cfg, steps, device)
    start_step = 0
    checkpoint = ctx.on_main(lambda: find_resume_checkpoint(cfg))
    if checkpoint is not None:
        start_step = resume_from(Path(checkpoint), model, optimizer, scheduler, cfg, ctx, device)
        say(f"resumed from {checkpoint} at step {start_step}", flush=True)
    return model, optimizer, scheduler, start_step, trainable


def _region_data(samples: list[Sample], model: DescribeAnythingModel, cfg: TrainConfig, **kwargs: Any) -> RegionData:
    """RegionData with the model's tokenizer, input size and inference queries."""
    return RegionData(samples, model.tokenizer, model.config.vision.image_size, cfg, global_only=cfg.global_only,
                      image_query=model.config.image_query, video_query=model.config.video_query, **kwargs)


def autocast(cfg: TrainConfig, device: torch.device) -> ContextManager:
    """bf16 autocast when cfg.dtype asks for it ('auto': on CUDA only); weights stay float32."""
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_loss(model: DescribeAnythingModel, data: RegionData, cfg: TrainConfig, device: torch.device,
                  batch_size: int | None = None, ctx: DistributedContext | None = None) -> float:
    """Token-weighted mean caption loss over `data` (default query + long caption). With several ranks each scores
    its share of the batches and the sums are all-reduced: every rank returns the same value."""
    ctx = ctx or DistributedContext()
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in data.eval_batches(batch_size or cfg.batch_size, ctx.rank, ctx.world_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(cfg, device):
                loss = model(**batch).loss.float().item()
            # The model averages over predicted tokens: count the shifted caption tokens to re-weight.
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += loss * n
            tokens += n
    total, tokens = ctx.sum([total, tokens], device)
    model.train(was_training)
    return total / max(tokens, 1)
