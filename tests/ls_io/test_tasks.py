"""ls_io.tasks: which regions a task holds and their masks (the backend's /predict and the bulk job share it)."""
from __future__ import annotations

import numpy as np
import pytest

from ls_io.errors import EmptyMask, RLEError, Unprocessable
from ls_io.rle import encode_rle
from ls_io.tasks import collect_regions, image_regions, region_mask, region_masks


def brush(region_id: str, mask: np.ndarray, to_name: str = "image") -> dict:
    h, w = mask.shape
    return {"id": region_id, "type": "brushlabels", "from_name": "mask", "to_name": to_name, "original_width": w,
            "original_height": h, "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": ["object"]}}


def test_regions_come_from_annotations_drafts_predictions_then_data_first_id_wins():
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    task = {
        "annotations": [{"result": [brush("a", mask), {"id": "a", "type": "textarea", "value": {"text": ["x"]}}]},
                        {"was_cancelled": True, "result": [brush("cancelled", mask)]}],
        "drafts": [{"result": [brush("b", mask)]}],
        "predictions": [{"result": [brush("a", ~mask), brush("c", mask)]}],
        "data": {"regions": [brush("d", mask), {"id": "t", "type": "videorectangle", "value": {}}]},
    }
    regions = collect_regions(task)
    assert [r["id"] for r in regions] == ["a", "b", "c", "d", "t"]
    assert np.array_equal(region_mask(regions[0], np.zeros((4, 6, 3), np.uint8), lambda: None)[0], mask)
    task["data"]["regions"].append(brush("other", mask, to_name="second_image"))
    assert [r["id"] for r in image_regions(task, "image")] == ["a", "b", "c", "d"]


def test_masks_that_cannot_be_made_are_unprocessable():
    image = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(Unprocessable, match="is 6x5 but the image is 6x4"):
        region_mask(brush("a", np.ones((5, 6), bool)), image, lambda: None)
    keypoint = {"id": "k", "type": "keypointlabels", "value": {"x": 50, "y": 50}}
    with pytest.raises(Unprocessable, match="need a segmenter"):
        region_mask(keypoint, image, lambda: None)
    rectangle = {"id": "r", "type": "rectanglelabels", "value": {"x": 0, "y": 0, "width": 50, "height": 50}}
    mask, score = region_mask(rectangle, image, lambda: None)  # no segmenter: the box itself
    assert score is None and mask[:2, :3].all() and not mask[3:, :].any()


def test_mask_failures_carry_the_kinds_the_server_and_the_job_report():
    image = np.zeros((4, 6, 3), np.uint8)
    bad = brush("a", np.ones((4, 6), bool))
    bad["value"]["rle"] = [1, 2, 3]
    with pytest.raises(RLEError) as caught:
        region_mask(bad, image, lambda: None)
    assert caught.value.kind == "bad_region" and "brush region a" in str(caught.value)
    with pytest.raises(Unprocessable) as caught:
        region_mask(brush("b", np.ones((5, 6), bool)), image, lambda: None)
    assert caught.value.kind == "bad_region"
    with pytest.raises(EmptyMask):
        region_mask(brush("c", np.zeros((4, 6), bool)), image, lambda: None)
    skipped = []
    kept, masks, _ = region_masks([brush("c", np.zeros((4, 6), bool)), brush("d", np.ones((4, 6), bool))], image,
                                  lambda: None, lambda item, exc: skipped.append(item["id"]))
    assert [item["id"] for item in kept] == ["d"] and skipped == ["c"] and masks[0].all()
    with pytest.raises(EmptyMask, match="every region"):
        region_masks([brush("c", np.zeros((4, 6), bool))], image, lambda: None, lambda item, exc: None)
