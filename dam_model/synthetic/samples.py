"""Synthetic objects as the project's one sample type (dam_model.data): a RegionSample per scene object and a
TrackSample per video object, each carrying the object's attributes and size bucket for the benchmark's report."""
from __future__ import annotations

from typing import Iterable, Iterator

from dam_model.data import RegionSample, TrackSample

from .scenes import Scene
from .videos import VideoScene


def _check_caption_choice(caption: str) -> None:
    if caption not in ("long", "short"):
        raise ValueError(f"caption must be 'long' or 'short', got {caption!r}")


def iter_region_samples(scenes: Iterable[Scene], caption: str = "long") -> Iterator[RegionSample]:
    """One RegionSample per object of every scene; caption "long" or "short" picks the reference that becomes
    `caption` (`short_caption` always holds the short one)."""
    _check_caption_choice(caption)
    for scene in scenes:
        for obj in scene.objects:
            text = obj.long_caption if caption == "long" else obj.short_caption
            yield RegionSample(scene.image, obj.mask, text, short_caption=obj.short_caption,
                               attributes=obj.attributes, size_bucket=obj.size_bucket)


def iter_video_region_samples(videos: Iterable[VideoScene], caption: str = "long") -> Iterator[TrackSample]:
    """One TrackSample per object of every video (all of its frames, one visible-pixel mask each)."""
    _check_caption_choice(caption)
    for video in videos:
        for obj in video.objects:
            text = obj.long_caption if caption == "long" else obj.short_caption
            yield TrackSample(list(video.frames), list(obj.masks), text, short_caption=obj.short_caption,
                              attributes=obj.attributes, size_bucket=obj.size_bucket)
