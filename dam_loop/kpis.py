"""Learning-from-edits KPIs: how much of what the model proposed did the annotators keep?

For every region of every exported annotation, the caption the model PREDICTED for that region is compared with
the caption the annotator SUBMITTED. Where Label Studio keeps the prediction (field names as in Label Studio
1.23.2's payloads, see /work/shared/reference/label-studio-payloads/):

- a stored prediction is ``{"id", "task", "model_version", "result": [...], "created_at", ...}``; its ``result``
  holds per region a geometry item and a ``textarea`` item with the SAME ``id`` and ``value.text`` (a list of
  strings); ``model_version`` is the backend's version that served it;
- an annotation names the prediction it started from in ``parent_prediction`` (a prediction id, or null when the
  annotator started from scratch). Label Studio copies the prediction's result into the annotation, so a predicted
  region keeps its id;
- the S3 export in the DEFAULT format (one object per annotation, the task embedded) carries NO predictions: pass
  them in ``predictions`` (from Label Studio's API, ``GET /api/predictions/?task=<id>``, or from a log of what the
  backend served in the same shape). In the task format (FUTURE_SAVE_TASK_TO_STORAGE=true, and in Label Studio's
  JSON export) the task object carries ``annotations`` and ``predictions`` itself.

Matching, per final region (region id, textarea name): the parent prediction's caption of the same region id; else
any other prediction of the task with that region id (e.g. a logged interactive suggestion, which Label Studio does
not store); else the region is "new" (drawn by the annotator, nothing to compare). Regions of the parent
prediction missing from the annotation are "deleted".

Per region (``CaptionEdit.status``): ``accepted`` (the same text after whitespace normalisation), ``edited``,
``deleted`` or ``new``. ``edit_distance`` = Levenshtein distance on characters / the longer text's length, after
normalisation (0 = kept, 1 = rewritten), for accepted and edited regions.

Aggregates (``EditKpis``), per model_version and per night (the UTC date of the annotation's last update, unless
the caller names the night): acceptance_rate = accepted / (accepted + edited), i.e. of the predicted captions
whose region was kept, the share left unchanged; mean_edit_distance over the same regions (accepted count 0);
deleted and new counted beside. Pure functions over exported dicts: no I/O.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from dam_model.evaluation import edit_effort

ACCEPTED, EDITED, DELETED, NEW = "accepted", "edited", "deleted", "new"
NO_PREDICTION = "(no prediction)"  # the model_version key of regions nothing was predicted for
UNKNOWN_NIGHT = "unknown"


@dataclass(frozen=True)
class CaptionEdit:
    """One region of one annotation: what the model proposed, what the annotator kept."""

    task_id: Any
    annotation_id: Any
    region_id: str
    textarea: str
    """from_name of the TextArea (a config may have several per region)."""
    night: str
    status: str
    """accepted, edited, deleted or new."""
    model_version: str | None
    prediction_id: Any
    matched_by: str | None
    """"parent_prediction", "region_id" (another prediction of the task with that region id) or None."""
    predicted: str | None
    final: str | None
    edit_distance: float | None


@dataclass(frozen=True)
class EditKpis:
    """Counts and rates over a set of CaptionEdits (rates None when nothing was predicted and kept)."""

    regions: int
    accepted: int
    edited: int
    deleted: int
    new: int
    acceptance_rate: float | None
    mean_edit_distance: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- texts
def normalise_caption(text: str) -> str:
    """Whitespace-normalised caption: runs of spaces, tabs and newlines become one space, ends stripped."""
    return " ".join(text.split())


def caption_edit_distance(predicted: str, final: str) -> float:
    """Levenshtein distance on characters / the longer length, after normalisation; two empty texts give 0."""
    return edit_effort(normalise_caption(predicted), normalise_caption(final), level="char")


def textarea_captions(result: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """{(region id, textarea name): caption} of a prediction's or annotation's result list (texts of one textarea
    value joined by newlines, as the editor shows them)."""
    captions: dict[tuple[str, str], str] = {}
    for item in result or ():
        if item.get("type") != "textarea" or "id" not in item:
            continue
        texts = (item.get("value") or {}).get("text") or []
        captions[(str(item["id"]), str(item.get("from_name", "")))] = "\n".join(map(str, texts))
    return captions


# ----------------------------------------------------------------------------------------------- exports
def night_of(annotation: Mapping[str, Any]) -> str:
    """UTC date (YYYY-MM-DD) of the annotation's last update (else its creation); 'unknown' without a time."""
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    if not isinstance(stamp, str):
        return UNKNOWN_NIGHT
    try:
        moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return UNKNOWN_NIGHT
    if moment.tzinfo is None:  # Label Studio writes UTC; a naive time is taken as UTC
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).date().isoformat()


def annotations_of(export_object: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Any, list[Mapping[str, Any]]]]:
    """(annotation, task id, predictions in the object) of one exported object: an annotation with its task
    embedded (default S3 format), or a task with ``annotations`` and ``predictions`` (task format, JSON export)."""
    if "annotations" in export_object:
        task_id = export_object.get("id")
        return [(annotation, task_id, list(export_object.get("predictions") or []))
                for annotation in export_object["annotations"]]
    task = export_object.get("task")
    task_id = task.get("id") if isinstance(task, Mapping) else task
    return [(export_object, task_id, list(task.get("predictions") or []) if isinstance(task, Mapping) else [])]


def caption_edits(annotation: Mapping[str, Any], task_id: Any, predictions: Sequence[Mapping[str, Any]],
                  night: str | None = None) -> list[CaptionEdit]:
    """The CaptionEdits of one annotation against its task's stored predictions (see the module docstring)."""
    night = night or night_of(annotation)
    parent_id = annotation.get("parent_prediction")
    parent = next((p for p in predictions if parent_id is not None and p.get("id") == parent_id), None)
    others = [p for p in predictions if p is not parent]
    parent_captions = textarea_captions(parent["result"]) if parent else {}
    final_captions = textarea_captions(annotation.get("result") or [])

    def edit(key: tuple[str, str], status: str, source: Mapping[str, Any] | None, matched_by: str | None,
             predicted: str | None, final: str | None) -> CaptionEdit:
        distance = caption_edit_distance(predicted, final) if predicted is not None and final is not None else None
        return CaptionEdit(task_id, annotation.get("id"), key[0], key[1], night, status,
                           source.get("model_version") if source else None, source.get("id") if source else None,
                           matched_by, predicted, final, distance)

    edits = []
    for key, final in final_captions.items():
        source, matched_by = (parent, "parent_prediction") if key in parent_captions else (None, None)
        if source is None:  # latest other prediction holding this region id (ids are uuid4: no accidental match)
            holders = [p for p in others if key in textarea_captions(p.get("result") or [])]
            if holders:
                source, matched_by = max(holders, key=lambda p: str(p.get("created_at") or "")), "region_id"
        if source is None:
            edits.append(edit(key, NEW, None, None, None, final))
            continue
        predicted = textarea_captions(source["result"])[key]
        same = normalise_caption(predicted) == normalise_caption(final)
        edits.append(edit(key, ACCEPTED if same else EDITED, source, matched_by, predicted, final))
    for key in parent_captions.keys() - final_captions.keys():
        edits.append(edit(key, DELETED, parent, "parent_prediction", parent_captions[key], None))
    return edits


def edits_from_export(export_objects: Iterable[Mapping[str, Any]], predictions: Iterable[Mapping[str, Any]] = (),
                      night: str | None = None) -> list[CaptionEdit]:
    """CaptionEdits of exported objects (either S3 format, see annotations_of). ``predictions``: stored predictions
    ({"id", "task", "model_version", "result"}) for exports that do not carry them. An annotation exported twice
    counts once (its latest update); cancelled (skipped) annotations count not at all."""
    by_task: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for prediction in predictions:
        by_task[prediction.get("task")].append(prediction)
    latest: dict[Any, tuple[Mapping[str, Any], Any, list[Mapping[str, Any]]]] = {}
    for export_object in export_objects:
        for annotation, task_id, carried in annotations_of(export_object):
            if annotation.get("was_cancelled"):
                continue
            key = annotation.get("id", id(annotation))
            seen = latest.get(key)
            if seen is None or str(annotation.get("updated_at") or "") >= str(seen[0].get("updated_at") or ""):
                latest[key] = (annotation, task_id, carried)
    edits: list[CaptionEdit] = []
    for annotation, task_id, carried in latest.values():
        known = {p.get("id") for p in carried}
        task_predictions = carried + [p for p in by_task.get(task_id, []) if p.get("id") not in known]
        edits += caption_edits(annotation, task_id, task_predictions, night)
    return edits


# ----------------------------------------------------------------------------------------------- aggregates
def summarise(edits: Iterable[CaptionEdit]) -> EditKpis:
    """Counts, acceptance rate and mean edit distance of a set of edits (see the module docstring)."""
    edits = list(edits)
    counts = {status: sum(e.status == status for e in edits) for status in (ACCEPTED, EDITED, DELETED, NEW)}
    kept = [e.edit_distance for e in edits if e.status in (ACCEPTED, EDITED) and e.edit_distance is not None]
    judged = counts[ACCEPTED] + counts[EDITED]
    return EditKpis(
        regions=len(edits), accepted=counts[ACCEPTED], edited=counts[EDITED], deleted=counts[DELETED], new=counts[NEW],
        acceptance_rate=counts[ACCEPTED] / judged if judged else None,
        mean_edit_distance=sum(kept) / len(kept) if kept else None,
    )


def kpis_by(edits: Iterable[CaptionEdit], key: str) -> dict[str, EditKpis]:
    """EditKpis per value of ``key`` ("model_version" or "night"), keys sorted; regions with no prediction are
    grouped under NO_PREDICTION for model_version."""
    if key not in ("model_version", "night"):
        raise ValueError(f"key must be 'model_version' or 'night', got {key!r}")
    groups: dict[str, list[CaptionEdit]] = defaultdict(list)
    for edit in edits:
        groups[getattr(edit, key) or NO_PREDICTION].append(edit)
    return {name: summarise(groups[name]) for name in sorted(groups)}


def kpi_report(edits: Iterable[CaptionEdit]) -> dict[str, Any]:
    """JSON-ready {"overall", "by_model_version", "by_night"}: for the nightly report and the backend's KPI JSON."""
    edits = list(edits)
    return {
        "overall": summarise(edits).to_dict(),
        "by_model_version": {k: v.to_dict() for k, v in kpis_by(edits, "model_version").items()},
        "by_night": {k: v.to_dict() for k, v in kpis_by(edits, "night").items()},
    }
