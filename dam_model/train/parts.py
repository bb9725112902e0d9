"""Which parameters learn: freezing by part, LoRA adapters on the LLM, and merging them back for saving.

Parameter names follow the model's (= the official checkpoint's) sub-modules: `llm.`, `mm_projector.`,
`context_provider.`, `vision_tower.` (whose `mask_patch_embedding` is a part of its own).
"""
from __future__ import annotations

import copy

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from dam_model.modeling import DescribeAnythingModel
from dam_model.train.config import TrainConfig

_PART_OF_MODULE = {"llm": "llm", "mm_projector": "projector", "context_provider": "context_provider",
                   "vision_tower": "vision"}


def part_of(param_name: str) -> str:
    """The trainable part (a name of config.TRAINABLE_PARTS) a parameter belongs to."""
    if "mask_patch_embedding" in param_name:
        return "mask_embedding"
    part = _PART_OF_MODULE.get(param_name.split(".", 1)[0])
    if part is None:
        raise ValueError(f"parameter {param_name!r} belongs to no known DAM part")
    return part


def is_lora_param(name: str) -> bool:
    return "lora_" in name


def set_trainable(model: DescribeAnythingModel, cfg: TrainConfig) -> dict[str, int]:
    """Freeze or unfreeze parameters by part; returns trainable parameter counts per part (LoRA as 'lora')."""
    parts = set(cfg.trainable_parts())
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if is_lora_param(name):
            param.requires_grad_(True)
            key = "lora"
        else:
            key = part_of(name)
            # With LoRA the LLM base weights stay frozen: only its adapters learn.
            param.requires_grad_(key in parts and not (cfg.lora_rank and key == "llm"))
        if param.requires_grad:
            counts[key] = counts.get(key, 0) + param.numel()
    return counts


def apply_lora(model: DescribeAnythingModel, cfg: TrainConfig) -> None:
    """Inject LoRA adapters (peft) into the LLM's target linear layers, in place."""
    lora_cfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules), bias="none")
    inject_adapter_in_model(lora_cfg, model.llm)


def merged_copy(model: DescribeAnythingModel) -> DescribeAnythingModel:
    """A copy of `model` with every LoRA layer merged into its base weights and removed (a plain DAM)."""
    plain = copy.deepcopy(model)
    replacements = [(name, module) for name, module in plain.named_modules() if isinstance(module, LoraLayer)]
    for name, module in replacements:
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = plain.get_submodule(parent_name) if parent_name else plain
        setattr(parent, child, module.get_base_layer())
    return plain


def plain_for_saving(model: DescribeAnythingModel, cfg: TrainConfig) -> DescribeAnythingModel:
    """The model as a plain DAM checkpoint holds it (LoRA merged into a copy; the training model is untouched)."""
    return merged_copy(model) if cfg.lora_rank else model


def prepare_for_training(model: DescribeAnythingModel, cfg: TrainConfig, device: torch.device,
                         gradient_checkpointing: bool) -> dict[str, int]:
    """LoRA (if asked), requires_grad per part, activation recomputation in the LLM; returns set_trainable's counts."""
    if cfg.lora_rank:
        apply_lora(model, cfg)
        model.to(device)  # the new adapter weights join the model
    counts = set_trainable(model, cfg)
    if gradient_checkpointing:
        # Non-reentrant recomputation: works under DistributedDataParallel with unused parameters and gives the
        # adapters of a frozen LLM their gradients even when the LLM's input needs none.
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return counts
