"""TrainConfig: every training hyperparameter, validated at construction and saved with each checkpoint.

Each field's docstring (the string right under it) is its documentation; `field_docs` reads them so the command-line
help (dam_model.train.cli) is generated from this one place.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, get_args

#: Parts of the model that can learn, each switched by a `train_<part>` field (see dam_model.train.parts).
TRAINABLE_PARTS = ("llm", "projector", "context_provider", "vision", "mask_embedding")

Dtype = Literal["auto", "float32", "bfloat16"]


@dataclass
class TrainConfig:
    """Every training hyperparameter. Validated at construction; `to_dict` is logged and saved with each checkpoint."""

    out_dir: str
    """Folder for checkpoints/, metrics.jsonl and final/ (created if missing)."""
    lr: float = 1e-4
    """Peak learning rate (AdamW). The paper uses 1e-4 for DAM-3B."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not to biases, norms, gates or embeddings of size 1)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to lr over this many optimizer steps."""
    max_steps: int | None = None
    """Optimizer steps to run; if None, derived from `epochs`."""
    epochs: float | None = None
    """Passes over the training samples (used only when max_steps is None)."""
    batch_size: int = 8
    """Samples (image regions or video tracks) per micro-batch, per process."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step (global batch = batch_size * grad_accum_steps * number of processes)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    seed: int = 0
    """Seeds init-time RNGs, the data order and the prompt augmentation."""
    train_llm: bool = True
    """Train the language model (ignored for weights that LoRA freezes: then only adapters train)."""
    train_projector: bool = True
    """Train the mm_projector."""
    train_context_provider: bool = True
    """Train the focal adapters (cross-attention + MLP + gates)."""
    train_vision: bool = False
    """Train the vision tower (except the mask patch embedding, see train_mask_embedding)."""
    train_mask_embedding: bool = True
    """Train the vision tower's mask patch embedding."""
    lora_rank: int = 0
    """LoRA rank on the LLM's linear layers (0 = no LoRA). Merged into the weights on every save."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / rank)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """LLM module names (suffixes) that get LoRA adapters."""
    default_prompt_fraction: float = 0.5
    """Share of examples that use the official default query with the long caption (the inference setting)."""
    max_seq_len: int | None = None
    """Truncate text token sequences to this many tokens (None = no truncation)."""
    dtype: Dtype = "auto"
    """'auto' (bf16 autocast on CUDA, fp32 on CPU), 'float32' or 'bfloat16' (autocast; weights stay fp32)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in backward; None = on for CUDA, off for CPU."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ..."""
    resume: str = "auto"
    """'auto' (newest complete checkpoint in out_dir, else start fresh), 'none', or a checkpoint folder path."""
    checkpoint_every: int = 500
    """Write a checkpoint every N optimizer steps (0 = only the final one)."""
    keep_last: int = 2
    """Checkpoints kept in out_dir/checkpoints (older ones are removed after a new one is in place)."""
    log_every: int = 10
    """Append a metrics.jsonl line every N steps (the progress bar updates every step)."""
    eval_every: int = 0
    """Validation loss every N steps when val samples are given (0 = only at the end)."""
    num_threads: int = 0
    """torch.set_num_threads value (0 = leave torch's default)."""
    progress: bool = True
    """Show a tqdm bar (only when stderr is a terminal)."""
    global_only: bool = False
    """Ablation: every region takes the plain path (full view + mask, no focal crop, no adapters)."""
    cache_preprocessed: bool = True
    """Preprocess every sample once and keep the 8-channel tensors in memory (uint8 levels) instead of per step."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (data snapshot id, profile name...) saved with the model; not used by training."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # JSON round trips give lists
        self.lora_target_modules = tuple(self.lora_target_modules)
        if not self.out_dir:
            raise ValueError("out_dir must be set")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        for name in ("batch_size", "grad_accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "log_every", "eval_every", "num_threads", "keep_last", "lora_rank"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise ValueError("keep_last must be >= 1 (resume needs a checkpoint)")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.lora_rank and not self.lora_target_modules:
            raise ValueError("lora_rank > 0 needs lora_target_modules")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.default_prompt_fraction <= 1:
            raise ValueError(f"default_prompt_fraction must be in [0, 1], got {self.default_prompt_fraction}")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise ValueError(f"max_seq_len must be >= 8, got {self.max_seq_len}")
        if self.dtype not in get_args(Dtype):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not (self.resume in ("auto", "none") or self.resume):
            raise ValueError("resume must be 'auto', 'none' or a checkpoint path")
        if not any(self.trainable_parts()) and not self.lora_rank:
            raise ValueError("nothing to train: every train_* flag is False and lora_rank is 0")

    def trainable_parts(self) -> list[str]:
        """Names of the parts whose parameters get gradients (before LoRA freezes the LLM base weights)."""
        return [p for p in TRAINABLE_PARTS if getattr(self, f"train_{p}")]

    def global_batch_size(self, world_size: int = 1) -> int:
        """Samples per optimizer step over all processes."""
        return self.batch_size * self.grad_accum_steps * world_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        d["lora_target_modules"] = list(self.lora_target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of to_dict; unknown keys are an error."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        return cls(**d)


@cache
def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """{field name: the docstring written under it} of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs
