"""A small Prometheus registry: counters, histograms and gauges rendered as text exposition format 0.0.4."""
from __future__ import annotations

import bisect
import math
import threading
from typing import Iterable

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x)) if abs(x) < 1e15 else repr(float(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self._values: dict[tuple[str, ...], float] = {}

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = (), buckets=DEFAULT_BUCKETS) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._values: dict[tuple[str, ...], list] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._values.setdefault(key, [[0] * (len(self.buckets) + 1), 0.0])
            counts[bisect.bisect_left(self.buckets, value)] += 1
            self._values[key][1] = total + value

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, (list(c), s)) for k, (c, s) in self._values.items())
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip(self.buckets + (math.inf,), counts):
                running += n
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_num(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return lines


class Registry:
    """The backend's metrics; one per app."""

    def __init__(self, failure_reasons: Iterable[str] = ()) -> None:
        self.requests = Counter("dam_backend_requests_total", "HTTP requests by route and status.", ("route", "status"))
        self.latency = Histogram("dam_backend_request_seconds", "HTTP request latency by route.", ("route",))
        self.regions = Counter("dam_backend_regions_described_total", "Regions captioned, by kind.", ("kind",))
        self.model_info = Gauge("dam_backend_model_info", "The model version being served (value 1).", ("model_version",))
        self.model_load = Gauge("dam_backend_model_load_seconds", "Seconds the last model load took.", ("model_version",))
        self.model_loads = Counter("dam_backend_model_loads_total", "Model loads by outcome.", ("outcome",))
        self.failed_tasks = Counter("dam_backend_failed_tasks_total",
                                    "Batch tasks answered without a prediction (Label Studio retries them), by reason.",
                                    ("reason",))
        self.skipped_regions = Counter("dam_backend_skipped_regions_total",
                                       "Regions left out of a batch prediction (the task kept its others), by reason.",
                                       ("reason",))
        for reason in failure_reasons:  # every reason shows from the start, at 0: rate() and alerts need the series
            self.failed_tasks.inc(0, reason=reason)
        self._all = [self.requests, self.latency, self.regions, self.model_info, self.model_load, self.model_loads,
                     self.failed_tasks, self.skipped_regions]

    def add(self, *metrics: _Metric) -> None:
        """Render these too (metrics owned by another part, e.g. the batching scheduler's)."""
        self._all += metrics

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all:
            lines += metric.render()
        return "\n".join(lines) + "\n"
