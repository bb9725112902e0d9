"""Cross-request batching: one worker thread owns the model, request threads submit regions and wait on a Future.

Why: each gunicorn thread ran the model on its own, queued on the model lock, so eight annotators got little more
throughput than one, although the model captions 8 regions in one call ~3x faster than one by one.

Flow: `submit(works, kind)` queues one entry per region (a video track is one). The worker takes the oldest entry of
the first non-empty queue (interactive, then batch) and the entries of that kind with its key (query, generation
settings), up to BATCH_MAX_SIZE (BULK_BATCH_MAX_SIZE for batch requests); an idle model waits at most
BATCH_MAX_WAIT_MS after that entry arrived for the batch to fill. Regions of one image are encoded together; the
batch is ONE call (`describe_batch`; `describe_video` for a track). A submission's `Ticket` (a Future) resolves
when all its regions are captioned.
- Continuous batching (CONTINUOUS_BATCHING, on by default): when the model has `caption_session` (DAM) and the work
  is greedy image regions, the batch instead opens a decode session (backend/sessions.py) that other regions join
  between two steps and leave as soon as their caption ends; clicks and bulk rows then share the steps (at most
  BATCH_MAX_SIZE click rows and BULK_BATCH_MAX_SIZE bulk rows). The points below describe the call-per-batch path;
  backpressure, deadlines, cancellation, failures and promotions hold for sessions too.
- Interactive first: kinds never share a call, and while a batch-kind call decodes, waiting clicks are captioned
  between two of its decode steps (`dam_model.generation.between_steps`, one click batch per step): a click waits
  one step, not a 200-region request, and the paused call resumes unchanged. Fair share: after FAIR_SHARE_EVERY
  click batches in a row while batch work waits, the next call is batch work, so a stream of clicks slows bulk
  work but never starves it.
- Backpressure: at most QUEUE_MAX_REGIONS regions wait; beyond, submit() raises `Overloaded` (503, retry_after
  from the measured throughput); one submission larger than the whole queue is `TooManyRegions` (413).
- Failures: an error of a call shared by several submissions reruns each submission's regions on its own, so
  one request's unusable region fails only that request.
- Deadlines: entries whose deadline passed, or whose Ticket was cancelled (the client is gone), are dropped before
  they cost model time; `Ticket.wait()` raises `DeadlineExceeded` (504) when the deadline passes first.
- Hot promotion: `get_model()` is called for every batch (and after every step of a session, which then drains):
  a model swapped between batches serves the next one and nothing fails; each `Captioned` names the version that
  wrote it.
- Prepare-ahead (continuous batching): a second thread makes the model inputs (`prepare_regions`: crops, resizes;
  then the vision passes, `dam_model.continuous.prepared_rows`) of the next BULK_BATCH_MAX_SIZE bulk regions while
  the model decodes, so that admitting bulk rows pauses the decode for the prefill only; a click beside a
  200-region request waits out shorter pauses (and 200 regions took 1.8-2.1 s against 2.35-2.38 s when the session
  encoded them). Clicks are prepared in their own request thread (backend/model.py) and encoded by the session,
  with whatever else is not ready. The thread runs at the lowest priority (nice 19, Linux): where it competes for a
  core with a click's request thread, the click goes first (click p95 during a 200-region request 75-79 ms against
  88-101 ms at the same priority, three side-by-side runs; the 200 regions took 1.95-2.26 s against 2.03-2.12 s).
- close(): stops accepting, drains (or fails with `SchedulerClosed`) what waits. Every submission gets an answer.
  The worker thread starts with the first submission (an app that never captions holds no thread); it is a daemon,
  so in-flight requests finish during gunicorn's graceful shutdown and nothing waits on it at exit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import InvalidStateError
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dam_model.continuous import prepared_rows
from dam_model.generation import between_steps

from .batching_types import (BATCH, FAIR_SHARE_EVERY, INTERACTIVE, KINDS, BatchingSettings, Captioned,  # noqa: F401
                             DeadlineExceeded, Generation, Region, SchedulerClosed, SchedulerObserver, Ticket,
                             TooManyRegions, Track, _Entry)  # re-exported: the scheduler's vocabulary
from .errors import BackendError, Overloaded
from .sessions import joins, run_session, session_capable

log = logging.getLogger(__name__)

PREPARE_AT_ONCE = 4  # bulk regions the prepare-ahead thread makes per model lookup (regions of one image share work)
PREPARE_NICENESS = 19  # the prepare-ahead thread's (Linux): request threads and the model thread get a core first


def lower_thread_priority(niceness: int) -> None:
    """Run the calling thread at `niceness` or lower priority (Linux: niceness is per thread); elsewhere, or where
    the system refuses, nothing changes. One way only: an unprivileged thread cannot take priority back."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, max(niceness, os.getpriority(os.PRIO_PROCESS, tid)))


# ------------------------------------------------------------------------------------------------ the scheduler
class Scheduler:
    """Batches regions of concurrent requests into model calls on one worker thread (see the module docstring).

    get_model() returns the served model: an object with `.model` (describe_batch or describe, describe_video),
    `.version` and optionally `.lock` (held around each call), e.g. backend.model_store.LoadedModel via store.get.
    """

    def __init__(self, get_model: Callable[[], Any], settings: BatchingSettings | None = None,
                 observer: SchedulerObserver | None = None) -> None:
        self.get_model = get_model
        self.settings = settings or BatchingSettings()
        self.observer = observer or SchedulerObserver()
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Entry]] = {kind: deque() for kind in KINDS}
        self._closing = False
        self._regions_per_s: float | None = None  # throughput estimate for Retry-After
        self._click_streak = 0  # click batches run in a row while batch work waited (fair share)
        self._worker: threading.Thread | None = None
        self._preparer: threading.Thread | None = None
        self._prepare_wanted = threading.Event()  # set (under _cond) when bulk regions may need preparing

    # ---------------------------------------------------------------- request threads
    def submit(self, works: Sequence[Region | Track], *, kind: str = INTERACTIVE,
               generation: Generation = Generation(), deadline_s: float | None = None) -> Ticket:
        """Queue the works; the Ticket resolves to one Captioned per work, in order. Raises Overloaded (queue full),
        TooManyRegions (more works than the queue holds) or SchedulerClosed."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if deadline_s is None:
            deadline_s = self.settings.interactive_deadline_s if kind == INTERACTIVE else self.settings.batch_deadline_s
        now = time.monotonic()
        ticket = Ticket(kind, now + deadline_s, len(works), now)
        if not works:
            ticket.set_result([])
            return ticket
        # key: what must match to share a model call; a seeded sampled request only shares with itself (its draws
        # must not depend on other requests)
        isolate = id(ticket) if generation.temperature > 0 and generation.seed is not None else None
        entries = [_Entry(ticket, i, w, (type(w).__name__, w.query, generation, isolate), now)
                   for i, w in enumerate(works)]
        limit = self.settings.queue_max_regions
        with self._cond:
            if self._closing:
                raise SchedulerClosed("the server is shutting down; retry on another worker")
            if len(works) > limit:
                self.observer.rejected(kind, "too_large")
                raise TooManyRegions(f"{len(works)} regions in one request exceed QUEUE_MAX_REGIONS={limit}; "
                                     "send fewer regions per task")
            self._purge(now)  # expired or cancelled work must not hold places
            queued = sum(len(queue) for queue in self._queues.values())
            if queued + len(works) > limit:
                self.observer.rejected(kind, "queue_full")
                raise Overloaded(f"{queued} regions are waiting for the model (QUEUE_MAX_REGIONS={limit}); "
                                 "retry later", self._retry_after(queued))
            self._queues[kind].extend(entries)
            self.observer.queue_depth(kind, len(self._queues[kind]))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="dam-batcher", daemon=True)
                self._worker.start()
            if kind == BATCH and self.settings.continuous_batching:
                if self._preparer is None:
                    self._preparer = threading.Thread(target=self._prepare_ahead, name="dam-prepare", daemon=True)
                    self._preparer.start()
                self._prepare_wanted.set()
            self._cond.notify()
        return ticket

    def caption(self, works: Sequence[Region | Track], **submit_kwargs: Any) -> list[Captioned]:
        """submit() then wait for the captions (DeadlineExceeded when the deadline passes first)."""
        return self.submit(works, **submit_kwargs).wait()

    def close(self, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop accepting work; finish what waits (drain) or fail it with SchedulerClosed. After `timeout` seconds
        whatever still waits is failed too."""
        with self._cond:
            self._closing = True
            if not drain:
                self._fail_all("the server is shutting down; the request was not captioned")
            self._cond.notify_all()
            self._prepare_wanted.set()  # the prepare-ahead thread sees _closing and ends
            worker = self._worker
        if worker is not None:
            worker.join(timeout)
        with self._cond:
            self._fail_all("the server shut down before this request was captioned")

    # ---------------------------------------------------------------- internals (lock held unless said)
    def _retry_after(self, queued: int) -> int:
        rate = self._regions_per_s
        return int(min(60, max(1, math.ceil(queued / rate)))) if rate else 1

    def _cap(self, kind: str, key: tuple) -> int:
        if key[0] == "Track":
            return 1  # describe_video takes one track
        return self.settings.batch_max_size if kind == INTERACTIVE else self.settings.bulk_batch_max_size

    def _fail_all(self, reason: str) -> None:
        for kind, queue in self._queues.items():
            for entry in queue:
                entry.ticket._fail(SchedulerClosed(reason))
                self.observer.dropped(kind, "shutdown", 1)
            queue.clear()
            self.observer.queue_depth(kind, 0)

    def _purge(self, now: float) -> None:
        """Drop entries of cancelled, failed or expired submissions before they cost model time."""
        for kind, queue in self._queues.items():
            dead = [e for e in queue if e.ticket.done() or now > e.ticket.deadline]
            for entry in dead:
                reason = "cancelled" if entry.ticket.cancelled() else "failed" if entry.ticket.done() else "deadline"
                entry.ticket._fail(DeadlineExceeded(f"{kind} request dropped: its deadline passed while queued"))
                self.observer.dropped(kind, reason, 1)
            if dead:
                self._queues[kind] = deque(e for e in queue if not (e.ticket.done() or now > e.ticket.deadline))
                self.observer.queue_depth(kind, len(self._queues[kind]))

    def _pick_kind(self) -> str | None:
        """Clicks first, but batch work gets every FAIR_SHARE_EVERY+1-th call while clicks keep coming."""
        waiting = [k for k in KINDS if self._queues[k]]
        if not waiting:
            return None
        if waiting == [INTERACTIVE, BATCH] and self._click_streak >= FAIR_SHARE_EVERY:
            return BATCH
        return waiting[0]

    def _take(self, kind: str) -> list[_Entry]:
        """Pop the head of `kind` and the entries with its key, up to the batch size (one track per call)."""
        key = self._queues[kind][0].key
        cap = self._cap(kind, key)
        self._click_streak = self._click_streak + 1 if kind == INTERACTIVE and self._queues[BATCH] else 0
        batch, rest = [], deque()
        for entry in self._queues[kind]:
            (batch if entry.key == key and len(batch) < cap else rest).append(entry)
        self._queues[kind] = rest
        self.observer.queue_depth(kind, len(rest))
        self._taken(kind)
        return batch

    def _taken(self, kind: str) -> None:
        """Entries of `kind` left the queue: when bulk ones did, the next bulk regions moved up; prepare them."""
        if kind == BATCH and self._preparer is not None:
            self._prepare_wanted.set()

    def _next_batch(self) -> list[_Entry] | None:
        max_wait = self.settings.batch_max_wait_ms / 1000.0
        with self._cond:
            while True:
                now = time.monotonic()
                self._purge(now)
                kind = self._pick_kind()
                if kind is None:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                head = self._queues[kind][0]
                ready = sum(1 for e in self._queues[kind] if e.key == head.key)
                wait_left = head.enqueued_at + max_wait - now
                if ready >= self._cap(kind, head.key) or wait_left <= 0 or self._closing:
                    return self._take(kind)
                self._cond.wait(wait_left)

    # ---------------------------------------------------------------- the worker thread
    def _work(self) -> None:
        while True:
            try:
                if (batch := self._next_batch()) is None:
                    return
                self._run(batch)
            except BaseException:  # noqa: BLE001 - the worker must outlive any one batch (_run fails its tickets)
                log.exception("batching worker: unexpected error")

    def _prepare_ahead(self) -> None:
        """The prepare-ahead thread (see the module docstring): inputs of the next bulk regions, PREPARE_AT_ONCE at a
        time. A failure leaves them to the session, which reports it to their request. It runs at PREPARE_NICENESS:
        bulk work, so a click's request thread (and the model thread) take a core first."""
        lower_thread_priority(PREPARE_NICENESS)
        while True:
            self._prepare_wanted.wait()
            with self._cond:
                if self._closing:
                    return
                head = itertools.islice(self._queues[BATCH], self.settings.bulk_batch_max_size)
                todo = [e for e in head if isinstance(e.work, Region) and e.work.prepared is None
                        and not e.prepare_tried][:PREPARE_AT_ONCE]
                if not todo:
                    self._prepare_wanted.clear()
                    continue
                for entry in todo:
                    entry.prepare_tried = True
            made: list[tuple[_Entry, Any]] = []
            try:
                model = self.get_model().model
                prepare = getattr(model, "prepare_regions", None)
                if not callable(prepare):
                    continue
                by_image: dict[int, list[_Entry]] = {}
                for entry in todo:
                    by_image.setdefault(id(entry.work.image), []).append(entry)
                for group in by_image.values():
                    batch = prepare(group[0].work.image, [entry.work.mask for entry in group])
                    made += list(zip(group, prepared_rows(model, batch)))
            except Exception:  # noqa: BLE001 - e.g. an unusable mask: the session prepares it and fails its request
                log.debug("prepare-ahead failed; the session prepares these regions", exc_info=True)
            with self._cond:
                for entry, prepared in made:
                    entry.work = dataclasses.replace(entry.work, prepared=prepared)

    def _run(self, batch: list[_Entry], served: Any = None) -> None:
        """One model call for `batch`, or a continuous-batching session it opens (backend/sessions.py) when the model
        has one; `served` is given for clicks run between two decode steps of a bulk call (that call already holds
        the model's lock)."""
        kind, started = batch[0].ticket.kind, time.monotonic()
        self.observer.batch_formed(kind, len(batch), [started - e.enqueued_at for e in batch])
        nested = served is not None
        if not nested:
            try:
                served = self.get_model()
            except BaseException as error:  # noqa: BLE001 - e.g. no model loaded: every waiting request gets it
                for entry in batch:
                    entry.ticket._fail(error)
                return
            if self.settings.continuous_batching and session_capable(served.model, batch[0].key):
                run_session(self, batch, served)
                return
        self._caption(batch, served, nested)

    # ---------------------------------------------------------------- for backend/sessions.py
    def serves(self, served: Any) -> bool:
        """Whether `served` is still the model get_model() returns (no promotion since)."""
        try:
            return self.get_model() is served
        except Exception:  # noqa: BLE001 - a failing store: stop admitting to the old model all the same
            return False

    def take_rows(self, key: tuple, room: Mapping[str, int], together_s: float = 0.0) -> list[_Entry]:
        """Waiting regions that can join a session decoding `key`'s rows: clicks first, at most room[kind] of each
        kind (expired and cancelled work is dropped first). A lone region is left waiting until it has waited
        `together_s`, so that the next one can share its encoding and prefill."""
        taken: list[_Entry] = []
        with self._cond:
            now = time.monotonic()
            self._purge(now)
            for kind in KINDS:
                limit = room.get(kind, 0)
                if limit <= 0 or not self._queues[kind]:
                    continue
                picked: list[_Entry] = []
                rest: deque[_Entry] = deque()
                for entry in self._queues[kind]:
                    (picked if len(picked) < limit and joins(entry.key, key) else rest).append(entry)
                if len(picked) == 1 and limit > 1 and now - picked[0].enqueued_at < together_s:
                    continue  # alone for now: wait (the decode goes on meanwhile)
                if picked:
                    self._queues[kind] = rest
                    self.observer.queue_depth(kind, len(rest))
                    self._taken(kind)
                    self.observer.batch_formed(kind, len(picked), [now - e.enqueued_at for e in picked])
                    taken += picked
        return taken

    def resolve(self, entry: _Entry, caption: Any, version: str, done_at: float) -> None:
        """Record one region's caption; its request's Ticket resolves with the last of its regions."""
        ticket = entry.ticket
        if ticket.done():
            return
        ticket.captions[entry.index] = Captioned(caption, version)
        ticket.remaining -= 1
        if ticket.remaining == 0:
            with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                ticket.set_result(list(ticket.captions))
                self.observer.completed(ticket.kind, done_at - ticket.submitted_at)

    def _caption(self, batch: list[_Entry], served: Any, nested: bool) -> None:
        kind, started = batch[0].ticket.kind, time.monotonic()
        try:
            captions = self._call(served, batch, hold_lock=not nested, preemptible=kind == BATCH and not nested)
            if len(captions) != len(batch):
                raise BackendError(f"model returned {len(captions)} captions for {len(batch)} regions")
        except BaseException as error:  # noqa: BLE001 - every waiting request gets an answer, none waits forever
            per_ticket: dict[int, list[_Entry]] = {}
            for entry in batch:
                per_ticket.setdefault(id(entry.ticket), []).append(entry)
            if len(per_ticket) > 1:  # a shared call: rerun each request alone, so only the culprit fails
                for entries in per_ticket.values():
                    self._caption(entries, served, nested)
                return
            for entry in batch:
                entry.ticket._fail(error)
            return
        done_at = time.monotonic()
        self.measured(len(batch), done_at - started)
        for entry, caption in zip(batch, captions):
            self.resolve(entry, caption, str(served.version), done_at)

    def measured(self, regions: int, seconds: float) -> None:
        """Throughput estimate for Retry-After (exponential average of regions per second)."""
        rate = regions / max(seconds, 1e-6)
        self._regions_per_s = rate if self._regions_per_s is None else 0.8 * self._regions_per_s + 0.2 * rate

    def _call(self, served: Any, batch: list[_Entry], hold_lock: bool, preemptible: bool) -> list[Any]:
        model, first = served.model, batch[0]
        gen = first.key[2].kwargs()
        lock = getattr(served, "lock", None) if hold_lock else None
        hook = (lambda: self._serve_clicks(served)) if preemptible else None
        with lock or contextlib.nullcontext(), between_steps(hook):
            if isinstance(first.work, Track):
                return [model.describe_video(first.work.frames, first.work.masks, query=first.work.query, **gen)]
            images: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
            for entry in batch:  # regions of one image are encoded together
                images.setdefault(id(entry.work.image), (entry.work.image, []))[1].append(entry.work.mask)
            groups = list(images.values())
            if hasattr(model, "describe_batch"):
                per_image = model.describe_batch(groups, query=first.work.query, **gen)
            else:  # a model without describe_batch (test fakes, wrappers): one call per image
                per_image = [model.describe(image, masks, query=first.work.query, **gen) for image, masks in groups]
        per_image = {id(image): iter(caps) for (image, _), caps in zip(groups, per_image)}
        return [next(per_image[id(entry.work.image)]) for entry in batch]  # entries of an image kept their order

    def _serve_clicks(self, served: Any) -> None:
        """Between two decode steps of a batch-kind call: caption one batch of waiting clicks now (one per step, so
        the paused call still advances while clicks keep coming)."""
        if not self._queues[INTERACTIVE]:  # unlocked peek; the locked take below decides
            return
        with self._cond:
            self._purge(time.monotonic())
            if not self._queues[INTERACTIVE]:
                return
            batch = self._take(INTERACTIVE)
        self._run(batch, served=served)
