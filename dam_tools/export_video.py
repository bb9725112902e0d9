"""Synthetic videos as Label Studio video tasks (label_config/video.xml; ``dam_model.synthetic.generate_video``).

Each video is written to ``videos/<video id>.mkv``, lossless (FFV1 in Matroska, see ``ls_io.video_io.video_bytes``:
decoding gives the generator's frames back exactly, and the same frames give the same bytes), and its task has
``data.video`` = PREFIX + file name (default "videos/"). Each object becomes one region: a ``videorectangle`` result (from_name
"track", to_name "video", label "object") whose ``value`` = {framesCount, duration, sequence, labels} holds one
enabled keyframe per frame: the bounding box of the object's visible pixels on that frame in percent of the frame
(x, y, width, height, rotation 0), ``frame`` 1-based, ``time`` = (frame - 1) / 25 s (the config's framerate); then a
textarea result with the SAME id holding the caption. ``data.attributes`` is keyed by region id as for images; the
records are the video objects' (color, shape, size, position = where it starts, motion, object_id, start, end,
diameter_px). ``meta.synthetic`` = {seed, index, scene_id, num_frames}.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Sequence

import numpy as np

from dam_model.synthetic import VideoScene
from dam_tools.export_common import (FORMATS, assemble_export, model_captions, reference_captions, storage_objects,
                                     stored_annotation, stored_prediction, stored_task)
from ls_io.regions import percent_box
from ls_io.results import region_item, video_keyframe, video_track_value
from ls_io.video_io import LOSSLESS_FRAME_RATE

# label_config/video.xml's framerate: keyframe times are (frame - 1) / rate; the files are written at the same rate
VIDEO_FRAME_RATE = LOSSLESS_FRAME_RATE


def video_file_name(video: VideoScene) -> str:
    return f"{video.scene_id}.mkv"


def video_region_ids(video: VideoScene) -> list[str]:
    """One full uuid4 string per video object, deterministic in (seed, index)."""
    rng = np.random.default_rng([video.seed, video.index, 4])
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in video.objects]


def video_keyframes(masks: np.ndarray, rate: int = VIDEO_FRAME_RATE) -> list[dict[str, Any]]:
    """A videorectangle ``value.sequence``: one enabled keyframe per frame with the box of that frame's mask
    (``frame`` 1-based, ``time`` in seconds)."""
    return [video_keyframe(t + 1, percent_box(mask), rate) for t, mask in enumerate(masks)]


def video_to_result(video: VideoScene, captions: Sequence[str], *, track_from_name: str = "track",
                    caption_from_name: str = "caption", to_name: str = "video", label: str = "object",
                    origin: str = "manual", rate: int = VIDEO_FRAME_RATE) -> list[dict[str, Any]]:
    """Result items: per object a videorectangle track (a keyframe per frame), then a textarea item with the same id.
    Names default to label_config/video.xml's."""
    if len(captions) != len(video.objects):
        raise ValueError(f"{len(captions)} captions for {len(video.objects)} objects")
    n_frames = int(len(video.frames))
    result = []
    for region_id, obj, caption in zip(video_region_ids(video), video.objects, captions):
        track = video_track_value(video_keyframes(obj.masks, rate), n_frames, [label], rate)
        result.append(region_item(region_id, track_from_name, to_name, "videorectangle", track, origin=origin))
        result.append(region_item(region_id, caption_from_name, to_name, "textarea", {"text": [caption]},
                                  origin=origin))
    return result


def video_attributes(video: VideoScene) -> dict[str, dict[str, Any]]:
    """{region id: attribute record} of a video's objects: the ``data.attributes`` of its task (JSON-ready copies)."""
    return {region_id: json.loads(json.dumps(obj.attributes))
            for region_id, obj in zip(video_region_ids(video), video.objects)}


def video_to_task(video: VideoScene, *, task_id: int, video_url: str, project: int = 1,
                  with_attributes: bool = True) -> dict[str, Any]:
    """The stored task of a video: data.video (+ data.attributes), meta.synthetic, bookkeeping."""
    data: dict[str, Any] = {"video": video_url}
    if with_attributes:
        data["attributes"] = video_attributes(video)
    meta = {"synthetic": {"seed": video.seed, "index": video.index, "scene_id": video.scene_id,
                          "num_frames": int(len(video.frames))}}
    return stored_task(task_id, data, meta, video.index, project)


def video_to_prediction(video: VideoScene, *, prediction_id: int, task_id: int, captions: Sequence[str] | None = None,
                        model_version: str = "synthetic-model", **result_kwargs: Any) -> dict[str, Any]:
    """A stored prediction with model captions (default: model_captions(video))."""
    captions = list(captions) if captions is not None else model_captions(video)
    return stored_prediction(prediction_id, task_id, model_version,
                             video_to_result(video, captions, origin="prediction", **result_kwargs), video.index)


def video_to_annotation(video: VideoScene, task: dict[str, Any], *, annotation_id: int, caption: str = "long",
                        captions: Sequence[str] | None = None, parent_prediction: int | None = None,
                        **result_kwargs: Any) -> dict[str, Any]:
    """One annotation of a video task in the default S3 export format (as scene_to_annotation)."""
    captions = reference_captions(video.objects, caption, captions)
    return stored_annotation(annotation_id, video_to_result(video, captions, **result_kwargs), task, video.index,
                             len(video.objects), parent_prediction)


def build_video_export(videos: Sequence[VideoScene], *, video_url_prefix: str = "videos/", caption: str = "long",
                       with_model_captions: bool = False, first_task_id: int = 1, with_attributes: bool = True,
                       **result_kwargs: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(tasks, annotations, predictions) for the videos, as build_export does for scenes; data.video =
    video_url_prefix + video_file_name(video)."""
    return assemble_export(
        videos,
        lambda video, task_id: video_to_task(video, task_id=task_id, video_url=video_url_prefix + video_file_name(video),
                                             with_attributes=with_attributes),
        video_to_prediction, video_to_annotation, caption, with_model_captions, first_task_id, result_kwargs)


def export_video_objects(videos: Sequence[VideoScene], fmt: str = "annotation", *, prefix: str = "export",
                         **export_kwargs: Any) -> dict[str, bytes]:
    """S3 objects {key: JSON bytes} of video tasks, in either format (see export_objects); other keyword arguments
    go to build_video_export. The video files are written separately (ls_io.video_io.video_bytes, video_file_name)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return storage_objects(*build_video_export(videos, **export_kwargs), fmt=fmt, prefix=prefix)
