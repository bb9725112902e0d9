"""A Label Studio video track (videorectangle) frame by frame: the ONE keyframe interpolation.

The rule is the editor's own, read from Label Studio's source (HumanSignal/label-studio, web/libs/editor/src):
- regions/VideoRectangleRegion.js `getShape(frame)`: a keyframe ON the frame gives its own box; otherwise, with
  `prev` the last keyframe before the frame and `next` the first one after it: no `prev` -> no box; no `next` ->
  `prev`'s box (held); else each of x, y, width, height, rotation is interpolated by utils/props.ts
  `interpolateProp`. `enabled` plays no part in the shape.
- utils/props.ts `interpolateProp`: linear in r = (frame - prev.frame) / (next.frame - prev.frame); rotation goes
  the short way round: normalizeAngle(prev + normalizeAngle(next - prev) * r), normalizeAngle mapping any angle
  into (-180, 180].
- regions/VideoRegion.js `isInLifespan(frame)`: the keyframe that decides is the last one at or before the frame;
  on its own frame a keyframe is always shown (enabled or not); after it, the track is shown iff that keyframe is
  enabled. So a disabled keyframe hides the track from the frame after it up to the next keyframe, and after the
  LAST keyframe the track stays shown to the end of the video iff that keyframe is enabled. A keyframe without
  `enabled` counts as disabled (the editor reads the missing value as false; it always writes the key itself).
- tags/object/Video/VideoRegions.jsx draws a track on a frame iff `isInLifespan(frame) && getShape(frame)`.
- Frames are 1-based (tags/object/Video/Video.js: frame 1 .. length); LS frame f is decoded frame index f - 1.
  The editor's timeline is `framesCount` long (`timeline_length`).

Keyframes are sorted by frame (a stable sort, as VideoRegion.addKeypoint keeps them); with two keyframes on one
frame the first gives the shape there and the last decides what follows, as in the editor. A keyframe without a
rotation has rotation 0. Boxes are dicts {x, y, width, height, rotation} in percent, like a rectangle's value.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Sequence

import numpy as np

from .errors import BadRequest
from .regions import rasterize, rectangle_corners

BOX_KEYS = ("x", "y", "width", "height", "rotation")


def normalize_angle(angle: float) -> float:
    """Any angle in degrees mapped into (-180, 180], as the editor's normalizeAngle (JavaScript's % keeps the
    dividend's sign: math.fmod)."""
    if angle > 0:
        angle -= 360.0 * math.ceil(angle / 360.0)
    return math.fmod(angle - 180.0, 360.0) + 180.0


def _keyframe_box(key: dict[str, Any]) -> dict[str, float]:
    box = {}
    for name in BOX_KEYS:
        raw = key.get(name)
        if raw is None and name == "rotation":
            raw = 0.0
        try:
            box[name] = float(raw)
        except (TypeError, ValueError):
            raise BadRequest(f"video keyframe at frame {key.get('frame')} needs numeric {name}") from None
    return box


def _interpolate(prev: dict[str, Any], nxt: dict[str, Any], frame: int) -> dict[str, float]:
    start, end = _keyframe_box(prev), _keyframe_box(nxt)
    r = (frame - int(prev["frame"])) / (int(nxt["frame"]) - int(prev["frame"]))
    box = {name: start[name] + (end[name] - start[name]) * r for name in BOX_KEYS if name != "rotation"}
    box["rotation"] = normalize_angle(start["rotation"] + normalize_angle(end["rotation"] - start["rotation"]) * r)
    return box


def keyframes(sequence: Sequence[Any]) -> list[dict[str, Any]]:
    """The keyframes of a `value.sequence`, sorted by frame (stable); items without a frame are dropped."""
    keys = []
    for item in sequence or []:
        if not isinstance(item, dict) or item.get("frame") is None:
            continue
        try:
            keys.append({**item, "frame": int(item["frame"])})
        except (TypeError, ValueError):
            raise BadRequest(f"video keyframe has a non-integer frame {item['frame']!r}") from None
    return sorted(keys, key=lambda k: k["frame"])


def track_boxes(sequence: Sequence[Any], n_frames: int) -> list[dict[str, float] | None]:
    """The box Label Studio draws on each of `n_frames` frames (index f - 1 for LS frame f), None where it draws
    none. See the module docstring for the rule."""
    keys = keyframes(sequence)
    frames = [k["frame"] for k in keys]
    boxes: list[dict[str, float] | None] = []
    for frame in range(1, n_frames + 1):
        first_at = bisect.bisect_left(frames, frame)  # first keyframe at or after this frame
        after = bisect.bisect_right(frames, frame)  # first keyframe after this frame
        deciding = keys[after - 1] if after else None  # last keyframe at or before this frame
        on_key = first_at < len(keys) and frames[first_at] == frame
        if deciding is None or not (on_key or deciding.get("enabled")):
            boxes.append(None)
        elif on_key:
            boxes.append(_keyframe_box(keys[first_at]))
        elif after == len(keys):
            boxes.append(_keyframe_box(deciding))
        else:
            boxes.append(_interpolate(deciding, keys[after], frame))
    return boxes


def timeline_length(value: dict[str, Any], decoded_frames: int) -> int:
    """Frames of the video that the track can cover: the decoded count, or the editor's `framesCount` when that is
    shorter (Label Studio's timeline ends there: nothing is annotated beyond it)."""
    frames_count = value.get("framesCount")
    if isinstance(frames_count, (int, float)) and not isinstance(frames_count, bool) and 0 < frames_count < decoded_frames:
        return int(frames_count)
    return decoded_frames


def box_visible(box: dict[str, float] | None, height: int, width: int) -> bool:
    """True when the box covers some of the frame (its pixel extent, clipped to the frame, is not empty)."""
    if box is None or box["width"] <= 0 or box["height"] <= 0:
        return False
    xs, ys = zip(*rectangle_corners(box, width, height))
    return min(max(xs), width) > max(min(xs), 0) and min(max(ys), height) > max(min(ys), 0)


def track_masks(boxes: Sequence[dict[str, float] | None], height: int, width: int) -> list[np.ndarray]:
    """One bool HxW mask per frame: the box rasterised as a (rotated) rectangle, empty where the box is None or
    off the frame."""
    empty = np.zeros((height, width), dtype=bool)
    return [rasterize({"type": "rectangle", "value": box}, height, width) > 0 if box_visible(box, height, width)
            else empty.copy() for box in boxes]
