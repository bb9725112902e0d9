"""The one sample type: an image region or a video track with its caption, and the one row format on disk.

Every producer and consumer of captioning examples (the synthetic generator, the loop's dataset builder, training,
evaluation) speaks these two classes. On disk a sample is a JSON row whose pixel data lives in 8-bit PNG files next
to it; a mask PNG holds 0 / 255 and its foreground is every value above MASK_THRESHOLD, everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

# Masks are written as 0/255; reading with "> 127" keeps a mask that went through a lossy resize binary the same way.
MASK_THRESHOLD = 127
KIND_IMAGE = "image"
KIND_VIDEO = "video"


def _check_caption(caption: str) -> None:
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("caption is empty")


def _check_pixels(image: np.ndarray, mask: np.ndarray, what: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, got {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} != {what} shape {image.shape[:2]}")


@dataclass
class RegionSample:
    """One image region: image HxWx3 uint8, mask HxW bool, long caption, optional short caption, and the
    attribute record / size bucket the synthetic benchmark and the loop's evaluation report by."""

    image: np.ndarray
    mask: np.ndarray
    caption: str
    short_caption: str | None = None
    attributes: dict[str, Any] | None = None
    size_bucket: str | None = None
    kind: str = field(default=KIND_IMAGE, init=False)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        self.mask = np.asarray(self.mask) > 0
        _check_pixels(self.image, self.mask, "image")
        if not self.mask.any():
            raise ValueError("mask is empty")
        _check_caption(self.caption)


@dataclass
class TrackSample:
    """One video track: frames HxWx3 uint8 in time order, one HxW bool mask each (an empty mask marks a frame where
    the object is not visible), long caption, optional short caption, attributes, size bucket."""

    frames: list[np.ndarray]
    masks: list[np.ndarray]
    caption: str
    short_caption: str | None = None
    attributes: dict[str, Any] | None = None
    size_bucket: str | None = None
    kind: str = field(default=KIND_VIDEO, init=False)

    def __post_init__(self) -> None:
        self.frames = [np.asarray(f) for f in self.frames]
        self.masks = [np.asarray(m) > 0 for m in self.masks]
        if not self.frames:
            raise ValueError("video sample has no frames")
        if len(self.frames) != len(self.masks):
            raise ValueError(f"video sample has {len(self.frames)} frames but {len(self.masks)} masks")
        for i, (frame, mask) in enumerate(zip(self.frames, self.masks)):
            _check_pixels(frame, mask, f"frame {i}")
        if not any(m.any() for m in self.masks):
            raise ValueError("every mask of the video sample is empty")
        _check_caption(self.caption)


Sample = Union[RegionSample, TrackSample]


# ----------------------------------------------------------------------------------------------- pixels on disk
def read_image(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as HxW bool (foreground: 8-bit value > MASK_THRESHOLD)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8) > MASK_THRESHOLD


def mask_to_png_pixels(mask: np.ndarray) -> np.ndarray:
    """The 0/255 uint8 pixels a mask is stored as."""
    return np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)


def write_image(path: str | Path, image: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask_to_png_pixels(mask)).save(path)


# ----------------------------------------------------------------------------------------------- rows
def to_row(sample: Sample, root: str | Path, stem: str, **extra: Any) -> dict[str, Any]:
    """Write a sample's pixels under `root` (images/<stem>.png + masks/<stem>.png, or frames/<stem>-<i>.png +
    masks/<stem>-<i>.png) and return its row; `extra` keys (split, task_id, region_id, ...) ride along unchanged."""
    root = Path(root)
    row: dict[str, Any] = {"kind": sample.kind, "caption": sample.caption, **extra}
    if sample.short_caption is not None:
        row["short_caption"] = sample.short_caption
    if sample.attributes is not None:
        row["attributes"] = sample.attributes
    if sample.size_bucket is not None:
        row["size_bucket"] = sample.size_bucket
    if isinstance(sample, RegionSample):
        row["image"], row["mask"] = f"images/{stem}.png", f"masks/{stem}.png"
        write_image(root / row["image"], sample.image)
        write_mask(root / row["mask"], sample.mask)
    else:
        row["frames"] = [f"frames/{stem}-{i:06d}.png" for i in range(len(sample.frames))]
        row["masks"] = [f"masks/{stem}-{i:06d}.png" for i in range(len(sample.masks))]
        for rel, frame in zip(row["frames"], sample.frames):
            write_image(root / rel, frame)
        for rel, mask in zip(row["masks"], sample.masks):
            write_mask(root / rel, mask)
    return row


def from_row(row: dict[str, Any], root: str | Path, caption_key: str = "caption") -> Sample:
    """The sample a row describes, its pixel paths relative to `root`. `caption_key` picks which text is the
    caption (a pseudo-label row, say, carries the model's caption under the same key)."""
    root = Path(root)
    kind = row.get("kind")
    common = dict(caption=row[caption_key], short_caption=row.get("short_caption"),
                  attributes=row.get("attributes"), size_bucket=row.get("size_bucket"))
    if kind == KIND_IMAGE:
        return RegionSample(read_image(root / row["image"]), read_mask(root / row["mask"]), **common)
    if kind == KIND_VIDEO:
        return TrackSample([read_image(root / rel) for rel in row["frames"]],
                           [read_mask(root / rel) for rel in row["masks"]], **common)
    raise ValueError(f"row {row.get('id', '?')}: unknown kind {kind!r} (expected {KIND_IMAGE!r} or {KIND_VIDEO!r})")
