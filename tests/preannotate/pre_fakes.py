"""Test doubles of the bulk job (tests/preannotate is on sys.path): an in-memory Label Studio that can crash or
lose an answer at a chosen call, an image store, a fast fake DAM and a counting wrapper for a real one."""
from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from dam_preannotate.config import JobConfig
from dam_preannotate.labelstudio import ImportRejected, ImportUncertain, StoredPrediction
from ls_io.errors import UpstreamError
from ls_io.rle import encode_rle

ROOT = Path(__file__).resolve().parents[2]
IMAGE_CONFIG = (ROOT / "label_config" / "image.xml").read_text()
VERSION = "dam-test0001"


class SimulatedCrash(BaseException):
    """kill -9 stand-in: a BaseException, so no `except Exception` in the job can swallow it."""


@dataclass
class Caption:
    text: str
    confidence: float
    token_ids: list[int] = field(default_factory=list)


def brush_region(mask: np.ndarray, region_id: str | None = None) -> dict[str, Any]:
    height, width = mask.shape
    return {"id": region_id or str(uuid.uuid4()), "from_name": "mask", "to_name": "image", "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": ["object"]}}


def square_mask(index: int, height: int = 24, width: int = 32) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    top, left = (index * 3) % (height - 6), (index * 5) % (width - 6)
    mask[top:top + 6, left:left + 6] = True
    return mask


def make_tasks(ids: Sequence[int], regions_per_task: int | Sequence[int] = 1) -> dict[int, dict[str, Any]]:
    """Tasks {id: task} with `regions_per_task` brush regions each, image url "img://<id>"."""
    counts = [regions_per_task] * len(ids) if isinstance(regions_per_task, int) else list(regions_per_task)
    return {task_id: {"id": task_id, "data": {"image": f"img://{task_id}",
                                              "regions": [brush_region(square_mask(task_id + r)) for r in range(n)]},
                      "annotations": [], "drafts": [], "predictions": []}
            for task_id, n in zip(ids, counts)}


class Images:
    """fetcher stand-in: a 24x32 picture per task id; urls listed in `missing` answer like an HTTP 404."""

    def __init__(self, missing: Sequence[str] = ()) -> None:
        self.missing = set(missing)
        self.loaded: list[int] = []

    def load_image(self, url: str, task_id: int | None = None) -> np.ndarray:
        if url in self.missing:
            raise UpstreamError("media download answered HTTP 404 (images.test)")
        self.loaded.append(int(task_id))
        rng = np.random.default_rng(int(task_id))
        return rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)


class MemoryLabelStudio:
    """The LabelStudioClient calls over dicts. `crash` = (call kind, n-th call of that kind, "before" | "after"):
    that call raises SimulatedCrash before or after taking effect. `lose_answer` = (n-th import, "stored" | "late"):
    that import is answered with ImportUncertain, its predictions stored at once ("stored": the answer was lost) or
    when `land_late()` is called ("late": the request reaches the database after the caller gave up on it);
    `land_late_on_import`: the late ones land at the next import."""

    def __init__(self, tasks: dict[int, dict[str, Any]], label_config: str = IMAGE_CONFIG) -> None:
        self.tasks = tasks
        self.config = label_config
        self.predictions: dict[int, dict[str, Any]] = {}
        self.next_id = 1
        self.counts: dict[str, int] = {}
        self.crash: tuple[str, int, str] | None = None
        self.lose_answer: tuple[int, str] | None = None
        self.land_late_on_import = False
        self.reject_tasks: set[int] = set()
        self.late: list[list[dict[str, Any]]] = []
        self.imports: list[list[int]] = []  # task ids of every stored import

    def _tick(self, kind: str, when: str) -> None:
        if when == "before":
            self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.crash and self.crash[0] == kind and self.crash[1] == self.counts[kind] and self.crash[2] == when:
            self.crash = None
            raise SimulatedCrash(f"{kind} #{self.counts[kind]} {when}")

    def label_config(self, project: int) -> str:
        return self.config

    def iter_task_ids(self, project: int, view: int | None) -> Iterator[int]:
        yield from sorted(self.tasks)

    def fetch_tasks(self, project: int, ids: Sequence[int]) -> list[dict[str, Any]]:
        out = []
        for task_id in ids:
            if task_id in self.tasks:
                task = copy.deepcopy(self.tasks[task_id])
                task["predictions"] = [copy.deepcopy(p) for p in self.predictions.values() if p["task"] == task_id]
                out.append(task)
        return out

    def predictions_of(self, task_id: int) -> list[StoredPrediction]:
        return [StoredPrediction(p["id"], task_id, p["model_version"]) for p in self.predictions.values()
                if p["task"] == task_id]

    def _store(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.predictions[self.next_id] = {"id": self.next_id, **copy.deepcopy(item)}
            self.next_id += 1
        self.imports.append([item["task"] for item in items])

    def import_predictions(self, project: int, items: list[dict[str, Any]]) -> None:
        self._tick("import", "before")
        if self.land_late_on_import:
            self.land_late()
        if any(item["task"] in self.reject_tasks for item in items):
            raise ImportRejected("HTTP 400: invalid prediction")
        if self.lose_answer and self.lose_answer[0] == self.counts["import"]:
            if self.lose_answer[1] == "stored":
                self._store(items)
            else:
                self.late.append(copy.deepcopy(items))
            raise ImportUncertain("ReadTimeout: the answer was lost")
        self._store(items)
        self._tick("import", "after")

    def land_late(self) -> None:
        """The lost requests reach the database now."""
        for items in self.late:
            self._store(items)
        self.late.clear()

    def delete_prediction(self, prediction_id: int) -> None:
        self._tick("delete", "before")
        self.predictions.pop(prediction_id, None)
        self._tick("delete", "after")

    def of_version(self, version: str = VERSION) -> dict[int, list[int]]:
        """{task: [prediction ids of `version`]}."""
        out: dict[int, list[int]] = {}
        for p in self.predictions.values():
            if p["model_version"] == version:
                out.setdefault(p["task"], []).append(p["id"])
        return out


class FakeDAM:
    """describe_batch stand-in: a caption per region naming its task image and mask size; records the calls."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []  # regions per item of each call
        self.config = type("Cfg", (), {"image_query": "<image>\nDescribe the masked region in detail."})()

    def describe_batch(self, items, *, query=None, max_new_tokens=128, **_):
        self.calls.append([len(masks) for _, masks in items])
        return [[Caption(f"region of {int(np.count_nonzero(m))} px on {int(image.sum()) % 997}", -0.2)
                 for m in masks] for image, masks in items]

    def describe(self, image, masks, *, query=None, max_new_tokens=128, **_):
        return self.describe_batch([(image, masks)], query=query, max_new_tokens=max_new_tokens)[0]


class CountingModel:
    """Wraps a real DescribeAnythingModel and counts its describe_batch calls (and regions per call)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = model.config
        self.calls: list[int] = []

    def describe_batch(self, items, **kw):
        self.calls.append(sum(len(masks) for _, masks in items))
        return self.model.describe_batch(items, **kw)


def job_config(tmp_path: Path, **overrides: Any) -> JobConfig:
    base = dict(label_studio_url="http://ls.test", label_studio_api_key="k" * 40, project=1,
                journal_dir=str(tmp_path / "journal"), progress=False, post_batch=4, batch_regions=4,
                fetch_workers=2, prefetch_tasks=4, page_size=5, settle_seconds=0.0, max_new_tokens=8)
    base.update(overrides)
    return JobConfig(**base)
