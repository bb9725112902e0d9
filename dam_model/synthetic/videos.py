"""Videos: 1..3 shapes moving along straight lines (or standing still) over a static textured background."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .captions import long_caption, short_caption
from .drawing import background_texture, draw_diameter, finish_pixels, jittered_rgb, pick_size, position_of, shape_mask
from .vocabulary import COLORS, MOTIONS, SHAPES, SIZES, VIDEO_SIZES


@dataclass
class VideoObject:
    """One moving object: masks bool TxHxW (visible pixels per frame), attributes include ``motion``."""

    object_id: int
    masks: np.ndarray
    rgb: tuple[int, int, int]
    attributes: dict[str, Any]
    short_caption: str
    long_caption: str

    @property
    def size_bucket(self) -> str:
        return str(self.attributes["size"])


@dataclass
class VideoScene:
    """Frames uint8 TxHxWx3 over a static textured background, and the moving objects."""

    seed: int
    index: int
    frames: np.ndarray
    objects: list[VideoObject]

    @property
    def scene_id(self) -> str:
        return f"synthetic-video-{self.seed}-{self.index}"


def generate_video(seed: int, index: int, num_frames: int = 16, *, size: tuple[int, int] | None = None,
                   num_objects: int | None = None, pixel_noise: int = 10) -> VideoScene:
    """A deterministic video: 1..3 shapes moving along straight lines (or standing still) over a texture.

    num_frames: >= 2 (16 by default). size: (width, height), default drawn from VIDEO_SIZES.
    Every object stays at least 50 % visible in every frame; masks are its visible pixels per frame.
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if num_objects is not None and not 1 <= num_objects <= 3:
        raise ValueError(f"num_objects must be in 1..3, got {num_objects}")
    rng = np.random.default_rng([int(seed), int(index), 1])
    width, height = pick_size(rng, size, VIDEO_SIZES if size is None else None)
    min_side = min(width, height)
    background = background_texture(rng, height, width)
    count = int(num_objects) if num_objects is not None else int(rng.integers(1, 4))
    tracks: list[dict[str, Any]] = []
    for _ in range(count):
        track = _place_track(rng, width, height, min_side, num_frames, tracks)
        if track is not None:
            tracks.append(track)
    if not tracks:
        raise RuntimeError(f"could not place an object in video ({seed}, {index})")

    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    visible = _visible_tracks(tracks)
    for t in range(num_frames):
        canvas = background.copy()
        for track in tracks:
            canvas[track["full"][t]] = track["rgb"]
        frames[t] = finish_pixels(canvas, rng, pixel_noise)
    objects = []
    for object_id, (track, masks) in enumerate(zip(tracks, visible)):
        attributes = {
            "color": track["color"], "shape": track["shape"], "size": track["size"],
            "position": position_of(track["start"][0], track["start"][1], width, height),
            "motion": track["motion"], "object_id": object_id,
            "start": [round(v, 3) for v in track["start"]], "end": [round(v, 3) for v in track["end"]],
            "diameter_px": round(track["d"], 3),
        }
        objects.append(VideoObject(object_id, masks, track["rgb"], attributes,
                                   short_caption(attributes), long_caption(attributes)))
    return VideoScene(int(seed), int(index), frames, objects)


def _place_track(rng: np.random.Generator, width: int, height: int, min_side: int, num_frames: int,
                 tracks: list[dict[str, Any]], tries: int = 25) -> dict[str, Any] | None:
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = SIZES[int(rng.integers(2))]  # small or medium: large shapes leave no room to travel
    motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    diameter = draw_diameter(rng, size, min_side)
    radius = diameter / 2.0
    for _ in range(tries):
        cx, cy = float(rng.uniform(radius, width - radius)), float(rng.uniform(radius, height - radius))
        start, end = [cx, cy], [cx, cy]
        axis, extent = (0, width) if motion in MOTIONS[:2] else (1, height)
        if motion != "staying still":
            travel = float(rng.uniform(0.4, 0.7)) * extent
            first = float(rng.uniform(radius, extent - radius - travel)) if extent - 2 * radius > travel else None
            if first is None:
                continue
            forward = motion in ("moving left to right", "moving top to bottom")
            start[axis], end[axis] = (first, first + travel) if forward else (first + travel, first)
        centres = [(start[0] + (end[0] - start[0]) * t / (num_frames - 1),
                    start[1] + (end[1] - start[1]) * t / (num_frames - 1)) for t in range(num_frames)]
        full = np.stack([shape_mask(shape, x, y, diameter, height, width) for x, y in centres])
        candidate = {"color": color, "shape": shape, "size": size, "motion": motion, "d": diameter,
                     "start": start, "end": end, "full": full}
        if all(_frames_visible(masks, track["full"]) for track, masks in
               zip(tracks + [candidate], _visible_tracks(tracks + [candidate]))):
            return {**candidate, "rgb": jittered_rgb(rng, color)}
    return None


def _visible_tracks(tracks: list[dict[str, Any]]) -> list[np.ndarray]:
    """Per track, bool TxHxW of its pixels not covered by tracks drawn after it."""
    result = []
    for k, track in enumerate(tracks):
        masks = track["full"].copy()
        for later in tracks[k + 1:]:
            masks &= ~later["full"]
        result.append(masks)
    return result


def _frames_visible(visible: np.ndarray, full: np.ndarray) -> bool:
    kept = visible.reshape(len(visible), -1).sum(axis=1)
    total = full.reshape(len(full), -1).sum(axis=1)
    return bool(np.all(kept >= 0.5 * total) and np.all(kept > 0))
