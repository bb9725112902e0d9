"""The Label Studio result format as the build step reads it: regions grouped by id, geometry rasterised to masks,
video-rectangle keyframes interpolated per frame, video files probed and decoded.

This module moves to ls_io (issue 14): ls_io.regions, ls_io.tracks and ls_io.video_io replace it at merge.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from backend.rle import decode_rle

VIDEO_GEOMETRY_TYPES = ("videorectangle",)
GEOMETRY_TYPES = ("brushlabels", "brush", "polygonlabels", "polygon", "rectanglelabels", "rectangle", *VIDEO_GEOMETRY_TYPES)
LABEL_TYPES = ("labels", "brushlabels", "polygonlabels", "rectanglelabels")
VIDEO_MAX_PIXELS = 64_000_000  # per frame, as backend.settings' media_max_pixels default


def caption_text(value: dict[str, Any]) -> str:
    text = value.get("text", "")
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    return " ".join(str(text).split())


def group_regions(result: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{region id: {"geometry": result item, "caption": str, "labels": [str]}} in first-seen order."""
    regions: dict[str, dict[str, Any]] = {}
    for item in result or []:
        region_id = str(item.get("id", ""))
        kind = item.get("type", "")
        region = regions.setdefault(region_id, {"geometry": None, "caption": "", "labels": []})
        value = item.get("value") or {}
        if kind in GEOMETRY_TYPES and region["geometry"] is None:
            region["geometry"] = item
        if kind == "textarea":
            region["caption"] = " ".join(filter(None, [region["caption"], caption_text(value)]))
        if kind in LABEL_TYPES and isinstance(value.get(kind), list):
            region["labels"] += [str(label) for label in value[kind] if str(label) not in region["labels"]]
        if kind in VIDEO_GEOMETRY_TYPES and isinstance(value.get("labels"), list):  # video tracks keep labels inside
            region["labels"] += [str(label) for label in value["labels"] if str(label) not in region["labels"]]
    return {rid: r for rid, r in regions.items() if r["geometry"] is not None}


def rasterize(item: dict[str, Any], height: int, width: int) -> np.ndarray:
    """A geometry result -> uint8 HxW mask (0/255). Percent coordinates from the top-left, as Label Studio writes them."""
    kind, value = item.get("type", ""), item.get("value") or {}
    if kind in ("brushlabels", "brush"):
        if value.get("format", "rle") != "rle":
            raise ValueError(f"unsupported brush format {value.get('format')!r}")
        mask = np.asarray(decode_rle(value["rle"], height, width))
        return np.where(mask > 0, 255, 0).astype(np.uint8)
    if kind in ("polygonlabels", "polygon"):
        points = [(float(x) * width / 100.0, float(y) * height / 100.0) for x, y in value["points"]]
        if len(points) < 3:
            raise ValueError("polygon with fewer than 3 points")
    elif kind in ("rectanglelabels", "rectangle"):
        points = rectangle_points(value, height, width)
    else:
        raise ValueError(f"unsupported region type {kind!r}")
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    return np.asarray(canvas, dtype=np.uint8)


def rectangle_points(value: dict[str, Any], height: int, width: int) -> list[tuple[float, float]]:
    """Pixel corners of a Label Studio rectangle {x, y, width, height, rotation} (percent, rotated about x, y)."""
    x, y = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
    w, h = float(value["width"]) * width / 100.0, float(value["height"]) * height / 100.0
    angle = math.radians(float(value.get("rotation") or 0.0))  # Label Studio rotates about the top-left corner
    cos, sin = math.cos(angle), math.sin(angle)
    return [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]


def keyframe_boxes(sequence: list[dict[str, Any]], n_frames: int) -> list[dict[str, float] | None]:
    """The box of a Label Studio video track on every frame (index f - 1 for LS frame f), None where it is hidden.

    Label Studio's editor rules (VideoRectangleRegion.getShape + VideoRegion.isInLifespan): nothing before the first
    keyframe; a keyframe shows its own box on its own frame (enabled or not); from an enabled keyframe the box is
    interpolated linearly (x, y, width, height, rotation) up to the next keyframe, or held to the last frame when
    it is the last keyframe; after a disabled keyframe the track is hidden until the next keyframe.
    """
    by_frame: dict[int, dict[str, Any]] = {}
    for key in sequence or []:
        if isinstance(key, dict) and key.get("frame") is not None:
            by_frame[int(key["frame"])] = key  # a later duplicate of a frame wins
    keys = [by_frame[f] for f in sorted(by_frame)]
    props = ("x", "y", "width", "height", "rotation")

    def shape(key: dict[str, Any]) -> dict[str, float]:
        return {p: float(key.get(p) or 0.0) for p in props}

    boxes: list[dict[str, float] | None] = [None] * n_frames
    for i, key in enumerate(keys):
        start = int(key["frame"])
        if start > n_frames:
            break
        if start >= 1:
            boxes[start - 1] = shape(key)
        if not key.get("enabled", True):
            continue
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        first, last = shape(key), (shape(nxt) if nxt is not None else None)
        stop = int(nxt["frame"]) - 1 if nxt is not None else n_frames  # last frame of this segment
        for frame in range(max(start + 1, 1), min(stop, n_frames) + 1):
            if last is None:
                boxes[frame - 1] = dict(first)
            else:
                t = (frame - start) / (int(nxt["frame"]) - start)
                boxes[frame - 1] = {p: first[p] + (last[p] - first[p]) * t for p in props}
    return boxes


def box_visible(box: dict[str, float] | None, height: int, width: int) -> bool:
    """True when the box covers some of the frame (its pixel extent, clipped to the frame, is not empty)."""
    if box is None or box["width"] <= 0 or box["height"] <= 0:
        return False
    xs, ys = zip(*rectangle_points(box, height, width))
    return min(max(xs), width) > max(min(xs), 0) and min(max(ys), height) > max(min(ys), 0)


@dataclasses.dataclass
class VideoInfo:
    """A fetched video: its local file, sha256 of its bytes, decoded frame count and frame size."""

    path: Path
    digest: str
    num_frames: int
    height: int
    width: int


def probe_video(path: Path, max_pixels: int = VIDEO_MAX_PIXELS) -> VideoInfo:
    """Hash the file and count the frames of its first video stream (packets: no decoding; decoding when the
    container gives none)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{Path(path).name} has no video stream")
        stream = container.streams.video[0]
        width, height = int(stream.width), int(stream.height)
        if width * height > max_pixels:
            raise ValueError(f"video is {width}x{height}, over the {max_pixels} pixel limit")
        count = sum(1 for packet in container.demux(stream) if packet.size)
    if count == 0:
        with av.open(str(path)) as container:
            count = sum(1 for _ in container.decode(video=0))
    if count == 0:
        raise ValueError(f"{Path(path).name} has no frames")
    return VideoInfo(Path(path), digest.hexdigest(), count, height, width)


def read_video_frames(path: Path, indices: set[int] | list[int]) -> dict[int, np.ndarray]:
    """{0-based decoded frame index: HxWx3 uint8 RGB} for the wanted indices (decodes up to the last one)."""
    wanted = set(int(i) for i in indices)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                out[index] = frame.to_ndarray(format="rgb24")
            if index >= max(wanted):
                break
    missing = sorted(wanted - set(out))
    if missing:
        raise ValueError(f"video decoded to fewer frames than counted: frames {missing[:5]} missing")
    return out
