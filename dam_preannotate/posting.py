"""Bulk import of finished predictions, journaled; and the two checks that make a lost answer harmless.

`PredictionPoster` sends `post_batch` tasks per import request: intent (fsync) -> delete the predictions it
replaces (--force) -> import -> posted | rejected. A 4xx answer stored nothing; a batch of several tasks is then
sent again one task at a time, so one bad task does not fail its neighbours. No answer or a 5xx leaves the intent
open: `reconcile` settles it against Label Studio later in the run or after a restart. `sweep` removes a late copy.
See journal.py for the protocol as a whole.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from .journal import Journal, OpenIntent, new_batch_id
from .labelstudio import ImportRejected, ImportUncertain, LabelStudioClient
from .summary import Summary

log = logging.getLogger(__name__)

MAX_UNANSWERED_IN_A_ROW = 3  # then Label Studio is down: stop, the journal lets a restart finish


class LabelStudioUnavailable(RuntimeError):
    """Several imports in a row got no answer."""


class PredictionPoster:
    """Collects finished tasks and imports them in bulk from one background thread, so that Label Studio's time
    to store a batch overlaps the model's next batches. At most `max_queued` full batches wait; a failure of the
    thread (Label Studio down, or a crash in tests) is raised in the caller at its next add() or flush(), and no
    batch is sent after it."""

    def __init__(self, ls: LabelStudioClient, project: int, journal: Journal, post_batch: int,
                 summary: Summary, max_queued: int = 2) -> None:
        self.ls, self.project, self.journal, self.summary = ls, project, journal, summary
        self.post_batch = post_batch
        self.pending: list[tuple[int, dict[str, Any], list[int]]] = []
        self.unanswered = 0
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self.thread = threading.Thread(target=self._work, name="poster", daemon=True)
        self.thread.start()

    def add(self, task_id: int, prediction: dict[str, Any], replace: list[int]) -> None:
        self._raise_error()
        self.pending.append((task_id, prediction, list(replace)))
        if len(self.pending) >= self.post_batch:
            entries, self.pending = self.pending, []
            self.queue.put(entries)

    def flush(self) -> None:
        """Send what is pending and wait until every queued batch is answered (or left open)."""
        entries, self.pending = self.pending, []
        if entries:
            self.queue.put(entries)
        self.queue.join()
        self._raise_error()

    def close(self) -> None:
        """Stop the thread (pending entries are not sent: call flush() first to send them)."""
        self.queue.put(None)
        self.thread.join()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        while True:
            entries = self.queue.get()
            try:
                if entries is None:
                    return
                if self.error is None:  # after a failure nothing more is sent: those tasks stay unjournaled
                    self._send(entries)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self.error = exc
            finally:
                self.queue.task_done()

    def _send(self, entries: list[tuple[int, dict[str, Any], list[int]]]) -> None:
        batch = new_batch_id()
        tasks = [task for task, _, _ in entries]
        replace = {str(task): ids for task, _, ids in entries if ids}
        self.journal.write("intent", batch=batch, tasks=tasks, replace=replace)
        try:
            for ids in replace.values():
                for prediction_id in ids:
                    self.ls.delete_prediction(prediction_id)
            self.ls.import_predictions(self.project, [{"task": task, **prediction} for task, prediction, _ in entries])
        except ImportRejected as exc:
            self.journal.write("rejected", batch=batch, reason=str(exc))
            if len(entries) > 1:
                log.warning("Label Studio refused an import of %d tasks (%s); sending them one by one", len(entries), exc)
                for entry in entries:
                    self._send([entry])
                return
            self.summary.fail(tasks[0], "Label Studio refused the prediction", str(exc))
            self.journal.write("failed", task=tasks[0], reason=f"Label Studio refused the prediction: {exc}")
            return
        except (ImportUncertain, OSError, Exception) as exc:  # noqa: BLE001 - any lost answer: the intent stays open
            self.unanswered += 1
            log.warning("import of %d tasks got no answer (%s: %s); it is checked against Label Studio later",
                        len(entries), type(exc).__name__, exc)
            if self.unanswered >= MAX_UNANSWERED_IN_A_ROW:
                raise LabelStudioUnavailable(f"{self.unanswered} imports in a row got no answer: {exc}") from None
            return
        self.unanswered = 0
        self.journal.write("posted", batch=batch)
        self.summary.done += len(entries)


def _version_ids(ls: LabelStudioClient, task: int, model_version: str) -> list[int]:
    return sorted(p.id for p in ls.predictions_of(task) if p.model_version == model_version)


def reconcile(ls: LabelStudioClient, journal: Journal, model_version: str,
              open_tasks: dict[int, list[OpenIntent]], summary: Summary) -> set[int]:
    """Settle intents that got no answer, task by task, from what Label Studio stores now: the predictions the
    intent replaces are deleted; one of this version left -> found (copies beyond the oldest deleted); none ->
    missing (the caller computes it again). Returns the missing tasks."""
    found_by_batch: dict[str, list[int]] = {}
    missing_by_batch: dict[str, list[int]] = {}
    missing: set[int] = set()
    for task, intents in sorted(open_tasks.items()):
        replaced = {pid for intent in intents for pid in intent.replace}
        stored = _version_ids(ls, task, model_version)
        for pid in stored:
            if pid in replaced:
                ls.delete_prediction(pid)
        keep = [pid for pid in stored if pid not in replaced]
        for pid in keep[1:]:
            ls.delete_prediction(pid)
            summary.duplicates_removed += 1
        target = found_by_batch if keep else missing_by_batch
        for intent in intents:
            target.setdefault(intent.batch, []).append(task)
        if keep:
            summary.recovered += 1
        else:
            missing.add(task)
    for batch in sorted(set(found_by_batch) | set(missing_by_batch)):
        journal.write("reconciled", batch=batch, found=found_by_batch.get(batch, []),
                      missing=missing_by_batch.get(batch, []))
    if open_tasks:
        log.info("reconciled %d tasks of unanswered imports: %d stored, %d to compute again",
                 len(open_tasks), len(open_tasks) - len(missing), len(missing))
    return missing


def sweep(ls: LabelStudioClient, journal: Journal, model_version: str, unswept: dict[int, list[tuple[str, float]]],
          settle_seconds: float, summary: Summary, clock: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Once the lost requests have had `settle_seconds` to land, keep the oldest prediction of this version of each
    task that reconcile found missing and delete the others."""
    if not unswept:
        return
    ready_at = max(when for marks in unswept.values() for _, when in marks) + settle_seconds
    if clock() < ready_at:
        log.info("waiting %.0f s for lost imports to settle before the duplicate check", ready_at - clock())
        sleep(max(0.0, ready_at - clock()))
    by_batch: dict[str, list[int]] = {}
    for task, marks in sorted(unswept.items()):
        for pid in _version_ids(ls, task, model_version)[1:]:
            ls.delete_prediction(pid)
            summary.duplicates_removed += 1
        for batch, _ in marks:
            by_batch.setdefault(batch, []).append(task)
    for batch, tasks in sorted(by_batch.items()):
        journal.write("swept", batch=batch, tasks=tasks)
