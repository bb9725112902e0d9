"""A Label Studio video task -> its tracks, frames and per-frame masks -> the prediction of its captioned tracks:
the one reading shared by the backend's /predict (backend/batch.py) and the bulk pre-annotation job
(dam_preannotate), so both caption the same tracks on the same frames and build the same result items.

- `video_tracks`: the task's videorectangle tracks on the video object;
- `task_frames`: the video, fetched with the SSRF rules and decoded on Label Studio's timeline (the
  <Video frameRate>: keyframe numbers count at that rate, also for variable-frame-rate files);
- `track_masks`: per track one mask per frame: the track's boxes by Label Studio's keyframe rule (ls_io.tracks),
  or, given a video segmenter (SAM 2), its masklet prompted by the box on the first frame the track is shown;
- `track_prediction`: the frames to describe (`pick`, dam_model.frames' rule, passed in: ls_io does not import
  the model), the caption of each track (`describe`), then the track echoed and a textarea on its id.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from . import results as R
from .errors import BadRequest, EmptyMask, ModelError, StatusError, Unprocessable
from .label_config import ObjectTag, ParsedConfig
from .regions import TRACK_TYPES, rectangle_box, region_label, region_type
from .tasks import collect_regions, task_label
from .tracks import box_visible, timeline_length, track_boxes, track_masks as box_masks
from .video_io import decode_video

# (frames, masks) -> (caption with .text and .confidence, the model_version that wrote it)
DescribeTrack = Callable[[list[np.ndarray], list[np.ndarray]], tuple[Any, str]]


def video_tracks(task: dict[str, Any], to_name: str) -> list[dict[str, Any]]:
    """The task's video tracks on the object `to_name` (items without to_name belong to it)."""
    return [item for item in collect_regions(task)
            if region_type(item) in TRACK_TYPES and item.get("to_name", to_name) == to_name]


def task_frames(fetcher: Any, task: dict[str, Any], obj: ObjectTag, max_bytes: int,
                max_pixels: int) -> list[np.ndarray]:
    """The task's video frames (HxWx3 uint8) on Label Studio's timeline. BadRequest without a video URL; the
    fetcher's errors (refused, missing, too large); Unprocessable "media_undecodable" without a frame."""
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    url = data.get(obj.value_key)
    if not url or not isinstance(url, str):
        raise BadRequest(f"task {task_label(task)} has no data.{obj.value_key}")
    task_id = task.get("id") if isinstance(task.get("id"), int) else None
    path = fetcher.fetch_path(url, task_id, max_bytes=max_bytes, what="video")
    frames = decode_video(path, max_pixels=max_pixels, frame_rate=obj.video_frame_rate(data))
    if not frames:
        raise Unprocessable("video has no decodable frames", kind="media_undecodable")
    return frames


def track_masks(tracks: Sequence[dict[str, Any]], frames: Sequence[np.ndarray],
                video_segmenter: Any = None) -> dict[str, list[np.ndarray]]:
    """{track id: one bool HxW mask per frame}. Without `video_segmenter` the masks are the track's boxes; with one
    (an object with track_video(frames, prompts) -> {obj_id: masks}) SAM 2 follows the object from the first frame
    where Label Studio shows its box (a track never shown gets no masks). Unprocessable "bad_region" for a track
    without a sequence."""
    height, width = frames[0].shape[:2]
    per_track: dict[str, list[np.ndarray]] = {}
    prompts = []
    for item in tracks:
        rid = str(item.get("id"))
        value = item.get("value") if isinstance(item.get("value"), dict) else {}
        sequence = value.get("sequence")
        seq = [s for s in sequence if isinstance(s, dict)] if isinstance(sequence, list) else []
        if not seq:
            raise Unprocessable(f"video track {region_label(item)} has no sequence", kind="bad_region")
        covered = timeline_length(value, len(frames))
        boxes = track_boxes(seq, covered) + [None] * (len(frames) - covered)
        if video_segmenter is None:
            per_track[rid] = box_masks(boxes, height, width)
            continue
        first = next((i for i, box in enumerate(boxes) if box_visible(box, height, width)), None)
        if first is not None:
            prompts.append({"frame_index": first, "obj_id": rid, "box": rectangle_box(boxes[first], width, height)})
    if prompts:
        for rid, masks in video_segmenter.track_video(list(frames), prompts).items():
            per_track[str(rid)] = [np.asarray(m, dtype=bool) for m in masks]
    return per_track


def track_prediction(cfg: ParsedConfig, tracks: Sequence[dict[str, Any]], frames: Sequence[np.ndarray],
                     per_track: dict[str, list[np.ndarray]], pick: Callable[[list[np.ndarray]], list[int]],
                     describe: DescribeTrack, skip: Callable[[dict[str, Any], EmptyMask], None]) -> dict[str, Any]:
    """The prediction of a video task: per track, `pick` its frames (indices; [] when it is empty on every frame:
    the track goes to `skip` and is left out), `describe` them, then the track echoed and its caption in a textarea
    with the same id. EmptyMask when every track is empty; a ValueError of `describe` is a ModelError."""
    height, width = frames[0].shape[:2]
    out, scores, version = [], [], ""
    for item in tracks:
        rid = str(item.get("id"))
        masks = per_track.get(rid) or []
        indices = pick(masks)
        if not indices:  # e.g. every keyframe lies past the end of the video: nothing of the track is shown
            skip(item, EmptyMask(f"track {region_label(item)} is empty on every frame"))
            continue
        name = region_label(item)
        try:
            caption, version = describe([frames[i] for i in indices], [masks[i] for i in indices])
        except StatusError:
            raise
        except ValueError as exc:
            raise ModelError(f"the model could not describe track {name}: {exc}") from None
        score = R.region_score(caption.confidence)
        out.append(R.echo_result(item, version))
        out.append(R.textarea_result(cfg, rid, caption.text, width, height, version, score))
        scores.append(score)
    if not out:
        raise EmptyMask(f"every video track of the task is empty on every frame ({len(tracks)}): nothing to describe")
    return R.prediction(out, scores, version)
