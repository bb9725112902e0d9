"""The nightly's learning-from-edits KPIs (dam_loop.kpis): for every exported annotation, the caption the model
predicted for each region against the annotator's final caption; acceptance rate and normalised edit distance per
model_version and per night. Written to ``<work root>/kpis.json`` (the JSON a dashboard or the backend can serve)
and shown in the nightly report.

Where the predictions come from (``--kpi-predictions``, env KPI_PREDICTIONS, default ``auto``). Label Studio keeps
a prediction server-side and names it in the annotation's ``parent_prediction``; its DEFAULT S3 export (one object
per annotation) carries the annotation and its task but not the task's predictions. So:

- ``export``: predictions carried by the export itself: the task format (Label Studio's
  FUTURE_SAVE_TASK_TO_STORAGE=true, or its JSON export) holds ``predictions`` beside ``annotations``;
- ``api``: Label Studio's API, ``GET /api/predictions/?task=<id>`` with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY
  (legacy token or personal access token, as ls_io.media authenticates), once per annotated task; answers are
  cached under ``<work root>/kpis/predictions/<task id>.json`` and fetched again when the task's export object
  changed (a new or edited annotation) in tonight's snapshot;
- ``auto``: the export's predictions, plus the API's for tasks whose export carries none, when the API is
  configured (otherwise regions of those tasks count as "new": nothing to compare them with);
- ``off``: no KPIs.

Annotations deleted from the bucket (their annotation was deleted in Label Studio) are left out. A KPI failure
(Label Studio unreachable, ...) is logged and recorded in summary.json; it never stops the training round.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import requests

from dam_loop.cli import env_default
from dam_loop.kpis import annotations_of, edits_from_export, kpi_report
from dam_loop.provenance import utc_iso
from dam_model.fileio import atomic_write_json, read_json
from ls_io.media import LabelStudioAuth

log = logging.getLogger("dam_loop.kpis")
SOURCES = ("auto", "export", "api", "off")
KPI_FILE = "kpis.json"
API_TIMEOUT_S = 30.0


def add_kpi_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("learning-from-edits KPIs")
    g.add_argument("--kpi-predictions", choices=SOURCES, default=env_default("KPI_PREDICTIONS", "auto"),
                   help="where the served predictions come from: export (task-format export), api (Label Studio's "
                        "GET /api/predictions/?task=N), auto (both), off (env KPI_PREDICTIONS; default auto)")
    g.add_argument("--label-studio-url", default=env_default("LABEL_STUDIO_URL"),
                   help="Label Studio for the predictions API and media (env LABEL_STUDIO_URL)")


class PredictionsAPI:
    """``GET /api/predictions/?task=<id>`` of Label Studio, cached per task under ``cache_dir``."""

    def __init__(self, url: str, api_key: str, cache_dir: Path, session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        self.auth = LabelStudioAuth(self.url, api_key, self.session, API_TIMEOUT_S)
        self.cache_dir = Path(cache_dir)
        self.fetched = 0

    def predictions(self, task_id: Any, refresh: bool) -> list[dict[str, Any]]:
        cache = self.cache_dir / f"{int(task_id)}.json"
        if cache.exists() and not refresh:
            return read_json(cache)["predictions"]
        reply = self.session.get(f"{self.url}/api/predictions/", params={"task": int(task_id)},
                                 headers=self.auth.header(), timeout=API_TIMEOUT_S, allow_redirects=False)
        if reply.status_code != 200:
            raise RuntimeError(f"Label Studio GET /api/predictions/?task={task_id} -> HTTP {reply.status_code}")
        body = reply.json()
        found = body.get("results", []) if isinstance(body, dict) else body  # a paginated answer, or the plain list
        self.fetched += 1
        atomic_write_json(cache, {"task": task_id, "fetched_at": utc_iso(), "predictions": found})
        return found


def export_objects(work_root: Path, snapshot_id: str) -> tuple[list[dict[str, Any]], set[Any]]:
    """(every live export object of the snapshot's cumulative manifest, ids of tasks whose object tonight's
    snapshot downloaded)."""
    manifest = read_json(Path(work_root) / "snapshots" / snapshot_id / "manifest.json")
    objects, changed_tasks = [], set()
    for entry in manifest["objects"].values():
        if entry.get("deleted_at"):
            continue
        try:
            body = json.loads((Path(work_root) / entry["file"]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable objects are the build step's to report
        objects.append(body)
        if entry.get("snapshot") == snapshot_id:
            changed_tasks |= {task_id for _, task_id, _ in annotations_of(body)}
    return objects, changed_tasks


def make_api(source: str, label_studio_url: str | None, work_root: Path) -> PredictionsAPI | None:
    api_key = env_default("LABEL_STUDIO_API_KEY")
    if source not in ("api", "auto") or not (label_studio_url and api_key):
        if source == "api":
            raise ValueError("--kpi-predictions api needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        return None
    return PredictionsAPI(label_studio_url, api_key, Path(work_root) / "kpis" / "predictions")


def update_kpis(work_root: Path, snapshot_id: str, source: str = "auto", label_studio_url: str | None = None,
                api: PredictionsAPI | None = None) -> dict[str, Any]:
    """Compute the KPIs of every live annotation of the snapshot and write <work root>/kpis.json; returns it."""
    objects, changed_tasks = export_objects(work_root, snapshot_id)
    api = api or make_api(source, label_studio_url, work_root)
    carried = source in ("export", "auto")
    fetched: dict[Any, list[dict[str, Any]]] = {}
    from_export: set[Any] = set()
    for body in objects:
        for _, task_id, predictions in annotations_of(body):
            if predictions and carried:
                from_export.add(task_id)
            elif api is not None and isinstance(task_id, int) and task_id not in fetched:
                fetched[task_id] = api.predictions(task_id, refresh=task_id in changed_tasks)
    if not carried:  # the export's own predictions are ignored on request
        objects = [{**o, "predictions": []} if "annotations" in o else o for o in objects]
    edits = edits_from_export(objects, predictions=[p for found in fetched.values() for p in found])
    record = {"generated_at": utc_iso(), "snapshot_id": snapshot_id,
              "predictions": {"source": source, "tasks_from_export": len(from_export), "tasks_from_api": len(fetched),
                              "api_requests": api.fetched if api else 0},
              **kpi_report(edits)}
    atomic_write_json(Path(work_root) / KPI_FILE, record)
    overall = record["overall"]
    log.info("KPIs: %d regions, accepted %d, edited %d, acceptance rate %s, mean edit distance %s (predictions: %s)",
             overall["regions"], overall["accepted"], overall["edited"], overall["acceptance_rate"],
             overall["mean_edit_distance"], record["predictions"])
    return record


def read_kpis(work_root: Path) -> dict[str, Any] | None:
    path = Path(work_root) / KPI_FILE
    return read_json(path) if path.exists() else None
