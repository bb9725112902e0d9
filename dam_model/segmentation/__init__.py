"""Segmentation for DAM: clicks and boxes -> masks, video masklets, automatic masks.

- `Sam2Segmenter` (SAM 2.1 through the `sam2` package) with an image-embedding cache; `build_sam2_model` and the
  config names live in sam2_build.py;
- `RegionGrowSegmenter`, a classical colour region-growing fallback for machines without SAM 2 weights;
- the interfaces `Segmenter`, `VideoSegmenter` and `AutoMaskSegmenter` (types.py) say what a segmenter can do;
- `build_segmenter(kind="sam2" | "region", **kw)` picks one; `sample_frames` (dam_model/frames.py) picks DAM's
  video frames.
Importing this package is cheap: torch and sam2 load when a SAM 2 segmenter is built.
"""
from __future__ import annotations

from typing import Any, Union

from ..frames import sample_frames
from .cache import CacheStats, EmbeddingCache, image_key
from .region_grow import RegionGrowSegmenter
from .sam2_build import (
    CheckpointMismatchError, build_sam2_model, download_sam2, load_checkpoint_strict, resolve_config, valid_config_names,
)
from .sam2_segmenter import ImageEmbedding, Sam2Segmenter
from .types import AutoMaskSegmenter, MaskPrediction, Segmenter, VideoPrompt, VideoSegmenter
from .video import FrameStore, load_frames, track_video

SEGMENTER_KINDS = ("sam2", "region")


def build_segmenter(kind: str = "sam2", **kwargs: Any) -> Union[Sam2Segmenter, RegionGrowSegmenter]:
    """Build a segmenter by kind.

    kind="sam2":   kwargs of `Sam2Segmenter.from_checkpoint` (config_name, checkpoint, device, dtype, image_size, ...),
                   or model_id="facebook/sam2.1-hiera-large" (a hub id, `Sam2Segmenter.from_pretrained`) instead of
                   config_name + checkpoint.
    kind="region": kwargs of `RegionGrowSegmenter` (tolerance, min_component_fraction); the offline fallback.
    """
    if kind == "sam2":
        if "model_id" in kwargs:
            return Sam2Segmenter.from_pretrained(kwargs.pop("model_id"), **kwargs)
        return Sam2Segmenter.from_checkpoint(**kwargs)
    if kind == "region":
        return RegionGrowSegmenter(**kwargs)
    raise ValueError(f"unknown segmenter kind {kind!r}; valid kinds: {', '.join(SEGMENTER_KINDS)}")


__all__ = [
    "AutoMaskSegmenter",
    "CacheStats",
    "CheckpointMismatchError",
    "EmbeddingCache",
    "FrameStore",
    "ImageEmbedding",
    "MaskPrediction",
    "RegionGrowSegmenter",
    "SEGMENTER_KINDS",
    "Sam2Segmenter",
    "Segmenter",
    "VideoPrompt",
    "VideoSegmenter",
    "build_sam2_model",
    "build_segmenter",
    "download_sam2",
    "image_key",
    "load_checkpoint_strict",
    "load_frames",
    "resolve_config",
    "sample_frames",
    "track_video",
    "valid_config_names",
]
