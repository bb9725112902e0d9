"""Continuous batching in the scheduler: regions join the running decode between two steps (dam_model/continuous.py).

Used when the served model has `caption_session` (DescribeAnythingModel) and the work is greedy image regions; other
work (video tracks, seeded sampling, models without sessions) takes backend/batching.py's one-call-per-batch path.
The batch the scheduler formed opens a session. After every decode step the session:
- hands out the captions of the rows that ended (a request answers when its last region ends, not when the
  longest caption of its batch does);
- drops the rows whose request was cancelled or ran past its deadline;
- admits waiting regions with the same generation settings, clicks first: at most BATCH_MAX_SIZE click rows, and
  BULK_BATCH_MAX_SIZE bulk rows, or BULK_BESIDE_CLICKS while clicks decode, bulk rows joining at most
  BULK_ADMIT_ROWS at a step (each admission pauses every row for its encoding and prefill: a click must not wait
  out waves of bulk admissions), so a click finds a place at the
  next step even beside bulk work, and bulk work advances at every step however many clicks come (no starvation);
  a lone click arriving while other clicks decode waits up to ADMIT_TOGETHER_S for a second one to share its
  admission (encoding and prefill cost about the same for 1 or 2 regions; the decode goes on meanwhile);
- admits nothing once another model version is served: it drains, and the next session opens on the new model.
It ends when no row is left. An error while admitting fails only the requests being admitted (each is retried
alone when several were); an error in a step fails the rows in flight.
Why: with a call per batch, 8 annotators' clicks formed batches of ~3.5 regions (measured on the concurrent bench:
each call waited for its longest caption while the other clicks queued behind it).
"""
from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from .batching_types import BATCH, INTERACTIVE, Region, _Entry

if TYPE_CHECKING:  # type hints only: backend/batching.py imports this module
    from .batching import Scheduler

ADMIT_TOGETHER_S = 0.010  # a lone click arriving during a decode waits this long for another to share its admission
BULK_BESIDE_CLICKS = 2  # bulk rows kept decoding while clicks are in flight (bulk work never stops)
BULK_ADMIT_ROWS = 4  # bulk rows admitted at one step at most: a click arriving meanwhile waits for one such pause


def session_capable(model: Any, key: tuple) -> bool:
    """Whether work of this batching key can be decoded in a session of this model."""
    return callable(getattr(model, "caption_session", None)) and joins(key, key)


def joins(key: tuple, session_key: tuple) -> bool:
    """Whether work with `key` can join a session opened for `session_key`: greedy image regions with the same
    generation settings, not isolated (the query may differ: each row carries its own prompt)."""
    kind, _, generation, isolated = key
    return (kind == Region.__name__ and isolated is None and generation.temperature == 0
            and generation == session_key[2])


def run_session(scheduler: "Scheduler", batch: list[_Entry], served: Any) -> None:
    """Decode `batch` and whatever joins it until no row is left (see the module docstring)."""
    key, settings = batch[0].key, scheduler.settings
    session = served.model.caption_session(max_new_tokens=key[2].max_new_tokens)
    lock = getattr(served, "lock", None) or contextlib.nullcontext()
    version = str(served.version)

    def deliver(finished: list) -> None:
        done_at = time.monotonic()
        for entry, caption in finished:
            scheduler.resolve(entry, caption, version, done_at)

    def admit(entries: list[_Entry]) -> None:
        try:
            with lock:
                finished = session.admit([(e.work.image, e.work.mask, e.work.query, e.work.prepared)
                                          for e in entries], entries)
        except BaseException as error:  # noqa: BLE001 - every request gets an answer; only the culprit fails
            per_ticket: dict[int, list[_Entry]] = {}
            for entry in entries:
                per_ticket.setdefault(id(entry.ticket), []).append(entry)
            if len(per_ticket) > 1:
                for group in per_ticket.values():
                    admit(group)
                return
            for entry in entries:
                entry.ticket._fail(error)
            return
        deliver(finished)

    admit(batch)
    last_delivery = time.monotonic()
    while session.rows:
        scheduler.observer.decode_step(session.rows)
        try:
            with lock:
                finished = session.step()
        except BaseException as error:  # noqa: BLE001 - the rows in flight fail; the worker goes on
            for entry in session.handles:
                entry.ticket._fail(error)
            return
        if finished:
            now = time.monotonic()
            scheduler.measured(len(finished), now - last_delivery)  # throughput, for Retry-After
            last_delivery = now
        deliver(finished)
        gone = [entry for entry in session.handles if entry.ticket.done()]
        if gone:
            session.drop(gone)
            for entry in gone:
                reason = "cancelled" if entry.ticket.cancelled() else "failed"  # (wait() cancels at its deadline)
                scheduler.observer.dropped(entry.ticket.kind, reason, 1)
        if not scheduler.serves(served):
            continue  # a promotion: drain, the next session opens on the new model
        kinds = [entry.ticket.kind for entry in session.handles]
        together = ADMIT_TOGETHER_S if INTERACTIVE in kinds else 0.0  # beside bulk work only: no one to wait for
        clicks = scheduler.take_rows(key, {INTERACTIVE: settings.batch_max_size - kinds.count(INTERACTIVE)}, together)
        # While clicks decode, bulk work keeps BULK_BESIDE_CLICKS rows going instead of BULK_BATCH_MAX_SIZE: each
        # admission pauses every row for its encoding and prefill, and a click would wait out a wave of them.
        bulk_cap = settings.bulk_batch_max_size if not clicks and INTERACTIVE not in kinds else BULK_BESIDE_CLICKS
        room = min(bulk_cap, settings.bulk_batch_max_size) - kinds.count(BATCH)
        bulk = scheduler.take_rows(key, {BATCH: min(room, BULK_ADMIT_ROWS)})
        if clicks or bulk:
            admit(clicks + bulk)
