"""Step 1 of the loop (dam-pull): pull Label Studio's target-storage export from S3 into an immutable local snapshot.

Label Studio exports each annotation to ``<prefix>/<annotation id>`` (default) or each task to ``<prefix>/<task id>.json``
(FUTURE_SAVE_TASK_TO_STORAGE=true), overwrites the object on update and DELETES it when the annotation is deleted.
So this step keeps its own history:

- it lists the bucket and downloads only objects whose ETag or LastModified differ from the cumulative manifest;
- it writes ``snapshots/<id>/objects/`` (only the new/changed objects), ``snapshots/<id>/manifest.json``
  (cumulative: every key ever seen, where its latest copy lives, and whether it vanished from the bucket) and
  ``snapshots/<id>/snapshot.json`` (the run summary), then renames the folder into place; snapshots are never changed;
- a corrupt or unreadable object is reported in the summary and skipped (retried next time), never fatal;
- it only ever calls ListObjectsV2 and GetObject: a botocore hook refuses any other S3 operation.

Usage::

    python -m dam_loop.steps.pull --work-root loop_work           # S3_ENDPOINT_URL, S3_BUCKET, S3_PREFIX, AWS_* from env

Exit codes: 0 a new snapshot was written, 10 nothing new, 2 bad arguments, 1 failure.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from dam_loop.cli import (
    EXIT_NOTHING_NEW,
    EXIT_OK,
    BadArguments,
    add_log_level_arg,
    add_work_root_arg,
    env_default,
    run_main,
    step_parser,
)
from dam_loop.provenance import new_run_id, utc_iso
from dam_model.fileio import atomic_write_json, read_json
from ls_io.exports import classify_export
from ls_io.s3 import make_s3_client

log = logging.getLogger("dam_loop.pull")


@dataclasses.dataclass(frozen=True)
class S3Source:
    """Where Label Studio's target storage writes. Credentials are not stored here (boto3 reads them from env)."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None

    def list_prefix(self) -> str:
        # Label Studio writes "<prefix>/<id>": list "prefix/" so "prefix2/..." is not picked up.
        prefix = self.prefix.strip("/")
        return f"{prefix}/" if prefix else ""


@dataclasses.dataclass
class PullResult:
    """What one pull did. ``snapshot_id`` is the newest snapshot (the new one, or the previous one when nothing changed)."""

    snapshot_id: str | None
    created: bool
    new: list[str]
    changed: list[str]
    unchanged: int
    deleted_in_source: list[str]
    errors: list[dict[str, str]]
    downloaded_bytes: int

    def summary(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "created": self.created,
            "new": len(self.new),
            "changed": len(self.changed),
            "unchanged": self.unchanged,
            "deleted_in_source": len(self.deleted_in_source),
            "errors": self.errors,
            "downloaded_bytes": self.downloaded_bytes,
        }


def source_client(source: S3Source) -> Any:
    """A read-only S3 client for the source bucket (ListObjectsV2 and GetObject only: any other operation raises
    PermissionError before it is sent), path-style as S3-compatible servers expect. Credentials: boto3's chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ...)."""
    return make_s3_client(source.endpoint_url, region=source.region or env_default("AWS_DEFAULT_REGION", "us-east-1"),
                          path_style=True, read_only=True)


def object_file_name(key: str) -> str:
    """A flat, safe file name for an S3 key: readable tail + a hash of the whole key (keys may hold '/' or '..')."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", key.rsplit("/", 1)[-1])[-60:].lstrip(".") or "object"
    return f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-{tail}"


def latest_snapshot_id(work_root: Path) -> str | None:
    manifest_path = Path(work_root) / "manifest.json"
    if not manifest_path.exists():
        return None
    return read_json(manifest_path).get("snapshot_id")


def load_manifest(work_root: Path) -> dict[str, Any]:
    """The cumulative manifest ({"snapshot_id", "objects": {key: entry}}) or an empty one."""
    manifest_path = Path(work_root) / "manifest.json"
    if manifest_path.exists():
        return read_json(manifest_path)
    return {"snapshot_id": None, "objects": {}}


def list_objects(client: Any, source: S3Source) -> dict[str, dict[str, Any]]:
    """{key: {etag, last_modified (ISO), size}} for every object under the prefix (paginated)."""
    listing: dict[str, dict[str, Any]] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=source.bucket, Prefix=source.list_prefix()):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):  # folder placeholder objects
                continue
            listing[key] = {
                "etag": str(item.get("ETag", "")).strip('"'),
                "last_modified": utc_iso(item["LastModified"]) if item.get("LastModified") else None,
                "size": int(item.get("Size", 0)),
            }
    return listing


def pull(client: Any, source: S3Source, work_root: Path) -> PullResult:
    """Download new/changed export objects into a new immutable snapshot under ``work_root/snapshots``.

    Returns a PullResult; ``created`` is False (and no folder is written) when nothing changed in the bucket.
    """
    work_root = Path(work_root)
    manifest = load_manifest(work_root)
    known: dict[str, dict[str, Any]] = manifest.get("objects", {})
    listing = list_objects(client, source)
    log.info("listed %d objects in bucket %s under %r", len(listing), source.bucket, source.list_prefix())

    snapshot_id = new_run_id()
    snapshots = work_root / "snapshots"
    staging = snapshots / f".staging-{snapshot_id}"
    objects_dir = staging / "objects"
    new, changed, errors = [], [], []
    unchanged = 0
    downloaded = 0
    entries = {key: dict(entry) for key, entry in known.items()}
    for key in sorted(listing):
        meta = listing[key]
        old = known.get(key)
        if old and not old.get("deleted_at") and old["etag"] == meta["etag"] and old["last_modified"] == meta["last_modified"]:
            unchanged += 1
            continue
        try:
            body = client.get_object(Bucket=source.bucket, Key=key)["Body"].read()
            kind = classify_export(json.loads(body.decode("utf-8")))
        except Exception as exc:  # a bad object must not stop the run: report it and move on
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log.warning("skipping unreadable object %s (%s)", key, reason)
            errors.append({"key": key, "reason": reason})
            continue
        objects_dir.mkdir(parents=True, exist_ok=True)
        file_name = object_file_name(key)
        (objects_dir / file_name).write_bytes(body)
        downloaded += len(body)
        (changed if old else new).append(key)
        entries[key] = {
            **meta,
            "kind": kind,
            "sha256": hashlib.sha256(body).hexdigest(),
            "snapshot": snapshot_id,
            "file": f"snapshots/{snapshot_id}/objects/{file_name}",
            "deleted_at": None,
        }
    # Label Studio deletes objects with their annotations: keep our copy, mark it.
    deleted = [key for key, entry in known.items() if key not in listing and not entry.get("deleted_at")]
    for key in deleted:
        entries[key] = {**entries[key], "deleted_at": utc_iso()}

    previous_id = manifest.get("snapshot_id")
    if not new and not changed and not deleted:
        shutil.rmtree(staging, ignore_errors=True)
        log.info("nothing new in the bucket (latest snapshot %s; %d unreadable objects)", previous_id, len(errors))
        return PullResult(previous_id, False, [], [], unchanged, [], errors, 0)

    cumulative = {"snapshot_id": snapshot_id, "parent": previous_id, "objects": entries}
    result = PullResult(snapshot_id, True, new, changed, unchanged, deleted, errors, downloaded)
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_json(staging / "manifest.json", cumulative)
    atomic_write_json(
        staging / "snapshot.json",
        {
            "id": snapshot_id,
            "parent": previous_id,
            "created_at": utc_iso(),
            "source": {"bucket": source.bucket, "prefix": source.list_prefix(), "endpoint_url": source.endpoint_url},
            **result.summary(),
            "new_keys": new,
            "changed_keys": changed,
            "deleted_keys": deleted,
        },
    )
    os.replace(staging, snapshots / snapshot_id)  # the snapshot appears whole or not at all
    atomic_write_json(work_root / "manifest.json", cumulative)  # then the "latest" pointer
    log.info(
        "snapshot %s: %d new, %d changed, %d unchanged, %d deleted in source, %d unreadable, %d bytes",
        snapshot_id, len(new), len(changed), unchanged, len(deleted), len(errors), downloaded,
    )
    return result


def source_from_args(args: argparse.Namespace) -> S3Source:
    if not args.bucket:
        raise BadArguments("no bucket: pass --bucket or set S3_BUCKET")
    return S3Source(bucket=args.bucket, prefix=args.prefix or "", endpoint_url=args.endpoint_url or None, region=args.region)


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """S3 options (nightly has them too). Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY only."""
    group = parser.add_argument_group("S3 source (Label Studio target storage)")
    group.add_argument("--endpoint-url", default=env_default("S3_ENDPOINT_URL"), help="S3 endpoint, e.g. http://minio:9000 (env S3_ENDPOINT_URL)")
    group.add_argument("--bucket", default=env_default("S3_BUCKET"), help="bucket (env S3_BUCKET)")
    group.add_argument("--prefix", default=env_default("S3_PREFIX", ""), help="key prefix of the export (env S3_PREFIX)")
    group.add_argument("--region", default=env_default("AWS_DEFAULT_REGION"), help="region (env AWS_DEFAULT_REGION)")


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser("python -m dam_loop.steps.pull", __doc__)
    add_source_args(parser)
    add_work_root_arg(parser)
    add_log_level_arg(parser)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    source = source_from_args(args)
    result = pull(source_client(source), source, args.work_root)
    print(json.dumps(result.summary(), indent=2))
    return EXIT_OK if result.created else EXIT_NOTHING_NEW


def main(argv: list[str] | None = None) -> int:
    return run_main(run_cli, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
