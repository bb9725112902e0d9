"""``LabelStudioAPI``: a thin client for the handful of Label Studio HTTP calls the demo and the integration test make
(create project, import tasks, connect the ML backend, add S3 target storage, retrieve predictions, interactive call).
Facts about those calls: /work/shared/reference/label-studio-protocol.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import requests

from dam_tools.local_stack import StackError


class LabelStudioAPI:
    """The Label Studio HTTP calls this project makes, authenticated with a legacy token (``Authorization: Token``)."""

    def __init__(self, url: str, token: str, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, expect: Iterable[int] = (200, 201), **kwargs: Any) -> Any:
        """One request; raises StackError with Label Studio's answer when the status is not in ``expect``."""
        reply = self.session.request(method, self.url + path, timeout=kwargs.pop("timeout", self.timeout_s), **kwargs)
        if reply.status_code not in set(expect):
            raise StackError(f"Label Studio {method} {path} -> HTTP {reply.status_code}: {reply.text[:500]}")
        if not reply.content:
            return None
        try:
            return reply.json()
        except ValueError:
            return reply.text

    # -- projects and tasks
    def create_project(self, title: str, label_config: str, **fields: Any) -> int:
        """Create a project; returns its id."""
        body = {"title": title, "label_config": label_config, **fields}
        return int(self.call("POST", "/api/projects", json=body)["id"])

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        """Import JSON tasks (each ``{"data": ..., "annotations"?: [...], "predictions"?: [...]}``); returns task ids."""
        reply = self.call("POST", f"/api/projects/{project}/import?return_task_ids=true", json=tasks)
        ids = reply.get("task_ids") or []
        if len(ids) != len(tasks):
            raise StackError(f"imported {len(tasks)} tasks, Label Studio reports ids {ids}")
        return [int(i) for i in ids]

    def upload_files(self, project: int, paths: Sequence[Path]) -> list[int]:
        """Upload image files as new tasks (``data.<first object>`` = /data/upload/...); returns task ids, in order."""
        ids: list[int] = []
        for path in paths:  # one request per file keeps the task order = the path order
            with open(path, "rb") as fh:
                reply = self.call(
                    "POST", f"/api/projects/{project}/import?return_task_ids=true", files={Path(path).name: fh}
                )
            ids += [int(i) for i in reply.get("task_ids") or []]
        if len(ids) != len(paths):
            raise StackError(f"uploaded {len(paths)} files, Label Studio created tasks {ids}")
        return ids

    def tasks(self, project: int) -> list[dict]:
        """Every task of the project, with its annotations and predictions."""
        reply = self.call("GET", f"/api/tasks?project={project}&page_size=1000&fields=all")
        return list(reply["tasks"] if isinstance(reply, dict) else reply)

    def task(self, task_id: int) -> dict:
        return self.call("GET", f"/api/tasks/{task_id}")

    def predictions(self, task_id: int) -> list[dict]:
        """The stored predictions of one task."""
        return list(self.call("GET", f"/api/predictions?task={task_id}"))

    def create_prediction(self, task_id: int, result: list[dict], model_version: str, score: float | None = None) -> int:
        body: dict[str, Any] = {"task": task_id, "result": result, "model_version": model_version}
        if score is not None:
            body["score"] = score
        return int(self.call("POST", "/api/predictions", json=body)["id"])

    def create_annotation(self, task_id: int, result: list[dict]) -> int:
        return int(self.call("POST", f"/api/tasks/{task_id}/annotations", json={"result": result})["id"])

    # -- ML backend
    def connect_ml_backend(self, project: int, url: str, title: str = "DAM", interactive: bool = True) -> int:
        """Connect the backend at ``url`` (Label Studio checks /health and /setup, and creates its /webhook)."""
        body = {"url": url, "project": project, "title": title, "is_interactive": interactive}
        return int(self.call("POST", "/api/ml", json=body)["id"])

    def ml_backend(self, ml_id: int) -> dict:
        return self.call("GET", f"/api/ml/{ml_id}")

    def retrieve_predictions(self, project: int, task_ids: Sequence[int]) -> Any:
        """Data manager action "Retrieve predictions": ONE /predict to the backend with all ``task_ids``."""
        body = {"selectedItems": {"all": False, "included": [int(t) for t in task_ids]}}
        return self.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", json=body)

    def interactive(self, ml_id: int, task_id: int, context_result: list[dict]) -> dict:
        """What the editor does after a smart keypoint/brush: returns ``{"data": {"result": [...], ...}}``."""
        body = {"task": int(task_id), "context": {"result": context_result}}
        return self.call("POST", f"/api/ml/{ml_id}/interactive-annotating", json=body)

    # -- storage
    def add_s3_target_storage(
        self,
        project: int,
        bucket: str,
        prefix: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        title: str = "annotations",
    ) -> int:
        """An S3 target (export) storage: every submitted annotation is written to ``s3://bucket/prefix/<id>``."""
        body = {
            "project": project, "title": title, "bucket": bucket, "prefix": prefix, "s3_endpoint": endpoint,
            "aws_access_key_id": access_key, "aws_secret_access_key": secret_key, "region_name": region,
            "can_delete_objects": True,
        }
        return int(self.call("POST", "/api/storages/export/s3", json=body)["id"])
