"""How long and how fast: the number of optimizer steps, AdamW over the trainable parameters, warm-up + cosine."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from dam_model.train.config import TrainConfig


def total_steps(cfg: TrainConfig, n_samples: int, world_size: int = 1) -> int:
    """cfg.max_steps, or enough global batches for cfg.epochs passes over n_samples."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * n_samples / cfg.global_batch_size(world_size)))  # type: ignore[operator]


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based): linear warm-up, then cosine to min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: matrices decay, vectors (biases, norms, gates) do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, steps: int,
                   device: torch.device) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """(AdamW, its LambdaLR schedule) for a run of `steps` optimizer steps."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.adam_betas,
                                  foreach=device.type == "cuda")
    scheduler = LambdaLR(optimizer, lambda s: lr_factor(s, cfg, steps))
    return optimizer, scheduler
