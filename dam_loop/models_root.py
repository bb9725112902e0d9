"""The models root: promoted versions and the serving pointer, written here and read by the backend's model store.

Layout under ``MODELS_ROOT`` (a folder, or ``s3://bucket/prefix``); the names are shared with the reader through
dam_model/versions.py::

    versions/<version>/     official DAM folder layout + provenance.json; never modified once written
    current.json            {"version", "path": "versions/<version>", "promoted_at", "previous", "metrics"
                            (+ "rollback": true when a rollback wrote it)}
    history.jsonl           one line per pointer change (audit trail; on S3: history/<promoted_at>.json)
    kpis.json               the latest learning-from-edits KPIs (dam_loop.steps.nightly_kpis), written every night
                            whether or not it promotes; the backend serves them (GET /kpis, /metrics)

A version folder is written first (to a staging name, renamed into place); current.json is written LAST through a
temp file + os.replace, so a reader sees either the old or the new pointer, never a half-copied model. On S3 the
folder is uploaded first (provenance.json last) and current.json is one PUT at the end (a single PUT is atomic).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from dam_loop.cli import BadArguments, env_default
from dam_loop.provenance import utc_now
from dam_model.fileio import atomic_write_json, read_json
from dam_model.versions import KPIS_NAME, POINTER_NAME, PROVENANCE_NAME, VERSION_RE, VERSIONS_DIR, parse_s3_url, version_path
from ls_io.s3 import make_s3_client

__all__ = ["POINTER_NAME", "PROVENANCE_NAME", "VERSION_RE", "VERSIONS_DIR", "version_path", "LocalModelStore",
           "S3ModelStore", "open_store", "champion_dir", "resolve_init", "new_version_name"]


def new_version_name() -> str:
    """Sortable default version name, e.g. v20261125-183000."""
    return utc_now().strftime("v%Y%m%d-%H%M%S")


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

    def write_kpis(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.root / KPIS_NAME, record)

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

    def version_metrics(self, version: str) -> dict[str, Any]:
        """The metrics a version was promoted with (from its provenance.json; {} when absent)."""
        provenance = self.local_path(version) / PROVENANCE_NAME
        return read_json(provenance).get("promoted_metrics", {}) if provenance.exists() else {}


class S3ModelStore:
    """Versions and the pointer under s3://bucket/prefix (upload the folder first, PUT current.json last)."""

    def __init__(self, url: str, client: Any = None) -> None:
        try:
            self.bucket, self.prefix = parse_s3_url(url)
        except ValueError as exc:
            raise BadArguments(str(exc)) from None
        if client is None:
            endpoint = env_default("MODELS_S3_ENDPOINT_URL") or env_default("S3_ENDPOINT_URL")
            client = make_s3_client(endpoint)
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

    def write_kpis(self, record: dict[str, Any]) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + KPIS_NAME, Body=json.dumps(record, indent=2).encode())

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
        # LAST: the readers (model_source/s3.py) treats a version folder without provenance.json as unfinished
        self.client.put_object(Bucket=self.bucket, Key=base + PROVENANCE_NAME, Body=json.dumps(provenance, indent=2).encode())

    def version_metrics(self, version: str) -> dict[str, Any]:
        """Not read back from S3: a rollback there records no metrics (as before)."""
        return {}


def open_store(models_root: str | Path) -> LocalModelStore | S3ModelStore:
    text = str(models_root)
    return S3ModelStore(text) if text.startswith("s3://") else LocalModelStore(text)


def champion_dir(models_root: str | Path) -> Path | None:
    """The local folder of the serving version, or None when nothing was promoted yet (local stores only)."""
    store = open_store(models_root)
    if not isinstance(store, LocalModelStore):
        return None
    pointer = store.read_pointer()
    return (store.root / pointer["path"]) if pointer else None


def resolve_init(init: str | None, models_root: str | Path) -> Path | str:
    """The model a step starts from: ``init`` when given; else the serving version (current.json under MODELS_ROOT);
    else, before the first promotion, env INIT_MODEL. A folder, or a hub id such as nvidia/DAM-3B."""
    if not init:
        champion = champion_dir(models_root)
        if champion is not None:
            return champion
        init = env_default("INIT_MODEL")
        if not init:
            raise BadArguments(f"nothing promoted in {models_root} yet: pass --init or set INIT_MODEL (the starting model)")
    path = Path(init)
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", init):
        return init  # a hub id: DescribeAnythingModel.from_pretrained resolves it
    if not (path / "config.json").exists():
        raise BadArguments(f"{path} is not a DAM model folder (no config.json)")
    return path
