"""The batching scheduler (backend/batching.py): concurrent regions share model calls and each request gets its own
captions; clicks go ahead of bulk work (between two decode steps); a bounded queue answers every submit; expired or
cancelled work costs no model time; a model swapped between batches fails nothing; close() answers what waits."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.batching import (BATCH, FAIR_SHARE_EVERY, INTERACTIVE, BatchingSettings, DeadlineExceeded, Generation,
                              Overloaded, Region, Scheduler, SchedulerClosed, TooManyRegions, Track)
from backend.batching_metrics import SchedulerMetrics
from backend.metrics import Registry
from dam_model.generation import Caption, GenerationSettings, generate


def mask_of_area(area: int, shape=(16, 32)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask.flat[:area] = True
    return mask


def area_of(caption) -> int:
    return int(caption.caption.text.split()[1])


class FakeCaptioner:
    """describe_batch over (image, masks) items: one caption per mask, "<tag> <area> <query>". Records the regions
    and images of every call, sleeps `delay`; `gate` (set by default) holds calls while cleared."""

    def __init__(self, tag: str = "v1", delay: float = 0.01) -> None:
        self.tag, self.delay = tag, delay
        self.calls: list[int] = []
        self.images_per_call: list[int] = []
        self.gate, self.started = threading.Event(), threading.Event()
        self.gate.set()

    def describe_batch(self, items, *, query=None, max_new_tokens=128, temperature=0.0, top_p=0.5, seed=None):
        self.started.set()
        assert self.gate.wait(10)
        self.calls.append(sum(len(masks) for _, masks in items))
        self.images_per_call.append(len(items))
        time.sleep(self.delay)
        return [[Caption(f"{self.tag} {int(np.count_nonzero(m))} {query}", -0.1) for m in masks] for _, masks in items]

    def describe_video(self, frames, masks, *, query=None, **gen):
        self.calls.append(1)
        return Caption(f"{self.tag} {len(frames)} video", -0.2)


def served(model, version: str = "v1") -> SimpleNamespace:
    return SimpleNamespace(model=model, version=version, lock=threading.Lock())


@pytest.fixture
def make_scheduler():
    made: list[Scheduler] = []

    def build(get_model, observer=None, **settings) -> Scheduler:
        if not callable(get_model):
            fixed = get_model
            get_model = lambda: fixed  # noqa: E731
        scheduler = Scheduler(get_model, BatchingSettings(**settings), observer)
        made.append(scheduler)
        return scheduler

    yield build
    for scheduler in made:
        scheduler.close(drain=False, timeout=10)


def run_threads(count: int, target) -> list:
    """Run target(i) in `count` threads started together; their return values (or exceptions), in order."""
    barrier = threading.Barrier(count)
    out: list = [None] * count

    def one(i: int) -> None:
        barrier.wait()
        try:
            out[i] = target(i)
        except BaseException as error:  # noqa: BLE001 - returned to the test
            out[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return out


# ---------------------------------------------------------------------------------------------- with a fake model
def test_eight_submitters_share_model_calls_and_get_their_own_captions(make_scheduler):
    model = FakeCaptioner(delay=0.03)
    scheduler = make_scheduler(served(model), batch_max_wait_ms=20)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    results = run_threads(8, lambda i: scheduler.caption([Region(image, mask_of_area(10 + i))]))
    assert [area_of(r[0]) for r in results] == [10 + i for i in range(8)]
    assert sum(model.calls) == 8 and len(model.calls) < 8
    assert all(r[0].model_version == "v1" for r in results)


def test_regions_of_one_image_are_encoded_together_and_keep_their_order(make_scheduler):
    model = FakeCaptioner()
    scheduler = make_scheduler(served(model), batch_max_wait_ms=50)
    first, second = np.zeros((16, 32, 3), np.uint8), np.ones((16, 32, 3), np.uint8)
    works = [Region(first, mask_of_area(5)), Region(second, mask_of_area(6)), Region(first, mask_of_area(7)),
             Region(second, mask_of_area(8))]
    assert [area_of(c) for c in scheduler.caption(works)] == [5, 6, 7, 8]
    assert model.calls == [4] and model.images_per_call == [2]


def test_clicks_submitted_during_a_200_region_batch_finish_before_it(make_scheduler):
    model = FakeCaptioner(delay=0.02)
    scheduler = make_scheduler(served(model), batch_max_size=4, bulk_batch_max_size=8, batch_max_wait_ms=0)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    bulk = scheduler.submit([Region(image, mask_of_area(1 + i % 200)) for i in range(200)], kind=BATCH)
    assert model.started.wait(5)
    clicks = []
    for i in range(3):
        start = time.monotonic()
        caption = scheduler.caption([Region(image, mask_of_area(300 + i))], kind=INTERACTIVE)
        clicks.append((time.monotonic() - start, area_of(caption[0])))
        assert not bulk.done()
    assert [area for _, area in clicks] == [300, 301, 302]
    assert max(seconds for seconds, _ in clicks) < 25 * 0.02  # at most ~one batch, never the 25 batches of the bulk
    assert [area_of(c) for c in bulk.result(30)] == [1 + i % 200 for i in range(200)]
    assert sum(model.calls) == 203 and max(model.calls) == 8  # bulk calls of BULK_BATCH_MAX_SIZE


class SteppingLLM:
    """A scripted LLM taking `step_s` per call: token 3 for `steps` steps, then </s> (2)."""

    def __init__(self, steps: int, step_s: float) -> None:
        self.steps, self.step_s, self.calls = steps, step_s, 0

    def __call__(self, **kwargs):
        rows = (kwargs["inputs_embeds"] if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]).shape[0]
        time.sleep(self.step_s)
        logits = torch.zeros(rows, 1, 4)
        logits[:, 0, 3 if self.calls < self.steps else 2] = 5.0
        self.calls += 1
        return SimpleNamespace(logits=logits)


class DecodingFake(FakeCaptioner):
    """Decodes for real (dam_model.generation.generate over a slow scripted LLM) and logs call starts and ends."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.events: list[tuple[str, int]] = []

    def describe_batch(self, items, **gen):
        rows = sum(len(masks) for _, masks in items)
        self.events.append(("start", rows))
        generate(SteppingLLM(steps=30, step_s=0.01), torch.zeros(rows, 2, 4), torch.ones(rows, 2),
                 GenerationSettings(max_new_tokens=40), eos_token_id=2)
        self.events.append(("end", rows))
        return super().describe_batch(items, **gen)


def test_a_click_is_captioned_between_two_decode_steps_of_a_running_batch(make_scheduler):
    model = DecodingFake()
    scheduler = make_scheduler(served(model), batch_max_size=8, batch_max_wait_ms=0)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    bulk = scheduler.submit([Region(image, mask_of_area(1 + i)) for i in range(8)], kind=BATCH)
    while not model.events:
        time.sleep(0.005)
    click = scheduler.caption([Region(image, mask_of_area(99))])
    assert area_of(click[0]) == 99 and not bulk.done()  # served while the bulk batch was still decoding
    assert [area_of(c) for c in bulk.result(10)] == list(range(1, 9))
    assert model.events == [("start", 8), ("start", 1), ("end", 1), ("end", 8)]


def test_the_queue_bound_rejects_with_retry_after_and_every_submit_gets_an_answer(make_scheduler):
    model = FakeCaptioner(delay=0.001)
    metrics = SchedulerMetrics()
    scheduler = make_scheduler(served(model), metrics, batch_max_size=4, bulk_batch_max_size=4, queue_max_regions=8,
                               batch_max_wait_ms=0)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    model.gate.clear()  # the model is busy: work piles up
    outcomes = run_threads(24, lambda i: scheduler.submit([Region(image, mask_of_area(1 + i))],
                                                          kind=INTERACTIVE if i % 2 else BATCH))
    tickets = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert all(isinstance(e, Overloaded) and e.status == 503 and e.retry_after >= 1 for e in refused), refused
    assert 8 <= len(tickets) <= 8 + 4 and len(tickets) + len(refused) == 24  # the bound (+ one batch taken out)
    model.gate.set()
    for i, outcome in enumerate(outcomes):  # every accepted submit gets its own caption
        if not isinstance(outcome, Exception):
            assert area_of(outcome.wait()[0]) == 1 + i
    assert sum(model.calls) == len(tickets)
    rendered = "\n".join(line for m in metrics.metrics for line in m.render())
    assert 'reason="queue_full"}' in rendered
    assert 'dam_backend_batch_regions_bucket{kind="batch",le="4"}' in rendered
    with pytest.raises(TooManyRegions, match="QUEUE_MAX_REGIONS=8") as too_many:
        scheduler.submit([Region(image, mask_of_area(1))] * 9, kind=BATCH)
    assert too_many.value.status == 413


def test_a_stream_of_clicks_slows_bulk_work_but_never_starves_it(make_scheduler):
    """A click arrives during every model call, so one always waits: batch work still gets every
    FAIR_SHARE_EVERY+1-th call."""
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    log: list[str] = []

    class Busy(FakeCaptioner):
        def describe_batch(self, items, **gen):
            areas = [int(np.count_nonzero(m)) for _, masks in items for m in masks]
            log.append("bulk" if areas[0] < 100 else "click")
            if len(log) < 60:  # the next click is already waiting when this call ends
                scheduler.submit([Region(image, mask_of_area(100 + len(log)))])
            return super().describe_batch(items, **gen)

    model = Busy(delay=0.001)
    scheduler = make_scheduler(served(model), batch_max_size=1, bulk_batch_max_size=4, batch_max_wait_ms=0)
    model.gate.clear()  # the first click's call waits until the bulk work is queued too
    first_click = scheduler.submit([Region(image, mask_of_area(100))])
    bulk = scheduler.submit([Region(image, mask_of_area(1 + i)) for i in range(8)], kind=BATCH)
    model.gate.set()
    assert [area_of(c) for c in bulk.result(10)] == list(range(1, 9)) and first_click.result(10)
    assert log.index("bulk") <= FAIR_SHARE_EVERY + 1 and log.count("bulk") == 2
    assert log[: log.index("bulk")].count("click") >= FAIR_SHARE_EVERY  # clicks still went first


def test_an_unusable_region_fails_only_its_own_request_when_calls_are_shared(make_scheduler):
    attempts: list[int] = []

    class Picky(FakeCaptioner):
        def describe_batch(self, items, **gen):
            attempts.append(sum(len(masks) for _, masks in items))
            if any(np.count_nonzero(m) == 13 for _, masks in items for m in masks):
                raise ValueError("mask 13 is unusable")
            return super().describe_batch(items, **gen)

    model = Picky(delay=0.02)
    scheduler = make_scheduler(served(model), batch_max_wait_ms=50)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    outcomes = run_threads(4, lambda i: scheduler.caption([Region(image, mask_of_area(13 if i == 2 else 20 + i))]))
    assert isinstance(outcomes[2], ValueError)
    assert [area_of(outcomes[i][0]) for i in (0, 1, 3)] == [20, 21, 23]
    assert attempts == [4, 1, 1, 1, 1]  # the shared call failed; each request was then rerun alone


def test_no_worker_thread_until_the_first_submission(make_scheduler):
    scheduler = make_scheduler(served(FakeCaptioner()))
    assert scheduler._worker is None
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    assert area_of(scheduler.caption([Region(image, mask_of_area(3))])[0]) == 3 and scheduler._worker.is_alive()


def test_expired_and_cancelled_work_is_dropped_without_a_model_call(make_scheduler):
    model = FakeCaptioner()
    scheduler = make_scheduler(served(model), batch_max_size=2, batch_max_wait_ms=0)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    model.gate.clear()
    first = scheduler.submit([Region(image, mask_of_area(1))])
    assert model.started.wait(5)  # the model is now busy with `first`
    expiring = scheduler.submit([Region(image, mask_of_area(2)), Region(image, mask_of_area(3))], deadline_s=0.05)
    cancelled = scheduler.submit([Region(image, mask_of_area(4))], kind=BATCH)
    kept = scheduler.submit([Region(image, mask_of_area(5))], kind=BATCH)
    assert cancelled.cancel()  # the client went away
    time.sleep(0.1)
    model.gate.set()
    assert area_of(first.wait()[0]) == 1 and area_of(kept.wait()[0]) == 5
    with pytest.raises(DeadlineExceeded, match="deadline") as late:
        expiring.wait()
    assert late.value.status == 504
    assert model.calls == [1, 1]  # regions 2, 3 and 4 never reached the model


def test_waiting_past_the_deadline_raises_and_drops_the_rest(make_scheduler):
    model = FakeCaptioner(delay=0.05)
    scheduler = make_scheduler(served(model), bulk_batch_max_size=1, batch_max_wait_ms=0)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    ticket = scheduler.submit([Region(image, mask_of_area(1 + i)) for i in range(20)], kind=BATCH, deadline_s=0.12)
    with pytest.raises(DeadlineExceeded):
        ticket.wait()
    time.sleep(0.15)
    assert 1 <= len(model.calls) <= 4  # the remaining regions were dropped unrun
    assert area_of(scheduler.caption([Region(image, mask_of_area(7))])[0]) == 7  # and the worker goes on


def test_swapping_the_model_between_batches_fails_nothing(make_scheduler):
    current = {"served": served(FakeCaptioner("v1", delay=0.005), "v1")}
    scheduler = make_scheduler(lambda: current["served"], batch_max_size=4, batch_max_wait_ms=1)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    stop = threading.Event()
    written: set[str] = set()

    def promote() -> None:
        for version in ("v1", "v2", "v3", "v4"):
            if version != "v1":
                current["served"] = served(FakeCaptioner(version, delay=0.005), version)
            deadline = time.monotonic() + 10
            while version not in written and time.monotonic() < deadline:  # each version serves before the next
                time.sleep(0.005)
            time.sleep(0.02)
        stop.set()

    swapper = threading.Thread(target=promote)
    swapper.start()

    def annotate(i: int) -> list:
        got = []
        while not stop.is_set():
            captions = scheduler.caption([Region(image, mask_of_area(1 + i)), Region(image, mask_of_area(20 + i))])
            assert [area_of(c) for c in captions] == [1 + i, 20 + i]
            assert all(c.caption.text.startswith(c.model_version) for c in captions)  # the version that wrote it
            got += [c.model_version for c in captions]
            written.update(c.model_version for c in captions)
        return got

    results = run_threads(6, annotate)
    swapper.join()
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert {"v1", "v4"} <= {v for r in results for v in r}


def test_a_model_error_fails_only_its_batch(make_scheduler):
    class Failing(FakeCaptioner):
        def describe_batch(self, items, **gen):
            if any(np.count_nonzero(m) == 13 for _, masks in items for m in masks):
                raise RuntimeError("CUDA out of memory")
            return super().describe_batch(items, **gen)

    scheduler = make_scheduler(served(Failing()), batch_max_wait_ms=0)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="out of memory"):
        scheduler.caption([Region(image, mask_of_area(13))])
    assert area_of(scheduler.caption([Region(image, mask_of_area(12))])[0]) == 12


def test_close_drains_or_fails_with_a_clear_error(make_scheduler):
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    model = FakeCaptioner()
    draining = make_scheduler(served(model), bulk_batch_max_size=1, batch_max_wait_ms=0)
    tickets = [draining.submit([Region(image, mask_of_area(1 + i))], kind=BATCH) for i in range(5)]
    draining.close(drain=True)
    assert [area_of(t.result(0)[0]) for t in tickets] == [1, 2, 3, 4, 5]
    with pytest.raises(SchedulerClosed, match="shutting down") as closed:
        draining.submit([Region(image, mask_of_area(1))])
    assert closed.value.status == 503

    blocked = FakeCaptioner()
    blocked.gate.clear()
    failing = make_scheduler(served(blocked), bulk_batch_max_size=1, batch_max_wait_ms=0)
    tickets = [failing.submit([Region(image, mask_of_area(1 + i))], kind=BATCH) for i in range(5)]
    assert blocked.started.wait(5)
    failing.close(drain=False, timeout=0.1)
    blocked.gate.set()
    assert area_of(tickets[0].result(5)[0]) == 1  # the running batch completes
    for ticket in tickets[1:]:
        with pytest.raises(SchedulerClosed, match="shutting down"):
            ticket.result(5)


def test_seeded_sampling_requests_never_share_a_call_and_tracks_run_alone(make_scheduler):
    model = FakeCaptioner(delay=0.02)
    scheduler = make_scheduler(served(model), batch_max_wait_ms=30)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    sampled = Generation(temperature=0.2, seed=3)
    results = run_threads(3, lambda i: scheduler.caption([Region(image, mask_of_area(1 + i))], generation=sampled))
    assert sorted(area_of(r[0]) for r in results) == [1, 2, 3] and model.calls == [1, 1, 1]
    frames = [image] * 8
    track = scheduler.caption([Track(frames, [mask_of_area(4)] * 8), Track(frames, [mask_of_area(4)] * 8)], kind=BATCH)
    assert [c.caption.text for c in track] == ["v1 8 video"] * 2 and model.calls[3:] == [1, 1]


def test_settings_validate_and_read_one_env_var_per_field():
    settings = BatchingSettings.from_env({"BATCH_MAX_SIZE": "16", "BULK_BATCH_MAX_SIZE": "48", "BATCH_MAX_WAIT_MS": "2.5",
                                          "QUEUE_MAX_REGIONS": "64", "INTERACTIVE_DEADLINE_S": "10",
                                          "BATCH_DEADLINE_S": "90"})
    assert (settings.batch_max_size, settings.bulk_batch_max_size) == (16, 48)
    assert (settings.batch_max_wait_ms, settings.queue_max_regions) == (2.5, 64)
    assert (settings.interactive_deadline_s, settings.batch_deadline_s) == (10.0, 90.0)
    assert BatchingSettings.from_env({}) == BatchingSettings()
    with pytest.raises(ValueError, match="BATCH_MAX_SIZE='eight'"):
        BatchingSettings.from_env({"BATCH_MAX_SIZE": "eight"})
    with pytest.raises(ValueError, match="QUEUE_MAX_REGIONS must be >= BATCH_MAX_SIZE"):
        BatchingSettings(batch_max_size=16, queue_max_regions=8)
    with pytest.raises(ValueError, match="BATCH_DEADLINE_S must be > 0"):
        BatchingSettings(batch_deadline_s=0)


def test_scheduler_metrics_render_in_the_registry_format():
    metrics = SchedulerMetrics()
    metrics.queue_depth(INTERACTIVE, 3)
    metrics.batch_formed(BATCH, 8, [0.01] * 8)
    metrics.completed(INTERACTIVE, 0.2)
    metrics.dropped(BATCH, "deadline", 2)
    registry = Registry()
    text = registry.render() + "\n".join(line for m in metrics.metrics for line in m.render())
    for needle in ('dam_backend_queue_regions{kind="interactive"} 3', 'dam_backend_queue_wait_seconds_count{kind="batch"} 8',
                   'dam_backend_caption_seconds_count{kind="interactive"} 1',
                   'dam_backend_dropped_regions_total{kind="batch",reason="deadline"} 2'):
        assert needle in text


# ---------------------------------------------------------------------------------------------- with the real tiny DAM
class Recording:
    """Delegates to the real model; logs each describe_batch start and end (regions)."""

    def __init__(self, model) -> None:
        self.model, self.events = model, []

    def describe_batch(self, items, **gen):
        rows = sum(len(masks) for _, masks in items)
        self.events.append(("start", rows))
        try:
            return self.model.describe_batch(items, **gen)
        finally:
            self.events.append(("end", rows))


def test_real_model_eight_submitters_fewer_calls_same_captions_as_alone(make_scheduler, trained_dam, regions):
    gen = Generation(max_new_tokens=48)
    alone = [trained_dam.describe(image, [mask], **gen.kwargs())[0] for image, mask in regions[:8]]
    model = Recording(trained_dam)
    scheduler = make_scheduler(served(model, "tiny"), batch_max_size=8, batch_max_wait_ms=50)
    results = run_threads(8, lambda i: scheduler.caption([Region(*regions[i])], generation=gen))
    calls = [rows for event, rows in model.events if event == "start"]
    assert sum(calls) == 8 and len(calls) < 8
    assert [r[0].caption.token_ids for r in results] == [c.token_ids for c in alone]
    assert [r[0].caption.text for r in results] == [c.text for c in alone]


def test_real_model_click_during_bulk_work_is_served_between_steps_unchanged(make_scheduler, trained_dam, regions):
    gen = Generation(max_new_tokens=48)
    alone = [trained_dam.describe(image, [mask], **gen.kwargs())[0].token_ids for image, mask in regions[:12]]
    model = Recording(trained_dam)
    scheduler = make_scheduler(served(model, "tiny"), bulk_batch_max_size=8, batch_max_wait_ms=0)
    bulk = scheduler.submit([Region(*r) for r in regions[:11]], kind=BATCH, generation=gen)
    while not model.events:
        time.sleep(0.002)
    click = scheduler.caption([Region(*regions[11])], generation=gen)
    assert click[0].caption.token_ids == alone[11]
    assert not bulk.done()
    assert [c.caption.token_ids for c in bulk.result(120)] == alone[:11]  # the paused batch resumed unchanged
    assert model.events[:3] == [("start", 8), ("start", 1), ("end", 1)]
