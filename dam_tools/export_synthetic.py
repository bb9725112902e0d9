"""Export synthetic scenes (or videos) as Label Studio tasks and annotations (both S3 export formats).

    python -m dam_tools.export_synthetic --seed 7 --n 20 --out DIR [--format annotation|task|both]
        [--image-url-prefix PREFIX] [--caption long|short] [--with-model-captions] [--size 96x64] [--no-attributes]
    python -m dam_tools.export_synthetic --kind video --seed 7 --n 6 --out DIR [--frames 16]
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
data alone (the loop's build step copies it into each sample; its evaluate step judges with it)::

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

Videos (``--kind video``): dam_tools.export_video describes them.
"""
from __future__ import annotations

import argparse
import io
import json
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from dam_model.fileio import atomic_write_bytes
from dam_model.synthetic import Scene, generate_dataset, generate_video
from dam_tools.export_common import (FORMATS, assemble_export, import_tasks, model_captions, reference_captions,
                                     storage_objects, stored_annotation, stored_prediction, stored_task)
from dam_tools.export_video import VIDEO_FRAME_RATE, build_video_export, video_file_name
from ls_io.results import brush_value, region_item
from ls_io.video_io import video_bytes

KINDS = ("image", "video")


def region_ids(scene: Scene) -> list[str]:
    """One full uuid4 string per object, deterministic in (seed, index)."""
    rng = np.random.default_rng([scene.seed, scene.index, 2])
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in scene.objects]


def image_file_name(scene: Scene) -> str:
    return f"{scene.scene_id}.png"


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 HxWx3 image."""
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
    size = (scene.width, scene.height)
    for region_id, obj, caption in zip(region_ids(scene), scene.objects, captions):
        brush = brush_value(obj.mask, [label])
        text_value: dict[str, Any] = {"text": [caption]}
        if textarea_with_rle:
            text_value = {"format": brush["format"], "rle": brush["rle"], **text_value}
        result.append(region_item(region_id, brush_from_name, to_name, "brushlabels", brush, size=size, origin=origin))
        result.append(region_item(region_id, caption_from_name, to_name, "textarea", text_value, size=size,
                                  origin=origin))
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
    return stored_task(task_id, data, meta, scene.index, project)


def scene_to_prediction(scene: Scene, *, prediction_id: int, task_id: int, captions: Sequence[str] | None = None,
                        model_version: str = "synthetic-model", **result_kwargs: Any) -> dict[str, Any]:
    """A stored prediction (the backend's suggestion) with model captions (default: model_captions(scene))."""
    captions = list(captions) if captions is not None else model_captions(scene)
    return stored_prediction(prediction_id, task_id, model_version,
                             scene_to_result(scene, captions, origin="prediction", **result_kwargs), scene.index)


def scene_to_annotation(scene: Scene, task: dict[str, Any], *, annotation_id: int, caption: str = "long",
                        captions: Sequence[str] | None = None, parent_prediction: int | None = None,
                        **result_kwargs: Any) -> dict[str, Any]:
    """One annotation in the default S3 export format (annotation fields + the full task).

    caption: "long" or "short" reference captions, unless explicit ``captions`` are given (one per object).
    parent_prediction: the prediction id the annotator started from, if any.
    """
    captions = reference_captions(scene.objects, caption, captions)
    return stored_annotation(annotation_id, scene_to_result(scene, captions, **result_kwargs), task, scene.index,
                             len(scene.objects), parent_prediction)


def build_export(scenes: Sequence[Scene], *, image_url_prefix: str = "images/", caption: str = "long",
                 with_model_captions: bool = False, first_task_id: int = 1, with_attributes: bool = True,
                 **result_kwargs: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(tasks, annotations, predictions) for the scenes; ids count up from first_task_id (same id per scene).

    with_attributes: put each scene's attribute records in its task's ``data.attributes`` (default); False gives
    tasks like a real Label Studio project's (no ground truth: the judge is skipped downstream).
    """
    return assemble_export(
        scenes,
        lambda scene, task_id: scene_to_task(scene, task_id=task_id, image_url=image_url_prefix + image_file_name(scene),
                                             with_attributes=with_attributes),
        scene_to_prediction, scene_to_annotation, caption, with_model_captions, first_task_id, result_kwargs)


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


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise ValueError(f"--size must look like 96x64, got {text!r}")
    return int(width), int(height)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dam_tools.export_synthetic", description=__doc__.split("\n\n")[0])
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
            atomic_write_bytes(out / "videos" / video_file_name(video), video_bytes(video.frames, VIDEO_FRAME_RATE))
        options["video_url_prefix"] = args.video_url_prefix
        tasks, annotations, predictions = build_video_export(items, **options)
    else:
        for scene in items:
            atomic_write_bytes(out / "images" / image_file_name(scene), png_bytes(scene.image))
        options["image_url_prefix"] = args.image_url_prefix
        tasks, annotations, predictions = build_export(items, **options)
    atomic_write_bytes(out / "tasks.json", json.dumps(import_tasks(tasks, predictions), indent=1).encode("utf-8"))
    formats = FORMATS if args.format == "both" else (args.format,)
    count = 0
    for fmt in formats:
        prefix = args.prefix if len(formats) == 1 else f"{args.prefix.strip('/')}-{fmt}"
        for key, body in storage_objects(tasks, annotations, predictions, fmt=fmt, prefix=prefix).items():
            atomic_write_bytes(out / key, body)
            count += 1
    regions = sum(len(item.objects) for item in items)
    media = "videos" if args.kind == "video" else "images"
    print(f"wrote {len(items)} {media}, tasks.json and {count} export objects ({regions} regions) under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
