"""What the synthetic image and video exports share: Label Studio's stored task, prediction and annotation around a
result list (with its bookkeeping fields, timestamps from a fixed epoch: deterministic), the two S3 target-storage
formats, the import format, and imperfect "model" captions of a scene or video."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dam_model.synthetic import Scene, VideoScene, perturbed_caption

FORMATS = ("annotation", "task")
_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
_ANNOTATOR = {"id": 1, "first_name": "", "last_name": "", "email": "annotator@example.com"}


def _timestamp(offset_s: float) -> str:
    """Label Studio's timestamp style, e.g. 2026-01-01T00:00:07.000000Z, from a fixed epoch (deterministic)."""
    return (_EPOCH + dt.timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stored_task(task_id: int, data: dict[str, Any], meta: dict[str, Any], index: int, project: int) -> dict[str, Any]:
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


def stored_prediction(prediction_id: int, task_id: int, model_version: str, result: list[dict[str, Any]],
                      index: int) -> dict[str, Any]:
    """A stored prediction (the backend's suggestion) around ``result``."""
    return {"id": prediction_id, "task": task_id, "model_version": model_version, "score": 0.5, "result": result,
            "created_at": _timestamp(index * 60.0 + 1.0)}


def reference_captions(objects: Sequence[Any], caption: str, captions: Sequence[str] | None) -> Sequence[str]:
    """``captions`` when given, else every object's "long" or "short" reference caption."""
    if captions is not None:
        return captions
    if caption not in ("long", "short"):
        raise ValueError(f"caption must be 'long' or 'short', got {caption!r}")
    return [o.long_caption if caption == "long" else o.short_caption for o in objects]


def stored_annotation(annotation_id: int, result: list[dict[str, Any]], task: dict[str, Any], index: int,
                      n_regions: int, parent_prediction: int | None) -> dict[str, Any]:
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


def assemble_export(items: Sequence[Any], to_task: Callable[..., dict[str, Any]],
                    to_prediction: Callable[..., dict[str, Any]], to_annotation: Callable[..., dict[str, Any]],
                    caption: str, with_model_captions: bool, first_task_id: int, result_kwargs: dict[str, Any],
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(tasks, annotations, predictions) of ``items`` (scenes or videos) built with the given converters; ids count
    up from first_task_id (one id per item for its task, annotation and prediction)."""
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
