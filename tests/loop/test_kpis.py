"""Learning-from-edits KPIs (dam_loop.kpis) on hand-made exports shaped like Label Studio 1.23.2's payloads
(/work/shared/reference/label-studio-payloads: stored_prediction_task.json, s3_objects.json)."""
from __future__ import annotations

import json

import pytest

from dam_loop.kpis import (
    ACCEPTED,
    DELETED,
    EDITED,
    NEW,
    NO_PREDICTION,
    caption_edit_distance,
    edits_from_export,
    kpi_report,
    kpis_by,
    night_of,
    normalise_caption,
    summarise,
)


def region(region_id: str, caption: str) -> list[dict]:
    """A brush region and its per-region caption: two result items with the same id (geometry first)."""
    common = {"id": region_id, "to_name": "image", "original_width": 64, "original_height": 48, "image_rotation": 0}
    return [{**common, "from_name": "mask", "type": "brushlabels",
             "value": {"format": "rle", "rle": [0, 0, 48], "brushlabels": ["object"]}},
            {**common, "from_name": "caption", "type": "textarea", "value": {"text": [caption]}}]


def prediction(prediction_id: int, task_id: int, model_version: str, captions: dict[str, str],
               created_at: str = "2026-11-25T17:43:40.824455Z") -> dict:
    result = [item for region_id, caption in captions.items() for item in region(region_id, caption)]
    return {"id": prediction_id, "task": task_id, "model_version": model_version, "score": 0.87, "result": result,
            "created_at": created_at, "project": 1}


def annotation(annotation_id: int, task_id: int, captions: dict[str, str], parent: int | None,
               updated_at: str = "2026-11-25T17:43:41.216676Z", **extra) -> dict:
    result = [item for region_id, caption in captions.items() for item in region(region_id, caption)]
    return {"id": annotation_id, "result": result, "was_cancelled": False, "ground_truth": False,
            "created_at": updated_at, "updated_at": updated_at, "lead_time": 4.2, "parent_prediction": parent,
            "parent_annotation": None, "completed_by": 1, **extra}


def annotation_object(ann: dict, task_id: int) -> dict:
    """Default S3 export format: the annotation with the full task embedded (no predictions)."""
    return {**ann, "task": {"id": task_id, "data": {"image": f"/data/upload/1/img{task_id}.png"}, "project": 1,
                            "total_predictions": 1}}


def task_object(task_id: int, annotations: list[dict], predictions: list[dict]) -> dict:
    """Task format (FUTURE_SAVE_TASK_TO_STORAGE / JSON export): the task with annotations and predictions."""
    return {"id": task_id, "data": {"image": f"/data/upload/1/img{task_id}.png"}, "project": 1,
            "annotations": [{**a, "task": task_id} for a in annotations], "predictions": predictions}


PREDICTED = {"r-accept": "a red square at the top left", "r-edit": "a blue circle in the middle"}
FINAL = {"r-accept": "a red  square at the top left\n", "r-edit": "a small green circle in the middle",
         "r-new": "a yellow triangle"}


def by_region(edits):
    return {e.region_id: e for e in edits}


# ----------------------------------------------------------------------------------------------- the three cases
@pytest.mark.parametrize("layout", ["annotation", "task"])
def test_accepted_edited_and_unpredicted_regions(layout):
    stored = prediction(7, 1, "v20261125-0200", PREDICTED)
    ann = annotation(11, 1, FINAL, parent=7)
    if layout == "annotation":  # the default export carries no predictions: they come from the API
        edits = edits_from_export([annotation_object(ann, 1)], predictions=[stored])
    else:
        edits = edits_from_export([task_object(1, [ann], [stored])])
    regions = by_region(edits)
    assert set(regions) == {"r-accept", "r-edit", "r-new"}

    accepted = regions["r-accept"]
    assert accepted.status == ACCEPTED  # whitespace differences do not count as an edit
    assert accepted.edit_distance == 0.0
    assert (accepted.model_version, accepted.prediction_id, accepted.matched_by) == ("v20261125-0200", 7, "parent_prediction")
    assert (accepted.task_id, accepted.annotation_id, accepted.textarea, accepted.night) == (1, 11, "caption", "2026-11-25")

    edited = regions["r-edit"]
    assert edited.status == EDITED
    assert edited.edit_distance == pytest.approx(
        caption_edit_distance("a blue circle in the middle", "a small green circle in the middle"))
    assert 0 < edited.edit_distance < 1

    new = regions["r-new"]
    assert new.status == NEW
    assert (new.model_version, new.predicted, new.edit_distance) == (None, None, None)

    kpis = summarise(edits)
    assert (kpis.regions, kpis.accepted, kpis.edited, kpis.deleted, kpis.new) == (3, 1, 1, 0, 1)
    assert kpis.acceptance_rate == 0.5
    assert kpis.mean_edit_distance == pytest.approx(edited.edit_distance / 2)


def test_a_deleted_predicted_region_is_counted_but_not_in_the_rates():
    stored = prediction(7, 1, "v1", {**PREDICTED, "r-gone": "a wrong object"})
    edits = edits_from_export([annotation_object(annotation(11, 1, FINAL, parent=7), 1)], predictions=[stored])
    gone = by_region(edits)["r-gone"]
    assert (gone.status, gone.final, gone.edit_distance) == (DELETED, None, None)
    kpis = summarise(edits)
    assert kpis.deleted == 1 and kpis.acceptance_rate == 0.5


def test_without_parent_prediction_the_region_id_finds_the_served_caption():
    served = prediction(9, 2, "v2", {"r-x": "a red square"}, created_at="2026-11-26T01:00:00Z")
    older = prediction(8, 2, "v1", {"r-x": "a red squar"}, created_at="2026-11-25T01:00:00Z")
    edits = edits_from_export([annotation_object(annotation(12, 2, {"r-x": "a red square"}, parent=None), 2)],
                              predictions=[older, served])
    (edit,) = edits
    assert (edit.status, edit.model_version, edit.prediction_id, edit.matched_by) == (ACCEPTED, "v2", 9, "region_id")


def test_an_annotation_from_scratch_has_nothing_to_compare():
    edits = edits_from_export([annotation_object(annotation(13, 3, {"r-own": "a cat"}, parent=None), 3)])
    assert [e.status for e in edits] == [NEW]
    assert summarise(edits).acceptance_rate is None


# ----------------------------------------------------------------------------------------------- aggregation
def test_kpis_per_model_version_and_per_night():
    night_one = [annotation_object(annotation(21, 1, {"a": "red square", "b": "blue circle"}, parent=1,
                                              updated_at="2026-11-25T20:00:00Z"), 1)]
    night_two = [annotation_object(annotation(22, 2, {"c": "green star", "d": "yellow ring"}, parent=2,
                                              updated_at="2026-11-26T20:00:00+00:00"), 2)]
    predictions = [prediction(1, 1, "v1", {"a": "red square", "b": "red circle"}),
                   prediction(2, 2, "v2", {"c": "green star", "d": "yellow ring"})]
    edits = edits_from_export(night_one + night_two, predictions=predictions)
    per_version = kpis_by(edits, "model_version")
    assert per_version["v1"].acceptance_rate == 0.5 and per_version["v2"].acceptance_rate == 1.0
    assert per_version["v2"].mean_edit_distance == 0.0
    per_night = kpis_by(edits, "night")
    assert list(per_night) == ["2026-11-25", "2026-11-26"]
    assert per_night["2026-11-26"].accepted == 2
    report = kpi_report(edits)
    assert json.loads(json.dumps(report)) == report
    assert report["overall"]["regions"] == 4 and report["overall"]["acceptance_rate"] == 0.75
    with pytest.raises(ValueError):
        kpis_by(edits, "annotator")


def test_unpredicted_regions_group_under_no_prediction():
    edits = edits_from_export([annotation_object(annotation(13, 3, {"r-own": "a cat"}, parent=None), 3)])
    assert list(kpis_by(edits, "model_version")) == [NO_PREDICTION]


def test_a_reexported_annotation_counts_once_and_a_skipped_one_not_at_all():
    stored = prediction(7, 1, "v1", PREDICTED)
    first = annotation_object(annotation(11, 1, PREDICTED, parent=7, updated_at="2026-11-25T10:00:00Z"), 1)
    updated = annotation_object(annotation(11, 1, FINAL, parent=7, updated_at="2026-11-25T11:00:00Z"), 1)
    skipped = annotation_object(annotation(14, 1, PREDICTED, parent=7, was_cancelled=True), 1)
    edits = edits_from_export([updated, first, skipped], predictions=[stored])
    assert summarise(edits).regions == 3  # the update's three regions, once
    assert {e.annotation_id for e in edits} == {11}


def test_the_night_can_be_named_by_the_caller():
    edits = edits_from_export([annotation_object(annotation(13, 3, {"r": "x"}, parent=None), 3)], night="run-42")
    assert edits[0].night == "run-42"


def test_text_normalisation_and_distance():
    assert normalise_caption("  a red\tsquare \n\n on grey ") == "a red square on grey"
    assert caption_edit_distance("abc", "abc ") == 0.0
    assert caption_edit_distance("", "") == 0.0
    assert caption_edit_distance("abcd", "abxd") == 0.25
    assert caption_edit_distance("", "new text") == 1.0
    assert night_of({"updated_at": "2026-11-25T23:30:00-02:00"}) == "2026-11-26"
    assert night_of({}) == "unknown"


def test_real_label_studio_payloads_parse(shared_dir):
    """The captured S3 objects (default format, parent_prediction null) and a stored prediction of another
    region: every annotated region is 'new', the field names are the ones this module reads."""
    payloads = shared_dir / "reference" / "label-studio-payloads"
    objects = json.loads((payloads / "s3_objects.json").read_text()).values()
    stored = json.loads((payloads / "stored_prediction_task.json").read_text())
    edits = edits_from_export(objects, predictions=[stored])
    assert edits and {e.status for e in edits} == {NEW}
    assert by_region(edits)["ann_region_1"].final == "red square, annotated via API"
    assert {e.night for e in edits} == {"2026-11-25"}
