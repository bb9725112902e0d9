"""Export synthetic scenes (or videos) as Label Studio tasks and annotations (both S3 export formats).

    python -m scripts.export_synthetic --seed 7 --n 20 --out DIR [--format annotation|task|both]
        [--image-url-prefix PREFIX] [--caption long|short] [--with-model-captions] [--size 96x64] [--no-attributes]
    python -m scripts.export_synthetic --kind video --seed 7 --n 6 --out DIR [--frames 16]
        [--video-url-prefix PREFIX] [same options as above]

Writes, under DIR:
- ``images/<scene id>.png``: the scene images;
- ``tasks.json``: tasks for import, ``data.image`` = PREFIX + file name (default "images/") and
  ``data.attributes`` (below), with the model's predictions when --with-model-captions is given;
- ``<key prefix>/...``: what Label Studio's S3 target storage would hold once every task is annotated:
  ``annotation`` format: one object per annotation, key ``<prefix>/<annotation id>`` (no extension), JSON = the
  annotation with result, completed_by, timestamps, parent_prediction and the task (data included);
  ``task`` format (FUTURE_SAVE_TASK_TO_STORAGE): key ``<prefix>/<task id>.json``, the task with its annotations.

Each object of a scene becomes one region: a brushlabels result (RLE, foreground 255) followed by a textarea
result with the SAME full uuid4 id holding the reference caption (the "corrected" caption).

Every task's data also carries the scene's ground truth, so the exact DLC-style judge can run from the exported
data alone (scripts.build copies it into each sample; scripts.evaluate judges with it)::

    data = {"image": "<url>",
            "attributes": {"<region id>": {"color", "shape", "size", "position", "context", "context_relation",
                                           "object_id", "center", "diameter_px", "visible_fraction"}, ...}}

keyed by the region's result id (the same id as its brushlabels and textarea items); each value is the object's
``dam_model.synthetic`` attribute record, verbatim (see that module for the keys). ``--no-attributes`` (or
``with_attributes=False``) leaves it out, as in a real Label Studio export. ``meta.synthetic`` = {seed, index,
scene_id} names the scene (bookkeeping only: nothing regenerates scenes from it). With
--with-model-captions every task also carries a prediction whose captions are plausible model mistakes
(``dam_model.synthetic.perturbed_caption``) and each annotation names it as parent_prediction, as when an
annotator corrects the backend's suggestion. Everything is deterministic in (seed, index).

Videos (``--kind video``, tasks for label_config/video.xml; ``dam_model.synthetic.generate_video``): each video is
written to ``videos/<video id>.mkv``, lossless (FFV1 in Matroska, see ``video_bytes``: decoding gives the generator's
frames back exactly, and the same frames give the same bytes), and its task has ``data.video`` = PREFIX + file name
(default "videos/"). Each object becomes one region: a ``videorectangle`` result (from_name "track", to_name
"video", label "object") whose ``value`` = {framesCount, duration, sequence, labels} holds one enabled keyframe per
frame: the bounding box of the object's visible pixels on that frame in percent of the frame (x, y, width, height,
rotation 0), ``frame`` 1-based, ``time`` = (frame - 1) / 25 s (the config's framerate); then a textarea result
with the SAME id holding the caption. ``data.attributes`` is keyed by region id as for images; the records are
the video objects' (color, shape, size, position = where it starts, motion, object_id, start, end, diameter_px).
``meta.synthetic`` = {seed, index, scene_id, num_frames}. ``--with-model-captions`` works as for images.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dam_model.synthetic import Scene, VideoScene, generate_dataset, generate_video, perturbed_caption

FORMATS = ("annotation", "task")
KINDS = ("image", "video")
VIDEO_FRAME_RATE = 25  # label_config/video.xml's framerate: keyframe times are (frame - 1) / rate
_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
_ANNOTATOR = {"id": 1, "first_name": "", "last_name": "", "email": "annotator@example.com"}


def _encode_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a bool HxW mask, foreground 255.

    Prefers backend.rle (the project's vectorised codec, byte-identical to the SDK's); falls back to the SDK's
    reference codec (label_studio_sdk.converter.brush.mask2rle) when backend.rle is absent, because the backend
    is built separately and this exporter (and its tests) must also work in a checkout without it.
    """
    levels = np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)
    try:
        from backend.rle import encode_rle
    except ImportError:
        from label_studio_sdk.converter.brush import mask2rle

        return [int(v) for v in mask2rle(levels)]
    return [int(v) for v in encode_rle(levels)]


def _timestamp(offset_s: float) -> str:
    """Label Studio's timestamp style, e.g. 2026-01-01T00:00:07.000000Z, from a fixed epoch (deterministic)."""
    return (_EPOCH + dt.timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def region_ids(scene: Scene) -> list[str]:
    """One full uuid4 string per object, deterministic in (seed, index)."""
    rng = np.random.default_rng([scene.seed, scene.index, 2])
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in scene.objects]


def image_file_name(scene: Scene) -> str:
    return f"{scene.scene_id}.png"


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 HxWx3 image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def scene_to_result(scene: Scene, captions: Sequence[str], *, brush_from_name: str = "mask",
                    caption_from_name: str = "caption", to_name: str = "image", label: str = "object",
                    origin: str = "manual", textarea_with_rle: bool = True) -> list[dict[str, Any]]:
    """Result items: per object a brushlabels item, then a textarea item with the same id.

    textarea_with_rle: Label Studio 1.23.2 exports the region's brush value inside the textarea item too
    (see label-studio-payloads/s3_objects.json); mirror it by default so consumers see the real shape.
    """
    if len(captions) != len(scene.objects):
        raise ValueError(f"{len(captions)} captions for {len(scene.objects)} objects")
    result = []
    for region_id, obj, caption in zip(region_ids(scene), scene.objects, captions):
        common = {"id": region_id, "to_name": to_name, "original_width": scene.width,
                  "original_height": scene.height, "image_rotation": 0, "origin": origin}
        rle = _encode_rle(obj.mask)
        result.append({**common, "from_name": brush_from_name, "type": "brushlabels",
                       "value": {"format": "rle", "rle": rle, "brushlabels": [label]}})
        text_value: dict[str, Any] = {"text": [caption]}
        if textarea_with_rle:
            text_value = {"format": "rle", "rle": rle, **text_value}
        result.append({**common, "from_name": caption_from_name, "type": "textarea", "value": text_value})
    return result


def scene_attributes(scene: Scene) -> dict[str, dict[str, Any]]:
    """{region id: attribute record} of a scene's objects: the ``data.attributes`` of its task (JSON-ready copies)."""
    return {region_id: json.loads(json.dumps(obj.attributes)) for region_id, obj in zip(region_ids(scene), scene.objects)}


def scene_to_task(scene: Scene, *, task_id: int, image_url: str, project: int = 1,
                  with_attributes: bool = True) -> dict[str, Any]:
    """The task as Label Studio stores it (the export's ``task`` field): id, data.image (+ data.attributes, see the
    module docstring), meta, bookkeeping."""
    data: dict[str, Any] = {"image": image_url}
    if with_attributes:
        data["attributes"] = scene_attributes(scene)
    meta = {"synthetic": {"seed": scene.seed, "index": scene.index, "scene_id": scene.scene_id}}
    return _task(task_id, data, meta, scene.index, project)


def _task(task_id: int, data: dict[str, Any], meta: dict[str, Any], index: int, project: int) -> dict[str, Any]:
    """A stored task around ``data`` and ``meta`` (Label Studio's bookkeeping fields, timestamps from ``index``)."""
    created = _timestamp(index * 60.0)
    return {
        "id": task_id, "data": data, "meta": meta,
        "created_at": created, "updated_at": created, "is_labeled": True, "allow_skip": True, "overlap": 1,
        "inner_id": task_id, "total_annotations": 1, "cancelled_annotations": 0, "total_predictions": 0,
        "precomputed_agreement": None, "comment_count": 0, "unresolved_comment_count": 0,
        "last_comment_updated_at": None, "project": project, "updated_by": _ANNOTATOR["id"], "file_upload": task_id,
        "comment_authors": [],
    }


def model_captions(scene: Scene | VideoScene) -> list[str]:
    """Deterministic imperfect model captions for the objects of a scene or a video (see perturbed_caption)."""
    rng = np.random.default_rng([scene.seed, scene.index, 3])
    return [perturbed_caption(obj.attributes, rng)[0] for obj in scene.objects]


def scene_to_prediction(scene: Scene, *, prediction_id: int, task_id: int, captions: Sequence[str] | None = None,
                        model_version: str = "synthetic-model", **result_kwargs: Any) -> dict[str, Any]:
    """A stored prediction (the backend's suggestion) with model captions (default: model_captions(scene))."""
    captions = list(captions) if captions is not None else model_captions(scene)
    return _prediction(prediction_id, task_id, model_version,
                       scene_to_result(scene, captions, origin="prediction", **result_kwargs), scene.index)


def _prediction(prediction_id: int, task_id: int, model_version: str, result: list[dict[str, Any]],
                index: int) -> dict[str, Any]:
    return {"id": prediction_id, "task": task_id, "model_version": model_version, "score": 0.5, "result": result,
            "created_at": _timestamp(index * 60.0 + 1.0)}


def _reference_captions(objects: Sequence[Any], caption: str, captions: Sequence[str] | None) -> Sequence[str]:
    """``captions`` when given, else every object's "long" or "short" reference caption."""
    if captions is not None:
        return captions
    if caption not in ("long", "short"):
        raise ValueError(f"caption must be 'long' or 'short', got {caption!r}")
    return [o.long_caption if caption == "long" else o.short_caption for o in objects]


def scene_to_annotation(scene: Scene, task: dict[str, Any], *, annotation_id: int, caption: str = "long",
                        captions: Sequence[str] | None = None, parent_prediction: int | None = None,
                        **result_kwargs: Any) -> dict[str, Any]:
    """One annotation in the default S3 export format (annotation fields + the full task).

    caption: "long" or "short" reference captions, unless explicit ``captions`` are given (one per object).
    parent_prediction: the prediction id the annotator started from, if any.
    """
    captions = _reference_captions(scene.objects, caption, captions)
    return _annotation(annotation_id, scene_to_result(scene, captions, **result_kwargs), task, scene.index,
                       len(scene.objects), parent_prediction)


def _annotation(annotation_id: int, result: list[dict[str, Any]], task: dict[str, Any], index: int, n_regions: int,
                parent_prediction: int | None) -> dict[str, Any]:
    """An annotation with Label Studio's bookkeeping fields and the full task (timestamps from ``index``)."""
    created = _timestamp(index * 60.0 + 30.0)
    updated = _timestamp(index * 60.0 + 31.5)
    return {
        "id": annotation_id, "result": result,
        "created_username": f" {_ANNOTATOR['email']}, {_ANNOTATOR['id']}", "created_ago": "0\u00a0minutes",
        "completed_by": dict(_ANNOTATOR), "task": task, "was_cancelled": False, "ground_truth": False,
        "created_at": created, "updated_at": updated, "draft_created_at": None,
        "lead_time": round(10.0 + 5.0 * n_regions, 1), "import_id": None, "last_action": None,
        "bulk_created": False, "project": task.get("project", 1), "updated_by": _ANNOTATOR["id"],
        "parent_prediction": parent_prediction, "parent_annotation": None, "last_created_by": None,
    }


def build_export(scenes: Sequence[Scene], *, image_url_prefix: str = "images/", caption: str = "long",
                 with_model_captions: bool = False, first_task_id: int = 1, with_attributes: bool = True,
                 **result_kwargs: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(tasks, annotations, predictions) for the scenes; ids count up from first_task_id (same id per scene).

    with_attributes: put each scene's attribute records in its task's ``data.attributes`` (default); False gives
    tasks like a real Label Studio project's (no ground truth: the judge is skipped downstream).
    """
    return _build_export(
        scenes,
        lambda scene, task_id: scene_to_task(scene, task_id=task_id, image_url=image_url_prefix + image_file_name(scene),
                                             with_attributes=with_attributes),
        scene_to_prediction, scene_to_annotation, caption, with_model_captions, first_task_id, result_kwargs)


def _build_export(items: Sequence[Any], to_task: Callable[..., dict[str, Any]], to_prediction: Callable[..., dict[str, Any]],
                  to_annotation: Callable[..., dict[str, Any]], caption: str, with_model_captions: bool,
                  first_task_id: int, result_kwargs: dict[str, Any],
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    tasks, annotations, predictions = [], [], []
    for offset, item in enumerate(items):
        task_id = first_task_id + offset
        task = to_task(item, task_id)
        parent = None
        if with_model_captions:
            prediction = to_prediction(item, prediction_id=task_id, task_id=task_id, **result_kwargs)
            predictions.append(prediction)
            task["total_predictions"] = 1
            parent = prediction["id"]
        tasks.append(task)
        annotations.append(to_annotation(item, task, annotation_id=task_id, caption=caption,
                                         parent_prediction=parent, **result_kwargs))
    return tasks, annotations, predictions


def export_objects(scenes: Sequence[Scene], fmt: str = "annotation", *, prefix: str = "export",
                   **export_kwargs: Any) -> dict[str, bytes]:
    """S3 objects {key: JSON bytes} as Label Studio's target storage writes them.

    fmt "annotation": key <prefix>/<annotation id>, one annotation (with its task) per object;
    fmt "task": key <prefix>/<task id>.json, the task with "annotations" (and "predictions", if any).
    Other keyword arguments go to build_export.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return storage_objects(*build_export(scenes, **export_kwargs), fmt=fmt, prefix=prefix)


def storage_objects(tasks: Sequence[dict[str, Any]], annotations: Sequence[dict[str, Any]],
                    predictions: Sequence[dict[str, Any]], *, fmt: str = "annotation",
                    prefix: str = "export") -> dict[str, bytes]:
    """{key: JSON bytes} of build_export's (or build_video_export's) output in one S3 format (see export_objects)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    lead = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    objects: dict[str, bytes] = {}
    for index, (task, annotation) in enumerate(zip(tasks, annotations)):
        if fmt == "annotation":
            key, body = f"{lead}{annotation['id']}", annotation
        else:
            body = {**task, "annotations": [{k: v for k, v in annotation.items() if k != "task"} | {"task": task["id"]}],
                    "predictions": [predictions[index]] if predictions else []}
            key = f"{lead}{task['id']}.json"
        objects[key] = json.dumps(body).encode("utf-8")
    return objects


# ----------------------------------------------------------------------------------------------- videos
def video_file_name(video: VideoScene) -> str:
    return f"{video.scene_id}.mkv"


def video_bytes(frames: np.ndarray, rate: int = VIDEO_FRAME_RATE) -> bytes:
    """A lossless video file (FFV1, bgr0, in Matroska) of uint8 TxHxWx3 RGB frames.

    Decoding it (scripts.build, backend.video: PyAV, ``to_ndarray(format="rgb24")``) gives back exactly these frames,
    one decoded frame per input frame. Muxed bit-exact, so the same frames give the same bytes (no random segment
    id, no encoder version string).
    """
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 TxHxWx3 with T >= 1, got {frames.dtype} {frames.shape}")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("ffv1", rate=rate)
        stream.width, stream.height, stream.pix_fmt = int(frames.shape[2]), int(frames.shape[1]), "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def write_video(path: str | Path, frames: np.ndarray, rate: int = VIDEO_FRAME_RATE) -> None:
    """Write video_bytes(frames) to ``path`` (atomically; parent folders are created)."""
    _write_atomic(Path(path), video_bytes(frames, rate))


def video_region_ids(video: VideoScene) -> list[str]:
    """One full uuid4 string per video object, deterministic in (seed, index)."""
    rng = np.random.default_rng([video.seed, video.index, 4])
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in video.objects]


def percent_box(mask: np.ndarray) -> dict[str, float]:
    """The bounding box of a bool HxW mask as Label Studio percent values {x, y, width, height} of the frame; a pixel
    is a unit square, so pixels x0..x1 span x0 to x1 + 1."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        raise ValueError("an empty mask has no box")
    height, width = np.asarray(mask).shape
    return {"x": 100.0 * int(xs.min()) / width, "y": 100.0 * int(ys.min()) / height,
            "width": 100.0 * (int(xs.max()) + 1 - int(xs.min())) / width,
            "height": 100.0 * (int(ys.max()) + 1 - int(ys.min())) / height}


def video_keyframes(masks: np.ndarray, rate: int = VIDEO_FRAME_RATE) -> list[dict[str, Any]]:
    """A videorectangle ``value.sequence``: one enabled keyframe per frame with the box of that frame's mask
    (``frame`` 1-based, ``time`` in seconds)."""
    return [{"frame": t + 1, "enabled": True, "rotation": 0, **percent_box(mask), "time": round(t / rate, 6)}
            for t, mask in enumerate(masks)]


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
        common = {"id": region_id, "to_name": to_name, "origin": origin}
        result.append({**common, "from_name": track_from_name, "type": "videorectangle",
                       "value": {"framesCount": n_frames, "duration": n_frames / rate,
                                 "sequence": video_keyframes(obj.masks, rate), "labels": [label]}})
        result.append({**common, "from_name": caption_from_name, "type": "textarea", "value": {"text": [caption]}})
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
    return _task(task_id, data, meta, video.index, project)


def video_to_prediction(video: VideoScene, *, prediction_id: int, task_id: int, captions: Sequence[str] | None = None,
                        model_version: str = "synthetic-model", **result_kwargs: Any) -> dict[str, Any]:
    """A stored prediction with model captions (default: model_captions(video))."""
    captions = list(captions) if captions is not None else model_captions(video)
    return _prediction(prediction_id, task_id, model_version,
                       video_to_result(video, captions, origin="prediction", **result_kwargs), video.index)


def video_to_annotation(video: VideoScene, task: dict[str, Any], *, annotation_id: int, caption: str = "long",
                        captions: Sequence[str] | None = None, parent_prediction: int | None = None,
                        **result_kwargs: Any) -> dict[str, Any]:
    """One annotation of a video task in the default S3 export format (as scene_to_annotation)."""
    captions = _reference_captions(video.objects, caption, captions)
    return _annotation(annotation_id, video_to_result(video, captions, **result_kwargs), task, video.index,
                       len(video.objects), parent_prediction)


def build_video_export(videos: Sequence[VideoScene], *, video_url_prefix: str = "videos/", caption: str = "long",
                       with_model_captions: bool = False, first_task_id: int = 1, with_attributes: bool = True,
                       **result_kwargs: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(tasks, annotations, predictions) for the videos, as build_export does for scenes; data.video =
    video_url_prefix + video_file_name(video)."""
    return _build_export(
        videos,
        lambda video, task_id: video_to_task(video, task_id=task_id, video_url=video_url_prefix + video_file_name(video),
                                             with_attributes=with_attributes),
        video_to_prediction, video_to_annotation, caption, with_model_captions, first_task_id, result_kwargs)


def export_video_objects(videos: Sequence[VideoScene], fmt: str = "annotation", *, prefix: str = "export",
                         **export_kwargs: Any) -> dict[str, bytes]:
    """S3 objects {key: JSON bytes} of video tasks, in either format (see export_objects); other keyword arguments
    go to build_video_export. The video files are written separately (write_video, video_file_name)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return storage_objects(*build_video_export(videos, **export_kwargs), fmt=fmt, prefix=prefix)


def import_tasks(tasks: Iterable[dict[str, Any]], predictions: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Tasks in Label Studio's import format: data (+ meta, + predictions with their result)."""
    by_task = {p["task"]: p for p in predictions}
    result = []
    for task in tasks:
        item: dict[str, Any] = {"data": task["data"], "meta": task["meta"]}
        if task["id"] in by_task:
            p = by_task[task["id"]]
            item["predictions"] = [{"model_version": p["model_version"], "score": p["score"], "result": p["result"]}]
        result.append(item)
    return result


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise ValueError(f"--size must look like 96x64, got {text!r}")
    return int(width), int(height)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.export_synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--n", type=int, required=True, help="number of scenes (or videos)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--kind", choices=KINDS, default="image",
                        help="still scenes (label_config/image.xml) or videos (label_config/video.xml)")
    parser.add_argument("--format", choices=(*FORMATS, "both"), default="annotation", help="S3 export format")
    parser.add_argument("--prefix", default="export", help="key prefix of the S3 objects")
    parser.add_argument("--image-url-prefix", default="images/", help="data.image = PREFIX + file name")
    parser.add_argument("--video-url-prefix", default="videos/", help="--kind video: data.video = PREFIX + file name")
    parser.add_argument("--frames", type=int, default=16, help="--kind video: frames per video (>= 2)")
    parser.add_argument("--caption", choices=("long", "short"), default="long", help="reference caption length")
    parser.add_argument("--with-model-captions", action="store_true",
                        help="add imperfect model predictions; annotations hold the corrected captions")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT of every scene (default: drawn per scene)")
    parser.add_argument("--no-attributes", action="store_true",
                        help="leave the attribute records out of task data (like a real Label Studio export)")
    parser.add_argument("--start-index", type=int, default=0)
    parser.add_argument("--first-task-id", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError("--n must be >= 1")
        if args.kind == "video":
            items: Sequence[Any] = [generate_video(args.seed, args.start_index + k, num_frames=args.frames,
                                                   size=_parse_size(args.size)) for k in range(args.n)]
        else:
            items = generate_dataset(args.seed, args.n, start=args.start_index, size=_parse_size(args.size))
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    options: dict[str, Any] = {"caption": args.caption, "with_model_captions": args.with_model_captions,
                               "first_task_id": args.first_task_id, "with_attributes": not args.no_attributes}
    if args.kind == "video":
        for video in items:
            write_video(out / "videos" / video_file_name(video), video.frames)
        options["video_url_prefix"] = args.video_url_prefix
        tasks, annotations, predictions = build_video_export(items, **options)
    else:
        for scene in items:
            _write_atomic(out / "images" / image_file_name(scene), png_bytes(scene.image))
        options["image_url_prefix"] = args.image_url_prefix
        tasks, annotations, predictions = build_export(items, **options)
    _write_atomic(out / "tasks.json", json.dumps(import_tasks(tasks, predictions), indent=1).encode("utf-8"))
    formats = FORMATS if args.format == "both" else (args.format,)
    count = 0
    for fmt in formats:
        prefix = args.prefix if len(formats) == 1 else f"{args.prefix.strip('/')}-{fmt}"
        for key, body in storage_objects(tasks, annotations, predictions, fmt=fmt, prefix=prefix).items():
            _write_atomic(out / key, body)
            count += 1
    regions = sum(len(item.objects) for item in items)
    media = "videos" if args.kind == "video" else "images"
    print(f"wrote {len(items)} {media}, tasks.json and {count} export objects ({regions} regions) under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
