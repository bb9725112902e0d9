"""Batch /predict ("Retrieve predictions"): caption the regions already in each task; a failure stays visible.

Every region already in the task (annotations, drafts, predictions, task.data["regions"]) is captioned with ONE
describe(image, masks) call per image; tasks without regions follow NO_REGION_MODE. Video: each VideoRectangle
track, read frame by frame with Label Studio's own keyframe rule (ls_io.tracks) on Label Studio's timeline (the
<Video frameRate>) -> SAM 2 masklet (box prompt on the first frame the track is shown, propagated) or, without a
video segmenter, the track's boxes as masks -> describe_video(8 sampled frames) -> a textarea on the track's id.

Failures (Label Studio 1.23, ml/models.py `_get_predictions_from_ml_backend`: a task's entry may be a LIST of
predictions, and an empty list stores none; `predict_tasks` only skips tasks holding a prediction of the current
model_version):
- a task that cannot be captioned (media missing, refused or undecodable, a malformed region, every region empty,
  a model error) gets `[]`: no prediction is stored, the next "Retrieve predictions" retries exactly that task.
  It is logged in one line (task id, reason kind, reason), counted in dam_backend_failed_tasks_total{reason} and
  listed in the reply's "failed" (Label Studio ignores that key; the bulk job reads it). With ONE task the error
  status is the answer instead (Label Studio then stores nothing either, and the status says why).
- a region with no pixels (an erased brush, a keypoint or polygon that selects nothing) is skipped, logged and
  counted in dam_backend_skipped_regions_total{reason="empty_mask"}; the task keeps its other regions. A rectangle
  whose SAM 2 mask is empty is captioned as the rectangle itself.
- a task with nothing to caption (no region and NO_REGION_MODE=skip, a video without tracks) also gets `[]`: an
  empty prediction of this version would be stored, and once the annotator drew regions "Retrieve predictions"
  would skip the task (it holds a prediction of the current model_version).
- model or segmenter unavailable, or the worker overloaded: the whole request answers 503 (no task is at fault).
- the request's deadline (BATCH_DEADLINE_S, one for the whole request, below Label Studio's ML_TIMEOUT_PREDICT)
  passes: the tasks not yet captioned get `[]` (reason "overloaded") and the reply goes out with the others, so
  their work is stored and only the rest is retried.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from dam_model.frames import sample_frame_indices
from dam_model.segmentation import AutoMaskSegmenter, VideoSegmenter
from ls_io import results as R
from ls_io.errors import KINDS, StatusError
from ls_io.label_config import ParsedConfig
from ls_io.regions import labels_of, region_label
from ls_io.tasks import image_regions, region_masks, task_label
from ls_io.video_tasks import task_frames, track_masks, track_prediction, video_tracks

from .batching import DeadlineExceeded, SchedulerClosed
from .errors import BackendError, ModelError, ModelUnavailable, Overloaded, Unprocessable

if TYPE_CHECKING:  # type hints only: model.py imports this module
    from .model import DAMBackend
    from .model_store import LoadedModel

log = logging.getLogger(__name__)


def as_status_error(exc: Exception) -> StatusError:
    """A task's failure as a StatusError: as is, a ValueError of the model path as a 422, anything else a 500."""
    if isinstance(exc, StatusError):
        return exc
    if isinstance(exc, ValueError):
        return ModelError(f"the task could not be described: {' '.join(str(exc).split())[:200]}")
    return BackendError(f"internal error ({type(exc).__name__}); see the backend log")


def predict(backend: "DAMBackend", tasks: Sequence[dict[str, Any]], cfg: ParsedConfig, loaded: "LoadedModel",
            deadline: float) -> tuple[list[Any], list[dict[str, Any]]]:
    """(one entry per task, the failures): see the module docstring. `deadline`: time.monotonic() of the whole
    request's end."""
    results: list[Any] = []
    failures: list[dict[str, Any]] = []
    for index, task in enumerate(tasks):
        if len(tasks) > 1 and time.monotonic() >= deadline:
            late = DeadlineExceeded("not captioned: the request ran past its deadline (BATCH_DEADLINE_S)")
            log.warning("%d of %d tasks left without a prediction: %s", len(tasks) - index, len(tasks), late)
            if backend.metrics is not None:
                backend.metrics.failed_tasks.inc(len(tasks) - index, reason=late.kind)
            results += [[] for _ in tasks[index:]]
            failures += [failure(t, late.kind, late) for t in tasks[index:]]
            break
        try:
            results.append(batch_task(backend, task, cfg, loaded, deadline))
        except (ModelUnavailable, Overloaded, SchedulerClosed):
            raise  # not this task's fault: the whole request is retried
        except Exception as exc:  # noqa: BLE001 - one broken task must not lose the others
            error = as_status_error(exc)
            kind = error.kind if error.kind in KINDS else "other"
            if not isinstance(exc, (StatusError, ValueError)):
                log.exception("task %s: unexpected error", task_label(task))
            log.warning("task %s: no prediction (%s): %s", task_label(task), kind, error)
            if backend.metrics is not None:
                backend.metrics.failed_tasks.inc(reason=kind)
            if len(tasks) == 1:
                raise error from None  # one task: the status tells Label Studio (and the log) what went wrong
            results.append([])  # Label Studio stores no prediction: the task is retried next time
            failures.append(failure(task, kind, error))
    return results, failures


NOTHING_TO_CAPTION: list = []  # a task's entry that stores no prediction (Label Studio skips an empty list)


def failure(task: Any, kind: str, error: Exception) -> dict[str, Any]:
    """One entry of the reply's "failed"."""
    tid = task.get("id") if isinstance(task, dict) else None
    return {"task": tid if isinstance(tid, int) else None, "reason": kind, "error": str(error)}


def skip_region(backend: "DAMBackend", task: dict[str, Any], item: dict[str, Any], error: StatusError) -> None:
    log.warning("task %s: region %s skipped (%s): %s", task_label(task), region_label(item), error.kind, error)
    if backend.metrics is not None:
        backend.metrics.skipped_regions.inc(reason=error.kind)


def batch_task(backend: "DAMBackend", task: dict[str, Any], cfg: ParsedConfig, loaded: "LoadedModel",
               deadline: float | None = None) -> dict[str, Any] | list:
    if cfg.is_video:
        return video_task(backend, task, cfg, loaded, deadline)
    regions = image_regions(task, cfg.obj.name)
    if not regions and backend.settings.no_region_mode == "skip":
        return NOTHING_TO_CAPTION
    image = backend.image_of(task, cfg)
    height, width = image.shape[:2]
    kept, masks, mask_scores, queries = [], [], [], []
    if regions:  # ls_io.tasks.region_masks: the bulk job reads them the same way
        kept, masks, mask_scores = region_masks(regions, image, backend.segmenter,
                                                lambda item, exc: skip_region(backend, task, item, exc))
        queries = [backend.query_for(labels_of(item)) for item in kept]
    else:  # NO_REGION_MODE=auto: describe everything SAM 2 finds
        seg = backend.segmenter()
        if seg is None:
            raise Unprocessable("NO_REGION_MODE=auto needs a segmenter (SEGMENTER=sam2 or color)")
        if cfg.brush is None:
            raise Unprocessable("NO_REGION_MODE=auto needs a <BrushLabels> to hold the masks")
        if not isinstance(seg, AutoMaskSegmenter):
            raise Unprocessable(f"NO_REGION_MODE=auto needs SAM 2 ({type(seg).__name__} has no automatic masks)")
        found = seg.automatic_masks(image, max_masks=backend.settings.auto_max_masks,
                                    min_area=backend.settings.auto_min_area)
        for pred in found[: backend.settings.auto_max_masks]:
            mask = np.asarray(pred.mask, dtype=bool)
            if mask.any():  # an empty proposal is nothing found, not a region
                masks.append(mask)
                mask_scores.append(float(pred.score))
                queries.append(None)
    if not masks:
        return R.prediction([], [], loaded.version)  # auto mode found nothing: a real (empty) answer
    captions, version = backend.describe(loaded, image, masks, queries, deadline=deadline)
    out, scores = [], []
    default_labels = [cfg.brush.labels[0]] if cfg.brush is not None and cfg.brush.labels else []
    for i, (mask, cap, mscore) in enumerate(zip(masks, captions, mask_scores)):
        score = R.region_score(cap.confidence, mscore)
        if kept:
            item = kept[i]
            region_id = str(item.get("id") or R.new_region_id())
            out.append(R.echo_result({**item, "id": region_id}, version))
        else:
            region_id = R.new_region_id()
            out.append(R.brush_result(cfg, region_id, mask, default_labels, version, score))
        out.append(R.textarea_result(cfg, region_id, cap.text, width, height, version, score))
        scores.append(score)
    return R.prediction(out, scores, version)


def video_task(backend: "DAMBackend", task: dict[str, Any], cfg: ParsedConfig, loaded: "LoadedModel",
               deadline: float | None = None) -> dict[str, Any] | list:
    """ls_io.video_tasks' reading (the bulk job's too): tracks -> frames -> masks -> 8 frames -> describe_video."""
    tracks = video_tracks(task, cfg.obj.name)
    if not tracks:
        return NOTHING_TO_CAPTION
    frames = task_frames(backend.fetcher, task, cfg.obj, backend.settings.video_max_bytes,
                         backend.settings.media_max_pixels)
    seg = backend.segmenter()
    per_track = track_masks(tracks, frames, seg if isinstance(seg, VideoSegmenter) else None)
    return track_prediction(cfg, tracks, frames, per_track,
                            lambda masks: sample_frame_indices(masks, backend.settings.video_frames),
                            lambda frames, masks: backend.describe_track(frames, masks, deadline),
                            lambda item, exc: skip_region(backend, task, item, exc))
