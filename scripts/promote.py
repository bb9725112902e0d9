"""Step 6 of the loop: promote a candidate model (immutable versioned folder, then ONE pointer flip), or roll back.

Layout under ``MODELS_ROOT`` (a folder, or ``s3://bucket/prefix``), read by backend/model_store.py (the names are
shared with it through backend/model_layout.py)::

    versions/<version>/     official DAM folder layout + provenance.json; never modified once written
    current.json            {"version", "path": "versions/<version>", "promoted_at", "previous", "metrics"}
    history.jsonl           one line per pointer change (audit trail)

The version folder is written first (to a staging name, renamed into place); current.json is written LAST through a
temp file + os.replace, so a reader sees either the old or the new pointer, never a half-copied model.
On S3 the folder is uploaded first and current.json is one PUT at the end (a single PUT is atomic on S3).

Usage::

    python -m scripts.promote promote --candidate DIR --metrics metrics.json [--margin 0.01] [--version V] [--force]
    python -m scripts.promote rollback [--to VERSION]     # default: the pointer's "previous"
    python -m scripts.promote status

Exit codes: 0 done, 11 candidate not better (not promoted), 2 bad arguments, 1 failure.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from dam_model.versions import POINTER_NAME, PROVENANCE_NAME, VERSION_RE, VERSIONS_DIR, parse_s3_url, version_path
from scripts.loop_common import (
    EXIT_FAILURE,
    EXIT_NOT_BETTER,
    EXIT_PROMOTED,
    BadArguments,
    LoopError,
    add_log_level_arg,
    add_models_root_arg,
    atomic_write_json,
    env_float,
    read_json,
    setup_logging,
    utc_iso,
    utc_now,
)

log = logging.getLogger("scripts.promote")

# The layout (pointer name, versions/<v>/, version names) is shared with the reader: backend/model_layout.py.


def new_version_name() -> str:
    """Sortable default version name, e.g. v20261125-183000."""
    return utc_now().strftime("v%Y%m%d-%H%M%S")


def should_promote(candidate_score: float, champion_score: float | None, margin: float) -> bool:
    """True when there is no champion, or the candidate's score beats the champion's by MORE than ``margin``."""
    if champion_score is None:
        return True
    return candidate_score > champion_score + margin


# ----------------------------------------------------------------------------------------------- stores
class LocalModelStore:
    """Versions and the pointer in a local folder (the layout backend/model_store.py reads)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def read_pointer(self) -> dict[str, Any] | None:
        path = self.root / POINTER_NAME
        return read_json(path) if path.exists() else None

    def write_pointer(self, pointer: dict[str, Any]) -> None:
        atomic_write_json(self.root / POINTER_NAME, pointer)
        with open(self.root / "history.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(pointer, sort_keys=True) + "\n")

    def has_version(self, version: str) -> bool:
        return (self.root / version_path(version)).is_dir()

    def versions(self) -> list[str]:
        folder = self.root / VERSIONS_DIR
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.exists() else []

    def write_version(self, version: str, source_dir: Path, provenance: dict[str, Any]) -> None:
        versions = self.root / VERSIONS_DIR
        versions.mkdir(parents=True, exist_ok=True)
        staging = versions / f".staging-{version}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source_dir, staging, ignore=shutil.ignore_patterns("checkpoint-*", "checkpoints", ".staging*", "*.tmp"))
        atomic_write_json(staging / PROVENANCE_NAME, provenance)
        os.replace(staging, versions / version)  # fails if a non-empty folder of that name appeared meanwhile

    def local_path(self, version: str) -> Path:
        return self.root / version_path(version)


class S3ModelStore:
    """Versions and the pointer under s3://bucket/prefix (upload the folder first, PUT current.json last)."""

    def __init__(self, url: str, client: Any = None) -> None:
        try:
            self.bucket, self.prefix = parse_s3_url(url)
        except ValueError as exc:
            raise BadArguments(str(exc)) from None
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=os.environ.get("MODELS_S3_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL") or None)
        self.client = client

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _get_json(self, key: str) -> Any | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def read_pointer(self) -> dict[str, Any] | None:
        return self._get_json(POINTER_NAME)

    def write_pointer(self, pointer: dict[str, Any]) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + POINTER_NAME, Body=json.dumps(pointer, indent=2).encode())
        stamp = pointer["promoted_at"].replace(":", "")
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}history/{stamp}.json", Body=json.dumps(pointer).encode())

    def has_version(self, version: str) -> bool:
        reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}{version_path(version)}/", MaxKeys=1)
        return reply.get("KeyCount", 0) > 0

    def versions(self) -> list[str]:
        reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}{VERSIONS_DIR}/", Delimiter="/")
        return sorted(p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in reply.get("CommonPrefixes", []))

    def write_version(self, version: str, source_dir: Path, provenance: dict[str, Any]) -> None:
        base = f"{self.prefix}{version_path(version)}/"
        for path in sorted(Path(source_dir).rglob("*")):
            rel = path.relative_to(source_dir).as_posix()
            if path.is_file() and not rel.startswith("checkpoint") and rel != PROVENANCE_NAME:
                self.client.upload_file(str(path), self.bucket, base + rel)
        # LAST: the backend (backend/s3_models.py) treats a version folder without provenance.json as unfinished
        self.client.put_object(Bucket=self.bucket, Key=base + PROVENANCE_NAME, Body=json.dumps(provenance, indent=2).encode())


def open_store(models_root: str | Path) -> LocalModelStore | S3ModelStore:
    text = str(models_root)
    return S3ModelStore(text) if text.startswith("s3://") else LocalModelStore(text)


# ----------------------------------------------------------------------------------------------- actions
def promote(
    models_root: str | Path,
    candidate_dir: Path,
    metrics: dict[str, Any] | None = None,
    version: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Copy ``candidate_dir`` to versions/<version> (immutable), then flip current.json to it. Returns the new pointer.

    ``provenance`` (merged over the candidate's own provenance.json) is written inside the version folder.
    """
    store = open_store(models_root)
    candidate_dir = Path(candidate_dir)
    if not (candidate_dir / "config.json").exists():
        raise BadArguments(f"{candidate_dir} is not a model folder (no config.json)")
    version = version or new_version_name()
    if not VERSION_RE.match(version):
        raise BadArguments(f"invalid version name {version!r} (letters, digits, '.', '_', '-')")
    if store.has_version(version):
        raise BadArguments(f"version {version} already exists in {store}: versions are immutable")
    own = read_json(candidate_dir / "provenance.json") if (candidate_dir / "provenance.json").exists() else {}
    full_provenance = {**own, **(provenance or {}), "version": version, "promoted_metrics": metrics or {}}
    store.write_version(version, candidate_dir, full_provenance)
    previous = store.read_pointer()
    pointer = {
        "version": version,
        "path": version_path(version),
        "promoted_at": utc_iso(),
        "previous": previous["version"] if previous else None,
        "metrics": metrics or {},
    }
    store.write_pointer(pointer)  # LAST: the one switch readers see
    log.info("promoted %s in %s (previous %s)", version, store, pointer["previous"])
    return pointer


def rollback(models_root: str | Path, to: str | None = None) -> dict[str, Any]:
    """Point current.json at ``to`` (default: the pointer's previous version). Returns the new pointer."""
    store = open_store(models_root)
    current = store.read_pointer()
    target = to or (current or {}).get("previous")
    if not target:
        raise BadArguments("nothing to roll back to: no --to and the pointer has no previous version")
    if not store.has_version(target):
        raise BadArguments(f"version {target} does not exist in {store} (have: {', '.join(store.versions()) or 'none'})")
    metrics: dict[str, Any] = {}
    if isinstance(store, LocalModelStore) and (store.local_path(target) / PROVENANCE_NAME).exists():
        metrics = read_json(store.local_path(target) / PROVENANCE_NAME).get("promoted_metrics", {})
    pointer = {
        "version": target,
        "path": version_path(target),
        "promoted_at": utc_iso(),
        "previous": current["version"] if current else None,
        "metrics": metrics,
        "rollback": True,
    }
    store.write_pointer(pointer)
    log.info("rolled back %s -> %s in %s", pointer["previous"], target, store)
    return pointer


def champion_dir(models_root: str | Path) -> Path | None:
    """The local folder of the serving version, or None when nothing was promoted yet (local stores only)."""
    store = open_store(models_root)
    if not isinstance(store, LocalModelStore):
        return None
    pointer = store.read_pointer()
    return (store.root / pointer["path"]) if pointer else None


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.promote", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_models_root_arg(parser)
    add_log_level_arg(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("promote", help="promote a candidate if it beats the champion")
    p.add_argument("--candidate", type=Path, required=True, help="candidate model folder (official layout)")
    p.add_argument("--metrics", type=Path, help="metrics.json from scripts.evaluate (candidate/champion scores)")
    p.add_argument("--version", help="version name (default v<UTC date-time>)")
    p.add_argument(
        "--margin", type=float, default=env_float("PROMOTE_MARGIN", 0.0),
        help="candidate score must exceed the champion's by more than this (env PROMOTE_MARGIN; default 0)",
    )
    p.add_argument("--force", action="store_true", help="promote without comparing scores")
    r = sub.add_parser("rollback", help="point current.json at an earlier version")
    r.add_argument("--to", help="version to serve (default: the pointer's previous version)")
    sub.add_parser("status", help="print the pointer and the available versions")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "promote":
            metrics = read_json(args.metrics) if args.metrics else {}
            candidate_score = metrics.get("candidate", {}).get("score")
            champion_score = (metrics.get("champion") or {}).get("score")
            if not args.force:
                if candidate_score is None:
                    raise BadArguments("no candidate score: pass --metrics from scripts.evaluate, or --force")
                if not should_promote(candidate_score, champion_score, args.margin):
                    log.info("not promoted: candidate %.4f vs champion %.4f (margin %.4f)", candidate_score, champion_score, args.margin)
                    return EXIT_NOT_BETTER
            pointer = promote(args.models_root, args.candidate, metrics=metrics.get("candidate", {}), version=args.version)
        elif args.command == "rollback":
            pointer = rollback(args.models_root, args.to)
        else:
            store = open_store(args.models_root)
            pointer = {"current": store.read_pointer(), "versions": store.versions()}
    except LoopError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("promote failed")
        return EXIT_FAILURE
    print(json.dumps(pointer, indent=2))
    return EXIT_PROMOTED


if __name__ == "__main__":
    sys.exit(main())
