"""Step 2 of the loop: turn a pulled snapshot of Label Studio exports into a training dataset folder.

For every non-cancelled annotation (both export formats), each region is the geometry result (brush RLE, polygon or
rectangle, in percent of the image; or a video rectangle track) plus the per-region TextArea result with the SAME id
(the caption) and its labels (the category). Output, in ``<work root>/datasets/<snapshot id>/`` (or ``--out``)::

    samples.jsonl        one human-captioned IMAGE region per line: id, image, mask (paths relative to the folder),
                         caption, category, labels, split ("train" | "val"), task_id, annotation_id, region_id,
                         updated_at, source="human", width, height, key, and attributes when the task has them
    unlabeled.jsonl      image regions without a caption (inputs for scripts.pseudo_label), same fields minus caption
    video_samples.jsonl  one human-captioned VIDEO track per line, ``kind: "video"`` (see "Video tracks" below)
    images/ masks/       PNG (RGB images; masks 0/255, L mode)
    frames/              PNG video frames, ``<video sha256[:16]>-<0-based frame index:06d>.png`` (only sampled ones)
    dataset.json         counts (image and ``video_*``), snapshot id, split rule, skipped items with reasons

Attributes: when the task data hold ``data.attributes = {<region id>: {color, shape, size, position, context,
context_relation, ...}}`` (scripts.export_synthetic writes it), the region's record is copied into its sample as
``attributes`` and scripts.evaluate runs the exact DLC-style judge on it. Real Label Studio tasks have none: the
samples then carry no ``attributes`` and evaluation uses the reference metrics only.

Video tracks (Label Studio ``videorectangle``: keyframes in ``value.sequence``, frames 1-based): the box of every
frame is Label Studio's own (its editor's interpolation: linear from an enabled keyframe to the next one, the
last enabled keyframe held to the end of the video, nothing after a disabled keyframe until the next one, nothing
before the first keyframe); ``video_frames`` (default 8, env VIDEO_FRAMES) frames are picked among the frames where
the box is visible with ``dam_model.segmentation.sample_frames``, the rule the backend uses before DAM's
``describe_video``; each picked frame is written with the box rasterised as its mask. LS frame f is the f-th
decoded frame (f - 1 here). A row: kind="video", id, video (the task's URL), frames and masks (one path per picked
frame, repeated when fewer frames are visible than picked), frame_indices (0-based), boxes (the interpolated
{x, y, width, height, rotation} in percent, per picked frame), num_frames, width, height, caption, category,
labels, split, task_id, annotation_id, region_id, updated_at, source="human", key, video_sha256 (of the file),
attributes (when present).
Tracks without a caption are counted (``video_empty_caption``), not written. dam_model.training cannot train on
them yet: they are kept apart from samples.jsonl so the image steps read exactly what they read before.

Rules: cancelled annotations and empty captions are skipped; duplicates (same image pixels + same mask pixels, or same
video file + same per-frame boxes) keep the latest annotation (updated_at, then id); the split is sticky:
sha256("task:<task id>") decides, so a task never changes side between runs (for a fixed --val-fraction). Images and
videos are fetched through backend/media.py.

Usage::

    python -m scripts.build --work-root loop_work [--snapshot ID] [--val-fraction 0.2] [--video-frames 8]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from scripts.loop_common import (
    EXIT_FAILURE,
    EXIT_NO_SAMPLES,
    EXIT_PROMOTED,
    BadArguments,
    LoopError,
    add_log_level_arg,
    add_work_root_arg,
    atomic_write_json,
    env_default,
    env_float,
    env_int,
    fraction,
    read_json,
    read_jsonl,
    setup_logging,
    utc_iso,
    write_jsonl,
)

log = logging.getLogger("scripts.build")

VIDEO_GEOMETRY_TYPES = ("videorectangle",)
GEOMETRY_TYPES = ("brushlabels", "brush", "polygonlabels", "polygon", "rectanglelabels", "rectangle", *VIDEO_GEOMETRY_TYPES)
LABEL_TYPES = ("labels", "brushlabels", "polygonlabels", "rectanglelabels")
VIDEO_SAMPLES_FILE = "video_samples.jsonl"
DEFAULT_VIDEO_FRAMES = 8  # DAM's video checkpoints take 8 frames (backend: VIDEO_FRAMES)
VIDEO_MAX_PIXELS = 64_000_000  # per frame, as backend.settings' media_max_pixels default

ImageFetcher = Callable[[str, Any], np.ndarray]  # (url or path, task id) -> HxWx3 uint8 RGB
# (url or path, task id, scratch folder) -> a local video file; remote media may be written into the scratch
# folder, which build_dataset deletes when it ends.
VideoFetcher = Callable[[str, Any, Path], Path]


@dataclasses.dataclass
class AnnotationRecord:
    """One exported annotation with its task."""

    key: str
    task_id: Any
    task_data: dict[str, Any]
    annotation: dict[str, Any]
    task_meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def updated_at(self) -> str:
        return str(self.annotation.get("updated_at") or self.annotation.get("created_at") or "")


# ----------------------------------------------------------------------------------------------- parsing
def iter_annotations(export: dict[str, Any], key: str = "") -> Iterator[AnnotationRecord]:
    """Annotations in one export object: per-annotation format ({result, task}) or per-task ({data, annotations})."""
    if "result" in export and isinstance(export.get("task"), dict):
        task = export["task"]
        yield AnnotationRecord(key, task.get("id"), task.get("data") or {}, export, task.get("meta") or {})
    elif "data" in export:
        for annotation in export.get("annotations") or []:
            yield AnnotationRecord(key, export.get("id"), export.get("data") or {}, annotation, export.get("meta") or {})
    else:
        raise ValueError("not a Label Studio export object")


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
    from PIL import Image, ImageDraw

    kind, value = item.get("type", ""), item.get("value") or {}
    if kind in ("brushlabels", "brush"):
        from backend.rle import decode_rle

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


def image_url(task_data: dict[str, Any], geometry: dict[str, Any], image_key: str | None) -> str:
    """The task's image reference: --image-key, else the data key named like the region's to_name, else the first string."""
    for key in (image_key, geometry.get("to_name")):
        if key and isinstance(task_data.get(key), str):
            return task_data[key]
    for value in task_data.values():
        if isinstance(value, str) and value:
            return value
    raise ValueError("task data holds no image reference")


def region_fields(record: Any, region: dict[str, Any], region_id: Any) -> dict[str, Any]:
    """Where a sample comes from (same fields for image and video rows): category, labels, task/annotation/region
    ids and the annotation's updated_at."""
    return {
        "category": region["labels"][0] if region["labels"] else None,
        "labels": region["labels"],
        "task_id": record.task_id,
        "annotation_id": record.annotation.get("id"),
        "region_id": region_id,
        "updated_at": record.updated_at,
    }


def split_for(task_id: Any, val_fraction: float) -> str:
    """Sticky split: 'val' when sha256('task:<id>') maps below val_fraction, else 'train'. Never changes between runs."""
    bucket = int(hashlib.sha256(f"task:{task_id}".encode()).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


def region_attributes(task_data: dict[str, Any], region_id: str) -> dict[str, Any] | None:
    """The region's attribute record for the DLC-style judge: ``data.attributes[<region id>]`` when the task data
    hold one (scripts.export_synthetic writes them), else None (real Label Studio tasks: the judge is skipped)."""
    attributes = task_data.get("attributes")
    if isinstance(attributes, dict) and isinstance(attributes.get(region_id), dict) and attributes[region_id]:
        return attributes[region_id]
    return None


def pixels_hash(array: np.ndarray) -> str:
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _media_fetcher(local_files_root: str | None = None) -> Any:
    from backend.media import MediaFetcher
    from backend.settings import Settings

    overrides = {"local_files_root": str(local_files_root)} if local_files_root else {}
    return MediaFetcher(Settings.from_env(**overrides))


def default_fetcher(local_files_root: str | None = None) -> ImageFetcher:
    """Images through backend/media.py: Label Studio uploads/local-files with LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY,
    cloud URIs presigned by Label Studio, http(s) under MEDIA_ALLOWED_HOSTS, local paths under LOCAL_FILES_ROOT."""
    fetcher = _media_fetcher(local_files_root)

    def fetch(url: str, task_id: Any = None) -> np.ndarray:
        return fetcher.load_image(url, task_id if isinstance(task_id, int) else None)

    return fetch


def default_video_fetcher(local_files_root: str | None = None) -> VideoFetcher:
    """Videos through backend/media.py, with the same URL rules as images (and the backend's VIDEO_MAX_BYTES cap):
    a local path (under LOCAL_FILES_ROOT) is used in place; other media are downloaded into the scratch folder."""
    fetcher = _media_fetcher(local_files_root)

    def fetch(url: str, task_id: Any, scratch: Path) -> Path:
        task = task_id if isinstance(task_id, int) else None
        kind, _ = fetcher.resolve_url(url, task)
        if kind == "local":
            return Path(fetcher.fetch_path(url, task))
        data = fetcher.fetch_bytes(url, task, max_bytes=fetcher.settings.video_max_bytes)
        scratch.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=scratch, prefix="video-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return Path(name)

    return fetch


# ----------------------------------------------------------------------------------------------- video
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
    import av

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
    import av

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


class VideoSampleWriter:
    """Turns videorectangle regions into video sample rows, writing their frames and masks into the staging folder."""

    def __init__(self, staging: Path, scratch: Path, fetch_video: VideoFetcher | None, local_files_root: str | None,
                 n_frames: int = DEFAULT_VIDEO_FRAMES) -> None:
        if n_frames < 1:
            raise BadArguments(f"video frames must be >= 1, got {n_frames}")
        self.staging, self.scratch, self.n_frames = staging, scratch, int(n_frames)
        self._fetch, self._local_files_root = fetch_video, local_files_root
        self.videos: dict[str, VideoInfo] = {}  # url -> info

    def fetch(self, url: str, task_id: Any) -> VideoInfo:
        if url not in self.videos:
            if self._fetch is None:
                self._fetch = default_video_fetcher(self._local_files_root)
            self.videos[url] = probe_video(self._fetch(url, task_id, self.scratch))
        return self.videos[url]

    def sample(self, record: AnnotationRecord, region_id: str, region: dict[str, Any], image_key: str | None) -> tuple[dict[str, Any], str]:
        """(row without caption/source, dedup key) of one video track; ValueError when it cannot be used."""
        from PIL import Image

        from dam_model.segmentation import sample_frames

        geometry = region["geometry"]
        value = geometry.get("value") or {}
        sequence = [k for k in value.get("sequence") or [] if isinstance(k, dict)]
        if not sequence:
            raise ValueError("video track has no keyframes (value.sequence)")
        url = image_url(record.task_data, geometry, image_key)
        video = self.fetch(url, record.task_id)
        count = video.num_frames
        frames_count = value.get("framesCount")
        if isinstance(frames_count, (int, float)) and 0 < frames_count < count:
            count = int(frames_count)  # Label Studio's timeline is shorter than the file: nothing annotated beyond it
        boxes = keyframe_boxes(sequence, count)
        visible = [box_visible(box, video.height, video.width) for box in boxes]
        if not any(visible):
            raise ValueError("video track is hidden or outside the frame on every frame")
        indices = [int(i) for i in sample_frames([np.bool_(v) for v in visible], self.n_frames)]
        track = [[i, [round(boxes[i][p], 4) for p in ("x", "y", "width", "height", "rotation")]]
                 for i in range(count) if visible[i]]
        track_hash = hashlib.sha256(json.dumps([video.width, video.height, track]).encode()).hexdigest()
        sample_id = f"video-{video.digest[:12]}-{track_hash[:12]}"
        frame_rel = {i: f"frames/{video.digest[:16]}-{i:06d}.png" for i in sorted(set(indices))}
        missing = [i for i, rel in frame_rel.items() if not (self.staging / rel).exists()]
        for i, pixels in read_video_frames(video.path, missing).items():
            Image.fromarray(np.ascontiguousarray(pixels)).save(self.staging / frame_rel[i])
        mask_rel = {}
        for i in frame_rel:
            mask = rasterize({"type": "rectangle", "value": boxes[i]}, video.height, video.width)
            if not mask.any():
                raise ValueError(f"empty mask on frame {i + 1}")
            mask_rel[i] = f"masks/{sample_id}-{i:06d}.png"
            Image.fromarray(mask).save(self.staging / mask_rel[i])
        row = {
            "kind": "video",
            "id": sample_id,
            "video": url,
            "video_sha256": video.digest,
            "frames": [frame_rel[i] for i in indices],
            "masks": [mask_rel[i] for i in indices],
            "frame_indices": indices,
            "boxes": [{p: round(v, 4) for p, v in boxes[i].items()} for i in indices],
            "num_frames": count,
            "width": video.width,
            "height": video.height,
            **region_fields(record, region, region_id),
            "key": record.key,
        }
        return row, f"{video.digest}-{track_hash}"


# ----------------------------------------------------------------------------------------------- build
def snapshot_objects(work_root: Path, snapshot_id: str, include_deleted: bool = True) -> Iterator[tuple[str, Path]]:
    """(key, local file) for every object in the snapshot's cumulative manifest."""
    manifest = read_json(Path(work_root) / "snapshots" / snapshot_id / "manifest.json")
    for key, entry in sorted(manifest["objects"].items()):
        if entry.get("deleted_at") and not include_deleted:
            continue
        yield key, Path(work_root) / entry["file"]


def build_dataset(
    work_root: Path,
    snapshot_id: str | None = None,
    out_dir: Path | None = None,
    val_fraction: float = 0.2,
    image_key: str | None = None,
    include_deleted: bool = True,
    fetch_image: ImageFetcher | None = None,
    force: bool = False,
    local_files_root: str | None = None,
    fetch_video: VideoFetcher | None = None,
    video_frames: int = DEFAULT_VIDEO_FRAMES,
) -> Path:
    """Build the dataset of ``snapshot_id`` (default: the latest) and return its folder. Reuses an existing build.

    fetch_video: how video files are fetched (default: backend/media.py, see default_video_fetcher);
    video_frames: frames sampled per video track (DAM's video input: 8).
    """
    work_root = Path(work_root)
    if snapshot_id is None:
        manifest_path = work_root / "manifest.json"
        if not manifest_path.exists():
            raise BadArguments(f"no snapshot in {work_root}: run scripts.pull first")
        snapshot_id = read_json(manifest_path)["snapshot_id"]
    if not (work_root / "snapshots" / snapshot_id / "manifest.json").exists():
        raise BadArguments(f"snapshot {snapshot_id} not found in {work_root / 'snapshots'}")
    out_dir = Path(out_dir) if out_dir else work_root / "datasets" / snapshot_id
    if (out_dir / "dataset.json").exists() and not force:
        log.info("dataset %s already built", out_dir)
        return out_dir
    fetch_image = fetch_image or default_fetcher(local_files_root)

    staging = out_dir.parent / f".staging-{out_dir.name}-{os.getpid()}"
    scratch = out_dir.parent / f".scratch-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for folder in ("images", "masks", "frames"):
        (staging / folder).mkdir(parents=True)
    try:
        return _build(work_root, snapshot_id, out_dir, staging, val_fraction, image_key, include_deleted,
                      fetch_image, VideoSampleWriter(staging, scratch, fetch_video, local_files_root, video_frames))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful build (renamed to out_dir)


def _latest_wins(best: dict[Any, dict[str, Any]], key: Any, row: dict[str, Any]) -> bool:
    """Keep ``row`` under ``key`` unless a later annotation (updated_at, then id) is there; True when it was a duplicate."""
    previous = best.get(key)
    if previous is None or (previous["updated_at"], str(previous["annotation_id"])) <= (row["updated_at"], str(row["annotation_id"])):
        best[key] = row
    return previous is not None


def _build(work_root: Path, snapshot_id: str, out_dir: Path, staging: Path, val_fraction: float,
           image_key: str | None, include_deleted: bool, fetch_image: ImageFetcher, videos: VideoSampleWriter) -> Path:
    from PIL import Image

    skipped: list[dict[str, str]] = []
    counts = {"annotations": 0, "cancelled": 0, "regions": 0, "empty_caption": 0, "duplicates": 0,
              "video_regions": 0, "video_empty_caption": 0, "video_duplicates": 0}
    best: dict[tuple[str, str], dict[str, Any]] = {}  # (image hash, mask hash) -> sample (latest wins)
    best_video: dict[str, dict[str, Any]] = {}  # video hash + track hash -> video sample (latest wins)
    unlabeled: dict[tuple[str, str], dict[str, Any]] = {}
    image_index: dict[str, tuple[str, int, int]] = {}  # url -> (pixel hash, height, width); files go to disk at once

    for key, path in snapshot_objects(work_root, snapshot_id, include_deleted):
        try:
            records = list(iter_annotations(json.loads(path.read_text(encoding="utf-8")), key))
        except (OSError, ValueError) as exc:
            skipped.append({"key": key, "reason": f"unreadable export: {exc}"})
            continue
        for record in records:
            counts["annotations"] += 1
            if record.annotation.get("was_cancelled"):
                counts["cancelled"] += 1
                continue
            for region_id, region in group_regions(record.annotation.get("result") or []).items():
                geometry = region["geometry"]
                where = f"{key} region {region_id}"
                if str(geometry.get("type", "")).lower() in VIDEO_GEOMETRY_TYPES:
                    counts["video_regions"] += 1
                    if not region["caption"]:
                        counts["video_empty_caption"] += 1
                        continue
                    try:
                        row, track_key = videos.sample(record, region_id, region, image_key)
                    except Exception as exc:  # one bad track must not sink the dataset
                        skipped.append({"key": where, "reason": f"{type(exc).__name__}: {exc}"})
                        continue
                    row.update(caption=region["caption"], source="human", split=split_for(record.task_id, val_fraction))
                    attributes = region_attributes(record.task_data, region_id)
                    if attributes is not None:
                        row["attributes"] = attributes
                    counts["video_duplicates"] += _latest_wins(best_video, track_key, row)
                    continue
                counts["regions"] += 1
                try:
                    url = image_url(record.task_data, geometry, image_key)
                    if url not in image_index:
                        pixels = np.ascontiguousarray(fetch_image(url, record.task_id))
                        if pixels.ndim != 3 or pixels.shape[2] != 3:
                            raise ValueError(f"image {url} has shape {pixels.shape}, expected HxWx3")
                        digest = pixels_hash(pixels)
                        image_file = staging / f"images/{digest[:16]}.png"
                        if not image_file.exists():
                            Image.fromarray(pixels).save(image_file)
                        image_index[url] = (digest, pixels.shape[0], pixels.shape[1])
                    image_hash, height, width = image_index[url]
                    mask_h = int(geometry.get("original_height") or height)
                    mask_w = int(geometry.get("original_width") or width)
                    mask = rasterize(geometry, mask_h, mask_w)
                    if mask.shape != (height, width):  # export sized differently from the fetched file
                        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
                    if not mask.any():
                        raise ValueError("empty mask")
                except Exception as exc:  # one bad region must not sink the dataset
                    skipped.append({"key": where, "reason": f"{type(exc).__name__}: {exc}"})
                    continue
                mask_hash = pixels_hash(mask > 0)
                sample_id = f"{image_hash[:12]}-{mask_hash[:12]}"
                row = {
                    "id": sample_id,
                    "image": f"images/{image_hash[:16]}.png",
                    "mask": f"masks/{sample_id}.png",
                    **region_fields(record, region, region_id),
                    "split": split_for(record.task_id, val_fraction),
                    "width": width,
                    "height": height,
                    "key": key,
                }
                attributes = region_attributes(record.task_data, region_id)
                if attributes is not None:
                    row["attributes"] = attributes
                Image.fromarray(mask).save(staging / row["mask"])  # same pixels for every duplicate
                if not region["caption"]:
                    counts["empty_caption"] += 1
                    unlabeled[(image_hash, mask_hash)] = row
                    continue
                row.update(caption=region["caption"], source="human")
                counts["duplicates"] += _latest_wins(best, (image_hash, mask_hash), row)

    # A region captioned anywhere is not "unlabeled".
    unlabeled = {k: v for k, v in unlabeled.items() if k not in best}
    samples = sorted(best.values(), key=lambda r: r["id"])
    unlabeled_rows = sorted(unlabeled.values(), key=lambda r: r["id"])
    video_rows = sorted(best_video.values(), key=lambda r: r["id"])
    used = {r["image"] for r in samples + unlabeled_rows} | {r["mask"] for r in samples + unlabeled_rows}
    used |= {path for r in video_rows for path in r["frames"] + r["masks"]}
    for folder in ("images", "masks", "frames"):
        for file in (staging / folder).iterdir():
            if f"{folder}/{file.name}" not in used:
                file.unlink()
    used_images = {r["image"] for r in samples + unlabeled_rows}
    write_jsonl(staging / "samples.jsonl", samples)
    write_jsonl(staging / "unlabeled.jsonl", unlabeled_rows)
    write_jsonl(staging / VIDEO_SAMPLES_FILE, video_rows)
    summary = {
        "snapshot_id": snapshot_id,
        "built_at": utc_iso(),
        "val_fraction": val_fraction,
        "split_rule": "val iff int(sha256('task:<task id>')[:8], 16) / 2**32 < val_fraction",
        "video": {
            "samples_file": VIDEO_SAMPLES_FILE,
            "frames_per_sample": videos.n_frames,
            "frame_rule": "dam_model.segmentation.sample_frames over the frames where Label Studio shows the box",
        },
        "counts": {
            **counts,
            "samples": len(samples),
            "train": sum(r["split"] == "train" for r in samples),
            "val": sum(r["split"] == "val" for r in samples),
            "unlabeled": len(unlabeled_rows),
            "images": len(used_images),
            "video_samples": len(video_rows),
            "video_train": sum(r["split"] == "train" for r in video_rows),
            "video_val": sum(r["split"] == "val" for r in video_rows),
            "videos": len({r["video_sha256"] for r in video_rows}),
            "video_frames": len({p for r in video_rows for p in r["frames"]}),
            "skipped": len(skipped),
        },
        "skipped": skipped,
    }
    atomic_write_json(staging / "dataset.json", summary)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # only reached with force=True
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out_dir)
    log.info("dataset %s: %s", out_dir, summary["counts"])
    return out_dir


# ----------------------------------------------------------------------------------------------- loading
def load_samples(dataset_dir: Path, split: str | None = None, include_pseudo: bool = True) -> list[dict[str, Any]]:
    """Rows of samples.jsonl (+ pseudo.jsonl for the train split) with absolute ``image_path`` / ``mask_path``."""
    dataset_dir = Path(dataset_dir)
    rows = read_jsonl(dataset_dir / "samples.jsonl")
    if include_pseudo and split in (None, "train"):
        rows += read_jsonl(dataset_dir / "pseudo.jsonl")
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    for row in rows:
        row["image_path"] = str(dataset_dir / row["image"])
        row["mask_path"] = str(dataset_dir / row["mask"])
    return rows


def load_video_samples(dataset_dir: Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of video_samples.jsonl (kind "video") with absolute ``frame_paths`` / ``mask_paths`` (one per picked frame)."""
    dataset_dir = Path(dataset_dir)
    rows = read_jsonl(dataset_dir / VIDEO_SAMPLES_FILE)
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    for row in rows:
        row["frame_paths"] = [str(dataset_dir / rel) for rel in row["frames"]]
        row["mask_paths"] = [str(dataset_dir / rel) for rel in row["masks"]]
    return rows


def read_video_sample(row: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames HxWx3 uint8, masks HxW bool) of a load_video_samples row, in order: the input of describe_video."""
    return [read_image(p) for p in row["frame_paths"]], [read_mask(p) for p in row["mask_paths"]]


def read_image(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8) > 127


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_work_root_arg(parser)
    parser.add_argument("--snapshot", help="snapshot id (default: the latest pulled)")
    parser.add_argument("--out", type=Path, help="output folder (default <work root>/datasets/<snapshot id>)")
    parser.add_argument(
        "--val-fraction", type=fraction, default=env_float("VAL_FRACTION", 0.2),
        help="share of tasks in the frozen validation split (env VAL_FRACTION; changing it moves tasks)",
    )
    parser.add_argument("--image-key", default=env_default("IMAGE_KEY"), help="task data key of the image (env IMAGE_KEY)")
    parser.add_argument(
        "--local-files-root", default=env_default("LOCAL_FILES_ROOT"),
        help="folder that local image paths in tasks may point into (env LOCAL_FILES_ROOT)",
    )
    parser.add_argument(
        "--video-frames", type=int, default=env_int("VIDEO_FRAMES", DEFAULT_VIDEO_FRAMES),
        help="frames sampled per video track (env VIDEO_FRAMES; DAM's video input is 8)",
    )
    parser.add_argument("--exclude-deleted", action="store_true", help="drop annotations deleted from the bucket since pulled")
    parser.add_argument("--force", action="store_true", help="rebuild even if the dataset folder exists")
    add_log_level_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        out = build_dataset(
            args.work_root, args.snapshot, args.out, args.val_fraction, args.image_key,
            include_deleted=not args.exclude_deleted, force=args.force,
            local_files_root=args.local_files_root, video_frames=args.video_frames,
        )
    except LoopError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("build failed")
        return EXIT_FAILURE
    summary = read_json(out / "dataset.json")
    print(json.dumps({"dataset": str(out), **summary["counts"]}, indent=2))
    return EXIT_PROMOTED if summary["counts"]["samples"] else EXIT_NO_SAMPLES


if __name__ == "__main__":
    sys.exit(main())
