"""Model store over an s3:// MODELS_ROOT, against a real moto S3 server process on 127.0.0.1.

Versions are promoted by dam_loop/models_root.py's S3 store (the real writer); the backend downloads them atomically into
its cache, hot-swaps without a gap, serves a rollback from the cache without downloading again, and keeps serving
when a pointer names a missing or unfinished version, or the bucket is unreachable. The secret key never appears in
the logs (captured at DEBUG, botocore's included).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backend.errors import ModelUnavailable
from backend.model_store import ModelStore, default_loader
from ls_io.s3 import make_s3_client
from backend.settings import Settings
from bk_helpers import FakeDAM
from dam_model.versions import POINTER_NAME, PROVENANCE_NAME, version_path

KEY_ID = "models-test-key-id"
SECRET = "models-test-secret-value-never-logged"
PREFIX = "dam-models"


@pytest.fixture
def s3_env(monkeypatch, moto_endpoint):
    """Credentials as the promote script and the backend both read them (boto3's chain + S3_ENDPOINT_URL)."""
    for name, value in {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                        "S3_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    for name in ("MODELS_S3_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE", "MODELS_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return moto_endpoint


@pytest.fixture
def admin(s3_env):
    import boto3

    return boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")


@pytest.fixture
def root(admin) -> str:
    bucket = f"models-{uuid.uuid4().hex[:10]}"
    admin.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/{PREFIX}"


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)  # everything, botocore's request logging included
    return caplog


def s3_settings(make_settings, tmp_path, root, endpoint, **kw) -> Settings:
    return make_settings(models_root=root, models_cache_dir=str(tmp_path / "model-cache"),
                         models_s3_endpoint_url=endpoint, **kw)


def count_version_gets(store: ModelStore) -> list[str]:
    """Keys of every GetObject the store's client sends for a version file (the pointer's GETs excluded)."""
    keys: list[str] = []

    def record(params, **_):
        if "/versions/" in params.get("Key", ""):
            keys.append(params["Key"])

    store.s3.client.meta.events.register("before-parameter-build.s3.GetObject", record)
    return keys


def write_pointer(admin, root: str, version: str) -> None:
    """A pointer flip as dam_loop/models_root.py writes it, for versions the test uploaded by hand."""
    from dam_loop.models_root import S3ModelStore

    S3ModelStore(root, client=admin).write_pointer({"version": version, "path": version_path(version),
                                                    "promoted_at": datetime.now(timezone.utc).isoformat(),
                                                    "previous": None, "metrics": {}})


def upload_folder(admin, root: str, version: str, folder: Path, skip: tuple[str, ...] = ()) -> None:
    bucket = root[len("s3://"):].split("/", 1)[0]
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in skip:
            admin.upload_file(str(path), bucket, f"{PREFIX}/{version_path(version)}/{rel}")


class RecordingLoader:
    """The real DAM loader, recording each source (and optionally slow, to widen the swap window)."""

    def __init__(self) -> None:
        self.sources: list[str] = []
        self.delay = 0.0

    def __call__(self, source, device, dtype):
        self.sources.append(source)
        time.sleep(self.delay)
        return default_loader(source, device, dtype)


class FakeLoader:
    def __init__(self) -> None:
        self.sources: list[str] = []

    def __call__(self, source, device, dtype):
        self.sources.append(source)
        assert (Path(source) / "config.json").is_file(), "only complete downloads are loaded"
        return FakeDAM(tag=Path(source).name)


def test_serves_promoted_versions_hot_swaps_and_rolls_back_from_cache(make_settings, tmp_path, s3_env, root, logs,
                                                                       random_dam_dir):
    from dam_loop.steps.promote import promote, rollback

    promote(root, random_dam_dir, metrics={"score": 0.1}, version="v1")
    loader = RecordingLoader()
    store = ModelStore(s3_settings(make_settings, tmp_path, root, s3_env), loader=loader)
    gets = count_version_gets(store)
    cache = tmp_path / "model-cache"

    served = store.get()
    assert served.version == "v1" and Path(served.source) == cache / "v1" and store.model_version == "v1"
    assert type(served.model).__name__ == "DescribeAnythingModel"
    for path in random_dam_dir.rglob("*"):
        if path.is_file() and path.name != PROVENANCE_NAME:
            rel = path.relative_to(random_dam_dir)
            assert (cache / "v1" / rel).read_bytes() == path.read_bytes(), rel
    assert json.loads((cache / "v1" / PROVENANCE_NAME).read_text())["version"] == "v1"
    assert sorted(p.name for p in cache.iterdir()) == ["v1"], "no temp folder is left behind"
    assert gets, "v1 was downloaded"
    assert store.check_pointer() is False, "unchanged pointer: nothing to do"

    promote(root, random_dam_dir, metrics={"score": 0.2}, version="v2")
    loader.delay = 0.5  # the swap takes a while: requests meanwhile must get v1, never an error
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def requests() -> None:
        while not stop.is_set():
            try:
                seen.append(store.get().version)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            time.sleep(0.01)

    worker = threading.Thread(target=requests)
    worker.start()
    try:
        assert store.check_pointer() is True
    finally:
        stop.set()
        worker.join(10)
    assert not errors and seen and set(seen) <= {"v1", "v2"}
    assert seen.count("v1") >= 5, "the old model served while v2 was downloaded and loaded"
    assert seen == sorted(seen), "v1 until the swap, then only v2"
    assert store.model_version == "v2" and store.get().version == "v2" and Path(store.get().source) == cache / "v2"
    assert sorted(p.name for p in cache.iterdir()) == ["v1", "v2"]

    downloads_before = len(gets)
    v1_mtime = (cache / "v1" / "config.json").stat().st_mtime_ns
    loader.delay = 0.0
    rollback(root)
    assert store.check_pointer() is True
    assert store.model_version == "v1" and loader.sources[-1] == str(cache / "v1")
    assert len(gets) == downloads_before, f"the rollback downloaded again: {gets[downloads_before:]}"
    assert (cache / "v1" / "config.json").stat().st_mtime_ns == v1_mtime
    assert store.versions() == ["v1", "v2"]

    assert "downloaded version v2" in logs.text
    assert "botocore" in logs.text, "the capture includes boto's own debug logging"
    assert SECRET not in logs.text, "the secret key reached the logs"


def test_missing_or_unfinished_version_keeps_the_old_model_and_is_retried(make_settings, tmp_path, s3_env, root,
                                                                          admin, logs, random_dam_dir):
    from dam_loop.steps.promote import promote

    promote(root, random_dam_dir, version="v1")
    loader = FakeLoader()
    store = ModelStore(s3_settings(make_settings, tmp_path, root, s3_env), loader=loader)
    cache = tmp_path / "model-cache"
    assert store.get().model.tag == "v1"

    write_pointer(admin, root, "v9")  # a pointer naming a version nobody uploaded
    assert store.check_pointer() is False and store.get().model.tag == "v1"
    assert "version v9 is missing" in logs.text and "still serving v1" in logs.text
    assert "v9 is missing" in store.last_error

    upload_folder(admin, root, "v3", random_dam_dir, skip=(PROVENANCE_NAME,))  # an upload still in progress
    write_pointer(admin, root, "v3")
    assert store.check_pointer() is False and store.get().model.tag == "v1"
    assert "version v3 is incomplete" in logs.text and PROVENANCE_NAME in store.last_error
    assert not (cache / "v3").exists()
    admin.put_object(Bucket=root[5:].split("/")[0], Key=f"{PREFIX}/versions/v3/{PROVENANCE_NAME}", Body=b"{}")
    assert store.check_pointer() is True and store.get().model.tag == "v3", "the next poll retries"

    # an object that arrives truncated: the temp folder is discarded, nothing is cached, the next poll retries
    promote(root, random_dam_dir, version="v4")
    original = store.s3.client.download_file

    def truncating(bucket, key, filename, *a, **kw):
        original(bucket, key, filename, *a, **kw)
        if key.endswith("config.json"):
            with open(filename, "r+b") as handle:
                handle.truncate(3)

    store.s3.client.download_file = truncating
    assert store.check_pointer() is False and store.get().model.tag == "v3"
    assert "did not arrive intact" in store.last_error
    assert sorted(p.name for p in cache.iterdir()) == ["v1", "v3"], "no partial folder, no temp folder"
    store.s3.client.download_file = original
    assert store.check_pointer() is True and store.get().model.tag == "v4"
    assert [Path(s).name for s in loader.sources] == ["v1", "v3", "v4"]
    assert SECRET not in logs.text and SECRET not in (store.last_error or "")


def test_unreachable_bucket_keeps_serving_and_never_leaks_the_secret(make_settings, tmp_path, s3_env, root, logs,
                                                                   random_dam_dir, unused_port):
    from dam_loop.steps.promote import promote

    promote(root, random_dam_dir, version="v1")
    store = ModelStore(s3_settings(make_settings, tmp_path, root, s3_env), loader=FakeLoader())
    assert store.get().model.tag == "v1"
    dead = f"http://127.0.0.1:{unused_port}"
    store.s3.client = make_s3_client(dead)
    assert store.check_pointer() is False and store.get().model.tag == "v1"
    assert "pointer unreadable, keeping v1" in logs.text

    fresh = ModelStore(s3_settings(make_settings, tmp_path / "fresh", root + "-nothing-yet", s3_env), loader=FakeLoader())
    assert fresh.wanted().source == fresh.settings.dam_model, "no current.json yet: DAM_MODEL is served"
    assert fresh.model_version.startswith("dam-") and fresh.model_version != "dam-pending"

    cold = ModelStore(s3_settings(make_settings, tmp_path / "cold", root, dead), loader=FakeLoader())
    assert cold.model_version == "dam-pending", "model_version never waits on an unreachable bucket"
    with pytest.raises(ModelUnavailable, match="cannot read") as info:
        cold.get()
    assert SECRET not in str(info.value) and KEY_ID not in str(info.value)
    assert SECRET not in logs.text and SECRET not in (cold.last_error or "")


def test_settings_endpoint_fallback_and_default_cache(monkeypatch, tmp_path):
    from model_source.s3 import S3Models

    env = {"MODELS_ROOT": "s3://bucket/some/prefix/", "S3_ENDPOINT_URL": "http://minio:9000"}
    settings = Settings.from_env(env)
    assert settings.models_s3_endpoint_url == "http://minio:9000" and settings.models_root_path is None
    assert Settings.from_env({**env, "MODELS_S3_ENDPOINT_URL": ""}).models_s3_endpoint_url == "http://minio:9000"
    assert Settings.from_env({**env, "MODELS_S3_ENDPOINT_URL": "http://other:9000"}).models_s3_endpoint_url == \
        "http://other:9000"
    with pytest.raises(ValueError, match="MODELS_ROOT"):
        Settings(models_root="s3://")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    source = S3Models(settings.models_root, client=object())
    assert source.bucket == "bucket" and source.prefix == "some/prefix/"
    assert source.cache_dir == tmp_path / "dam-label-studio" / "models" / "bucket" / "some" / "prefix"
    with pytest.raises(ValueError):
        source.local_path("../escape")


def test_promote_script_writes_the_layout_the_backend_reads():
    """One set of names: dam_loop/models_root.py imports them from dam_model/versions.py."""
    import dam_loop.models_root as promote_module
    from dam_model import versions as model_layout

    assert promote_module.POINTER_NAME is model_layout.POINTER_NAME == POINTER_NAME == "current.json"
    assert promote_module.version_path is model_layout.version_path
    assert promote_module.VERSION_RE is model_layout.VERSION_RE
    assert os.path.basename(version_path("v7")) == "v7"
