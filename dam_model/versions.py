"""Layout of a promoted-models root: the names its writer (dam_loop/models_root.py) and its reader (backend/model_store.py) agree on.

A models root is a local folder or ``s3://bucket/prefix``; under it::

    versions/<version>/     official DAM folder layout + provenance.json (written LAST: its presence marks a
                            finished upload); never modified once written
    current.json            {"version", "path": "versions/<version>", "promoted_at", "previous", "metrics"}

Pure (no I/O, no boto3): it lives in the model package so that the writer and the reader can share it without
importing each other.
"""
from __future__ import annotations

import re
from typing import Any

POINTER_NAME = "current.json"
VERSIONS_DIR = "versions"
PROVENANCE_NAME = "provenance.json"
# Files a version folder must hold to be complete (provenance.json is uploaded after every other file).
REQUIRED_FILES = ("config.json", PROVENANCE_NAME)
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_S3_URL = re.compile(r"^s3://([^/]+)/?(.*)$")


def version_path(version: str) -> str:
    """The pointer's "path" of a version, relative to the models root: "versions/<version>"."""
    return f"{VERSIONS_DIR}/{version}"


def is_s3_url(root: str) -> bool:
    return str(root).startswith("s3://")


def parse_s3_url(url: str) -> tuple[str, str]:
    """"s3://bucket/a/b" -> ("bucket", "a/b/"); "s3://bucket" -> ("bucket", ""). ValueError otherwise."""
    match = _S3_URL.match(str(url))
    if not match or not match.group(1):
        raise ValueError(f"not an s3:// URL: {url}")
    prefix = match.group(2).strip("/")
    return match.group(1), f"{prefix}/" if prefix else ""


def parse_pointer(data: Any, where: str) -> tuple[str, str]:
    """(version, path) of a decoded current.json. ValueError when a field is missing or not a string."""
    if not isinstance(data, dict) or not isinstance(data.get("version"), str) or not isinstance(data.get("path"), str):
        raise ValueError(f"{where} needs string 'version' and 'path'")
    return data["version"], data["path"]
