"""The Label Studio calls the job makes, through label-studio-sdk's client (LabelStudio(base_url, api_key)).

Facts about Label Studio 1.23.2 this relies on (read in its source, label_studio/):
- GET /api/tasks pages with ?page=&page_size= (data_manager/api.py TaskListAPI); `include=id` answers ids only;
  `fields=all` adds annotations, drafts and predictions (each with id and model_version); a page past the end
  answers 404, which the SDK's pager treats as the end. `query={"selectedItems": {"all": false, "included": [...]}}`
  restricts the list to given ids; `view=<id>` applies a Data Manager tab's filters.
- POST /api/projects/{id}/import/predictions (data_import/api.py ImportPredictionsAPI) stores one prediction per
  item with the item's top-level model_version and score; it checks every task id first and answers 400 before
  storing anything when one is not in the project; it answers {"created": n}, no ids. A `"result": []` item IS
  stored (an empty prediction): the job never posts one, a failed task gets no prediction at all.
- The SDK retries 5xx answers and dropped connections: a retried import could store twice, so imports go out
  with max_retries=0 and an unanswered one is reconciled from the journal instead.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol, Sequence

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

NO_RETRY = {"max_retries": 0}


@dataclass(frozen=True)
class StoredPrediction:
    id: int
    task: int
    model_version: str


class ImportRejected(Exception):
    """Label Studio answered 4xx to an import: nothing of it was stored (it validates before it stores)."""


class ImportUncertain(Exception):
    """No answer, or a 5xx: the predictions may or may not be stored; the journal's reconcile decides."""


class LabelStudioClient(Protocol):
    """What the job needs from Label Studio (tests pass an in-memory fake)."""

    def label_config(self, project: int) -> str: ...
    def iter_task_ids(self, project: int, view: int | None) -> Iterator[int]: ...
    def fetch_tasks(self, project: int, ids: Sequence[int]) -> list[dict[str, Any]]: ...
    def predictions_of(self, task_id: int) -> list[StoredPrediction]: ...
    def import_predictions(self, project: int, items: list[dict[str, Any]]) -> None: ...
    def delete_prediction(self, prediction_id: int) -> None: ...


def _plain(obj: Any) -> Any:
    """An SDK model -> plain JSON-like dicts (the shapes ls_io reads)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "dict"):
        return json.loads(obj.json())
    return obj


class SdkLabelStudio:
    """LabelStudioClient over label-studio-sdk."""

    def __init__(self, url: str, api_key: str, timeout: float, page_size: int = 100) -> None:
        self.client = LabelStudio(base_url=url.rstrip("/"), api_key=api_key, timeout=timeout)
        self.page_size = page_size

    def label_config(self, project: int) -> str:
        return self.client.projects.get(id=project).label_config

    def iter_task_ids(self, project: int, view: int | None) -> Iterator[int]:
        """The selection's task ids, page by page (ids only: a page is a few hundred bytes)."""
        pager = self.client.tasks.list(project=project, view=view or None, include="id", fields="task_only",
                                       page_size=self.page_size)
        for task in pager:
            yield int(task.id)

    def fetch_tasks(self, project: int, ids: Sequence[int]) -> list[dict[str, Any]]:
        """Full tasks (data, annotations, drafts, predictions) of `ids`; ids not in the project are absent."""
        query = json.dumps({"selectedItems": {"all": False, "included": [int(i) for i in ids]}})
        pager = self.client.tasks.list(project=project, query=query, fields="all", page_size=max(1, len(ids)))
        return [_plain(task) for task in pager]

    def predictions_of(self, task_id: int) -> list[StoredPrediction]:
        return [StoredPrediction(int(p.id), int(task_id), str(p.model_version or ""))
                for p in self.client.predictions.list(task=task_id)]

    def import_predictions(self, project: int, items: list[dict[str, Any]]) -> None:
        try:
            self.client.projects.import_predictions(id=project, request=items, request_options=NO_RETRY)
        except ApiError as exc:
            status = exc.status_code or 0
            if 400 <= status < 500 and status not in (408, 409, 429):
                raise ImportRejected(f"HTTP {status}: {str(exc.body)[:300]}") from None
            raise ImportUncertain(f"HTTP {status}") from None
        except httpx.HTTPError as exc:
            raise ImportUncertain(f"{type(exc).__name__}: {exc}") from None

    def delete_prediction(self, prediction_id: int) -> None:
        try:
            self.client.predictions.delete(id=prediction_id)
        except ApiError as exc:
            if exc.status_code != 404:  # already gone: what we wanted
                raise


def versions_held(predictions: Iterable[Any], model_version: str) -> list[int]:
    """Ids of the task's predictions (dicts as the tasks list gives them) of `model_version`."""
    return sorted(int(p["id"]) for p in predictions or []
                  if isinstance(p, dict) and p.get("model_version") == model_version and p.get("id") is not None)
