"""Fixtures of the loop tests: a moto S3 server PROCESS on 127.0.0.1 and Label Studio export objects (synthetic
scenes and synthetic videos).

The moto server process is the session fixture ``moto_endpoint`` of tests/conftest.py; each test gets its own
bucket. Credentials are dummy values set in the environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import boto3
import pytest

from dam_model.fileio import atomic_write_bytes
from dam_model.synthetic import generate_dataset, generate_video
from dam_tools.export_synthetic import export_objects, image_file_name, png_bytes
from dam_tools.export_video import export_video_objects, video_file_name
from ls_io.video_io import video_bytes

REPO = Path(__file__).resolve().parents[2]
TEST_KEY_ID = "loop-test-key-id"
TEST_SECRET = "loop-test-secret-value-never-logged"


@pytest.fixture()
def s3_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> dict[str, str]:
    env = {
        "AWS_ACCESS_KEY_ID": TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "S3_ENDPOINT_URL": moto_endpoint,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("S3_BUCKET", "S3_PREFIX", "MODELS_ROOT", "LOOP_WORK_ROOT", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.fixture()
def admin_s3(s3_env: dict[str, str]) -> Any:
    """An unrestricted client for the TEST to fill and inspect buckets (the code under test gets read-only ones)."""
    return boto3.client("s3", endpoint_url=s3_env["S3_ENDPOINT_URL"], region_name="us-east-1")


@pytest.fixture()
def bucket(admin_s3: Any) -> str:
    name = f"ls-export-{uuid.uuid4().hex[:10]}"
    admin_s3.create_bucket(Bucket=name)
    return name


def bucket_bytes(client: Any, bucket: str) -> dict[str, tuple[bytes, str]]:
    """{key: (body, ETag)} of every object: compare before/after to prove nothing was written or deleted."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            out[item["Key"]] = (client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read(), item["ETag"])
    return out


def put_objects(client: Any, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


# ----------------------------------------------------------------------------------------------- synthetic exports
def synthetic_export(
    media_root: Path, seed: int, n_scenes: int, fmt: str = "annotation", prefix: str = "export", **kwargs: Any
) -> dict[str, bytes]:
    """Label Studio target-storage objects for synthetic scenes, made by dam_tools.export_synthetic (the reference
    captions are the "corrected" ones). Images are written to media_root/images/ and referenced as
    "images/<scene id>.png", which ls_io/media.py reads under LOCAL_FILES_ROOT = media_root."""
    scenes = generate_dataset(seed, n_scenes)
    (media_root / "images").mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        (media_root / "images" / image_file_name(scene)).write_bytes(png_bytes(scene.image))
    return export_objects(scenes, fmt, prefix=prefix, **kwargs)


def synthetic_video_export(
    media_root: Path, seed: int, n_videos: int, fmt: str = "annotation", prefix: str = "export", *,
    num_frames: int = 16, **kwargs: Any
) -> dict[str, bytes]:
    """Label Studio target-storage objects of synthetic VIDEO tasks (label_config/video.xml), made by
    dam_tools.export_video: videos generate_video(seed, 0..n_videos - 1, num_frames) are written losslessly to
    media_root/videos/ and referenced as "videos/<video id>.mkv"."""
    videos = [generate_video(seed, index, num_frames=num_frames) for index in range(n_videos)]
    for video in videos:
        atomic_write_bytes(media_root / "videos" / video_file_name(video), video_bytes(video.frames))
    return export_video_objects(videos, fmt, prefix=prefix, **kwargs)


@pytest.fixture()
def media_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Let ls_io/media.py read the test images (and nothing else)."""
    root = tmp_path / "media"
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("LOCAL_FILES_ROOT", str(root))
    monkeypatch.setenv("MEDIA_CACHE_DIR", "")
    return root


@pytest.fixture()
def export_factory(media_root: Path) -> Callable[..., dict[str, bytes]]:
    def make(seed: int, n_scenes: int, fmt: str = "annotation", **kwargs: Any) -> dict[str, bytes]:
        return synthetic_export(media_root, seed, n_scenes, fmt, **kwargs)

    return make


@pytest.fixture()
def video_export_factory(media_root: Path) -> Callable[..., dict[str, bytes]]:
    def make(seed: int, n_videos: int, fmt: str = "annotation", **kwargs: Any) -> dict[str, bytes]:
        return synthetic_video_export(media_root, seed, n_videos, fmt, **kwargs)

    return make


def run_module(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m <module> args` from the repository root (a separate process, as the scheduler runs it)."""
    full_env = dict(os.environ, **(env or {}), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


# ----------------------------------------------------------------------------------------------- models
@pytest.fixture(scope="session")
def loop_start_model(random_dam_dir: Path) -> Path:
    """The weak starting model of the loop tests: the shared random-weight tiny DAM (tests/conftest.py)."""
    return Path(random_dam_dir)


@pytest.fixture(scope="session")
def loop_champion_model(trained_dam_dir: Path) -> Path:
    """A champion worth keeping: the shared trained ci-profile tiny DAM (tests/conftest.py; cached build)."""
    return Path(trained_dam_dir)
