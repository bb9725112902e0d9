"""The learning-from-edits KPIs the nightly publishes beside the pointer (``MODELS_ROOT/kpis.json``), served at
``GET /kpis`` and as gauges in /metrics.

The nightly (dam_loop.steps.nightly_kpis) compares, for every corrected annotation, the caption the model predicted
for a region with the annotator's final text: acceptance rate (unchanged captions over kept ones) and mean
normalised edit distance, per model_version and per night. The backend only reads the file: it is re-read at most
every ``KPI_REFRESH_SECONDS`` (a Prometheus scrape must not become an S3 GET each time); a read failure keeps the
last good record and says so in the reply.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from dam_model.versions import KPIS_NAME
from ls_io.s3 import describe_error
from model_source.s3 import ModelSourceError, S3Models

from .metrics import Gauge

log = logging.getLogger("dam_backend.kpis")
KPI_REFRESH_SECONDS = 30.0
RATE_FIELDS = ("acceptance_rate", "mean_edit_distance")
COUNT_FIELDS = ("regions", "accepted", "edited", "deleted", "new")


def file_reader(path: Path) -> Callable[[], bytes | None]:
    def read() -> bytes | None:
        return path.read_bytes() if path.exists() else None
    return read


class KpiSource:
    """The latest published KPI record, cached for ``refresh_s`` seconds; thread-safe."""

    def __init__(self, read: Callable[[], bytes | None] | None, where: str, refresh_s: float = KPI_REFRESH_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self.where, self.refresh_s, self._clock = read, where, refresh_s, clock
        self._lock = threading.Lock()
        self._record: dict[str, Any] | None = None
        self._read_at: float | None = None
        self.last_error: str | None = None

    @classmethod
    def for_models_root(cls, s3: S3Models | None, local_root: Path | None) -> "KpiSource":
        """Beside the pointer the model store reads: through its S3 client (s3://) or in its folder."""
        if s3 is not None:
            return cls(lambda: s3.read_root_file(KPIS_NAME), f"{s3.url}{KPIS_NAME}")
        if local_root is not None:
            path = local_root / KPIS_NAME
            return cls(file_reader(path), str(path))
        return cls(None, "")

    def record(self) -> dict[str, Any] | None:
        if self._read is None:
            return None
        with self._lock:
            now = self._clock()
            # Nothing published yet: look each time (a local stat, or one S3 GET per scrape) so the first night shows
            # at once; afterwards at most every refresh_s.
            if self._record is None or self._read_at is None or now - self._read_at >= self.refresh_s:
                self._read_at = now
                try:
                    raw = self._read()
                    record = json.loads(raw) if raw is not None else None
                    if record is not None and not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                    self._record, self.last_error = record, None
                except Exception as exc:  # noqa: BLE001 - unreadable now: keep the last good record, say why
                    self.last_error = (str(exc) if isinstance(exc, ModelSourceError)  # names the object already
                                       else f"cannot read {self.where}: {describe_error(exc)}")
                    log.warning("%s", self.last_error)
            return self._record

    def reply(self, served_version: str) -> dict[str, Any]:
        """GET /kpis: the served version's KPIs first, then every version's and every night's."""
        record = self.record()
        body: dict[str, Any] = {"model_version": served_version, "source": self.where or None,
                                "error": self.last_error}
        if record is None:
            body.update(kpis=None, reason="no KPIs published yet: the nightly writes them to MODELS_ROOT/kpis.json"
                        if self._read is not None else "MODELS_ROOT is not set: no KPIs to read")
            return body
        by_version = record.get("by_model_version") or {}
        body.update(served=by_version.get(served_version), generated_at=record.get("generated_at"),
                    snapshot_id=record.get("snapshot_id"), overall=record.get("overall"),
                    by_model_version=by_version, by_night=record.get("by_night") or {})
        return body


class KpiGauges:
    """dam_backend_kpi_* gauges per model_version, refreshed from a KpiSource at each scrape."""

    def __init__(self) -> None:
        self.rates = {name: Gauge(f"dam_backend_kpi_{name}", f"Learning-from-edits KPI {name} per model_version "
                                  "(published by the nightly to MODELS_ROOT/kpis.json)", ["model_version"])
                      for name in RATE_FIELDS}
        self.regions = Gauge("dam_backend_kpi_regions", "Predicted regions the nightly compared with the annotators' "
                             "final captions, by model_version and outcome", ["model_version", "outcome"])
        self.metrics = (*self.rates.values(), self.regions)

    def update(self, record: dict[str, Any] | None) -> None:
        for gauge in self.metrics:
            gauge.clear()
        for version, kpis in ((record or {}).get("by_model_version") or {}).items():
            if not isinstance(kpis, dict):
                continue
            for name, gauge in self.rates.items():
                if isinstance(kpis.get(name), (int, float)):
                    gauge.set(kpis[name], model_version=version)
            for outcome in COUNT_FIELDS[1:]:
                if isinstance(kpis.get(outcome), (int, float)):
                    self.regions.set(kpis[outcome], model_version=version, outcome=outcome)
