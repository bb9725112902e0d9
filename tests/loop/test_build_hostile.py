"""Malformed Label Studio exports in S3: each bad object is skipped with a reason, the night goes on, the good
annotations still become samples, and the source bucket is left exactly as it was."""
from __future__ import annotations

import json

import pytest

from dam_loop.steps.build import build_dataset
from dam_loop.steps.pull import S3Source, pull, source_client
from dam_model.fileio import read_json
from dam_model.synthetic import generate_dataset

from .conftest import bucket_bytes, put_objects


def _annotation(objects: dict[str, bytes]) -> dict:
    return json.loads(objects[sorted(objects)[0]])


def _brush_rle_too_short(export: dict) -> dict:
    for item in export["result"]:
        if item["type"] == "brushlabels":
            item["value"]["rle"] = item["value"]["rle"][:10]
    return export


def _unknown_region_type(export: dict) -> dict:
    for item in export["result"]:
        if item["type"] == "brushlabels":
            item["type"] = "ellipselabels"
    return export


def _deleted_task_image(export: dict) -> dict:
    export["task"]["data"] = {key: "/data/upload/1/this-file-was-deleted.png" for key in export["task"]["data"]}
    return export


def _wrong_size(export: dict) -> dict:
    for item in export["result"]:
        item["original_width"], item["original_height"] = 7, 5
    return export


def _result_not_a_list(export: dict) -> dict:
    export["result"] = {"not": "a list"}
    return export


CASES = {
    "not_json": lambda base: b"{not json",
    "json_array": lambda base: b"[1, 2]",
    "neither_annotation_nor_task": lambda base: json.dumps({"id": 5}).encode(),
    "rle_of_the_wrong_length": lambda base: json.dumps(_brush_rle_too_short(base)).encode(),
    "unknown_region_type": lambda base: json.dumps(_unknown_region_type(base)).encode(),
    "deleted_task_image": lambda base: json.dumps(_deleted_task_image(base)).encode(),
    "region_size_differs_from_the_image": lambda base: json.dumps(_wrong_size(base)).encode(),
    "result_not_a_list": lambda base: json.dumps(_result_not_a_list(base)).encode(),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_export_is_skipped_with_a_reason_and_nothing_else_is_lost(case, tmp_path, admin_s3, bucket,
                                                                              export_factory):
    good = export_factory(21, 2, fmt="annotation", prefix="ls")
    bad_source = export_factory(22, 1, fmt="annotation", prefix="bad")
    bad_key = "ls/bad-object"
    put_objects(admin_s3, bucket, {**good, bad_key: CASES[case](_annotation(bad_source))})
    before = bucket_bytes(admin_s3, bucket)

    source = S3Source(bucket=bucket, prefix="ls", endpoint_url=admin_s3.meta.endpoint_url)
    pulled = pull(source_client(source), source, tmp_path / "work")
    dataset = build_dataset(tmp_path / "work", pulled.snapshot_id)

    info = read_json(dataset / "dataset.json")
    n_good_regions = sum(len(scene.objects) for scene in generate_dataset(21, 2))
    assert info["counts"]["samples"] == n_good_regions, "the good annotations must all become samples"
    reasons = [e for e in pulled.errors if e["key"] == bad_key]
    reasons += [e for e in info["skipped"] if e["key"].startswith(bad_key)]
    assert reasons, f"{case}: no skip reason recorded for {bad_key}"
    assert all(e["reason"].strip() for e in reasons)
    assert bucket_bytes(admin_s3, bucket) == before, "the loop never modifies or deletes source annotations"
