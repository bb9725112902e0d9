"""Shared data types, the segmenter interfaces, and input validation for the segmenters.

Images are HxWx3 uint8 RGB numpy arrays (PIL images, HxW grey and HxWx4 RGBA are converted).
Point and box prompts are in pixels of the ORIGINAL image: x is the column, y the row.

Interfaces (typing.Protocol, checkable with isinstance): every segmenter is a `Segmenter` (clicks/box -> mask);
one that also tracks objects through a clip is a `VideoSegmenter`, one that finds every object's mask on its own
an `AutoMaskSegmenter`. Sam2Segmenter is all three; RegionGrowSegmenter is a Segmenter only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class MaskPrediction:
    """One predicted mask.

    mask:   bool [H, W] at the original image resolution.
    score:  float; SAM 2's predicted IoU (or a documented heuristic for the classical fallback).
    logits: float32 array; for SAM 2 the low-resolution logits [1, S/4, S/4] of the chosen mask
            (S = model input size), which `predict(..., mask_input=...)` accepts back for refinement.
            Automatic masks carry an empty array (SAM 2's generator does not keep them).
    """

    mask: np.ndarray
    score: float
    logits: np.ndarray

    @property
    def area(self) -> int:
        """Foreground pixel count."""
        return int(self.mask.sum())


@dataclass(frozen=True)
class VideoPrompt:
    """A prompt for one object on one frame of a clip.

    frame_index: index of the frame (after any subsampling of a video file).
    obj_id:      any hashable id (int or str); the output dict is keyed by it.
    points:      [N, 2] (x, y) pixels of the original frame, or None.
    labels:      [N] 1 = positive, 0 = negative, or None (required with points).
    box:         (x0, y0, x1, y1) pixels, or None. At least one of points/box must be given.
    """

    frame_index: int
    obj_id: Hashable
    points: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    box: Optional[np.ndarray] = None

    @classmethod
    def coerce(cls, prompt: "VideoPrompt | dict[str, Any]") -> "VideoPrompt":
        """Accept a VideoPrompt or a dict with the same keys ("frame" is an alias of "frame_index")."""
        if isinstance(prompt, VideoPrompt):
            return prompt
        if not isinstance(prompt, dict):
            raise ValueError(f"a video prompt must be a VideoPrompt or a dict, got {type(prompt).__name__}")
        frame = prompt.get("frame_index", prompt.get("frame"))
        if frame is None or "obj_id" not in prompt:
            raise ValueError("a video prompt needs 'frame_index' (or 'frame') and 'obj_id'")
        return cls(
            frame_index=int(frame),
            obj_id=prompt["obj_id"],
            points=prompt.get("points"),
            labels=prompt.get("labels"),
            box=prompt.get("box"),
        )


@runtime_checkable
class Segmenter(Protocol):
    """Clicks and/or a box on one image -> one object's mask (see Sam2Segmenter.predict for the prompt rules).

    points: [N, 2] (x, y) pixels of the original image; labels: [N], 1 positive, 0 negative; box: (x0, y0, x1, y1)
    pixels; mask_input: the `logits` of an earlier prediction to refine (a segmenter without learned logits may
    ignore it). Malformed or out-of-image prompts raise ValueError.
    """

    def predict(
        self,
        image: Any,
        points: Optional[Sequence] = None,
        labels: Optional[Sequence] = None,
        box: Optional[Sequence] = None,
        mask_input: Optional[np.ndarray] = None,
    ) -> MaskPrediction: ...


@runtime_checkable
class AutoMaskSegmenter(Protocol):
    """"Describe everything": the masks of the objects on one image, best first, at most `max_masks`, each with at
    least `min_area` pixels."""

    def automatic_masks(self, image: Any, max_masks: int = 50, min_area: int = 100) -> list[MaskPrediction]: ...


@runtime_checkable
class VideoSegmenter(Protocol):
    """Masklets through a clip: prompts on any frames -> {obj_id: one bool [H, W] mask per frame}.

    frames: a video path, a sequence of HxWx3 uint8 frames or a [T, H, W, 3] array; stride keeps every stride-th
    frame and max_frames bounds the kept frames; time_budget_s raises TimeoutError past it; on_frame(frame_index,
    obj_id, "forward" | "backward") is called after each step.
    """

    def track_video(
        self,
        frames: Any,
        prompts: Sequence[Union[VideoPrompt, dict[str, Any]]],
        max_frames: int = 300,
        stride: int = 1,
        *,
        time_budget_s: Optional[float] = None,
        on_frame: Optional[Callable[[int, Hashable, str], None]] = None,
    ) -> dict[Hashable, list[np.ndarray]]: ...


def as_rgb_uint8(image: Any) -> np.ndarray:
    """Return the image as a contiguous HxWx3 uint8 RGB array (accepts PIL, HxW, HxWx3, HxWx4)."""
    if not isinstance(image, np.ndarray):
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        else:
            raise ValueError(f"image must be a numpy array or PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def validate_prompts(
    height: int,
    width: int,
    points: Optional[Sequence] = None,
    labels: Optional[Sequence] = None,
    box: Optional[Sequence] = None,
) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """Check prompts against an image of `height` x `width` pixels and return them as arrays.

    Returns (points float32 [N, 2] or None, labels int32 [N] or None, box float32 [4] or None).
    Coordinates may lie on the far edge (x == width) because Label Studio's 100 % maps there.
    Raises ValueError with a one-line reason for any malformed or out-of-image prompt.
    """
    pts = lbl = bx = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float32)
        if pts.size == 0:
            pts = None
        else:
            if pts.ndim == 1 and pts.shape[0] == 2:
                pts = pts[None, :]
            if pts.ndim != 2 or pts.shape[1] != 2:
                raise ValueError(f"points must be an Nx2 array of (x, y) pixels, got shape {pts.shape}")
    if pts is not None:
        if labels is None:
            raise ValueError("labels are required with points (1 = positive, 0 = negative)")
        lbl = np.asarray(labels).reshape(-1)
        if lbl.shape[0] != pts.shape[0]:
            raise ValueError(f"got {pts.shape[0]} points but {lbl.shape[0]} labels")
        if not np.isin(lbl, (0, 1)).all():
            raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {sorted(set(lbl.tolist()))}")
        lbl = lbl.astype(np.int32)
        if not np.isfinite(pts).all():
            raise ValueError("points contain NaN or infinity")
        outside = (pts[:, 0] < 0) | (pts[:, 0] > width) | (pts[:, 1] < 0) | (pts[:, 1] > height)
        if outside.any():
            first = pts[np.argmax(outside)]
            raise ValueError(
                f"point ({first[0]:g}, {first[1]:g}) is outside the {width}x{height} image (x in [0, {width}], y in [0, {height}])"
            )
    elif labels is not None and np.asarray(labels).size > 0:
        raise ValueError("labels were given without points")
    if box is not None:
        bx = np.asarray(box, dtype=np.float32).reshape(-1)
        if bx.shape[0] != 4 or not np.isfinite(bx).all():
            raise ValueError(f"box must be 4 finite numbers (x0, y0, x1, y1), got {np.asarray(box).tolist()}")
        x0, y0, x1, y1 = bx.tolist()
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"box must have x1 > x0 and y1 > y0, got {bx.tolist()}")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"box {bx.tolist()} is outside the {width}x{height} image")
    if pts is None and bx is None:
        raise ValueError("give at least one prompt: points with labels, or a box")
    return pts, lbl, bx
