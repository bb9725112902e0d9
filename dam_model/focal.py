"""The release's focal prompt: mask box, focal crop and the 8-channel model input.

Per region the model sees 8 channels at S x S (S = vision image size, 384 for DAM-3B):
[full R, G, B, full mask, crop R, G, B, crop mask], each squashed (no aspect preservation) to S x S with PIL
bicubic on uint8 data, then rescaled by 1/255 and normalised with mean = std = 0.5 (range [-1, 1]).
Masks are drawn as 0/255 images and resized like the RGB, so mask channels take intermediate levels.

`preprocess_regions` builds that tensor for many regions of one image and shares work between them
(see its docstring); dam_tools/benchmarks/preprocess.py measures it against a per-region pipeline.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .frames import select_video_frames  # noqa: F401  (re-exported: the one frame rule lives in frames.py)
from .mask_resize import resize_mask

MIN_FOCAL_SIZE = 48  # pixels: the release enlarges smaller mask boxes to this before the 3x expansion


@dataclass
class RegionBatch:
    """Model inputs for N regions.

    pixel_values: float32 [N, 8, S, S] in [-1, 1]; is_focal: bool [N] (False = the crop is the whole image ->
    plain path, no adapters); crop_boxes: int64 [N, 4] (x0, y0, x1, y1) exclusive, original pixels;
    mask_boxes: int64 [N, 4] (x0, y0, w, h) tight mask box; pixel_values_u8: uint8 [N, 8, S, S] before normalising.
    """

    pixel_values: "object"
    is_focal: "object"
    crop_boxes: np.ndarray
    mask_boxes: np.ndarray
    pixel_values_u8: np.ndarray


def normalisation_lut() -> np.ndarray:
    """float32 [256]: the official rescale(1/255) then normalise((x - 0.5) / 0.5) of each 8-bit level."""
    # rescale in float64 then cast, normalise in float32: bit-identical to the official image processor
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    return ((levels - np.float32(0.5)) / np.float32(0.5)).astype(np.float32)


_LUT = normalisation_lut()


def normalise_into(out: np.ndarray, levels: np.ndarray) -> None:
    """out[...] = the normalised float32 of each 8-bit level: level / 127.5 - 1 in float32 arithmetic, which equals
    `normalisation_lut()` on all 256 levels (tests/dam_model/test_focal.py checks it) and runs several times faster
    than a table lookup (numpy widens uint8 indices to 64 bits first)."""
    np.divide(levels, np.float32(127.5), out=out, dtype=np.float32)
    np.subtract(out, np.float32(1), out=out)


def to_rgb_array(image) -> np.ndarray:
    """PIL image or numpy HxW / HxWx3 / HxWx4 uint8 -> contiguous HxWx3 uint8."""
    if hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"image must be HxWx3, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


def to_mask_array(mask, image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Mask (numpy bool/uint8/int, or PIL) -> bool HxW (> 0 is foreground); checks size and emptiness."""
    if hasattr(mask, "convert"):
        mask = np.asarray(mask.convert("L"))
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {array.shape}")
    if image_hw is not None and tuple(array.shape) != tuple(image_hw):
        raise ValueError(f"mask size {array.shape[1]}x{array.shape[0]} differs from image size {image_hw[1]}x{image_hw[0]}")
    binary = array > 0
    if not binary.any():
        raise ValueError("mask is empty (no foreground pixel): nothing to describe")
    return binary


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, w, h) of the foreground, exclusive max; ValueError on an empty mask."""
    return _tight_box(to_mask_array(mask))


def _tight_box(binary: np.ndarray) -> tuple[int, int, int, int]:
    """mask_box of a bool HxW array, in one pass over it per axis; ValueError when it is empty."""
    rows = np.flatnonzero(binary.any(axis=1))
    if not len(rows):
        raise ValueError("mask is empty (no foreground pixel): nothing to describe")
    cols = np.flatnonzero(binary[rows[0] : rows[-1] + 1].any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    return x0, y0, int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0


def _as_binary(mask, image_hw: tuple[int, int]) -> np.ndarray:
    """to_mask_array without its copy of a bool mask and without its emptiness scan (the box finds it)."""
    array = np.asarray(mask)
    if array.dtype != np.bool_ or array.ndim != 2 or array.shape != tuple(image_hw):
        return to_mask_array(mask, image_hw)
    return array


def focal_crop_from_box(box_xywh: Sequence[int], height: int, width: int) -> tuple[int, int, int, int]:
    """The release's focal crop (x0, y0, x1, y1) exclusive, from a tight mask box.

    Box centre kept, size raised to at least 48 px, origin by Python int() (truncation toward zero, not floor),
    then 3x width and height (one box on each side), clipped to the image, no padding.
    """
    x0, y0, w, h = box_xywh
    xc, yc = x0 + w / 2, y0 + h / 2
    w, h = max(w, MIN_FOCAL_SIZE), max(h, MIN_FOCAL_SIZE)
    x0, y0 = int(xc - w / 2), int(yc - h / 2)
    return max(x0 - w, 0), max(y0 - h, 0), min(x0 + 2 * w, width), min(y0 + 2 * h, height)


def focal_crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Focal crop (x0, y0, x1, y1) of a mask HxW; crop = image[y0:y1, x0:x1]."""
    binary = to_mask_array(mask)
    return focal_crop_from_box(mask_box(binary), *binary.shape)


def is_full_image(crop_box: Sequence[int], height: int, width: int) -> bool:
    """The release's plain-path rule: a crop covering the whole image means no focal pass (no adapters)."""
    return tuple(int(v) for v in crop_box) == (0, 0, width, height)


def default_workers() -> int:
    """Threads worth using for region preprocessing on this machine (PIL resampling and numpy lookups release
    the GIL); `preprocess_regions` stays serial unless asked, so shared CPUs are not oversubscribed."""
    return max(1, min(4, os.cpu_count() or 1))


def full_view(image, size: int) -> np.ndarray:
    """The whole image as the model sees it: uint8 [3, S, S] (PIL bicubic, squashed), the part every region of the
    image shares; a caller that captions the same image again (clicks) may keep it for `preprocess_regions`."""
    return np.asarray(Image.fromarray(to_rgb_array(image)).resize((size, size), Image.BICUBIC)).transpose(2, 0, 1)


def preprocess_regions(image, masks: Sequence, size: int, workers: int | None = None,
                       shared_view: np.ndarray | None = None) -> RegionBatch:
    """Image + N region masks -> the 8-channel model input for every region (the image is decoded once).

    image: HxWx3 uint8 numpy or PIL; masks: N masks HxW (bool/uint8; > 0 is foreground) or one HxW mask;
    size: the vision input size S in pixels; workers: threads over regions (default 1 = serial; see
    `default_workers()`); shared_view: this image's `full_view(image, size)` when the caller has it.
    Raises ValueError for an empty mask or a mask of another size.
    Shared work: one PIL image and one full-view resize (and its float conversion) for all regions; masks resized
    as 1-band L images (bit-identical to the release's 3-channel mask resize, channel 0), the full-view mask over
    the part its foreground reaches only (`dam_model.mask_resize`); plain-path regions reuse the full view; the
    uint8 -> float conversion (`normalise_into`) is written straight into the batch tensor.
    """
    import torch  # deferred: heavy; the box helpers here are numpy-only and imported without it

    rgb = to_rgb_array(image)
    height, width = rgb.shape[:2]
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    if len(masks) == 0:
        raise ValueError("no masks given: need at least one region")
    binaries = [_as_binary(m, (height, width)) for m in masks]
    n = len(binaries)
    mask_boxes = np.array([_tight_box(b) for b in binaries], dtype=np.int64)
    crop_boxes = np.array([focal_crop_from_box(b, height, width) for b in mask_boxes], dtype=np.int64)

    out = np.empty((n, 8, size, size), dtype=np.uint8)
    values = np.empty((n, 8, size, size), dtype=np.float32)
    full_image = Image.fromarray(rgb)
    if shared_view is None or shared_view.shape != (3, size, size):
        shared_view = np.asarray(full_image.resize((size, size), Image.BICUBIC)).transpose(2, 0, 1)
    full_values = np.empty(shared_view.shape, dtype=np.float32)
    normalise_into(full_values, shared_view)
    is_focal = np.array([not is_full_image(box, height, width) for box in crop_boxes], dtype=bool)

    def mask_channel(i: int, channel: int, resized: np.ndarray, window: tuple[slice, slice]) -> None:
        out[i, channel] = resized
        values[i, channel] = _LUT[0]  # the mask image is 0 outside the window
        normalise_into(values[i, channel][window], resized[window])

    def one_region(i: int) -> None:
        out[i, 0:3], values[i, 0:3] = shared_view, full_values
        mask_channel(i, 3, *resize_mask(binaries[i], mask_boxes[i], size))
        if not is_focal[i]:
            out[i, 4:8], values[i, 4:8] = out[i, 0:4], values[i, 0:4]  # same view: reuse the full resize (plain path)
            return
        x0, y0, x1, y1 = (int(v) for v in crop_boxes[i])
        crop = full_image.crop((x0, y0, x1, y1)).resize((size, size), Image.BICUBIC)
        out[i, 4:7] = np.asarray(crop).transpose(2, 0, 1)
        normalise_into(values[i, 4:7], out[i, 4:7])
        # crops differ in size region by region: resized whole (the pass order is known per repeated geometry only)
        crop_mask = Image.fromarray(binaries[i][y0:y1, x0:x1].view(np.uint8) * np.uint8(255))
        mask_channel(i, 7, np.asarray(crop_mask.resize((size, size), Image.BICUBIC)), (slice(None), slice(None)))

    workers = 1 if workers is None else workers
    if workers > 1 and n > 1:
        with ThreadPoolExecutor(max_workers=min(workers, n)) as pool:
            list(pool.map(one_region, range(n)))
    else:
        for i in range(n):
            one_region(i)
    return RegionBatch(pixel_values=torch.from_numpy(values), is_focal=torch.from_numpy(is_focal),
                       crop_boxes=crop_boxes, mask_boxes=mask_boxes, pixel_values_u8=out)


def preprocess_frames(frames: Sequence, masks: Sequence, size: int) -> RegionBatch:
    """One region per frame (video): frame i with mask i, each with its own focal crop; returns N = len(frames) rows."""
    if len(frames) != len(masks):
        raise ValueError(f"{len(frames)} frames but {len(masks)} masks")
    parts = [preprocess_regions(f, [m], size) for f, m in zip(frames, masks)]
    import torch  # deferred: heavy (see preprocess_regions)

    return RegionBatch(
        pixel_values=torch.cat([p.pixel_values for p in parts]),
        is_focal=torch.cat([p.is_focal for p in parts]),
        crop_boxes=np.concatenate([p.crop_boxes for p in parts]),
        mask_boxes=np.concatenate([p.mask_boxes for p in parts]),
        pixel_values_u8=np.concatenate([p.pixel_values_u8 for p in parts]),
    )
