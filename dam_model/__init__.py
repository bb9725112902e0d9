"""A native, faithful Describe Anything Model (DAM) with SAM 2 segmentation.

Depends on torch, transformers and sam2 only: no web, storage or Label Studio code here.
Heavy submodules load lazily: `from dam_model import DescribeAnythingModel` imports torch/transformers on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DAMConfig": "config", "VisionConfig": "config", "ContextProviderConfig": "config", "ProjectorConfig": "config",
    "LLMConfig": "config",
    "DescribeAnythingModel": "modeling", "DAMOutput": "modeling", "collate_training_batch": "modeling",
    "Caption": "generation", "GenerationSettings": "generation", "RELEASE_TEMPERATURE": "generation",
    "RELEASE_TOP_P": "generation", "RELEASE_MAX_NEW_TOKENS": "generation",
    "preprocess_regions": "focal", "focal_crop_box": "focal", "mask_box": "focal", "RegionBatch": "focal",
    "select_video_frames": "frames",
    "load_tokenizer": "tokenizer", "train_tokenizer": "tokenizer",
    "IMAGE_TOKEN_ID": "prompt", "build_prompt": "prompt", "tokenize_prompt": "prompt",
    "encode_training_example": "prompt",
    "CheckpointKeyError": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dam_model' has no attribute {name!r}")
