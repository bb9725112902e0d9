"""Promoted models under ``s3://bucket/prefix`` (MODELS_ROOT), mirrored into a local cache for loading: what the
backend's model store and the bulk pre-annotation job both read (so both serve the same version under the same name).

dam_loop/models_root.py uploads ``versions/<v>/`` first and PUTs ``current.json`` last (dam_model/versions.py). The
model store reads the pointer with one GET per poll; a version it has not got yet is downloaded ATOMICALLY:

1. LIST ``<prefix>versions/<v>/`` (every object and its size); none, or no config.json/provenance.json
   (provenance.json is uploaded last), means the version is missing or still uploading: refused;
2. download every listed object into a temp sibling ``<cache>/.tmp-<v>-<pid>-<rand>/``;
3. check that every listed object arrived with its listed size;
4. ``os.replace`` the temp folder to ``<cache>/<v>``.

So ``<cache>/<v>`` exists only complete, and a cached version (a rollback) is never downloaded again. Any failure
raises ``ModelSourceError`` with a one-line reason that names no secret (credentials come from boto3's chain:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ... and are never logged); the temp folder is removed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

from dam_model.versions import POINTER_NAME, REQUIRED_FILES, VERSION_RE, parse_pointer, parse_s3_url, version_path
from ls_io.s3 import describe_error, make_s3_client

log = logging.getLogger(__name__)

STALE_TMP_SECONDS = 24 * 3600


class ModelSourceError(RuntimeError):
    """The models root cannot be read, or a version cannot be fetched (message safe to log)."""


def default_cache_dir(bucket: str, prefix: str) -> Path:
    """``$XDG_CACHE_HOME`` (else ~/.cache) / dam-label-studio/models/<bucket>/<prefix>: one folder per models root,
    so two roots that both promote a "v1" never share a cached folder."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dam-label-studio" / "models" / bucket / prefix.strip("/")


class S3Models:
    """Reads current.json under s3://bucket/prefix and materialises versions into ``cache_dir``."""

    def __init__(self, url: str, cache_dir: str | Path | None = None, endpoint_url: str | None = None,
                 client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}"
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.bucket, self.prefix)
        self.client = client if client is not None else make_s3_client(endpoint_url)

    def __str__(self) -> str:
        return self.url

    # ---------- pointer ----------
    def read_root_file(self, name: str) -> bytes | None:
        """The bytes of ``<prefix><name>`` (current.json, kpis.json), or None when it does not exist."""
        key = self.prefix + name
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - boto raises many types; all mean "unreadable now"
            if _error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise ModelSourceError(f"cannot read s3://{self.bucket}/{key}: {describe_error(exc)}") from None

    def read_pointer(self) -> tuple[str, bytes] | None:
        """(signature, raw bytes) of current.json, or None when nothing is promoted yet."""
        body = self.read_root_file(POINTER_NAME)
        return None if body is None else (hashlib.sha256(body).hexdigest(), body)

    def promoted(self) -> tuple[str, str, str] | None:
        """(signature, version, path) of the promoted version named by current.json, or None when nothing is
        promoted yet. ValueError when the pointer is malformed (or its path is not versions/<version>),
        ModelSourceError when it cannot be read."""
        read = self.read_pointer()
        if read is None:
            return None
        digest, raw = read
        version, path = parse_pointer(json.loads(raw), f"{self.url}{POINTER_NAME}")
        self.remote_prefix(version, path)  # ValueError unless path is versions/<version>
        self.local_path(version)  # ValueError unless the name is a valid version name
        return digest, version, path

    # ---------- versions ----------
    def local_path(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise ValueError(f"invalid version name {version!r} in {self.url}{POINTER_NAME}")
        return self.cache_dir / version

    def remote_prefix(self, version: str, path: str) -> str:
        """Key prefix of a version folder from the pointer's relative "path" (must be versions/<version>)."""
        if path.strip("/") != version_path(version):
            raise ValueError(f"{self.url}{POINTER_NAME}: path {path!r} is not {version_path(version)!r}")
        return f"{self.prefix}{version_path(version)}/"

    def cached_versions(self) -> list[str]:
        if not self.cache_dir.is_dir():
            return []
        return sorted(p.name for p in self.cache_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def ensure_local(self, version: str, path: str) -> Path:
        """The local folder of ``version``, downloaded (atomically) unless already cached. Raises ModelSourceError."""
        final = self.local_path(version)
        if final.is_dir():
            return final
        base = self.remote_prefix(version, path)
        where = f"s3://{self.bucket}/{base}"
        try:
            listing = self._list(base)
        except Exception as exc:  # noqa: BLE001
            raise ModelSourceError(f"cannot list {where}: {describe_error(exc)}") from None
        if not listing:
            raise ModelSourceError(f"version {version} is missing: no objects under {where}")
        missing = [name for name in REQUIRED_FILES if name not in listing]
        if missing:
            raise ModelSourceError(f"version {version} is incomplete (upload unfinished?): {where} lacks "
                                   f"{', '.join(missing)}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._prune_stale_tmp()
        tmp = self.cache_dir / f".tmp-{version}-{os.getpid()}-{secrets.token_hex(4)}"
        started = time.perf_counter()
        try:
            tmp.mkdir()
            for rel, size in listing.items():
                dest = tmp.joinpath(*PurePosixPath(rel).parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.client.download_file(self.bucket, base + rel, str(dest))
                except Exception as exc:  # noqa: BLE001
                    raise ModelSourceError(f"download of {where}{rel} failed: {describe_error(exc)}") from None
            wrong = [rel for rel, size in listing.items() if not _has_size(tmp.joinpath(*PurePosixPath(rel).parts), size)]
            if wrong:
                raise ModelSourceError(f"version {version}: {len(wrong)} object(s) did not arrive intact from {where} "
                                       f"(first: {wrong[0]})")
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():  # a concurrent worker's rename wins; anything else is an error
                    raise
                log.info("version %s was cached meanwhile by another process", version)
        except ModelSourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - disk full, permissions, ...
            raise ModelSourceError(f"caching version {version} in {self.cache_dir} failed: {describe_error(exc)}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        total = sum(listing.values())
        log.info("downloaded version %s from %s (%d objects, %.1f MB) in %.1f s into %s", version, where, len(listing),
                 total / 1e6, time.perf_counter() - started, final)
        return final

    def _list(self, base: str) -> dict[str, int]:
        """{relative key: size} of every object under ``base`` (folder markers and unsafe names refused)."""
        out: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                rel = item["Key"][len(base):]
                if not rel or rel.endswith("/"):
                    continue
                parts = PurePosixPath(rel).parts
                if rel.startswith("/") or any(p in {"", ".", ".."} for p in parts):
                    raise ValueError(f"unsafe object name {rel!r} under {base}")
                out[rel] = int(item["Size"])
        return out

    def _prune_stale_tmp(self) -> None:
        """Remove temp folders left by a crashed download (older than a day: never one in progress)."""
        now = time.time()
        for item in self.cache_dir.glob(".tmp-*"):
            try:
                if now - item.stat().st_mtime > STALE_TMP_SECONDS:
                    shutil.rmtree(item, ignore_errors=True)
            except OSError:
                pass


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
