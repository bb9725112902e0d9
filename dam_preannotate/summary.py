"""What a run did (done, skipped, failed by reason), the failed-tasks file, and the progress bar."""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from dam_model.fileio import atomic_write_text
from ls_io.errors import StatusError


def failure_reason(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line reason): the kind groups failures in the summary. For a StatusError it is its ls_io.errors
    kind and status (e.g. "media_unreachable 502", "bad_region 422"): the reason the backend's reply ("failed") and
    its metrics give for the same task."""
    text = " ".join(str(exc).split())[:300]
    if isinstance(exc, StatusError):
        return f"{exc.kind} {exc.status}", text
    return type(exc).__name__, f"{type(exc).__name__}: {text}"


@dataclass
class Summary:
    """Counts of one rank's run; `merge` adds up the ranks'."""

    selected: int = 0          # tasks of this shard in the selection
    done: int = 0              # predictions stored by this run
    recovered: int = 0         # stored by a killed run, confirmed in Label Studio (not recomputed)
    skipped_journal: int = 0   # finished by an earlier run of this journal
    skipped_predicted: int = 0  # Label Studio already holds a prediction of this model_version
    no_regions: int = 0        # nothing to caption (NO_REGION_MODE=auto is the backend's)
    regions: int = 0           # regions captioned
    model_calls: int = 0
    duplicates_removed: int = 0
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)  # task -> (kind, reason)
    seconds: float = 0.0

    def fail(self, task_id: int, kind: str, reason: str) -> None:
        self.failed[int(task_id)] = (kind, reason)

    def by_reason(self) -> Counter:
        return Counter(kind for kind, _ in self.failed.values())

    @classmethod
    def merge(cls, parts: Iterable["Summary"]) -> "Summary":
        total = cls()
        for part in parts:
            for name, value in asdict(part).items():
                if name == "failed":
                    total.failed.update(part.failed)
                elif name == "seconds":
                    total.seconds = max(total.seconds, value)
                else:
                    setattr(total, name, getattr(total, name) + value)
        return total

    def report(self, model_version: str, ranks: int = 1) -> str:
        rate = self.done / self.seconds if self.seconds else 0.0
        lines = [
            f"pre-annotation with {model_version} on {ranks} rank(s): {self.selected} tasks selected in "
            f"{self.seconds:.1f} s ({rate:.2f} tasks/s, {self.regions / self.seconds if self.seconds else 0:.1f} "
            f"regions/s, {self.model_calls} model calls)",
            f"  done {self.done} (+{self.recovered} recovered from an interrupted run)",
            f"  skipped {self.skipped_journal + self.skipped_predicted + self.no_regions}: "
            f"{self.skipped_journal} finished earlier (journal), {self.skipped_predicted} already predicted in "
            f"Label Studio, {self.no_regions} without regions",
            f"  failed {len(self.failed)}" + (": " + ", ".join(f"{kind} x{n}" for kind, n in
                                                           self.by_reason().most_common()) if self.failed else ""),
        ]
        examples = {}
        for task, (kind, reason) in sorted(self.failed.items()):
            examples.setdefault(kind, (task, reason))
        lines += [f"    e.g. task {task}: {reason}" for task, reason in examples.values()]
        if self.duplicates_removed:
            lines.append(f"  duplicate predictions removed after a lost import answer: {self.duplicates_removed}")
        return "\n".join(lines)


def write_failed_file(path: Path, failed: dict[int, tuple[str, str]]) -> None:
    """JSON lines {"task", "kind", "reason"}: `--task-ids-file` reads it back for a rerun."""
    rows = [json.dumps({"task": task, "kind": kind, "reason": reason}) for task, (kind, reason) in sorted(failed.items())]
    atomic_write_text(path, "".join(row + "\n" for row in rows))


class Progress:
    """A tqdm bar over this rank's tasks: tasks/s and ETA from tqdm, regions/s and failures in the postfix."""

    def __init__(self, total: int, summary: Summary, rank: int, enabled: bool) -> None:
        self.summary = summary
        self.started = time.monotonic()
        self.bar = tqdm(total=total, unit="task", desc=f"rank {rank}" if rank else "pre-annotate",
                        position=rank, disable=not enabled, dynamic_ncols=True, smoothing=0.1)

    def add_total(self, extra: int) -> None:
        self.bar.total = (self.bar.total or 0) + extra
        self.bar.refresh()

    def step(self, n: int = 1) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.bar.set_postfix(regions_s=f"{self.summary.regions / elapsed:.1f}", failed=len(self.summary.failed),
                             refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def summary_record(summary: Summary) -> dict[str, Any]:
    """The summary as the journal's "end" record holds it (failures as counts by kind)."""
    data = asdict(summary)
    data["failed"] = dict(summary.by_reason())
    return data
