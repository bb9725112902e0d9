"""One rank's run: settle what a killed run left open, snapshot the selection's ids of this shard, then
fetch -> regions -> cross-task batches -> predictions -> bulk import, and settle again at the end.

Video projects: each task's tracks are read as the backend reads them (ls_io.video_tasks: the video on Label
Studio's timeline, the keyframe rule or a SAM 2 masklet, VIDEO_FRAMES frames by dam_model.frames' rule), each track
is one describe_video call, and the prediction is built by the same ls_io code as the backend's.

Memory stays bounded whatever the project size: task ids are kept (integers), full tasks are fetched `page_size`
at a time, and at most `prefetch_tasks` tasks (image + masks) wait for the model; decoded videos are larger, so a
video project keeps at most `fetch_workers` of them waiting.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from dam_model.frames import sample_frame_indices
from dam_model.prompt import category_query
from ls_io import results as R
from ls_io.label_config import ParsedConfig, parse_label_config
from ls_io.errors import BadRequest
from ls_io.regions import labels_of, region_label
from ls_io.tasks import SegmenterSource, image_regions, region_masks
from ls_io.video_tasks import task_frames, track_masks, track_prediction, video_tracks

from .batching import BatchFailure, CrossTaskBatcher, PreparedTask
from .config import JobConfig
from .journal import Journal, replay
from .labelstudio import LabelStudioClient, versions_held
from .posting import PredictionPoster, reconcile, sweep
from .sharding import Shard
from .summary import Progress, Summary, failure_reason, summary_record, write_failed_file

log = logging.getLogger(__name__)

MAX_EXTRA_PASSES = 2  # tasks whose import got no answer and is not in Label Studio are computed again this often


@dataclass
class JobParts:
    """Everything a run needs, built by the CLI (tests pass fakes)."""

    cfg: JobConfig
    ls: LabelStudioClient
    model: Any  # describe_batch(items, query=, max_new_tokens=), describe_video (video) and config.image_query
    model_version: str
    fetcher: Any  # load_image(url, task_id) -> HxWx3 uint8, fetch_path for videos (ls_io.media.MediaFetcher)
    segmenter: SegmenterSource = lambda: None  # its video() (models.LazySegmenter) gives SAM 2's video tracking
    shard: Shard = field(default_factory=Shard)
    barrier: Callable[[], None] = lambda: None


@dataclass(eq=False)
class VideoTask:
    """A video task ready for the model: its tracks, decoded frames and each track's mask per frame."""

    task_id: int
    tracks: list[dict[str, Any]]
    frames: list[Any]
    masks: dict[str, list[Any]]
    replace: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class TaskFailure:
    task_id: int
    kind: str
    reason: str


def task_prediction(parsed: ParsedConfig, task: PreparedTask, version: str) -> dict[str, Any]:
    """The prediction of a captioned task, item for item what the backend's /predict returns for it: each region
    echoed (its id kept) then its textarea caption with the same id; model_version and score on every item."""
    height, width = task.image.shape[:2]
    result, scores = [], []
    for item, caption, mask_score in zip(task.regions, task.captions, task.mask_scores):
        score = R.region_score(caption.confidence, mask_score)
        region_id = str(item.get("id") or R.new_region_id())
        result.append(R.echo_result({**item, "id": region_id}, version))
        result.append(R.textarea_result(parsed, region_id, caption.text, width, height, version, score))
        scores.append(score)
    return R.prediction(result, scores, version)


def chunks(ids: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


class Run:
    """A run of one rank."""

    def __init__(self, parts: JobParts) -> None:
        self.parts = parts
        self.cfg = parts.cfg
        self.ls = parts.ls
        self.version = parts.model_version
        self.summary = Summary()
        self.folder: Path = self.cfg.journal_folder(self.version)
        self.parsed = parse_label_config(self.ls.label_config(self.cfg.project))
        # Decoded videos are large: a video project keeps fewer tasks waiting for the model.
        self.prefetch = min(self.cfg.prefetch_tasks, self.cfg.fetch_workers) if self.parsed.is_video \
            else self.cfg.prefetch_tasks
        image_query = getattr(getattr(parts.model, "config", None), "image_query", None)
        self.video_calls = 0  # describe_video calls (one per track)
        self.batcher = CrossTaskBatcher(self._describe_batch(image_query), self.cfg.batch_regions)

    # ------------------------------------------------------------------ the run
    def run(self) -> Summary:
        started = time.monotonic()
        shard = self.parts.shard
        with Journal(self.folder, shard.rank) as journal:
            self.journal = journal
            journal.write("start", rank=shard.rank, world=shard.world, model_version=self.version)
            todo = self._plan()
            self.progress = Progress(len(todo), self.summary, shard.rank, self.cfg.progress)
            self.poster = PredictionPoster(self.ls, self.cfg.project, journal, self.cfg.post_batch, self.summary)
            try:
                self._work(todo)
            finally:
                self.progress.close()
                self.poster.close()
            self.summary.model_calls = self.batcher.calls + self.video_calls
            self.summary.seconds = time.monotonic() - started
            write_failed_file(self.failed_file, self.summary.failed)
            journal.write("end", summary=summary_record(self.summary))
        return self.summary

    def _plan(self) -> list[int]:
        """Settle what a killed run left open, then this shard's task ids that still need the model."""
        shard = self.parts.shard
        finished_earlier = replay(self.folder).done
        self._settle_open()  # a killed run's unanswered imports, before anything is recomputed
        done = replay(self.folder).done  # now with the ones reconcile found stored (counted as recovered)
        todo = []
        for task_id in self._selection():
            if not shard.owns(task_id):
                continue
            self.summary.selected += 1
            if task_id in finished_earlier:
                self.summary.skipped_journal += 1
            elif task_id not in done:
                todo.append(task_id)
        self.parts.barrier()  # every rank listed its ids before any rank posts (a view may filter on predictions)
        log.info("rank %d/%d: %d tasks selected, %d finished earlier, %d to do with %s", shard.rank, shard.world,
                 self.summary.selected, self.summary.skipped_journal, len(todo), self.version)
        return todo

    def _work(self, todo: list[int]) -> None:
        """Caption and import `todo`; settle unanswered imports (computing again what they did not store); then
        remove late copies once they had time to land."""
        self._process(todo)
        for _ in range(MAX_EXTRA_PASSES):
            again = self._settle_open()
            if not again:
                break
            self.progress.add_total(len(again))
            self._process(sorted(again))
        state = replay(self.folder)
        sweep(self.ls, self.journal, self.version,
              {t: m for t, m in state.unswept.items() if self.parts.shard.owns(t)}, self.cfg.settle_seconds,
              self.summary)

    @property
    def failed_file(self) -> Path:
        return self.folder / f"failed-rank{self.parts.shard.rank}.jsonl"

    def _selection(self) -> Iterable[int]:
        ids = self.cfg.selected_ids()
        if ids is not None:
            return ids
        return self.ls.iter_task_ids(self.cfg.project, self.cfg.view or None)

    def _settle_open(self) -> set[int]:
        state = replay(self.folder)
        mine = {task: intents for task, intents in state.open.items() if self.parts.shard.owns(task)}
        return reconcile(self.ls, self.journal, self.version, mine, self.summary) if mine else set()

    # ------------------------------------------------------------------ tasks
    def _process(self, ids: list[int]) -> None:
        inflight: deque[Future] = deque()
        with ThreadPoolExecutor(self.cfg.fetch_workers, thread_name_prefix="media") as pool:
            for chunk in chunks(ids, self.cfg.page_size):
                tasks = {int(t["id"]): t for t in self.ls.fetch_tasks(self.cfg.project, chunk)}
                for task_id in chunk:
                    prepared = self._admit(task_id, tasks.pop(task_id, None))
                    if prepared is None:
                        continue
                    inflight.append(pool.submit(self._prepare, *prepared))
                    while len(inflight) >= self.prefetch:
                        self._consume(inflight.popleft().result())
            while inflight:
                self._consume(inflight.popleft().result())
        for outcome in self.batcher.flush():
            self._finish(outcome)
        self.poster.flush()

    def _admit(self, task_id: int, task: dict[str, Any] | None) -> tuple | None:
        """(task, regions, predictions to replace) when the task needs the model; else it is counted here."""
        if task is None:
            self._fail(TaskFailure(task_id, "not in the project", f"task {task_id} is not in project "
                                                                   f"{self.cfg.project} (deleted?)"))
            return None
        held = versions_held(task.get("predictions"), self.version)
        if held and not self.cfg.force:
            self.summary.skipped_predicted += 1
            self.progress.step()
            return None
        name = self.parsed.obj.name
        regions = video_tracks(task, name) if self.parsed.is_video else image_regions(task, name)
        if not regions:
            self.summary.no_regions += 1
            self.progress.step()
            return None
        return task, regions, held

    def _prepare(self, task: dict[str, Any], regions: list[dict[str, Any]],
                 replace: list[int]) -> PreparedTask | VideoTask | TaskFailure:
        """Media and masks of one task (a media thread: downloads overlap the model)."""
        task_id = int(task["id"])
        try:
            if self.parsed.is_video:
                return self._prepare_video(task, regions, replace)
            data = task.get("data") if isinstance(task.get("data"), dict) else {}
            url = data.get(self.parsed.obj.value_key)
            if not url:
                raise BadRequest(f"task {task_id} has no data.{self.parsed.obj.value_key}")
            image = self.parts.fetcher.load_image(url, task_id)
            # The backend's reading: an empty region is skipped, every region empty or a bad one fails the task.
            kept, masks, scores = region_masks(regions, image, self.parts.segmenter,
                                               lambda item, exc: self._skip_region(task_id, item, exc))
            queries = [self._query(item) for item in kept]
            return PreparedTask(task_id, image, kept, masks, scores, queries, replace=replace)
        except Exception as exc:  # noqa: BLE001 - one bad task is reported, the job goes on
            kind, reason = failure_reason(exc)
            return TaskFailure(task_id, kind, reason)

    def _prepare_video(self, task: dict[str, Any], tracks: list[dict[str, Any]], replace: list[int]) -> VideoTask:
        """The backend's reading of a video task (backend/batch.py calls the same ls_io.video_tasks functions)."""
        fetcher = self.parts.fetcher
        frames = task_frames(fetcher, task, self.parsed.obj, fetcher.settings.video_max_bytes,
                             fetcher.settings.media_max_pixels)
        seg = self.parts.segmenter()
        video = getattr(seg, "video", None)
        masks = track_masks(tracks, frames, video() if callable(video) else None)
        return VideoTask(int(task["id"]), tracks, frames, masks, replace)

    def _caption_video(self, task: VideoTask) -> None:
        """One describe_video per track (tracks are not batched across tasks), then the prediction, as /predict."""
        model, max_new_tokens, version = self.parts.model, self.cfg.max_new_tokens, self.version

        def describe(frames, masks):
            return model.describe_video(frames, masks, query=None, max_new_tokens=max_new_tokens), version

        try:
            prediction = track_prediction(
                self.parsed, task.tracks, task.frames, task.masks,
                lambda masks: sample_frame_indices(masks, self.cfg.video_frames), describe,
                lambda item, exc: self._skip_region(task.task_id, item, exc))
        except Exception as exc:  # noqa: BLE001 - one bad task is reported, the job goes on
            kind, reason = failure_reason(exc)
            self._fail(TaskFailure(task.task_id, kind, reason))
            return
        captioned = sum(1 for item in prediction["result"] if item.get("type") == "textarea")
        self.video_calls += captioned
        self.summary.regions += captioned
        self.poster.add(task.task_id, prediction, task.replace)
        self.progress.step()

    @staticmethod
    def _skip_region(task_id: int, item: dict[str, Any], error: Exception) -> None:
        log.warning("task %s: region %s skipped (%s): %s", task_id, region_label(item), getattr(error, "kind", ""),
                    error)

    def _query(self, item: dict[str, Any]) -> str | None:
        """The region's label when CATEGORY_HINT is on, as the backend asks (None: the model's own query)."""
        labels = [label for label in labels_of(item) if label]
        return labels[0] if self.cfg.category_hint and labels else None

    def _describe_batch(self, image_query: str | None):
        model, max_new_tokens = self.parts.model, self.cfg.max_new_tokens

        def describe(items, label):
            query = category_query(image_query, label) if label is not None else None
            return model.describe_batch(items, query=query, max_new_tokens=max_new_tokens)

        return describe

    def _consume(self, prepared: PreparedTask | VideoTask | TaskFailure) -> None:
        if isinstance(prepared, TaskFailure):
            self._fail(prepared)
            return
        if isinstance(prepared, VideoTask):
            self._caption_video(prepared)
            return
        for outcome in self.batcher.add(prepared):
            self._finish(outcome)

    def _finish(self, outcome: PreparedTask | BatchFailure) -> None:
        if isinstance(outcome, BatchFailure):
            self._fail(TaskFailure(outcome.task.task_id, "model", outcome.reason))
            return
        self.summary.regions += len(outcome.regions)
        prediction = task_prediction(self.parsed, outcome, self.version)
        self.poster.add(outcome.task_id, prediction, outcome.replace)
        self.progress.step()

    def _fail(self, failure: TaskFailure) -> None:
        self.summary.fail(failure.task_id, failure.kind, failure.reason)
        self.journal.write("failed", task=failure.task_id, reason=failure.reason)
        log.warning("task %s: no prediction (%s)", failure.task_id, failure.reason)
        self.progress.step()


def run_job(parts: JobParts) -> Summary:
    return Run(parts).run()
