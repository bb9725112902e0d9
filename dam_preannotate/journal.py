"""The local journal: append-only JSON lines, one file per rank, each record fsync'd before the job goes on.

Records (every one has "event", "run" and "time"):
- start      {rank, world, model_version}                        a run began
- intent     {batch, tasks, replace: {task: [prediction ids]}}   written BEFORE the import request is sent
- posted     {batch}                                             Label Studio answered 201: the batch is stored
- rejected   {batch, reason}                                     Label Studio answered 4xx: nothing was stored
- reconciled {batch, found, missing}                             an intent without an answer, checked against
                                                                 Label Studio's stored predictions
- swept      {batch, tasks}                                      tasks found missing were checked again for a
                                                                 late copy of the lost request, after it settled
- failed     {task, reason}                                      no prediction for the task in this run
- end        {summary}

Why exactly once: a prediction reaches Label Studio only through an import whose tasks were journaled (intent)
before it was sent. After a crash every task is either finished (posted, or reconciled as found: skipped,
never recomputed), untouched (computed again), or in an intent with no answer: the restart lists that task's
predictions of this model_version, deletes the ones the intent was replacing (--force), and calls it finished
when one is there (extra copies are deleted, the oldest kept) or computes it again when none is. A lost request
that Label Studio commits after that check leaves a second copy, which the sweep deletes once
PREANNOTATE_SETTLE_SECONDS have passed. Replay is order-free (records name their batch), so journals written by
other ranks or by a run with another world size are read alike.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOURNAL_GLOB = "journal-rank*.jsonl"


def journal_path(folder: Path, rank: int) -> Path:
    return Path(folder) / f"journal-rank{rank}.jsonl"


def new_batch_id() -> str:
    return uuid.uuid4().hex


class Journal:
    """This rank's journal file, opened for appending; writes are serialised (the job and its poster thread)."""

    def __init__(self, folder: Path, rank: int, run_id: str | None = None) -> None:
        self.path = journal_path(folder, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id or uuid.uuid4().hex
        _drop_torn_tail(self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        _fsync_dir(self.path.parent)  # the file's directory entry survives a crash too

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record and fsync it: when this returns, the record survives a kill -9 or a power cut."""
        record = {"event": event, "run": self.run_id, "time": round(time.time(), 3), **fields}
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        return record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """A crash in the middle of a write can leave half a line; appending after it would glue the next record to
    it and lose both. Cut the file back to its last complete line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(folder: Path) -> list[dict[str, Any]]:
    """Every complete record of every rank's journal in `folder` (a torn last line is ignored)."""
    records = []
    for path in sorted(Path(folder).glob(JOURNAL_GLOB)):
        for line in path.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line: its write never finished, so nothing depended on it
            if isinstance(record, dict) and "event" in record:
                records.append(record)
    return records


@dataclass
class OpenIntent:
    """A task sent (or about to be sent) in `batch` with no answer: `replace` are the prediction ids that import
    was to replace (--force)."""

    batch: str
    replace: list[int] = field(default_factory=list)


@dataclass
class JournalState:
    """What the journals say, task by task."""

    done: set[int] = field(default_factory=set)
    open: dict[int, list[OpenIntent]] = field(default_factory=dict)
    unswept: dict[int, list[tuple[str, float]]] = field(default_factory=dict)  # task -> [(batch, reconciled at)]
    failed: dict[int, str] = field(default_factory=dict)  # last reason, for tasks not done since
    computed: dict[int, int] = field(default_factory=dict)  # task -> number of intents naming it (recomputations)
    runs: int = 0


def replay(folder: Path) -> JournalState:
    """Fold every record of `folder` into a JournalState (order-free except for `failed`, which is informative)."""
    records = read_records(folder)
    intents: dict[str, dict[str, Any]] = {}
    posted: set[str] = set()
    rejected: set[str] = set()
    reconciled: dict[str, set[int]] = {}
    found: set[int] = set()
    missing: dict[str, dict[int, float]] = {}
    swept: dict[str, set[int]] = {}
    state = JournalState()
    for rec in records:
        event = rec["event"]
        if event == "start":
            state.runs += 1
        elif event == "intent":
            intents[rec["batch"]] = rec
            for task in rec["tasks"]:
                state.computed[int(task)] = state.computed.get(int(task), 0) + 1
        elif event == "posted":
            posted.add(rec["batch"])
        elif event == "rejected":
            rejected.add(rec["batch"])
        elif event == "reconciled":
            reconciled.setdefault(rec["batch"], set()).update(int(t) for t in rec["found"] + rec["missing"])
            found.update(int(t) for t in rec["found"])
            missing.setdefault(rec["batch"], {}).update({int(t): float(rec["time"]) for t in rec["missing"]})
        elif event == "swept":
            swept.setdefault(rec["batch"], set()).update(int(t) for t in rec["tasks"])
        elif event == "failed":
            state.failed[int(rec["task"])] = str(rec.get("reason", ""))
    for batch, intent in intents.items():
        tasks = [int(t) for t in intent["tasks"]]
        if batch in posted:
            state.done.update(tasks)
            continue
        if batch in rejected:
            continue
        replace = intent.get("replace") or {}
        for task in tasks:
            if task not in reconciled.get(batch, set()):
                state.open.setdefault(task, []).append(OpenIntent(batch, [int(p) for p in replace.get(str(task), [])]))
    state.done |= found
    for batch, tasks in missing.items():
        for task, when in tasks.items():
            if task not in swept.get(batch, set()):
                state.unswept.setdefault(task, []).append((batch, when))
    for task in state.done:
        state.failed.pop(task, None)
    return state
