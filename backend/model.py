"""The model class Label Studio talks to: setup(), predict(tasks, context), fit(event, data).

It is a thin adapter: label config -> regions (masks) -> dam_model (SAM 2 masks, DAM captions) -> result items.

- Interactive (context.result holds the regions just drawn; backend/interactive.py): smart keypoints (TOP-LEVEL
  is_positive gives the polarity) and/or a smart rectangle make ONE new region: SAM 2 mask -> brushlabels (RLE,
  255) then a textarea with the same uuid4 id. A brush drawn by the annotator gets a caption (its brush item is
  echoed first). Anything that makes no region is an error with a reason (the editor only shows errors).
- Batch (no context; backend/batch.py): every region already in the task is captioned; tasks without regions
  follow NO_REGION_MODE; video tracks are read with Label Studio's keyframe rule. A task that cannot be captioned
  gets NO prediction (`[]`), so Label Studio retries it later. One deadline (BATCH_DEADLINE_S) covers the request.
Every caption comes from the batching scheduler (backend/batching.py): regions of concurrent requests share model
calls, clicks (kind "interactive") go ahead of batch work, and each prediction carries the version of the model
that wrote its captions (a promotion can land between two of a request's model calls).
Region items are read by ls_io (geometry types, labels, percent -> pixels); results are built by ls_io.results.
This module holds what both paths share: the task image, the segmenter and the describe call, which refuses an
empty mask before the model sees it (dam_model.focal raises on one). A region's mask is read by ls_io.tasks
(`region_mask`, the bulk job's reading too), with `segmenter` as its segmenter source.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from dam_model.continuous import prepared_rows
from dam_model.focal import full_view
from ls_io.label_config import ParsedConfig, parse_label_config
from ls_io.media import MediaFetcher

from . import batch, interactive
from .batching import BATCH, INTERACTIVE, DeadlineExceeded, Generation, Region, Scheduler, Track
from .errors import BackendError, BadRequest, EmptyMask, ModelError, ModelUnavailable, NotFound
from .jobs import TrainingJobs
from .model_store import LoadedModel, ModelStore, SegmenterStore
from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_QUERY = "<image>\nDescribe the masked region in detail."
TRAINING_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED",
                   "ANNOTATIONS_CREATED", "START_TRAINING"}


@dataclass
class PredictReply:
    """What /predict answers: one entry per task (a prediction dict, or [] for a task that failed in a batch),
    the failures ({"task", "reason", "error"}) and the model version that made them."""

    results: list[Any]
    model_version: str
    failures: list[dict[str, Any]] = field(default_factory=list)


class DAMBackend:
    """One instance per process (models live in the stores; this object only holds references)."""

    def __init__(self, settings: Settings, store: ModelStore, segmenters: SegmenterStore, fetcher: MediaFetcher,
                 jobs: TrainingJobs, metrics=None, scheduler: Scheduler | None = None) -> None:
        self.settings = settings
        self.store = store
        self.segmenters = segmenters
        self.fetcher = fetcher
        self.jobs = jobs
        self.metrics = metrics
        self.scheduler = scheduler or Scheduler(store.get)
        self.generation = Generation(max_new_tokens=settings.max_new_tokens)
        self.label_config: str | None = None
        self._views: OrderedDict[tuple[int, int], tuple[weakref.ref, np.ndarray]] = OrderedDict()  # _shared_view
        self._views_lock = threading.Lock()

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
                label_config: str | None = None) -> list[Any]:
        """One entry per task, in order: {"result": [...], "score": f, "model_version": v}, or [] for a batch
        task that could not be captioned (Label Studio stores no prediction for it)."""
        return self.predict_reply(tasks, context, label_config).results

    def predict_reply(self, tasks: Sequence[dict[str, Any]], context: dict[str, Any] | None = None,
                      label_config: str | None = None, model_version: str | None = None) -> PredictReply:
        """predict() with the failures and the version; `model_version` pins the version (NotFound otherwise)."""
        xml = label_config or self.label_config
        if not xml:
            raise BadRequest("no label config: send label_config with /predict or call /setup first")
        cfg = parse_label_config(xml)  # LabelConfigError is a 422 naming what is missing
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("tasks must be a list of objects")
        loaded = self.store.get()  # one reference for the whole request: a swap cannot change it midway
        if model_version is not None and model_version != loaded.version:
            raise NotFound(f"model version {model_version} is not served here (serving {loaded.version}; see /versions)")
        ctx_results = (context or {}).get("result") if isinstance(context, dict) else None
        if ctx_results:
            if not isinstance(ctx_results, list):
                raise BadRequest("context.result must be a list")
            if len(tasks) != 1:
                raise BadRequest("an interactive request carries exactly one task")
            try:
                results, failures = [interactive.predict(self, tasks[0], ctx_results, cfg, loaded)], []
            except ValueError as exc:  # a value the parsers or the model reject: the request's fault, never a 500
                raise batch.as_status_error(exc) from None
        else:
            deadline = time.monotonic() + self.scheduler.settings.batch_deadline_s
            results, failures = batch.predict(self, tasks, cfg, loaded, deadline)
        # The reply names the newest version that wrote a prediction (each prediction names its own).
        versions = [r["model_version"] for r in results if isinstance(r, dict) and r.get("model_version")]
        return PredictReply(results, versions[-1] if versions else loaded.version, failures)

    # --- what both paths share
    def image_of(self, task: dict[str, Any], cfg: ParsedConfig) -> np.ndarray:
        data = task.get("data")
        if not isinstance(data, dict):
            raise BadRequest(f"task {batch.task_label(task)} has no data object")
        url = data.get(cfg.obj.value_key)
        if not url or not isinstance(url, str):
            raise BadRequest(f"task {batch.task_label(task)} has no data.{cfg.obj.value_key}")
        return self.fetcher.load_image(url, task.get("id") if isinstance(task.get("id"), int) else None)

    def query_for(self, labels: Iterable[str]) -> str | None:
        """The region's label when CATEGORY_HINT is on (None: the model's default query)."""
        labels = [l for l in labels if isinstance(l, str) and l]
        if self.settings.category_hint and labels:
            return labels[0]
        return None

    @staticmethod
    def category_query(model: Any, label: str) -> str:
        """The model's own image query with the label spliced in:
        "<image>\nDescribe the masked region (a {label}) in detail." for DAM-3B."""
        base = getattr(getattr(model, "config", None), "image_query", None) or DEFAULT_QUERY
        label = " ".join(str(label).split())[:64]
        if "the masked region" in base:
            return base.replace("the masked region", f"the masked region (a {label})", 1)
        return base.rstrip() + f" The region is a {label}."

    def describe(self, loaded: LoadedModel, image: np.ndarray, masks: list[np.ndarray], queries: list[str | None],
                 kind: str = BATCH, deadline: float | None = None) -> tuple[list[Any], str]:
        """(captions of all masks of one image, the version that wrote them), through the scheduler: regions of one
        query share calls, with other requests' regions too. `deadline`: time.monotonic() by which they must be
        done (None: the kind's default). An empty mask never reaches the model; a ValueError of the model is the
        input's fault (ModelError, 422)."""
        if any(not m.any() for m in masks):
            raise EmptyMask("a region has no pixels: nothing to describe")
        try:
            prepared = self._prepare(loaded, image, masks, kind)
            works = [Region(image, mask, None if query is None else self.category_query(loaded.model, query), ready)
                     for mask, query, ready in zip(masks, queries, prepared)]
            done = self.scheduler.caption(works, kind=kind, generation=self.generation,
                                          deadline_s=self._seconds_left(deadline))
        except ValueError as exc:
            raise ModelError(f"the model could not describe the region: {exc}") from None
        if len(done) != len(masks):
            raise BackendError(f"model returned {len(done)} captions for {len(masks)} masks")
        if self.metrics is not None:
            self.metrics.regions.inc(len(masks), kind="image")
        return [c.caption for c in done], done[-1].model_version if done else loaded.version

    def describe_track(self, frames: list[np.ndarray], masks: list[np.ndarray],
                       deadline: float | None) -> tuple[Any, str]:
        """(caption of one video track from its sampled frames, the version that wrote it), through the scheduler.
        A ValueError of the model becomes a ModelError in ls_io.video_tasks.track_prediction."""
        done = self.scheduler.caption([Track(frames, masks)], kind=BATCH, generation=self.generation,
                                      deadline_s=self._seconds_left(deadline))
        if self.metrics is not None:
            self.metrics.regions.inc(1, kind="video")
        return done[0].caption, done[0].model_version

    def _prepare(self, loaded: LoadedModel, image: np.ndarray, masks: list[np.ndarray], kind: str) -> list[Any]:
        """A click's model inputs (crops, resizes), made here in the request thread while the model decodes others
        (for sessions). Its vision passes stay on the model thread, batched with the other clicks admitted with it:
        encoding each click in its own thread measured no faster under 8 annotators (side by side: 71.5 against 70.3
        regions/s) and took more CPU (1.38 against 1.28 cores).
        Batch requests are prepared by the scheduler's prepare-ahead thread, BULK_BATCH_MAX_SIZE regions ahead of
        the decode: all 200 regions' DAM-3B inputs at once would hold ~1 GB."""
        prepare = getattr(loaded.model, "prepare_regions", None)
        if kind != INTERACTIVE or not callable(prepare) or not self.scheduler.settings.continuous_batching:
            return [None] * len(masks)
        batch = prepare(image, masks, self._shared_view(image, loaded.model.config.vision.image_size))
        return prepared_rows(loaded.model, batch, encode=False)

    def _shared_view(self, image: np.ndarray, size: int) -> np.ndarray:
        """The image's full view at `size`, kept for the next click on it: the decoded-image cache (ls_io.media) hands
        out one read-only array per image, so the same live object means the same pixels."""
        key = (id(image), size)
        with self._views_lock:
            hit = self._views.get(key)
            if hit is not None and hit[0]() is image:
                self._views.move_to_end(key)
                return hit[1]
        view = full_view(image, size)
        if not image.flags.writeable:  # only an image nobody changes in place
            with self._views_lock:
                self._views[key] = (weakref.ref(image), view)
                while len(self._views) > max(1, self.settings.image_cache_items):
                    self._views.popitem(last=False)
        return view

    @staticmethod
    def _seconds_left(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the request ran past its deadline (BATCH_DEADLINE_S)")
        return left

    def segmenter(self):
        try:
            return self.segmenters.get()
        except ModelUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"segmenter unavailable: {exc}") from None

    # ------------------------------------------------------------------ fit
    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Record the event (cheap); START_TRAINING launches the training job out of process."""
        self.jobs.record(event, data)
        if event == "START_TRAINING":
            return {"training": self.jobs.start()}
        return {"recorded": event}
