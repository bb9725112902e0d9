"""Regions are batched ACROSS tasks: one 8-region task and eight 1-region tasks cost the same number of model calls
(counted on the tiny DAM), a task may straddle two calls, and a failed call fails only the tasks in it."""
from __future__ import annotations

import numpy as np
import pytest

from dam_model.modeling import DescribeAnythingModel
from dam_preannotate.batching import BatchFailure, CrossTaskBatcher, PreparedTask
from pre_fakes import CountingModel, FakeDAM, MemoryLabelStudio, make_tasks, square_mask


@pytest.fixture(scope="module")
def tiny_model(random_dam_dir):
    return DescribeAnythingModel.from_pretrained(str(random_dam_dir), device="cpu", dtype="float32")


def prepared(task_id: int, n_regions: int) -> PreparedTask:
    image = np.random.default_rng(task_id).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    masks = [square_mask(task_id + r) for r in range(n_regions)]
    return PreparedTask(task_id, image, [{"id": f"{task_id}-{r}"} for r in range(n_regions)], masks,
                        [None] * n_regions, [None] * n_regions)


def test_eight_one_region_tasks_cost_the_same_calls_as_one_eight_region_task(run, tiny_model):
    big, small = CountingModel(tiny_model), CountingModel(tiny_model)
    run(MemoryLabelStudio(make_tasks([1], regions_per_task=8)), model=big, batch_regions=8, max_new_tokens=4)
    summary = run(MemoryLabelStudio(make_tasks(range(11, 19), regions_per_task=1)), model=small, batch_regions=8,
                  max_new_tokens=4, project=2)
    assert summary.done == 8
    assert big.calls == small.calls == [8], "eight 1-region tasks must cost one call of 8, like one 8-region task"


def test_a_task_straddles_two_calls_and_finishes_with_its_last_region():
    model = FakeDAM()
    batcher = CrossTaskBatcher(lambda items, query: model.describe_batch(items, query=query), batch_regions=4)
    assert list(batcher.add(prepared(1, 3))) == []  # 3 queued, no full batch yet
    finished = list(batcher.add(prepared(2, 3)))  # 4 full: task 1 done, task 2 has 1 of 3
    assert [t.task_id for t in finished] == [1]
    finished = list(batcher.flush())
    assert [t.task_id for t in finished] == [2] and all(c is not None for c in finished[0].captions)
    assert model.calls == [[3, 1], [2]], "one (image, masks) item per task in each call"


def test_a_failed_model_call_fails_only_its_tasks():
    calls = []

    def describe(items, query):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return FakeDAM().describe_batch(items)

    batcher = CrossTaskBatcher(describe, batch_regions=2)
    out = list(batcher.add(prepared(1, 1))) + list(batcher.add(prepared(2, 2))) + list(batcher.flush())
    failures = [o for o in out if isinstance(o, BatchFailure)]
    assert sorted(f.task.task_id for f in failures) == [1, 2]  # both were in the failed call
    assert "CUDA out of memory" in failures[0].reason
    assert calls == [2], "the failed task 2's last region is not sent again"


def test_category_hints_batch_per_label():
    queries = []

    def describe(items, query):
        queries.append((query, sum(len(m) for _, m in items)))
        return FakeDAM().describe_batch(items)

    batcher = CrossTaskBatcher(describe, batch_regions=2)
    task = prepared(1, 3)
    task.queries = ["cat", "dog", "cat"]
    assert [t.task_id for t in batcher.add(task)] == []  # "cat" x2 ran; "dog" waits
    assert [t.task_id for t in batcher.flush()] == [1]
    assert queries == [("cat", 2), ("dog", 1)]
