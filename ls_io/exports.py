"""Label Studio's export objects (what its target storage writes to S3), read back as annotations with their task.

Two shapes, depending on the project's FUTURE_SAVE_TASK_TO_STORAGE:
- per annotation, ``<prefix>/<annotation id>``: the annotation ({"id", "result", "was_cancelled", "updated_at",
  ...}) with the full task under "task" ({"id", "data", "meta", ...});
- per task, ``<prefix>/<task id>.json``: the task ({"id", "data", "meta", ...}) with its "annotations" list.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from .errors import BadRequest

ANNOTATION_EXPORT = "annotation"
TASK_EXPORT = "task"


@dataclasses.dataclass
class AnnotationRecord:
    """One exported annotation with its task; `key` names the export object it came from."""

    key: str
    task_id: Any
    task_data: dict[str, Any]
    annotation: dict[str, Any]
    task_meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def updated_at(self) -> str:
        return str(self.annotation.get("updated_at") or self.annotation.get("created_at") or "")


def classify_export(export: Any) -> str:
    """ANNOTATION_EXPORT (result + task) or TASK_EXPORT (data + annotations or id); BadRequest (a ValueError) for
    anything else."""
    if not isinstance(export, dict):
        raise BadRequest(f"expected a JSON object, got {type(export).__name__}")
    if "result" in export and isinstance(export.get("task"), dict):
        return ANNOTATION_EXPORT
    if "data" in export and ("annotations" in export or "id" in export):
        return TASK_EXPORT
    raise BadRequest("neither a Label Studio annotation export (result + task) nor a task export (data + annotations)")


def iter_annotations(export: Any, key: str = "") -> Iterator[AnnotationRecord]:
    """The annotations of one export object, in either shape (see classify_export)."""
    if classify_export(export) == ANNOTATION_EXPORT:
        task = export["task"]
        yield AnnotationRecord(key, task.get("id"), task.get("data") or {}, export, task.get("meta") or {})
        return
    for annotation in export.get("annotations") or []:
        yield AnnotationRecord(key, export.get("id"), export.get("data") or {}, annotation, export.get("meta") or {})
