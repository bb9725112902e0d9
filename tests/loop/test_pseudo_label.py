"""dam_loop.steps.pseudo_label with a stand-in captioner and segmenter: thresholds, ratio cap, frozen validation split."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from dam_model.generation import Caption
from dam_model.segmentation.types import MaskPrediction
from dam_loop.steps.pseudo_label import max_pseudo_count, pseudo_label
from dam_model.fileio import read_jsonl, write_jsonl


class FakeCaptioner:
    """Caption confidence = -(mask area / 100): small regions are 'confident'."""

    def __init__(self):
        self.calls = 0

    def describe_batch(self, items, max_new_tokens, temperature):
        self.calls += 1
        return [[Caption(f"region of {int(m.sum())} px", -float(m.sum()) / 100.0, []) for m in masks] for _, masks in items]


class FakeSegmenter:
    def __init__(self, masks):
        self.masks = masks

    def automatic_masks(self, image, max_masks, min_area):
        return [MaskPrediction(mask=m, score=s, logits=np.zeros(0, np.float32)) for m, s in self.masks][:max_masks]


def square(y, x, size, shape=(40, 40)):
    mask = np.zeros(shape, bool)
    mask[y:y + size, x:x + size] = True
    return mask


def make_dataset(folder):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(folder / "images/img.png")
    rows, unlabeled = [], []
    for i, (split, size) in enumerate([("train", 4)] * 4 + [("val", 4)]):
        mask = square(i * 5, 0, size)
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(folder / f"masks/h{i}.png")
        rows.append({"id": f"h{i}", "image": "images/img.png", "mask": f"masks/h{i}.png", "caption": "human",
                     "split": split, "task_id": i, "width": 40, "height": 40, "source": "human"})
    for i, (split, size) in enumerate([("train", 2), ("train", 5), ("train", 9), ("val", 2)]):
        mask = square(0, 20 + i * 2, size)
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(folder / f"masks/u{i}.png")
        unlabeled.append({"id": f"u{i}", "image": "images/img.png", "mask": f"masks/u{i}.png", "split": split,
                          "task_id": 10 + i, "width": 40, "height": 40})
    write_jsonl(folder / "samples.jsonl", rows)
    write_jsonl(folder / "unlabeled.jsonl", unlabeled)
    (folder / "dataset.json").write_text(json.dumps({"counts": {}}))


def test_ratio_cap():
    assert max_pseudo_count(4, 0.5) == 4 and max_pseudo_count(4, 1 / 3) == 2 and max_pseudo_count(4, 0.0) == 0
    assert max_pseudo_count(0, 0.5) == 0 and max_pseudo_count(10, 0.2) == 2


def test_thresholds_ratio_and_validation_split(tmp_path):
    make_dataset(tmp_path)
    # 4 human train regions, max fraction 1/3 -> at most 2 pseudo labels; -0.5 keeps areas <= 50 px.
    summary = pseudo_label(tmp_path, tmp_path, min_logprob=-0.5, max_fraction=1 / 3, model=FakeCaptioner())
    rows = read_jsonl(tmp_path / "pseudo.jsonl")
    assert summary["candidates"] == 3 and summary["budget"] == 2
    assert [r["id"] for r in rows] == ["u0", "u1"]  # most confident first, u2 (81 px) below the threshold
    assert all(r["source"] == "pseudo" and r["split"] == "train" and r["confidence"] >= -0.5 for r in rows)
    assert not any(r["task_id"] == 13 for r in rows)  # validation tasks are never pseudo-labelled
    assert rows[0]["caption"] == "region of 4 px"


def test_sam2_automatic_masks_filtered_by_overlap_and_score(tmp_path):
    make_dataset(tmp_path)
    overlapping = (square(0, 0, 4), 0.99)  # the human region h0
    new_good = (square(30, 30, 3), 0.95)
    new_weak = (square(30, 10, 3), 0.5)
    segmenter = FakeSegmenter([overlapping, new_good, new_weak])
    pseudo_label(tmp_path, tmp_path, min_logprob=-0.5, min_mask_score=0.8, max_fraction=0.5, model=FakeCaptioner(),
                 sam2={"max_masks": 8, "min_area": 1, "max_iou": 0.5}, segmenter=segmenter)
    rows = read_jsonl(tmp_path / "pseudo.jsonl")
    auto = [r for r in rows if r["mask_source"] == "sam2_auto"]
    assert len(auto) == 1 and auto[0]["mask_score"] == 0.95
    saved = np.asarray(Image.open(tmp_path / auto[0]["mask"])) > 0
    np.testing.assert_array_equal(saved, new_good[0])


def test_no_candidates_loads_no_model(tmp_path):
    make_dataset(tmp_path)
    write_jsonl(tmp_path / "unlabeled.jsonl", [])
    summary = pseudo_label(tmp_path, tmp_path / "does-not-exist")
    assert summary["kept"] == 0 and read_jsonl(tmp_path / "pseudo.jsonl") == []
