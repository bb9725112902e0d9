"""dam_loop.steps.build: export objects -> samples.jsonl + images/ + masks/ (decoding, dedup, skip rules, sticky split)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dam_loop.cli import BadArguments
from dam_loop.dataset import load_samples, split_for
from dam_loop.steps.build import build_dataset
from dam_loop.steps.evaluate import promotion_score, score_captions
from dam_loop.steps.pull import S3Source, pull, source_client
from dam_model.data import read_mask
from dam_model.fileio import read_json, read_jsonl
from dam_model.synthetic import generate_dataset
from dam_tools.export_synthetic import region_ids
from ls_io.regions import rasterize

from .conftest import put_objects


def pull_and_build(work, admin_s3, bucket, **kwargs):
    source = S3Source(bucket=bucket, prefix="ls", endpoint_url=admin_s3.meta.endpoint_url)
    result = pull(source_client(source), source, work)
    return result, build_dataset(work, result.snapshot_id, **kwargs)


def test_build_both_formats_dedup_skip_rules_and_sticky_split(tmp_path, admin_s3, bucket, export_factory):
    scenes = generate_dataset(11, 4)
    objects = export_factory(11, 4, fmt="annotation", prefix="ls")
    # The same scenes again in the per-task format, with later timestamps and an edited caption on scene 0:
    # identical image + mask -> one sample each, the latest annotation's caption wins.
    as_tasks = export_factory(11, 4, fmt="task", prefix="ls")
    first_key = sorted(as_tasks)[0]
    task = json.loads(as_tasks[first_key])
    annotation = task["annotations"][0]
    annotation["updated_at"] = "2030-01-01T00:00:00.000000Z"
    annotation["result"][1]["value"]["text"] = ["  The corrected   caption. "]
    as_tasks[first_key] = json.dumps(task).encode()
    objects |= as_tasks
    # A cancelled annotation and a region left without caption (an "unlabeled" region for pseudo-labelling).
    extra = json.loads(objects["ls/2"])
    cancelled = dict(extra, id=9001, was_cancelled=True)
    objects["ls/9001"] = json.dumps(cancelled).encode()
    uncaptioned = json.loads(export_factory(12, 1, fmt="annotation", prefix="x", first_task_id=40)["x/40"])
    uncaptioned["id"] = 9002
    for item in uncaptioned["result"]:
        if item["type"] == "textarea":
            item["value"]["text"] = [" "]
    objects["ls/9002"] = json.dumps(uncaptioned).encode()
    put_objects(admin_s3, bucket, objects)

    work = tmp_path / "work"
    result, dataset = pull_and_build(work, admin_s3, bucket, val_fraction=0.5)
    info = read_json(dataset / "dataset.json")
    n_objects = sum(len(s.objects) for s in scenes)
    counts = info["counts"]
    assert info["snapshot_id"] == result.snapshot_id
    assert counts["samples"] == n_objects and counts["duplicates"] == n_objects
    assert counts["cancelled"] == 1 and counts["unlabeled"] == len(generate_dataset(12, 1)[0].objects)
    assert counts["train"] + counts["val"] == n_objects

    rows = load_samples(dataset)
    by_caption = {r["caption"]: r for r in rows}
    assert "The corrected caption." in by_caption  # whitespace normalised, the later annotation won
    assert scenes[0].objects[0].long_caption not in by_caption
    for scene in scenes:
        for obj in scene.objects[1:]:
            row = by_caption[obj.long_caption]
            np.testing.assert_array_equal(read_mask(row["mask_path"]), obj.mask)  # RLE decoded exactly
            assert row["attributes"] == obj.attributes  # data.attributes[<region id>] of the exported task
            assert row["split"] == split_for(row["task_id"], 0.5)
            assert row["source"] == "human" and row["category"] == "object"
    assert all((dataset / r["image"]).exists() for r in rows)
    assert len(list((dataset / "images").iterdir())) == len(scenes) + 1
    assert {r["task_id"] for r in read_jsonl(dataset / "unlabeled.jsonl")} == {40}
    assert not any(r["task_id"] == 40 for r in rows)

    # A later snapshot (one more task) keeps every earlier task on the same side of the split.
    put_objects(admin_s3, bucket, export_factory(13, 2, fmt="annotation", prefix="ls", first_task_id=70))
    _, dataset2 = pull_and_build(work, admin_s3, bucket, val_fraction=0.5)
    assert dataset2 != dataset
    before = {r["id"]: r["split"] for r in rows}
    after = {r["id"]: r["split"] for r in load_samples(dataset2)}
    assert set(before) < set(after) and all(after[k] == v for k, v in before.items())


def test_attributes_round_trip_export_build_evaluate_and_are_optional(tmp_path, admin_s3, bucket, export_factory):
    """export_synthetic puts each region's attribute record in task.data; build copies it into the sample; the
    evaluate step judges from the dataset alone. Without data.attributes (a real Label Studio export) nothing is
    regenerated from meta.synthetic: the samples carry none, the judge is skipped, the reference metrics still run."""
    scenes = generate_dataset(21, 3)
    objects = export_factory(21, 3, fmt="task", prefix="ls")
    plain = export_factory(22, 2, fmt="annotation", prefix="ls", first_task_id=50, with_attributes=False)
    assert all("attributes" not in json.loads(body)["task"]["data"] for body in plain.values())
    assert all(json.loads(body)["task"]["meta"]["synthetic"] for body in plain.values())  # kept, but not used
    put_objects(admin_s3, bucket, objects | plain)
    _, dataset = pull_and_build(tmp_path / "work", admin_s3, bucket, val_fraction=0.5)
    rows = load_samples(dataset, include_pseudo=False)
    judged = [r for r in rows if r["task_id"] < 50]
    real = [r for r in rows if r["task_id"] >= 50]
    assert len(judged) == sum(len(s.objects) for s in scenes) and len(real) == sum(len(s.objects) for s in generate_dataset(22, 2))
    expected = {rid: obj.attributes for scene in scenes for rid, obj in zip(region_ids(scene), scene.objects)}
    assert all(r["attributes"] == expected[r["region_id"]] for r in judged)
    assert not any("attributes" in r for r in real)

    captions = [r["caption"] for r in judged]  # the reference captions themselves: the exact judge gives full marks
    metrics, per_sample = score_captions(judged, captions, [0.0] * len(judged))
    assert metrics["dlc_regions"] == len(judged) and metrics["dlc_positive"] == pytest.approx(1.0)
    assert promotion_score(metrics)[0] == "dlc_average" and all("dlc" in s for s in per_sample)
    metrics, per_sample = score_captions(real, [r["caption"] for r in real], [0.0] * len(real))
    assert "dlc_average" not in metrics and promotion_score(metrics)[0] == "cider"
    assert metrics["bleu4"] > 0.9 and not any("dlc" in s for s in per_sample)


def test_split_is_sticky_and_roughly_proportional():
    sides = [split_for(task_id, 0.2) for task_id in range(2000)]
    assert sides == [split_for(task_id, 0.2) for task_id in range(2000)]
    assert 0.15 < sides.count("val") / len(sides) < 0.25
    assert split_for(5, 0.0) == "train" and split_for(5, 1.0) == "val"


def test_rasterize_polygon_and_rotated_rectangle():
    polygon = {"type": "polygonlabels", "value": {"points": [[10, 10], [60, 10], [60, 60], [10, 60]], "polygonlabels": ["a"]}}
    mask = rasterize(polygon, 50, 100)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert mask[20, 30] == 255 and mask[2, 2] == 0 and mask[40, 80] == 0
    rect = {"type": "rectanglelabels", "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0}}
    r = rasterize(rect, 100, 100) > 0
    ys, xs = np.nonzero(r)
    assert (ys.min(), xs.min()) == (20, 10) and abs(ys.max() - 60) <= 1 and abs(xs.max() - 40) <= 1
    rotated = {"type": "rectanglelabels", "value": {"x": 50, "y": 50, "width": 20, "height": 10, "rotation": 90}}
    rr = rasterize(rotated, 100, 100) > 0
    ys, xs = np.nonzero(rr)
    # rotated 90 degrees clockwise about the top-left corner: now 10 wide (to the left) and 20 tall (down)
    assert abs((xs.max() - xs.min()) - 10) <= 1 and abs((ys.max() - ys.min()) - 20) <= 1 and xs.max() <= 51
    with pytest.raises(ValueError, match="unsupported region type"):
        rasterize({"type": "keypointlabels", "value": {}}, 10, 10)


def test_build_requires_a_snapshot(tmp_path):
    with pytest.raises(BadArguments, match=r"run the pull step \(dam-pull\) first"):
        build_dataset(tmp_path)
