"""The model class Label Studio talks to: setup(), predict(tasks, context), fit(event, data).

It is a thin adapter: label config -> regions (masks) -> dam_model (SAM 2 masks, DAM captions) -> result items.

- Interactive (context.result holds the regions just drawn): smart keypoints (TOP-LEVEL is_positive gives the
  polarity) and/or a smart rectangle make ONE new region: SAM 2 mask -> brushlabels (RLE, 255) then a textarea
  with the same uuid4 id. A brush drawn by the annotator gets a caption (its brush item is echoed first).
- Batch (no context): every region already in the task (annotations, drafts, predictions, task.data["regions"])
  is captioned with ONE describe(image, masks) call per image; tasks without regions follow NO_REGION_MODE.
- Video: each VideoRectangle track, read frame by frame with Label Studio's own keyframe rule (ls_io.tracks) ->
  SAM 2 masklet (box prompt on the first frame the track is shown, propagated) or, without a video segmenter, the
  track's boxes as masks -> describe_video(8 sampled frames) -> a textarea on the track's id.
Region items are read by ls_io (geometry types, labels, percent -> pixels); results are built by ls_io.results.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from dam_model.prompt import category_query
from dam_model.segmentation import MaskPrediction, sample_frames
from ls_io import results as R
from ls_io.errors import StatusError
from ls_io.label_config import ParsedConfig, parse_label_config
from ls_io.media import MediaFetcher
from ls_io.regions import (BRUSH_TYPES, KEYPOINT_TYPES, RECTANGLE_TYPES, TRACK_TYPES, keypoint_pixel, labels_of,
                           rasterize, rectangle_box, region_type)
from ls_io.tasks import collect_regions, image_regions, region_mask
from ls_io.tracks import box_visible, timeline_length, track_boxes, track_masks
from ls_io.video_io import decode_video

from .errors import BackendError, BadRequest, ModelUnavailable, Unprocessable
from .jobs import TrainingJobs
from .model_store import LoadedModel, ModelStore, SegmenterStore
from .settings import Settings

log = logging.getLogger(__name__)

TRAINING_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED",
                   "ANNOTATIONS_CREATED", "START_TRAINING"}


@runtime_checkable
class AutoMaskSegmenter(Protocol):
    """A segmenter that proposes masks by itself (SAM 2; the colour region-grower does not): NO_REGION_MODE=auto."""

    def automatic_masks(self, image: np.ndarray, max_masks: int, min_area: int) -> list[MaskPrediction]: ...


@runtime_checkable
class VideoSegmenter(Protocol):
    """A segmenter that tracks box prompts through a clip (SAM 2). Without one, a track's boxes are its masks."""

    def track_video(self, frames: Sequence[np.ndarray], prompts: Sequence[dict[str, Any]]) -> dict[Any, list[np.ndarray]]: ...


def sample_frame_indices(masks: Sequence[np.ndarray], n: int) -> list[int]:
    """`n` indices spread over the frames where the mask is not empty, by dam_model's `sample_frames` rule (the
    rule DAM's video input uses; frames repeat when fewer than n are usable); [] when every mask is empty."""
    if not any(np.any(m) for m in masks):
        return []
    return [int(i) for i in sample_frames(masks, n)]


class DAMBackend:
    """One instance per process (models live in the stores; this object only holds references)."""

    def __init__(self, settings: Settings, store: ModelStore, segmenters: SegmenterStore, fetcher: MediaFetcher,
                 jobs: TrainingJobs, metrics=None) -> None:
        self.settings = settings
        self.store = store
        self.segmenters = segmenters
        self.fetcher = fetcher
        self.jobs = jobs
        self.metrics = metrics
        self.label_config: str | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, label_config: str, project: str | None = None, extra_params: dict | None = None,
              hostname: str | None = None, access_token: str | None = None) -> str:
        """Validate the label config (LabelConfigError names what is missing), start warming the model, return the version."""
        parse_label_config(label_config)
        if hostname:
            self.fetcher.adopt_label_studio(hostname, access_token or "")
        self.label_config = label_config
        self.store.warm_up_async()
        return self.store.model_version

    @property
    def model_version(self) -> str:
        return self.store.model_version

    # ------------------------------------------------------------------ predict
    def predict(self, tasks: Sequence[dict[str, Any]], context: dict[str, Any] | None = None,
                label_config: str | None = None) -> list[dict[str, Any]]:
        """One prediction per task, in order: {"result": [...], "score": f, "model_version": v}."""
        xml = label_config or self.label_config
        if not xml:
            raise BadRequest("no label config: send label_config with /predict or call /setup first")
        cfg = parse_label_config(xml)  # LabelConfigError is a 422 naming what is missing
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("tasks must be a list of objects")
        loaded = self.store.get()  # one reference for the whole request: a swap cannot change it midway
        ctx_results = (context or {}).get("result") if isinstance(context, dict) else None
        if ctx_results:
            if not isinstance(ctx_results, list):
                raise BadRequest("context.result must be a list")
            if len(tasks) != 1:
                raise BadRequest("an interactive request carries exactly one task")
            return [self._interactive(tasks[0], ctx_results, cfg, loaded)]
        out = []
        for task in tasks:
            try:
                out.append(self._batch_task(task, cfg, loaded))
            except StatusError as exc:
                if len(tasks) == 1:
                    raise  # a single task: the status code tells Label Studio (and the log) what went wrong
                # Batch: one broken task must not lose the others; it gets an empty result.
                log.warning("task %s: no prediction (%s)", task.get("id"), exc)
                out.append(R.prediction([], [], loaded.version))
        return out

    # --- helpers
    def _image(self, task: dict[str, Any], cfg: ParsedConfig) -> np.ndarray:
        data = task.get("data")
        if not isinstance(data, dict):
            raise BadRequest(f"task {task.get('id')} has no data object")
        url = data.get(cfg.obj.value_key)
        if not url:
            raise BadRequest(f"task {task.get('id')} has no data.{cfg.obj.value_key}")
        return self.fetcher.load_image(url, task.get("id"))

    def _query(self, labels: Iterable[str]) -> str | None:
        """The region's label when CATEGORY_HINT is on (None: the model's default query)."""
        labels = [l for l in labels if l]
        if self.settings.category_hint and labels:
            return labels[0]
        return None

    @staticmethod
    def category_query(model: Any, label: str) -> str:
        """The model's own image query with the label spliced in:
        "<image>\nDescribe the masked region (a {label}) in detail." for DAM-3B."""
        return category_query(getattr(getattr(model, "config", None), "image_query", None), label)

    def _describe(self, loaded: LoadedModel, image: np.ndarray, masks: list[np.ndarray],
                  queries: list[str | None]) -> list[Any]:
        """Captions for all masks of one image: one batched call per distinct query (one call without hints)."""
        captions: list[Any] = [None] * len(masks)
        groups: dict[str | None, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q, []).append(i)
        for query, idx in groups.items():
            gen: dict[str, Any] = {"max_new_tokens": self.settings.max_new_tokens}
            if query is not None:
                gen["query"] = self.category_query(loaded.model, query)
            with loaded.lock:
                got = loaded.model.describe(image, [masks[i] for i in idx], **gen)
            if len(got) != len(idx):
                raise BackendError(f"model returned {len(got)} captions for {len(idx)} masks")
            for i, cap in zip(idx, got):
                captions[i] = cap
        if self.metrics is not None:
            self.metrics.regions.inc(len(masks), kind="image")
        return captions

    def _segmenter(self):
        try:
            return self.segmenters.get()
        except ModelUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"segmenter unavailable: {exc}") from None

    def _mask_of(self, item: dict[str, Any], image: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(mask HxW bool, mask score or None) of an existing region item (ls_io.tasks: the job reads it the same way)."""
        return region_mask(item, image, self._segmenter)

    # --- interactive
    def _interactive(self, task: dict[str, Any], ctx: list[dict[str, Any]], cfg: ParsedConfig,
                     loaded: LoadedModel) -> dict[str, Any]:
        if cfg.is_video:
            raise Unprocessable("interactive prompts are for images; video tracks are described in batch")
        image = self._image(task, cfg)
        height, width = image.shape[:2]
        items = [r for r in ctx if isinstance(r, dict) and r.get("to_name", cfg.obj.name) == cfg.obj.name]
        points, point_labels, box, prompt_labels, rect_item = [], [], None, [], None
        brushes = []
        for item in items:
            kind = region_type(item)
            value = item.get("value") or {}
            if kind in KEYPOINT_TYPES:
                points.append(keypoint_pixel(value, width, height))
                point_labels.append(0 if item.get("is_positive") is False else 1)
                prompt_labels += labels_of(item) if item.get("is_positive") is not False else []
            elif kind in RECTANGLE_TYPES:
                box = rectangle_box(value, width, height)  # the last rectangle wins: one region per request
                prompt_labels += labels_of(item)
                rect_item = item
            elif kind in BRUSH_TYPES:
                brushes.append(item)
        masks, queries, scores_mask, emit = [], [], [], []
        for item in brushes:
            mask, _ = self._mask_of(item, image)
            masks.append(mask)
            queries.append(self._query(labels_of(item)))
            scores_mask.append(None)
            emit.append(("echo", item))
        if points or box is not None:
            seg = self._segmenter()
            if seg is None:
                if points:
                    raise Unprocessable("smart keypoints need a segmenter (SEGMENTER=sam2 or color)")
                mask, mscore = rasterize(rect_item, height, width) > 0, None
            else:
                pred = seg.predict(
                    image,
                    points=np.array(points, dtype=np.float32) if points else None,
                    labels=np.array(point_labels, dtype=np.int32) if points else None,
                    box=box,
                )
                mask, mscore = np.asarray(pred.mask, dtype=bool), float(pred.score)
            labels = self._brush_labels(cfg, prompt_labels)
            masks.append(mask)
            queries.append(self._query(labels))
            scores_mask.append(mscore)
            emit.append(("new", labels))
        if not masks:
            return R.prediction([], [], loaded.version)
        captions = self._describe(loaded, image, masks, queries)
        out, scores = [], []
        for (what, payload), mask, cap, mscore in zip(emit, masks, captions, scores_mask):
            score = R.region_score(cap.confidence, mscore)
            if what == "echo":
                region_id = str(payload.get("id") or R.new_region_id())
                out.append(R.echo_result({**payload, "id": region_id}, loaded.version))
            elif cfg.brush is None:
                # No brush in the config: a smart rectangle keeps its own geometry and gets the caption.
                if rect_item is None:
                    raise Unprocessable("label config has no <BrushLabels> to hold the predicted mask")
                region_id = str(rect_item.get("id") or R.new_region_id())
                out.append(R.echo_result({**rect_item, "id": region_id}, loaded.version))
            else:
                region_id = R.new_region_id()
                out.append(R.brush_result(cfg, region_id, mask, payload, loaded.version, score))
            out.append(R.textarea_result(cfg, region_id, cap.text, width, height, loaded.version, score))
            scores.append(score)
        return R.prediction(out, scores, loaded.version)

    @staticmethod
    def _brush_labels(cfg: ParsedConfig, prompt_labels: list[str]) -> list[str]:
        if cfg.brush is None:
            return prompt_labels
        if not cfg.brush.labels:
            return prompt_labels
        matching = [l for l in dict.fromkeys(prompt_labels) if l in cfg.brush.labels]
        return matching or [cfg.brush.labels[0]]

    # --- batch
    # The job (dam_preannotate) reads a task's regions with the same ls_io.tasks function.
    collect_regions = staticmethod(collect_regions)

    def _batch_task(self, task: dict[str, Any], cfg: ParsedConfig, loaded: LoadedModel) -> dict[str, Any]:
        if cfg.is_video:
            return self._video_task(task, cfg, loaded)
        regions = image_regions(task, cfg.obj.name)
        if not regions and self.settings.no_region_mode == "skip":
            return R.prediction([], [], loaded.version)
        image = self._image(task, cfg)
        height, width = image.shape[:2]
        masks, mask_scores, queries = [], [], []
        if regions:
            for item in regions:
                mask, mscore = self._mask_of(item, image)
                masks.append(mask)
                mask_scores.append(mscore)
                queries.append(self._query(labels_of(item)))
        else:  # NO_REGION_MODE=auto: describe everything SAM 2 finds
            seg = self._segmenter()
            if seg is None:
                raise Unprocessable("NO_REGION_MODE=auto needs a segmenter (SEGMENTER=sam2 or color)")
            if cfg.brush is None:
                raise Unprocessable("NO_REGION_MODE=auto needs a <BrushLabels> to hold the masks")
            if not isinstance(seg, AutoMaskSegmenter):
                raise Unprocessable(f"NO_REGION_MODE=auto needs SAM 2 ({type(seg).__name__} has no automatic masks)")
            found = seg.automatic_masks(image, max_masks=self.settings.auto_max_masks, min_area=self.settings.auto_min_area)
            for pred in found[: self.settings.auto_max_masks]:
                masks.append(np.asarray(pred.mask, dtype=bool))
                mask_scores.append(float(pred.score))
                queries.append(None)
        if not masks:
            return R.prediction([], [], loaded.version)
        captions = self._describe(loaded, image, masks, queries)
        out, scores = [], []
        default_labels = [cfg.brush.labels[0]] if cfg.brush is not None and cfg.brush.labels else []
        for i, (mask, cap, mscore) in enumerate(zip(masks, captions, mask_scores)):
            score = R.region_score(cap.confidence, mscore)
            if regions:
                item = regions[i]
                region_id = str(item.get("id") or R.new_region_id())
                out.append(R.echo_result({**item, "id": region_id}, loaded.version))
            else:
                region_id = R.new_region_id()
                out.append(R.brush_result(cfg, region_id, mask, default_labels, loaded.version, score))
            out.append(R.textarea_result(cfg, region_id, cap.text, width, height, loaded.version, score))
            scores.append(score)
        return R.prediction(out, scores, loaded.version)

    # --- video
    def _video_task(self, task: dict[str, Any], cfg: ParsedConfig, loaded: LoadedModel) -> dict[str, Any]:
        tracks = [r for r in self.collect_regions(task) if region_type(r) in TRACK_TYPES
                  and r.get("to_name", cfg.obj.name) == cfg.obj.name]
        if not tracks:
            return R.prediction([], [], loaded.version)
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        url = data.get(cfg.obj.value_key)
        if not url:
            raise BadRequest(f"task {task.get('id')} has no data.{cfg.obj.value_key}")
        path = self.fetcher.fetch_path(url, task.get("id"), max_bytes=self.settings.video_max_bytes)
        frames = decode_video(path, max_pixels=self.settings.media_max_pixels)
        if not frames:
            raise Unprocessable("video has no decodable frames")
        height, width = frames[0].shape[:2]
        seg = self._segmenter()
        per_track: dict[str, list[np.ndarray]] = {}
        prompts = []
        for item in tracks:
            rid = str(item.get("id"))
            value = item.get("value") or {}
            seq = [s for s in value.get("sequence") or [] if isinstance(s, dict)]
            if not seq:
                raise Unprocessable(f"video track {rid} has no sequence")
            covered = timeline_length(value, len(frames))
            boxes = track_boxes(seq, covered) + [None] * (len(frames) - covered)
            if not isinstance(seg, VideoSegmenter):
                per_track[rid] = track_masks(boxes, height, width)
                continue
            # SAM 2 follows the object from the first frame where Label Studio shows its box.
            first = next((i for i, box in enumerate(boxes) if box_visible(box, height, width)), None)
            if first is not None:
                prompts.append({"frame_index": first, "obj_id": rid, "box": rectangle_box(boxes[first], width, height)})
        if prompts:
            for rid, masks in seg.track_video(frames, prompts).items():
                per_track[str(rid)] = [np.asarray(m, dtype=bool) for m in masks]
        out, scores = [], []
        for item in tracks:
            rid = str(item.get("id"))
            masks = per_track.get(rid) or []
            idx = sample_frame_indices(masks, self.settings.video_frames)
            if not idx:
                log.warning("task %s: track %s is empty on every frame; skipped", task.get("id"), rid)
                continue
            with loaded.lock:
                cap = loaded.model.describe_video([frames[i] for i in idx], [masks[i] for i in idx],
                                                  max_new_tokens=self.settings.max_new_tokens)
            if self.metrics is not None:
                self.metrics.regions.inc(1, kind="video")
            score = R.region_score(cap.confidence)
            out.append(R.echo_result(item, loaded.version))
            text = R.textarea_result(cfg, rid, cap.text, width, height, loaded.version, score)
            out.append(text)
            scores.append(score)
        return R.prediction(out, scores, loaded.version)

    # ------------------------------------------------------------------ fit
    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Record the event (cheap); START_TRAINING launches the training job out of process."""
        self.jobs.record(event, data)
        if event == "START_TRAINING":
            return {"training": self.jobs.start()}
        return {"recorded": event}
