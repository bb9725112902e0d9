"""Video tracks of the build step: a videorectangle region -> the frames DAM's describe_video would see, a box mask
on each, written into the dataset being built.

The box of every frame is Label Studio's own (ls_io.tracks.track_boxes, the reading the backend uses too, over
the editor's timeline: ls_io.tracks.timeline_length); ``n_frames`` frames are picked among the frames where the box
is visible with ``dam_model.segmentation.sample_frames``, the rule the backend uses before describe_video; Label
Studio frame f is the f-th decoded frame (index f - 1 here). Videos are fetched with the backend's media rules
(ls_io.media) and decoded with ls_io.video_io.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dam_loop.cli import BadArguments
from dam_loop.dataset import DatasetWriter
from dam_model.data import KIND_VIDEO
from dam_model.segmentation import sample_frames
from ls_io.media import MediaConfig, MediaFetcher
from ls_io.regions import rasterize
from ls_io.tracks import BOX_KEYS, box_visible, timeline_length, track_boxes
from ls_io.video_io import VideoInfo, probe_video, read_video_frames

DEFAULT_VIDEO_FRAMES = 8  # DAM's video checkpoints take 8 frames (backend: VIDEO_FRAMES)
# (url or path, task id, scratch folder) -> a local video file; remote media may be written into the scratch
# folder, which build_dataset deletes when it ends.
VideoFetcher = Callable[[str, Any, Path], Path]


def media_config(local_files_root: str | None = None) -> MediaConfig:
    """The backend's media rules, read from the same environment variables (ls_io.media: Label Studio uploads and
    local-files with LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY, cloud URIs presigned by Label Studio, http(s) under
    MEDIA_ALLOWED_HOSTS, local paths under LOCAL_FILES_ROOT, which ``local_files_root`` replaces when given)."""
    return MediaConfig.from_env(**({"local_files_root": str(local_files_root)} if local_files_root else {}))


def default_video_fetcher(local_files_root: str | None = None) -> VideoFetcher:
    """Videos with the media rules of media_config, under its VIDEO_MAX_BYTES cap: a local path is used in place;
    other media are downloaded into the scratch folder."""
    config = media_config(local_files_root)
    fetcher = MediaFetcher(config)

    def fetch(url: str, task_id: Any, scratch: Path) -> Path:
        task = task_id if isinstance(task_id, int) else None
        kind, _ = fetcher.resolve_url(url, task)
        if kind == "local":
            return Path(fetcher.fetch_path(url, task))
        data = fetcher.fetch_bytes(url, task, max_bytes=config.video_max_bytes)
        scratch.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=scratch, prefix="video-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return Path(name)

    return fetch


class VideoSampleWriter:
    """Turns videorectangle regions into video sample rows, writing their frames and masks into the dataset."""

    def __init__(self, writer: DatasetWriter, scratch: Path, fetch_video: VideoFetcher | None,
                 local_files_root: str | None, n_frames: int = DEFAULT_VIDEO_FRAMES) -> None:
        if n_frames < 1:
            raise BadArguments(f"video frames must be >= 1, got {n_frames}")
        self.writer, self.scratch, self.n_frames = writer, scratch, int(n_frames)
        self._fetch, self._local_files_root = fetch_video, local_files_root
        self.videos: dict[str, VideoInfo] = {}  # url -> info

    def fetch(self, url: str, task_id: Any) -> VideoInfo:
        if url not in self.videos:
            if self._fetch is None:
                self._fetch = default_video_fetcher(self._local_files_root)
            self.videos[url] = probe_video(self._fetch(url, task_id, self.scratch))
        return self.videos[url]

    def sample(self, url: str, task_id: Any, geometry: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """(row of the track without caption, origin fields and split; dedup key) of one videorectangle region on
        the video at ``url``. ValueError (ls_io's BadRequest and Unprocessable are ValueErrors) or PayloadTooLarge
        when it cannot be used."""
        value = geometry.get("value") or {}
        sequence = [k for k in value.get("sequence") or [] if isinstance(k, dict)]
        if not sequence:
            raise ValueError("video track has no keyframes (value.sequence)")
        video = self.fetch(url, task_id)
        count = timeline_length(value, video.num_frames)  # nothing is annotated beyond the editor's timeline
        boxes = track_boxes(sequence, count)
        visible = [box_visible(box, video.height, video.width) for box in boxes]
        if not any(visible):
            raise ValueError("video track is hidden or outside the frame on every frame")
        indices = [int(i) for i in sample_frames([np.bool_(v) for v in visible], self.n_frames)]
        track = [[i, [round(boxes[i][p], 4) for p in BOX_KEYS]] for i in range(count) if visible[i]]
        track_hash = hashlib.sha256(json.dumps([video.width, video.height, track]).encode()).hexdigest()
        sample_id = f"video-{video.digest[:12]}-{track_hash[:12]}"
        frame_rel = {i: f"frames/{video.digest[:16]}-{i:06d}.png" for i in sorted(set(indices))}
        missing = [i for i, rel in frame_rel.items() if not self.writer.has(rel)]
        for i, pixels in read_video_frames(video.path, missing).items():
            self.writer.write_image(frame_rel[i], pixels)
        mask_rel = {}
        for i in frame_rel:
            mask = rasterize({"type": "rectangle", "value": boxes[i]}, video.height, video.width)
            if not mask.any():
                raise ValueError(f"empty mask on frame {i + 1}")
            mask_rel[i] = f"masks/{sample_id}-{i:06d}.png"
            self.writer.write_mask(mask_rel[i], mask)
        row = {
            "kind": KIND_VIDEO,
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
        }
        return row, f"{video.digest}-{track_hash}"
