"""Train any DAM preset on image regions and video tracks: one module for the tiny model and the nightly fine-tune.

Reads like a recipe:
1. `TrainConfig` says everything (validated, printed as one dict).
2. Samples are preprocessed once into the 8-channel DAM input (full view + mask, focal crop + mask): one row per
   image region, and for a video track one row per frame (the model's num_video_frames frames, picked and cropped
   exactly as `describe_video` does at inference) behind the checkpoint's video query.
3. Each optimizer step draws its batch from a seeded per-epoch permutation and its prompts from a seeded
   per-(step, slot) generator, so the data a step sees depends on (seed, step) only: resuming replays exactly.
4. Loss is the LM loss on caption tokens only (prompt tokens carry label -100).
5. Checkpoints are plain DAM folders (official layout) plus `trainer_state.pt`, written to a temp folder and
   renamed into place; `resume="auto"` picks the newest complete one.
6. The final folder is a plain DAM checkpoint (LoRA merged) with its config, metrics and provenance beside it.
7. Several processes (`torchrun` / `accelerate launch`: WORLD_SIZE > 1) train data-parallel: the global batch of a
   step (batch_size * grad_accum_steps * world size) is cut into one contiguous share per rank, gradients are
   all-reduced (averaged) before clipping and the optimizer step, and only rank 0 writes files. A step of W ranks
   with grad_accum_steps A sees the same samples, prompts and micro-batches as a one-process run with A * W.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from dam_model.augment import DEFAULT_QUERY, augment_prompt, example_rng

#: DAM-3B's user turn (dam_model.config.IMAGE_QUERY_DAM3B); models pass their own config.image_query.
IMAGE_QUERY = "<image>\n" + DEFAULT_QUERY
CHECKPOINT_DIRNAME = "checkpoints"
FINAL_DIRNAME = "final"
TRAINER_STATE = "trainer_state.pt"
STATE_FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_TMP_PREFIX = ".tmp-"

#: Parameter-name markers of each trainable part (official state-dict prefixes; see dam-architecture.md).
TRAINABLE_PARTS = ("llm", "projector", "context_provider", "vision", "mask_embedding")


@dataclass
class TrainConfig:
    """Every training hyperparameter. Validated at construction; `asdict` is logged and saved with each checkpoint."""

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
    dtype: str = "auto"
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
    """Preprocess every sample once and keep the 8-channel tensors in memory (float16) instead of per step."""
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
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not (self.resume in ("auto", "none") or self.resume):
            raise ValueError("resume must be 'auto', 'none' or a checkpoint path")
        if not any(self.trainable_parts()) and not self.lora_rank:
            raise ValueError("nothing to train: every train_* flag is False and lora_rank is 0")

    def trainable_parts(self) -> list[str]:
        """Names of the parts whose parameters get gradients (before LoRA freezes the LLM base weights)."""
        return [p for p in TRAINABLE_PARTS if getattr(self, f"train_{p}")]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        d["lora_target_modules"] = list(self.lora_target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of to_dict; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------- samples


@dataclass
class TrainingSample:
    """One image region: image HxWx3 uint8, mask HxW (foreground > 0), long caption and optional short caption."""

    image: np.ndarray
    mask: np.ndarray
    caption: str
    short_caption: str | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        self.mask = np.asarray(self.mask)
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"image must be HxWx3, got shape {self.image.shape}")
        if self.image.dtype != np.uint8:
            raise ValueError(f"image must be uint8, got {self.image.dtype}")
        if self.mask.shape != self.image.shape[:2]:
            raise ValueError(f"mask shape {self.mask.shape} != image shape {self.image.shape[:2]}")
        if not (self.mask > 0).any():
            raise ValueError("mask is empty")
        if not self.caption or not self.caption.strip():
            raise ValueError("caption is empty")


@dataclass
class VideoTrainingSample:
    """One video track: frames HxWx3 uint8 (in time order) with one mask HxW each (foreground > 0; an empty mask
    marks a frame where the object is not visible), long caption and optional short caption.

    Training feeds the model what `DescribeAnythingModel.describe_video(frames, masks)` feeds it: the model's
    num_video_frames frames picked by `dam_model.focal.select_video_frames`, each with its own focal crop
    (`preprocess_frames`), behind the checkpoint's video query. scripts/build.py writes 8 frames per track.
    """

    frames: list[np.ndarray]
    masks: list[np.ndarray]
    caption: str
    short_caption: str | None = None

    def __post_init__(self) -> None:
        self.frames = [np.asarray(f) for f in self.frames]
        self.masks = [np.asarray(m) for m in self.masks]
        if not self.frames:
            raise ValueError("video sample has no frames")
        if len(self.frames) != len(self.masks):
            raise ValueError(f"video sample has {len(self.frames)} frames but {len(self.masks)} masks")
        for i, (frame, mask) in enumerate(zip(self.frames, self.masks)):
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frame {i} must be HxWx3, got shape {frame.shape}")
            if frame.dtype != np.uint8:
                raise ValueError(f"frame {i} must be uint8, got {frame.dtype}")
            if mask.shape != frame.shape[:2]:
                raise ValueError(f"mask {i} shape {mask.shape} != frame shape {frame.shape[:2]}")
        if not any((m > 0).any() for m in self.masks):
            raise ValueError("every mask of the video sample is empty")
        if not self.caption or not self.caption.strip():
            raise ValueError("caption is empty")


def as_training_sample(obj: Any) -> TrainingSample | VideoTrainingSample:
    """Accept a TrainingSample / VideoTrainingSample, a dict, or any object with caption fields and either
    image/mask (an image region) or frames/masks (a video track; also chosen by ``kind == "video"``).

    Caption field names tried, in order: long_caption, caption, text (long); short_caption (short).
    """
    if isinstance(obj, (TrainingSample, VideoTrainingSample)):
        return obj
    get = obj.get if isinstance(obj, dict) else (lambda k, default=None: getattr(obj, k, default))
    long_caption = get("long_caption") or get("caption") or get("text")
    image, frames = get("image"), get("frames")
    if get("kind") == "video" or (image is None and frames is not None):
        masks = get("masks")
        if frames is None or masks is None:
            raise ValueError(f"video sample {type(obj).__name__} has no frames/masks")
        if not long_caption:
            raise ValueError(f"sample {type(obj).__name__} has no caption")
        return VideoTrainingSample(frames=list(frames), masks=list(masks), caption=long_caption,
                                   short_caption=get("short_caption"))
    mask = get("mask")
    if image is None or mask is None:
        raise ValueError(f"sample {type(obj).__name__} has no image/mask")
    if not long_caption:
        raise ValueError(f"sample {type(obj).__name__} has no caption")
    return TrainingSample(image=image, mask=mask, caption=long_caption, short_caption=get("short_caption"))


def synthetic_training_samples(seed: int, n_scenes: int, **scene_kwargs: Any) -> list[TrainingSample]:
    """One TrainingSample (long + short caption) per object of scenes (seed, 0..n_scenes-1) of dam_model.synthetic."""
    from dam_model.synthetic import generate_dataset

    return [TrainingSample(scene.image, obj.mask, obj.long_caption, obj.short_caption)
            for scene in generate_dataset(seed, n_scenes, **scene_kwargs) for obj in scene.objects]


def synthetic_video_training_samples(seed: int, n_videos: int, **video_kwargs: Any) -> list[VideoTrainingSample]:
    """One VideoTrainingSample (long + short caption) per object of videos (seed, 0..n_videos-1) of
    dam_model.synthetic.generate_video (every frame of the clip; training picks the model's frames)."""
    from dam_model.synthetic import generate_video

    out = []
    for index in range(n_videos):
        video = generate_video(seed, index, **video_kwargs)
        out += [VideoTrainingSample(list(video.frames), list(obj.masks), obj.long_caption, obj.short_caption)
                for obj in video.objects]
    return out


# --------------------------------------------------------------------------------------------- model parts


def _part_of(param_name: str) -> str:
    """Which trainable part a parameter belongs to, from its official-layout name."""
    if "mask_patch_embedding" in param_name:
        return "mask_embedding"
    if param_name.startswith(("llm.", "language_model.")):
        return "llm"
    if param_name.startswith(("mm_projector.", "projector.")):
        return "projector"
    if param_name.startswith("context_provider."):
        return "context_provider"
    if param_name.startswith(("vision_tower.", "vision.")):
        return "vision"
    raise ValueError(f"parameter {param_name!r} belongs to no known DAM part")


def _is_lora_param(name: str) -> bool:
    return "lora_" in name


def set_trainable(model: Any, cfg: TrainConfig) -> dict[str, int]:
    """Freeze or unfreeze parameters by part; returns trainable parameter counts per part (LoRA as 'lora')."""
    parts = set(cfg.trainable_parts())
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if _is_lora_param(name):
            param.requires_grad_(True)
            key = "lora"
        else:
            key = _part_of(name.replace("base_layer.", ""))
            # With LoRA the LLM base weights stay frozen: only its adapters learn.
            param.requires_grad_(key in parts and not (cfg.lora_rank and key == "llm"))
        if param.requires_grad:
            counts[key] = counts.get(key, 0) + param.numel()
    return counts


def _llm_module(model: Any) -> Any:
    for name in ("llm", "language_model"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError("model has no llm submodule to put LoRA on")


def apply_lora(model: Any, cfg: TrainConfig) -> None:
    """Inject LoRA adapters (peft) into the LLM's target linear layers, in place."""
    from peft import LoraConfig, inject_adapter_in_model

    lora_cfg = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        bias="none",
    )
    inject_adapter_in_model(lora_cfg, _llm_module(model))


def merged_copy(model: Any) -> Any:
    """A copy of `model` with every LoRA layer merged into its base weights and removed (a plain DAM)."""
    import copy

    from peft.tuners.lora import LoraLayer

    plain = copy.deepcopy(model)
    replacements = [(name, module) for name, module in plain.named_modules() if isinstance(module, LoraLayer)]
    for name, module in replacements:
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = plain.get_submodule(parent_name) if parent_name else plain
        setattr(parent, child, module.get_base_layer())
    return plain


def _plain_for_saving(model: Any, cfg: TrainConfig) -> Any:
    return merged_copy(model) if cfg.lora_rank else model


# --------------------------------------------------------------------------------------------- batches


class RegionData:
    """Preprocessed samples (image regions and video tracks) plus deterministic batch assembly.

    `batch(step, micro)` depends only on (seed, step, micro, rank, world_size): the data order is a per-epoch
    permutation of the samples seeded by (seed, epoch), and prompts come from `example_rng(seed, step, slot)`.
    A step consumes batch_size * grad_accum_steps * world_size consecutive positions of that order; rank r takes
    the contiguous share of micro-batches r * grad_accum_steps .. (r + 1) * grad_accum_steps - 1, and a slot is
    numbered within the whole step, so one process with grad_accum_steps A * W sees exactly what W ranks see.

    An image region is one image row behind `image_query`; a video track is num_video_frames rows (the number of
    <image> placeholders of `video_query`) behind `video_query`, in the order describe_video feeds them.
    """

    def __init__(self, samples: Sequence[Any], tokenizer: Any, image_size: int, cfg: TrainConfig,
                 augment: bool = True, global_only: bool = False, image_query: str = IMAGE_QUERY,
                 video_query: str | None = None, rank: int = 0, world_size: int = 1) -> None:
        from dam_model.focal import normalisation_lut

        if not samples:
            raise ValueError("no training samples")
        self.samples = [as_training_sample(s) for s in samples]
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.cfg = cfg
        self.augment = augment
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.rank, self.world_size = rank, world_size
        # The checkpoint's inference query (with its <image> placeholder) stands for the default query; augmented
        # queries keep the same image prefix ("<image>\n" for DAM-3B, "Image: <image>\n" for the joint model).
        if image_query.count("<image>") != 1:
            raise ValueError("image_query must contain exactly one <image> placeholder")
        self.image_query = image_query
        self.image_prefix = image_query[: image_query.index("<image>") + len("<image>")] + "\n"
        # Video tracks: the checkpoint's video query ("Video: <image>...<image>\nGiven the video ...") stands for
        # the default query; augmented queries follow its frame placeholders ("Video: <image>...<image>\n").
        self.video_query = video_query
        self.video_prefix: str | None = None
        self.num_video_frames = 0
        if video_query is not None:
            self.num_video_frames = video_query.count("<image>")
            if self.num_video_frames < 1:
                raise ValueError("video_query must contain <image> placeholders (one per frame)")
            self.video_prefix = video_query[: video_query.rindex("<image>") + len("<image>")] + "\n"
        if self.video_query is None and any(isinstance(s, VideoTrainingSample) for s in self.samples):
            raise ValueError("video samples need a video_query (the model's config.video_query)")
        # Ablation: every sample takes the plain path (global view + mask only, no focal crop, no adapters).
        self.global_only = global_only
        self._lut = normalisation_lut()
        self._cache: dict[int, tuple[Any, Any]] = {}
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None
        if cfg.cache_preprocessed:
            for i in range(len(self.samples)):
                self._pixels(i)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_videos(self) -> int:
        return sum(isinstance(s, VideoTrainingSample) for s in self.samples)

    def _preprocess(self, sample: Any) -> Any:
        """The RegionBatch of one sample: 1 row for an image region, num_video_frames rows for a video track
        (frames chosen and cropped by the functions `DescribeAnythingModel.prepare_video` uses)."""
        from dam_model.focal import preprocess_frames, preprocess_regions, select_video_frames

        if isinstance(sample, VideoTrainingSample):
            binaries = [m > 0 for m in sample.masks]
            chosen = select_video_frames(binaries, self.num_video_frames)
            return preprocess_frames([sample.frames[i] for i in chosen], [binaries[i] for i in chosen],
                                     self.image_size)
        return preprocess_regions(sample.image, [sample.mask], self.image_size)

    def _pixels(self, index: int) -> tuple[Any, Any]:
        """8-channel tensor [k, 8, S, S] float32 and is_focal bool [k] of one sample (k = 1 for an image region,
        num_video_frames for a video track); cached as the exact uint8 levels."""
        import torch

        if index not in self._cache:
            regions = self._preprocess(self.samples[index])
            levels = torch.as_tensor(np.asarray(regions.pixel_values_u8))
            focal = torch.as_tensor(np.asarray(regions.is_focal), dtype=torch.bool)
            if self.global_only:
                focal = torch.zeros_like(focal)
            if not self.cfg.cache_preprocessed:
                return torch.as_tensor(self._lut[levels.numpy()]), focal
            self._cache[index] = (levels, focal)
        levels, focal = self._cache[index]
        return torch.as_tensor(self._lut[levels.numpy()]), focal.clone()

    def _sample_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.samples))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.samples))
            self._perm_epoch = epoch
        return int(self._perm[offset])  # type: ignore[index]

    def _chunk(self, micro: int) -> int:
        """This rank's micro-batch `micro` as a micro-batch number within the whole (global) step."""
        if not 0 <= micro < self.cfg.grad_accum_steps:
            raise ValueError(f"micro must be in [0, {self.cfg.grad_accum_steps}), got {micro}")
        return self.rank * self.cfg.grad_accum_steps + micro

    def indices(self, step: int, micro: int) -> list[int]:
        """Sample indices of this rank's micro-batch `micro` of optimizer step `step` (0-based)."""
        per_step = self.cfg.batch_size * self.cfg.grad_accum_steps * self.world_size
        first = step * per_step + self._chunk(micro) * self.cfg.batch_size
        return [self._sample_index(first + j) for j in range(self.cfg.batch_size)]

    def examples(self, step: int, micro: int) -> list[tuple[int, str, str]]:
        """(sample index, query, answer) for each slot of a micro-batch."""
        out = []
        base = self._chunk(micro) * self.cfg.batch_size
        for slot, index in enumerate(self.indices(step, micro)):
            sample = self.samples[index]
            video = isinstance(sample, VideoTrainingSample)
            if self.augment:
                rng = example_rng(self.cfg.seed, step, base + slot)
                ex = augment_prompt(sample.caption, sample.short_caption, rng, self.cfg.default_prompt_fraction)
                out.append((index, self.full_query(ex.query, video=video), ex.answer))
            else:
                out.append((index, self.default_query(video), sample.caption))
        return out

    def default_query(self, video: bool = False) -> str:
        """The inference query: the checkpoint's image query, or its video query for a video track."""
        if not video:
            return self.image_query
        if self.video_query is None:
            raise ValueError("no video_query given")
        return self.video_query

    def full_query(self, query: str, video: bool = False) -> str:
        """User-turn text for an augmented query: the checkpoint's own query for DEFAULT_QUERY, else prefix + query
        (the image prefix, or the video prefix with its frame placeholders for a video track)."""
        if query == DEFAULT_QUERY:
            return self.default_query(video)
        prefix = self.video_prefix if video else self.image_prefix
        if prefix is None:
            raise ValueError("no video_query given")
        return prefix + query

    def encode(self, index: int, query: str, answer: str) -> tuple[list[int], list[int], Any, Any]:
        """(input_ids, labels, pixel_values [k, 8, S, S], is_focal [k]) of one teacher-forced example."""
        from dam_model.prompt import count_images, encode_training_example

        ids, labels = encode_training_example(self.tokenizer, query, answer)
        ids, labels = list(ids), list(labels)
        if len(ids) != len(labels):
            raise ValueError("encode_training_example returned ids and labels of different lengths")
        if self.cfg.max_seq_len is not None:
            ids, labels = ids[: self.cfg.max_seq_len], labels[: self.cfg.max_seq_len]
        pixels, focal = self._pixels(index)
        if count_images(ids) != pixels.shape[0]:
            raise ValueError(f"sample {index}: the prompt keeps {count_images(ids)} <image> placeholders for "
                             f"{pixels.shape[0]} images (max_seq_len={self.cfg.max_seq_len} too short?)")
        return ids, labels, pixels, focal

    def collate(self, examples: Sequence[tuple[int, str, str]]) -> dict[str, Any]:
        """Right-padded tensors for model.forward: input_ids/attention_mask/labels [B, T], pixel_values
        [sum of images, 8, S, S] and is_focal [sum of images] in row order (an image region adds 1, a video track
        num_video_frames), via dam_model.modeling.collate_training_batch."""
        from dam_model.modeling import collate_training_batch

        encoded = [self.encode(index, query, answer) for index, query, answer in examples]
        return collate_training_batch(encoded, pad_token_id=_pad_id(self.tokenizer))

    def batch(self, step: int, micro: int) -> dict[str, Any]:
        """This rank's collated micro-batch for (step, micro)."""
        return self.collate(self.examples(step, micro))

    def eval_examples(self) -> list[tuple[int, str, str]]:
        """Every sample once, in order: its default query (image or video) and its long caption."""
        return [(i, self.default_query(isinstance(s, VideoTrainingSample)), s.caption)
                for i, s in enumerate(self.samples)]

    def eval_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, Any]]:
        """Every sample once (default query + long caption), in order; with world_size > 1 only the batches
        number rank, rank + world_size, ... (each rank scores its share)."""
        examples = self.eval_examples()
        for number, start in enumerate(range(0, len(examples), batch_size)):
            if number % world_size == rank:
                yield self.collate(examples[start:start + batch_size])


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _tokenizer_of(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("model has no tokenizer attached (build it with from_config(cfg, tokenizer) or from_pretrained)")
    return tok


def _image_size_of(model: Any) -> int:
    config = getattr(model, "config", None)
    vision = getattr(config, "vision", None) or getattr(config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    if size is None:
        raise ValueError("cannot read the vision image_size from model.config")
    return int(size)


# --------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based): linear warm-up, then cosine to min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------- checkpoints


def _step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


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


def _rng_state(cuda_device: Any = None) -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states; with `cuda_device` (one rank of several) only that GPU's."""
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if cuda_device is not None:
        state["cuda_device"] = torch.cuda.get_rng_state(cuda_device)
    elif torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], cuda_device: Any = None) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_device" in state and cuda_device is not None:
        torch.cuda.set_rng_state(state["cuda_device"], cuda_device)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_model_folder(model: Any, folder: Path) -> None:
    """model.save_pretrained into a folder that must not exist yet."""
    model.save_pretrained(folder)
    if not (folder / "config.json").is_file():
        raise RuntimeError(f"save_pretrained wrote no config.json in {folder}")


def save_checkpoint(model: Any, optimizer: Any, scheduler: Any, step: int, cfg: TrainConfig,
                    extra_state: dict[str, Any] | None = None) -> Path:
    """Write out_dir/checkpoints/step-NNNNNNNN atomically (temp folder + os.replace), then prune old ones.

    The folder is a plain DAM checkpoint (official layout; LoRA merged) plus trainer_state.pt holding the
    optimizer, scheduler, step, RNG states, config and (with LoRA) the unmerged trainable tensors.
    """
    import torch

    root = Path(cfg.out_dir) / CHECKPOINT_DIRNAME
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_dir_name(step)
    tmp = root / f"{_TMP_PREFIX}{final.name}.{os.getpid()}.{time.monotonic_ns()}"
    _save_model_folder(_plain_for_saving(model, cfg), tmp)
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "config": cfg.to_dict(),
        # LoRA: the official weights are merged, so resuming needs the unmerged trainable tensors.
        "trainable_state": (
            {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad} if cfg.lora_rank else None
        ),
        **(extra_state or {}),
    }
    torch.save(state, tmp / TRAINER_STATE)
    if final.exists():  # same step written twice (e.g. a re-run): move the old one aside first
        old = root / f"{_TMP_PREFIX}old-{final.name}.{time.monotonic_ns()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    for _, stale in list_checkpoints(cfg.out_dir)[: -cfg.keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------- model loading


def _load_model(source: Any, device: Any) -> Any:
    import torch

    from dam_model.modeling import DescribeAnythingModel

    if isinstance(source, (str, Path)):
        return DescribeAnythingModel.from_pretrained(str(source), device=device, dtype=torch.float32)
    if isinstance(source, torch.nn.Module):
        return source.to(device=device, dtype=torch.float32)
    raise ValueError(f"init_model must be a path or a DescribeAnythingModel, got {type(source).__name__}")


def _restore_weights(model: Any, checkpoint: Path, cfg: TrainConfig, state: dict[str, Any], device: Any) -> None:
    """Load a checkpoint's weights into the (possibly LoRA-wrapped) training model, strictly."""
    import torch

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
    loaded = _load_model(checkpoint, device)
    model.load_state_dict(loaded.state_dict(), strict=True)


# --------------------------------------------------------------------------------------------- training


def _resolve_device(cfg: TrainConfig, local_rank: int | None = None) -> Any:
    """The training device. With several processes (local_rank given) a GPU run uses cuda:LOCAL_RANK."""
    import torch

    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if local_rank is not None and device.type == "cuda":
        if device.index is not None and device.index != local_rank:
            raise ValueError(f"device {cfg.device!r} with several processes: each rank trains on cuda:LOCAL_RANK "
                             "(pass device 'auto' or 'cuda', and pick GPUs with CUDA_VISIBLE_DEVICES)")
        device = torch.device("cuda", local_rank)
    return device


# --------------------------------------------------------------------------------------------- data parallel


@dataclass
class DistributedContext:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed).

    Ranks agree on everything through collectives: `on_main(fn)` runs fn on rank 0 only (file writes, resume
    look-ups) and hands its result, or its exception, to every rank, so a failure on rank 0 stops all ranks
    instead of leaving them waiting.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """fn() on rank 0; every rank returns its result (it must be picklable) or raises its error."""
        if not self.enabled:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as err:  # the other ranks learn of it (as text: not every error pickles)
                error = err
                box[0] = ("error", f"{type(err).__name__}: {err}")
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if error is not None:
            raise error
        if status == "error":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def mean(self, value: float, device: Any) -> float:
        """The mean of a float over all ranks."""
        if not self.enabled:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def sum(self, values: Sequence[float], device: Any) -> list[float]:
        """Element-wise sums of a list of floats over all ranks."""
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def init_distributed(cfg: TrainConfig) -> tuple[DistributedContext, Any]:
    """(context, device) of this process. WORLD_SIZE > 1 (set by torchrun / accelerate launch, with RANK,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) starts the default process group when the caller has not: backend nccl
    for CUDA (device cuda:LOCAL_RANK), gloo for CPU."""
    import datetime

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    initialized = dist.is_available() and dist.is_initialized()
    if world <= 1 and not (initialized and dist.get_world_size() > 1):
        return DistributedContext(), _resolve_device(cfg)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = _resolve_device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not initialized:
        # Rank 0 writes checkpoints (DAM-3B: weights + Adam moments, tens of GB) while the others wait: a generous
        # timeout. A crashed rank is still noticed at once: the launcher stops the others.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=1))
        owns = True
    ctx = DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                             owns_group=owns)
    return ctx, device


def _broadcast_model(model: Any) -> None:
    """Rank 0's parameters and buffers to every rank (identical starting weights whatever each rank loaded)."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(params: Sequence[Any], ctx: DistributedContext, bucket_bytes: int = 256 << 20) -> None:
    """Average the gradients of `params` over all ranks, in flat buckets of about bucket_bytes.

    A parameter keeps grad None only when it got no gradient on ANY rank (as in one process, where AdamW skips
    it); one that got a gradient somewhere gets zeros where it had none before the average.
    """
    if not ctx.enabled:
        return
    import torch
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    params = list(params)
    if not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has_grad)
    grads = []
    for param, used in zip(params, has_grad.tolist()):
        if not used:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        grads.append(param.grad)

    def flush(bucket: list[Any]) -> None:
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        flat.div_(ctx.world_size)
        for grad, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            grad.copy_(synced)

    bucket: list[Any] = []
    size = 0
    for grad in grads:
        if bucket and (grad.dtype != bucket[0].dtype or size + grad.numel() * grad.element_size() > bucket_bytes):
            flush(bucket)
            bucket, size = [], 0
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
    if bucket:
        flush(bucket)


def _autocast(cfg: TrainConfig, device: Any) -> Any:
    import contextlib

    import torch

    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _enable_gradient_checkpointing(model: Any) -> bool:
    for target in (model, getattr(model, "llm", None)):
        if target is not None and hasattr(target, "gradient_checkpointing_enable"):
            target.gradient_checkpointing_enable()
            return True
    return False


class _MetricsLog:
    """metrics.jsonl appender; on resume, lines from steps after the resumed step are dropped (they are replayed)."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            _atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def evaluate_loss(model: Any, data: RegionData, cfg: TrainConfig, device: Any, batch_size: int | None = None,
                  ctx: DistributedContext | None = None) -> float:
    """Token-weighted mean caption loss over `data` (default query + long caption). With several ranks each scores
    its share of the batches and the sums are all-reduced: every rank returns the same value."""
    import torch

    ctx = ctx or DistributedContext()
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in data.eval_batches(batch_size or cfg.batch_size, ctx.rank, ctx.world_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            with _autocast(cfg, device):
                loss = model(**batch).loss.float().item()
            # The model averages over predicted tokens: count the shifted caption tokens to re-weight.
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += loss * n
            tokens += n
    total, tokens = ctx.sum([total, tokens], device)
    model.train(was_training)
    return total / max(tokens, 1)


def _total_steps(cfg: TrainConfig, n_samples: int, world_size: int = 1) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_step = cfg.batch_size * cfg.grad_accum_steps * world_size
    return max(1, math.ceil(cfg.epochs * n_samples / per_step))  # type: ignore[operator]


class _NoMetrics:
    """metrics.jsonl stand-in on ranks other than 0 (they write nothing)."""

    def write(self, record: dict[str, Any]) -> None:
        pass


def train(
    cfg: TrainConfig,
    train_samples: Iterable[Any],
    val_samples: Iterable[Any] | None = None,
    init_model: Any = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Train a DAM and return out_dir/final: a plain DAM folder (official layout) + train_config/metrics/provenance json.

    init_model: a DescribeAnythingModel (random init from `from_config(cfg, tokenizer)`, trained in place)
    or a checkpoint path (fine-tuning). A resumable checkpoint in out_dir takes precedence for the weights.
    Samples: TrainingSample / VideoTrainingSample, or dicts / objects with image/mask or frames/masks and
    caption(/short_caption) (see as_training_sample); image regions and video tracks mix freely in a batch.
    on_step(step, loss) runs after every optimizer step and its checkpoint (a hook for callers and for tests
    that simulate a kill by raising).

    Launched as several processes (WORLD_SIZE > 1: `torchrun --nproc_per_node N` or `accelerate launch
    --num_processes N`), every rank calls train() with the same arguments: data-parallel training where rank 0
    alone writes out_dir (checkpoints, metrics.jsonl, final/) and every rank returns the final path. A resume
    needs the world size that wrote the checkpoint. The process group is created here unless the caller made one.
    """
    import torch

    if init_model is None:
        raise ValueError("init_model is required: a DescribeAnythingModel or a checkpoint folder")
    start_time = time.time()
    ctx, device = init_distributed(cfg)
    try:
        return _train(cfg, train_samples, val_samples, init_model, on_step, ctx, device, start_time)
    finally:
        if ctx.owns_group:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, train_samples: Iterable[Any], val_samples: Iterable[Any] | None, init_model: Any,
           on_step: Callable[[int, float], None] | None, ctx: DistributedContext, device: Any,
           start_time: float) -> Path:
    import torch

    main = ctx.is_main
    if main:
        print("train config:", json.dumps(cfg.to_dict(), sort_keys=True), flush=True)
        if ctx.enabled:
            print(f"data parallel: {ctx.world_size} processes, global batch "
                  f"{cfg.batch_size * cfg.grad_accum_steps * ctx.world_size}", flush=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out_dir = Path(cfg.out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    # Every rank holds (and preprocesses) all samples; it draws only its own share of each step from them.
    train_list = [as_training_sample(s) for s in train_samples]
    val_list = [as_training_sample(s) for s in val_samples] if val_samples is not None else []
    total_steps = _total_steps(cfg, len(train_list), ctx.world_size)
    rng_device = device if ctx.enabled and device.type == "cuda" else None

    # Seed before building anything random (LoRA init); a resume then restores the exact RNG states.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)

    model = _load_model(init_model, device)
    tokenizer = _tokenizer_of(model)
    image_size = _image_size_of(model)
    if cfg.lora_rank:
        apply_lora(model, cfg)
        model.to(device)
    trainable = set_trainable(model, cfg)
    use_ckpt = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else device.type == "cuda"
    if use_ckpt and not _enable_gradient_checkpointing(model) and main:
        print("gradient checkpointing requested but the model does not support it; continuing without", flush=True)

    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.adam_betas,
                                  foreach=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, total_steps))

    start_step = 0
    found = ctx.on_main(lambda: find_resume_checkpoint(cfg))
    checkpoint = Path(found) if found is not None else None
    if checkpoint is not None:
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
        _set_rng_state(rank_states[ctx.rank] if rank_states else state["rng"], rng_device)
        start_step = int(state["step"])
        if main:
            print(f"resumed from {checkpoint} at step {start_step}", flush=True)
    if ctx.enabled:
        _broadcast_model(model)  # identical weights on every rank, whatever each one loaded

    config = model.config
    data = RegionData(train_list, tokenizer, image_size, cfg, global_only=cfg.global_only,
                      image_query=config.image_query, video_query=config.video_query,
                      rank=ctx.rank, world_size=ctx.world_size)
    val_data = (RegionData(val_list, tokenizer, image_size, cfg, augment=False, global_only=cfg.global_only,
                           image_query=config.image_query, video_query=config.video_query)
                if val_list else None)
    metrics: Any = _MetricsLog(out_dir / "metrics.jsonl", start_step) if main else _NoMetrics()
    if main:
        print(f"training {total_steps} steps on {len(train_list)} samples ({data.num_videos} video), "
              f"device {device}, trainable {json.dumps(trainable)}", flush=True)

    bar = None
    if main and cfg.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    last_loss = float("nan")
    window: list[float] = []
    val_loss = None
    step_time = time.time()
    for step in range(start_step, total_steps):
        step_loss = 0.0
        for micro in range(cfg.grad_accum_steps):
            batch = {k: v.to(device) for k, v in data.batch(step, micro).items()}
            with _autocast(cfg, device):
                loss = model(**batch).loss
            (loss.float() / cfg.grad_accum_steps).backward()
            step_loss += loss.item() / cfg.grad_accum_steps
        if ctx.enabled:
            all_reduce_gradients(params, ctx)
            step_loss = ctx.mean(step_loss, device)  # the global batch's loss, the same on every rank
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm else float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        last_loss = step_loss
        window.append(step_loss)
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"loss is {step_loss} at step {done}")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
        if val_data is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < total_steps:
            val_loss = evaluate_loss(model, val_data, cfg, device, ctx=ctx)
            metrics.write({"step": done, "val_loss": val_loss})
        if done % max(cfg.log_every, 1) == 0 or done == total_steps:
            now = time.time()
            metrics.write({
                "step": done,
                "loss": sum(window) / len(window),
                "last_loss": step_loss,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "sec_per_step": (now - step_time) / len(window),
            })
            if main and bar is None and cfg.progress and cfg.log_every:
                print(f"step {done}/{total_steps} loss {sum(window) / len(window):.4f}", flush=True)
            window, step_time = [], now
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == total_steps:
            rng_states = ctx.gather(_rng_state(rng_device)) if ctx.enabled else None
            extra = {"world_size": ctx.world_size, **({"rng_ranks": rng_states} if rng_states else {})}
            # Every rank waits for rank 0's checkpoint: it is in place before any rank moves on.
            ctx.on_main(lambda: str(save_checkpoint(model, optimizer, scheduler, done, cfg, extra_state=extra)))
        if on_step is not None:
            on_step(done, step_loss)
    if bar is not None:
        bar.close()

    final_metrics: dict[str, Any] = {"steps": total_steps, "train_loss_last": last_loss,
                                     "train_samples": len(train_list), "train_video_samples": data.num_videos,
                                     "world_size": ctx.world_size,
                                     "global_batch_size": cfg.batch_size * cfg.grad_accum_steps * ctx.world_size,
                                     "seconds": round(time.time() - start_time, 1)}
    if val_data is not None:
        val_loss = evaluate_loss(model, val_data, cfg, device, ctx=ctx)
        final_metrics["val_loss"] = val_loss
        metrics.write({"step": total_steps, "val_loss": val_loss})
    return Path(ctx.on_main(lambda: str(write_final(model, cfg, final_metrics))))


def write_final(model: Any, cfg: TrainConfig, metrics: dict[str, Any]) -> Path:
    """out_dir/final: plain DAM folder + train_config.json, metrics.json, provenance.json (atomic replace)."""
    out_dir = Path(cfg.out_dir)
    final = out_dir / FINAL_DIRNAME
    tmp = out_dir / f"{_TMP_PREFIX}{FINAL_DIRNAME}.{os.getpid()}.{time.monotonic_ns()}"
    _save_model_folder(_plain_for_saving(model, cfg), tmp)
    (tmp / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    provenance = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git_commit(),
        "training_code_version": training_code_version(),
        "train_config": cfg.to_dict(),
        "metrics": metrics,
        **({"extra": cfg.extra} if cfg.extra else {}),
    }
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))
    if final.exists():
        old = out_dir / f"{_TMP_PREFIX}old-{FINAL_DIRNAME}.{time.monotonic_ns()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def training_code_version() -> str:
    """Hash of the training and augmentation sources (part of the tiny model's cache key)."""
    import hashlib

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in ("training.py", "augment.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- CLI


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m dam_model train` (every TrainConfig field that makes sense on a command line)."""
    parser.add_argument("--init", required=True, help="DAM checkpoint folder to start from")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, metrics.jsonl, final/)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="JSONL manifest: one {image, mask, caption[, short_caption]} per line "
                                     "(image/mask are file paths relative to the manifest)")
    data.add_argument("--synthetic", type=int, metavar="N", help="train on N synthetic scenes (dam_model.synthetic)")
    parser.add_argument("--val-data", help="JSONL manifest of validation samples")
    parser.add_argument("--synthetic-seed", type=int, default=0, help="seed of the synthetic scenes")
    parser.add_argument("--config", help="JSON file with TrainConfig fields (command-line flags override it)")
    for name, kind, default in (("lr", float, None), ("max-steps", int, None), ("epochs", float, None),
                                ("batch-size", int, None), ("grad-accum-steps", int, None),
                                ("warmup-steps", int, None), ("weight-decay", float, None), ("seed", int, None),
                                ("lora-rank", int, None), ("checkpoint-every", int, None), ("keep-last", int, None),
                                ("log-every", int, None), ("num-threads", int, None)):
        parser.add_argument(f"--{name}", type=kind, default=default)
    parser.add_argument("--resume", default=None, help="'auto' (default), 'none' or a checkpoint folder")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--no-progress", action="store_true")


def load_manifest(path: str | Path) -> list[TrainingSample]:
    """Read a JSONL manifest of {image, mask, caption[, short_caption]} (paths relative to the manifest)."""
    from PIL import Image

    path = Path(path)
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = np.asarray(Image.open(path.parent / row["image"]).convert("RGB"))
            mask = np.asarray(Image.open(path.parent / row["mask"]).convert("L")) > 0
            samples.append(TrainingSample(image, mask, row["caption"], row.get("short_caption")))
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"{path}:{number}: {err}") from err
    return samples


def run_train(args: argparse.Namespace) -> int:
    """Entry of `python -m dam_model train`; returns the exit code."""
    fields: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    fields["out_dir"] = args.out
    for name in ("lr", "max_steps", "epochs", "batch_size", "grad_accum_steps", "warmup_steps", "weight_decay",
                 "seed", "lora_rank", "checkpoint_every", "keep_last", "log_every", "num_threads", "resume",
                 "device", "dtype"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.no_progress:
        fields["progress"] = False
    try:
        cfg = TrainConfig.from_dict(fields)
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.data:
        samples: list[Any] = load_manifest(args.data)
    else:
        samples = synthetic_training_samples(args.synthetic_seed, args.synthetic)
    val = load_manifest(args.val_data) if args.val_data else None
    final = train(cfg, samples, val, init_model=args.init)
    print(f"model written to {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a DAM on (image, mask, caption) samples")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
