"""Regions of many tasks gathered into full model batches: one 8-region task and eight 1-region tasks cost the
same number of generate calls (DescribeAnythingModel.describe_batch decodes every region of every item in one
left-padded generate).

Regions wait in a queue per query (CATEGORY_HINT gives each label its own query; without it there is one queue).
A queue that holds `batch_regions` regions is decoded at once; `flush` decodes what is left at the end. A task
may straddle two calls: it is finished when its last region has its caption.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

# (items: [(image, [masks])], query or None) -> one caption list per item, in order
DescribeBatch = Callable[[Sequence[tuple[np.ndarray, list[np.ndarray]]], "str | None"], list[list[Any]]]


@dataclass(eq=False)  # identity: a task is tracked as itself across calls
class PreparedTask:
    """A task ready for the model: its image, its region items and their masks (same order)."""

    task_id: int
    image: np.ndarray
    regions: list[dict[str, Any]]
    masks: list[np.ndarray]
    mask_scores: list[float | None]
    queries: list[str | None]
    replace: list[int] = field(default_factory=list)  # predictions of this version to replace (--force)
    captions: list[Any] = field(default_factory=list)
    failure: str | None = None
    _left: int = 0

    def __post_init__(self) -> None:
        if not (len(self.regions) == len(self.masks) == len(self.mask_scores) == len(self.queries)) or not self.masks:
            raise ValueError(f"task {self.task_id}: regions, masks, scores and queries must match and not be empty")
        self.captions = [None] * len(self.masks)
        self._left = len(self.masks)


@dataclass(frozen=True)
class BatchFailure:
    """Why a task got no captions (the model call failed)."""

    task: PreparedTask
    reason: str


class CrossTaskBatcher:
    """Feeds `describe` with exactly `batch_regions` regions per call, whichever tasks they come from."""

    def __init__(self, describe: DescribeBatch, batch_regions: int) -> None:
        if batch_regions <= 0:
            raise ValueError("batch_regions must be positive")
        self.describe = describe
        self.batch_regions = batch_regions
        self._queues: dict[str | None, deque[tuple[PreparedTask, int]]] = {}
        self.calls = 0
        self.regions_done = 0

    @property
    def pending_regions(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def add(self, task: PreparedTask) -> Iterator[PreparedTask | BatchFailure]:
        """Queue the task's regions; run every batch that is full. Yields the tasks that got their last caption
        (or failed) in those calls."""
        for index, query in enumerate(task.queries):
            self._queues.setdefault(query, deque()).append((task, index))
        for query, queue in list(self._queues.items()):
            while len(queue) >= self.batch_regions:
                yield from self._run(query, queue)

    def flush(self) -> Iterator[PreparedTask | BatchFailure]:
        """Decode everything still queued (the last, partly filled batches)."""
        for query, queue in list(self._queues.items()):
            while queue:
                yield from self._run(query, queue)

    def _run(self, query: str | None, queue: deque[tuple[PreparedTask, int]]) -> Iterator[PreparedTask | BatchFailure]:
        entries = []
        while queue and len(entries) < self.batch_regions:
            task, index = queue.popleft()
            if task.failure is None:  # a task that failed in an earlier call needs no more captions
                entries.append((task, index))
        if not entries:
            return
        # A task's regions are queued together, so consecutive entries of one task share one (image, masks) item.
        items: list[tuple[np.ndarray, list[np.ndarray]]] = []
        owners: list[list[tuple[PreparedTask, int]]] = []
        for task, index in entries:
            if owners and owners[-1][0][0] is task:
                items[-1][1].append(task.masks[index])
                owners[-1].append((task, index))
            else:
                items.append((task.image, [task.masks[index]]))
                owners.append([(task, index)])
        self.calls += 1
        try:
            captions = self.describe(items, query)
            if len(captions) != len(items) or any(len(c) != len(o) for c, o in zip(captions, owners)):
                raise RuntimeError(f"the model returned {sum(map(len, captions))} captions for {len(entries)} regions")
        except Exception as exc:  # noqa: BLE001 - one failed call fails its tasks, not the job
            reason = f"model: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            for task in dict.fromkeys(t for t, _ in entries):
                if task.failure is None:
                    task.failure = reason
                    yield BatchFailure(task, reason)
            return
        for item_captions, slots in zip(captions, owners):
            for caption, (task, index) in zip(item_captions, slots):
                task.captions[index] = caption
                task._left -= 1
                self.regions_done += 1
            task = slots[0][0]
            if task._left == 0:
                yield task
