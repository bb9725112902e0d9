"""backend.metrics types for the batching scheduler's hooks (backend/batching.py `SchedulerObserver`).

Wiring: `observer = SchedulerMetrics()`, `Scheduler(..., observer=observer)`, and render `observer.metrics` with the
app's Registry (append them to its metric list) so GET /metrics shows queue depth, batch sizes, waits, latency by kind,
refused and dropped work.
"""
from __future__ import annotations

from typing import Sequence

from .batching import SchedulerObserver
from .metrics import Counter, Gauge, Histogram


class SchedulerMetrics(SchedulerObserver):
    """The hooks as backend.metrics types; add `.metrics` to the app's Registry so /metrics renders them."""

    def __init__(self) -> None:
        self.depth = Gauge("dam_backend_queue_regions", "Regions waiting for the model, by kind.", ("kind",))
        self.batch_size = Histogram("dam_backend_batch_regions", "Regions per model call (with continuous batching:"
                                    " per admission into the running decode), by kind.", ("kind",),
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.decode_rows = Histogram("dam_backend_decode_rows", "Rows decoded together per step of a continuous-"
                                     "batching session.", buckets=(1, 2, 4, 8, 16, 24, 32))
        self.wait = Histogram("dam_backend_queue_wait_seconds", "Time a region waited for its batch.", ("kind",))
        self.latency = Histogram("dam_backend_caption_seconds", "Submit to captions, by kind.", ("kind",))
        self.rejected_total = Counter("dam_backend_rejected_total", "Submissions refused, by kind and reason.",
                                      ("kind", "reason"))
        self.dropped_total = Counter("dam_backend_dropped_regions_total", "Regions dropped unrun (deadline, "
                                     "cancelled, shutdown), by kind and reason.", ("kind", "reason"))
        self.metrics = [self.depth, self.batch_size, self.decode_rows, self.wait, self.latency, self.rejected_total,
                        self.dropped_total]

    def queue_depth(self, kind: str, regions: int) -> None:
        self.depth.set(regions, kind=kind)

    def batch_formed(self, kind: str, size: int, waits_s: Sequence[float]) -> None:
        self.batch_size.observe(size, kind=kind)
        for waited in waits_s:
            self.wait.observe(waited, kind=kind)

    def decode_step(self, rows: int) -> None:
        self.decode_rows.observe(rows)

    def completed(self, kind: str, latency_s: float) -> None:
        self.latency.observe(latency_s, kind=kind)

    def rejected(self, kind: str, reason: str) -> None:
        self.rejected_total.inc(kind=kind, reason=reason)

    def dropped(self, kind: str, reason: str, regions: int) -> None:
        self.dropped_total.inc(regions, kind=kind, reason=reason)
