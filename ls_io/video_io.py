"""Video helpers: decode frames, Label Studio's keyframe interpolation of a VideoRectangle, frame sampling."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import PayloadTooLarge, Unprocessable

MAX_FRAMES = 3000


def decode_video(path: str | Path, max_pixels: int, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """All frames of a video file as HxWx3 uint8 RGB arrays (first stream), at most `max_frames`."""
    import av

    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.width * stream.height > max_pixels:
                raise PayloadTooLarge(f"video is {stream.width}x{stream.height}, over the {max_pixels} pixel limit")
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) > max_frames:
                    raise PayloadTooLarge(f"video has more than {max_frames} frames")
    except (av.error.FFmpegError, IndexError) as exc:
        raise Unprocessable(f"video could not be decoded: {type(exc).__name__}") from None
    return frames


def interpolate_track(sequence: Sequence[dict[str, Any]], n_frames: int, width: int, height: int) -> list[np.ndarray]:
    """Box masks per frame from keyframes, as Label Studio draws them: linear between an enabled keyframe and the
    next one; hidden after a keyframe with enabled=false until the next keyframe. Frames are 1-based in `sequence`."""
    keys = sorted((k for k in sequence if isinstance(k, dict) and "frame" in k), key=lambda k: int(k["frame"]))
    masks = [np.zeros((height, width), dtype=bool) for _ in range(n_frames)]
    for i, key in enumerate(keys):
        start = int(key["frame"]) - 1
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        stop = (int(nxt["frame"]) - 1) if nxt is not None else start + 1
        if not key.get("enabled", True) or nxt is None:
            stop = start + 1  # the last keyframe, or a disabled one, covers only its own frame
        for f in range(max(start, 0), min(stop, n_frames)):
            t = 0.0 if nxt is None or stop == start else (f - start) / (int(nxt["frame"]) - 1 - start)
            box = {c: float(key[c]) + t * ((float(nxt[c]) if nxt is not None else float(key[c])) - float(key[c]))
                   for c in ("x", "y", "width", "height")}
            x0, y0 = int(round(box["x"] / 100 * width)), int(round(box["y"] / 100 * height))
            x1 = int(round((box["x"] + box["width"]) / 100 * width))
            y1 = int(round((box["y"] + box["height"]) / 100 * height))
            masks[f][max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return masks


def sample_frame_indices(masks: Sequence[np.ndarray], n: int = 8) -> list[int]:
    """`n` indices spread uniformly over the frames where the mask is not empty (DAM video uses 8); [] when all
    are empty. Uses dam_model's `sample_frames` rule (frames repeat when fewer than n are usable)."""
    if not any(m is not None and np.any(m) for m in masks):
        return []
    try:
        from dam_model.segmentation import sample_frames
    except ImportError:  # pragma: no cover - dam_model is part of this repository
        sample_frames = None
    if sample_frames is not None:
        return list(sample_frames(masks, n))
    present = [i for i, m in enumerate(masks) if m is not None and np.any(m)]
    if len(present) <= n:
        return present
    picks = np.linspace(0, len(present) - 1, n).round().astype(int)
    return [present[i] for i in picks]
