"""The batching scheduler's vocabulary: kinds, settings, errors, work items, tickets and metrics hooks.

Split from backend/batching.py (the Scheduler) so that backend/sessions.py (continuous batching) shares them
without an import cycle; backend.batching re-exports every name.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np

from ls_io.media import parse_env_value

from .errors import BackendError

INTERACTIVE, BATCH = "interactive", "batch"
KINDS = (INTERACTIVE, BATCH)
FAIR_SHARE_EVERY = 8  # click batches in a row while batch work waits, before one batch-kind call


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class BatchingSettings:
    """Scheduler settings. Field name == environment variable name, upper-cased (as backend/settings.py)."""

    batch_max_size: int = 8
    """Most regions of interactive requests (clicks) decoded at once (in one model call, or in flight in a
    continuous-batching session): small keeps each click fast."""
    bulk_batch_max_size: int = 16
    """Most regions of batch requests (Retrieve predictions) decoded at once. Without continuous batching a click
    arriving meanwhile waits for its image encoding and prefill, then one decode step: larger is more efficient,
    smaller keeps clicks fast."""
    continuous_batching: bool = True
    """Regions join the running decode between two steps and leave when their caption ends (backend/sessions.py),
    for models that support it (DAM, greedy). false: one model call per batch."""
    batch_max_wait_ms: float = 2.0
    """How long an idle model waits after a region arrives for others to join its call (ms). 0: never wait."""
    queue_max_regions: int = 512
    """Regions allowed to wait; beyond, /predict answers 503 with Retry-After. A single request with more regions than
    this is refused with 413 (split the task)."""
    interactive_deadline_s: float = 100.0
    """Seconds a click may wait for its captions (Label Studio's default ML_TIMEOUT_PREDICT); then its work is
    dropped and the request gets 504."""
    batch_deadline_s: float = 290.0
    """Seconds a batch request (Retrieve predictions, bulk) may take: below ML_TIMEOUT_PREDICT (300 in this
    project's compose file; after it nobody reads the answer) and gunicorn's TIMEOUT."""

    def __post_init__(self) -> None:
        problems = {"BATCH_MAX_SIZE must be >= 1": self.batch_max_size < 1,
                    "BATCH_MAX_WAIT_MS must be in [0, 1000]": not 0 <= self.batch_max_wait_ms <= 1000,
                    "BULK_BATCH_MAX_SIZE must be >= 1": self.bulk_batch_max_size < 1,
                    "QUEUE_MAX_REGIONS must be >= BATCH_MAX_SIZE": self.queue_max_regions < self.batch_max_size,
                    "INTERACTIVE_DEADLINE_S must be > 0": not self.interactive_deadline_s > 0,
                    "BATCH_DEADLINE_S must be > 0": not self.batch_deadline_s > 0}
        wrong = [problem for problem, failed in problems.items() if failed]
        if wrong:
            raise ValueError(f"{'; '.join(wrong)} (got {self})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "BatchingSettings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in (f for f in fields(cls) if env.get(f.name.upper()) is not None):
            raw = env[f.name.upper()]
            try:
                if f.type == "bool" and not raw.strip():  # an empty switch must not turn batching off: say so
                    raise ValueError("not a boolean (true/false)")
                values[f.name] = parse_env_value(f.type, raw)
            except ValueError as exc:
                raise ValueError(f"{f.name.upper()}={raw!r}: {exc}") from None
        return cls(**values)


# ------------------------------------------------------------------------------------------------ errors
# A full queue raises backend.errors.Overloaded (503 + Retry-After), the error the rest of the server uses.
class TooManyRegions(BackendError):
    """One submission holds more regions than the whole queue."""
    status = 413
    kind = "bad_request"


class DeadlineExceeded(BackendError):
    """The work was not done before its deadline (or its client went away); it was dropped."""
    status = 504
    kind = "overloaded"


class SchedulerClosed(BackendError):
    """The server is shutting down."""
    status = 503
    kind = "model_unavailable"
    retry_after = 5


# ------------------------------------------------------------------------------------------------ work
@dataclass(frozen=True, eq=False)
class Region:
    """One region to caption: image HxWx3 uint8 (share one array object for the regions of one image: they are
    encoded together), mask HxW, query None = the model's default; prepared: the region's model inputs made ahead
    by the caller (`prepare_regions` row: pixel_values, is_focal), taken by continuous-batching sessions."""
    image: np.ndarray
    mask: np.ndarray
    query: str | None = None
    prepared: Any = None


@dataclass(frozen=True, eq=False)
class Track:
    """One video track: the sampled frames and their masks (see DescribeAnythingModel.describe_video)."""
    frames: Sequence[np.ndarray]
    masks: Sequence[np.ndarray]
    query: str | None = None


@dataclass(frozen=True)
class Generation:
    """Decoding options of a submission (greedy by default); part of the batching key."""
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 0.5
    seed: int | None = None

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Captioned:
    """A caption (dam_model.generation.Caption) and the version of the model that wrote it."""
    caption: Any
    model_version: str


class Ticket(Future):
    """Future of one submission: one Captioned per work, in order. cancel() drops its unrun work (client gone)."""

    def __init__(self, kind: str, deadline: float, size: int, submitted_at: float) -> None:
        super().__init__()
        self.kind, self.deadline, self.submitted_at = kind, deadline, submitted_at
        self.captions: list[Captioned | None] = [None] * size
        self.remaining = size

    def wait(self) -> list[Captioned]:
        """The captions, or DeadlineExceeded once the deadline passes (the remaining work is then dropped)."""
        try:
            return self.result(timeout=max(0.0, self.deadline - time.monotonic()))
        except TimeoutError:
            if self.cancel():
                raise DeadlineExceeded(f"{self.kind} request not captioned within its deadline") from None
            return self.result()  # finished as the wait ended

    def _fail(self, error: BaseException) -> None:
        if not self.done():
            with contextlib.suppress(InvalidStateError):  # cancelled or resolved meanwhile
                self.set_exception(error)


@dataclass(eq=False)
class _Entry:
    ticket: Ticket
    index: int
    work: Region | Track
    key: tuple
    enqueued_at: float
    prepare_tried: bool = False  # the prepare-ahead thread took it (made its inputs, or left them to the session)


# ------------------------------------------------------------------------------------------------ metrics hooks
class SchedulerObserver:
    """Metrics hooks, no-ops here (backend/batching_metrics.py records them); called from any thread: keep cheap."""

    def queue_depth(self, kind: str, regions: int) -> None: ...
    def batch_formed(self, kind: str, size: int, waits_s: Sequence[float]) -> None: ...
    def decode_step(self, rows: int) -> None: ...
    def completed(self, kind: str, latency_s: float) -> None: ...
    def rejected(self, kind: str, reason: str) -> None: ...
    def dropped(self, kind: str, reason: str, regions: int) -> None: ...
