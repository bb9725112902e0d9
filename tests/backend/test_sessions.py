"""Continuous batching in the scheduler (backend/sessions.py) with the real tiny DAM: concurrent clicks share decode
steps and get the captions they get alone; a click joins a running bulk decode and ends first; a promotion drains
the session onto the new model; an unusable region fails only its request; a cancelled request leaves the decode."""
from __future__ import annotations

import os
import threading
import types
import time
from types import SimpleNamespace

import numpy as np
import pytest

from backend.batching import BATCH, PREPARE_NICENESS, BatchingSettings, Generation, Region, Scheduler

GEN = Generation(max_new_tokens=40)


class Counting:
    """The real model, counting decode steps and admitted rows of its sessions (and never called per batch)."""

    def __init__(self, model) -> None:
        self.model, self.steps, self.admitted, self.rows_per_step = model, 0, [], []
        self.rows_at_admit: list[int] = []
        self.ready = 0  # admitted regions whose inputs were made beforehand
        self.encoded = 0  # ... and whose visual tokens this model made beforehand

    def caption_session(self, max_new_tokens: int):
        session = self.model.caption_session(max_new_tokens)
        counter = self

        class Recorded:
            rows = property(lambda _: session.rows)
            handles = property(lambda _: session.handles)

            def admit(self, regions, handles):
                counter.admitted.append(len(regions))
                made = [region[3] for region in regions if len(region) > 3 and region[3] is not None]
                counter.ready += len(made)
                counter.encoded += sum(1 for m in made if getattr(m, "encoded_by", None) is counter.model)
                counter.rows_at_admit.append(session.rows)
                return session.admit(regions, handles)

            def step(self):
                counter.steps += 1
                counter.rows_per_step.append(session.rows)
                return session.step()

            def drop(self, handles):
                session.drop(handles)

        return Recorded()


class Preparing(Counting):
    """Counting, with prepare_regions, recording the thread of every call (the scheduler's prepare-ahead thread)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.prepared_in: list[tuple[str, int]] = []
        self.niceness: list[int] = []  # of the thread of each prepare_regions call
        self.encoded_in: list[str] = []

        def encode_prepared(inner, pixel_values, is_focal):  # bound to the real model: its tokens are its own
            self.encoded_in.append(threading.current_thread().name)
            return type(inner).encode_prepared(inner, pixel_values, is_focal)

        self.encode_prepared = types.MethodType(encode_prepared, model)

    def prepare_regions(self, image, masks, shared_view=None):
        self.prepared_in.append((threading.current_thread().name, len(masks)))
        self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return self.model.prepare_regions(image, masks, shared_view)


def served(model, version: str) -> SimpleNamespace:
    return SimpleNamespace(model=model, version=version, lock=threading.Lock())


def serving(model, version: str = "v1"):
    """get_model for a scheduler that serves one model: the same object each call (a new one would read as a
    promotion, and the session would drain instead of admitting)."""
    one = served(model, version)
    return lambda: one


@pytest.fixture(scope="module")
def alone(trained_dam, regions):
    return [trained_dam.describe(image, [mask], **GEN.kwargs())[0] for image, mask in regions]


@pytest.fixture
def make_scheduler():
    made: list[Scheduler] = []

    def build(get_model, **settings) -> Scheduler:
        made.append(Scheduler(get_model, BatchingSettings(**settings)))
        return made[-1]

    yield build
    for scheduler in made:
        scheduler.close(drain=False, timeout=30)


def caption_in_threads(scheduler, works: list, **submit) -> list:
    out: list = [None] * len(works)
    barrier = threading.Barrier(len(works))

    def one(i: int) -> None:
        barrier.wait()
        try:
            out[i] = scheduler.caption([works[i]], generation=GEN, **submit)[0]
        except BaseException as error:  # noqa: BLE001 - returned to the test
            out[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(works))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return out


def test_concurrent_clicks_share_decode_steps_and_get_their_captions_alone(make_scheduler, trained_dam, regions, alone):
    model = Counting(trained_dam)
    scheduler = make_scheduler(serving(model), batch_max_wait_ms=20)
    got = caption_in_threads(scheduler, [Region(*r) for r in regions[:8]])
    assert [c.caption.token_ids for c in got] == [c.token_ids for c in alone[:8]]
    assert [c.caption.text for c in got] == [c.text for c in alone[:8]]
    assert sum(model.admitted) == 8 and max(model.rows_per_step) >= 2  # rows decoded side by side
    assert model.steps < sum(len(c.token_ids) + 1 for c in alone[:8])  # fewer steps than one by one


def test_a_click_joins_a_running_bulk_decode_and_ends_first(make_scheduler, trained_dam, regions, alone):
    model = Counting(trained_dam)
    scheduler = make_scheduler(serving(model), bulk_batch_max_size=4, batch_max_wait_ms=0)
    bulk = scheduler.submit([Region(*r) for r in regions[:12]], kind=BATCH, generation=GEN)
    while not model.steps:
        time.sleep(0.002)
    click = scheduler.caption([Region(*regions[12])], generation=GEN)
    assert click[0].caption.token_ids == alone[12].token_ids and not bulk.done()
    assert [c.caption.token_ids for c in bulk.result(300)] == [c.token_ids for c in alone[:12]]
    assert max(model.rows_per_step) <= 4 + 8  # BULK_BATCH_MAX_SIZE bulk rows beside BATCH_MAX_SIZE click rows
    assert model.admitted[:2] == [4, 1] and max(model.rows_per_step) == 5  # the click joined the running decode


def test_a_promotion_drains_the_session_onto_the_new_model(make_scheduler, trained_dam, regions, alone):
    models = {"v1": served(Counting(trained_dam), "v1"), "v2": served(Counting(trained_dam), "v2")}
    current = {"name": "v1"}
    scheduler = make_scheduler(lambda: models[current["name"]], batch_max_wait_ms=0)
    first = scheduler.submit([Region(*regions[0])], generation=GEN)
    while not models["v1"].model.steps:
        time.sleep(0.002)
    current["name"] = "v2"
    second = scheduler.submit([Region(*regions[1])], generation=GEN)
    assert first.result(300)[0].model_version == "v1" and second.result(300)[0].model_version == "v2"
    assert models["v1"].model.admitted == [1] and models["v2"].model.admitted == [1]
    assert second.result()[0].caption.token_ids == alone[1].token_ids


def test_an_unusable_region_fails_only_its_own_request(make_scheduler, trained_dam, regions, alone):
    scheduler = make_scheduler(serving(trained_dam), batch_max_wait_ms=50)
    image, mask = regions[0]
    works = [Region(image, mask), Region(image, np.zeros((3, 3), bool)), Region(*regions[2])]
    got = caption_in_threads(scheduler, works)
    assert isinstance(got[1], ValueError) and "differs from image size" in str(got[1])
    assert [got[0].caption.token_ids, got[2].caption.token_ids] == [alone[0].token_ids, alone[2].token_ids]


def test_a_cancelled_request_leaves_the_decode(make_scheduler, trained_dam, regions, alone):
    model = Counting(trained_dam)
    scheduler = make_scheduler(serving(model), batch_max_wait_ms=0)
    ticket = scheduler.submit([Region(*regions[3])], generation=GEN)
    while not model.steps:
        time.sleep(0.001)
    assert ticket.cancel()  # the client went away
    at_cancel = model.steps
    time.sleep(1.0)
    assert model.steps <= at_cancel + 2 < len(alone[3].token_ids)  # dropped after the step running at the time
    assert scheduler.caption([Region(*regions[4])], generation=GEN)[0].caption.token_ids == alone[4].token_ids


def test_inputs_prepared_in_the_request_thread_give_the_same_caption(make_scheduler, trained_dam, regions, alone):
    scheduler = make_scheduler(serving(trained_dam), batch_max_wait_ms=0)
    image, mask = regions[5]
    batch = trained_dam.prepare_regions(image, [mask])
    ready = Region(image, mask, None, (batch.pixel_values[0], batch.is_focal[0]))
    other_size = Region(image, mask, None, (batch.pixel_values[0][:, :8, :8], batch.is_focal[0]))  # e.g. a swap
    got = [scheduler.caption([work], generation=GEN)[0].caption.token_ids for work in (ready, other_size)]
    assert got == [alone[5].token_ids] * 2


def test_bulk_regions_are_prepared_ahead_off_the_model_thread(make_scheduler, trained_dam, regions, alone):
    model = Preparing(trained_dam)
    scheduler = make_scheduler(serving(model), batch_max_wait_ms=0, bulk_batch_max_size=4)
    good = scheduler.submit([Region(*regions[i]) for i in range(12)], kind=BATCH, generation=GEN)
    bad = scheduler.submit([Region(regions[0][0], np.zeros((3, 3), bool))], kind=BATCH, generation=GEN)
    assert [c.caption.token_ids for c in good.wait()] == [alone[i].token_ids for i in range(12)]
    with pytest.raises(ValueError, match="differs from image size"):  # its preparation failed: the session's did too
        bad.wait()
    assert model.prepared_in and {name for name, _ in model.prepared_in} == {"dam-prepare"}
    assert model.encoded_in and set(model.encoded_in) == {"dam-prepare"}  # the vision passes ran there too
    assert model.encoded == model.ready >= 4  # at least one admission pause without preparation (the first batch has none made)
    # bulk work at the lowest priority (Linux, per thread): a click's request thread takes a core first; others unchanged
    assert set(model.niceness) == {PREPARE_NICENESS}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < PREPARE_NICENESS
