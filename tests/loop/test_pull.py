"""dam_loop.steps.pull against a moto S3 server process: both export formats, incremental, immutable, read-only, robust."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dam_loop.steps.pull import S3Source, pull, source_client
from dam_model.fileio import read_json

from .conftest import TEST_SECRET, bucket_bytes, put_objects, run_module


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pull_both_formats_incremental_and_bucket_untouched(tmp_path, admin_s3, bucket, export_factory, caplog):
    caplog.set_level(logging.DEBUG)
    objects = export_factory(seed=1, n_scenes=3, fmt="annotation", prefix="ls")
    objects |= export_factory(seed=2, n_scenes=2, fmt="task", prefix="ls", first_task_id=50)
    objects["ls/999"] = b"{not json"  # a corrupt object
    objects["other/1"] = b"{}"  # outside the prefix
    put_objects(admin_s3, bucket, objects)
    before = bucket_bytes(admin_s3, bucket)

    source = S3Source(bucket=bucket, prefix="ls", endpoint_url=admin_s3.meta.endpoint_url)
    client = source_client(source)
    work = tmp_path / "work"
    first = pull(client, source, work)
    assert first.created and sorted(first.new) == sorted(k for k in objects if k.startswith("ls/") and k != "ls/999")
    assert [e["key"] for e in first.errors] == ["ls/999"]
    snap1 = work / "snapshots" / first.snapshot_id
    manifest = read_json(snap1 / "manifest.json")
    kinds = {entry["kind"] for entry in manifest["objects"].values()}
    assert kinds == {"annotation", "task"}
    for key, entry in manifest["objects"].items():  # local copies are byte-identical to the bucket's
        assert (work / entry["file"]).read_bytes() == objects[key]
    summary = read_json(snap1 / "snapshot.json")
    assert summary["errors"][0]["key"] == "ls/999" and summary["new"] == 5
    snap1_files = tree_bytes(snap1)

    # Nothing changed: no new snapshot, nothing downloaded.
    second = pull(client, source, work)
    assert not second.created and second.snapshot_id == first.snapshot_id and second.unchanged == 5

    # One object updated, one added, one deleted (Label Studio deletes objects with their annotations).
    changed_key, deleted_key = sorted(k for k in objects if k.startswith("ls/") and k != "ls/999")[:2]
    body = json.loads(objects[changed_key])
    body["result"][1]["value"]["text"] = ["an edited caption"]
    admin_s3.put_object(Bucket=bucket, Key=changed_key, Body=json.dumps(body).encode())
    admin_s3.delete_object(Bucket=bucket, Key=deleted_key)
    admin_s3.put_object(Bucket=bucket, Key="ls/777", Body=objects[changed_key])
    between = bucket_bytes(admin_s3, bucket)
    third = pull(client, source, work)
    assert third.created and third.new == ["ls/777"] and third.changed == [changed_key]
    assert third.deleted_in_source == [deleted_key] and third.unchanged == 3
    snap3 = work / "snapshots" / third.snapshot_id
    assert sorted(p.name for p in (snap3 / "objects").iterdir()) and len(list((snap3 / "objects").iterdir())) == 2
    manifest3 = read_json(snap3 / "manifest.json")
    assert manifest3["objects"][deleted_key]["deleted_at"]  # kept, marked
    assert (work / manifest3["objects"][deleted_key]["file"]).exists()
    assert json.loads((work / manifest3["objects"][changed_key]["file"]).read_bytes())["result"][1]["value"]["text"] == ["an edited caption"]
    assert tree_bytes(snap1) == snap1_files  # earlier snapshots never change
    assert read_json(work / "manifest.json")["snapshot_id"] == third.snapshot_id

    # The source bucket is byte-identical to what the test put there (pull never writes or deletes).
    assert bucket_bytes(admin_s3, bucket) == between
    assert set(before) - set(between) == {deleted_key}
    assert TEST_SECRET not in caplog.text


def test_client_refuses_writes(s3_env, bucket):
    client = source_client(S3Source(bucket=bucket, endpoint_url=s3_env["S3_ENDPOINT_URL"]))
    with pytest.raises(PermissionError, match="PutObject"):
        client.put_object(Bucket=bucket, Key="x", Body=b"x")
    with pytest.raises(PermissionError, match="DeleteObject"):
        client.delete_object(Bucket=bucket, Key="x")


def test_pull_cli_env_and_exit_codes(tmp_path, s3_env, admin_s3, bucket, export_factory):
    put_objects(admin_s3, bucket, export_factory(seed=3, n_scenes=2, prefix="p"))
    env = {"S3_BUCKET": bucket, "S3_PREFIX": "p", "LOOP_WORK_ROOT": str(tmp_path / "w")}
    done = run_module("dam_loop.steps.pull", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["new"] == 2
    assert TEST_SECRET not in done.stdout + done.stderr
    again = run_module("dam_loop.steps.pull", env=env, timeout=120)
    assert again.returncode == 10, again.stderr
    no_bucket = run_module("dam_loop.steps.pull", env={"LOOP_WORK_ROOT": str(tmp_path / "w")}, timeout=120)
    assert no_bucket.returncode == 2 and "bucket" in no_bucket.stderr
