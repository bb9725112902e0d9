"""Fixtures that start the real services: moto S3, Label Studio 1.23.2 (LABEL_STUDIO_BIN, installed by
./manage.sh test into .venv-ls) and the backend under gunicorn serving the ci-profile tiny trained DAM.

Everything binds 127.0.0.1 on free ports and is stopped (whole process groups) when the module's tests end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from dam_tools.local_stack import LabelStudioCredentials, LocalStack, ManagedProcess, free_port, label_studio_bin
from dam_tools.ls_api import LabelStudioAPI
from dam_tools.provisioning import S3Target, backend_env, create_bucket

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    """The running services of one test module."""

    ls: ManagedProcess
    backend: ManagedProcess
    s3: S3Target
    api: LabelStudioAPI
    credentials: LabelStudioCredentials
    run_dir: Path
    label_config: str


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, trained_dam_dir: Path):
    """Label Studio + moto + backend, started once per module (Label Studio's first start takes ~40-60 s).
    A module's BACKEND_ENV (a dict) adds to the backend's environment."""
    bin_path = label_studio_bin()  # raises with the fix when Label Studio is not installed: a failure, not a skip
    assert os.access(bin_path, os.X_OK), bin_path
    run_dir = tmp_path_factory.mktemp("ls-stack")
    credentials = LabelStudioCredentials()
    with LocalStack(run_dir) as services:
        s3_service = services.start_s3(free_port())
        s3 = S3Target(endpoint=s3_service.url, bucket="ls-export", prefix="annotations")
        create_bucket(s3.endpoint, s3.bucket, s3.access_key, s3.secret_key, s3.region)
        ls = services.start_label_studio(free_port(), credentials, run_dir / "label-studio")
        env = backend_env(trained_dam_dir, ls.url, credentials.token, run_dir, segmenter="region", s3=s3,
                          extra={"NO_REGION_MODE": "skip", "MAX_NEW_TOKENS": "24", "MODEL_POLL_SECONDS": "0",
                                 "LOG_LEVEL": "DEBUG", **getattr(request.module, "BACKEND_ENV", {})})
        backend = services.start_backend(free_port(), env)
        yield Stack(ls=ls, backend=backend, s3=s3, api=LabelStudioAPI(ls.url, credentials.token),
                    credentials=credentials, run_dir=run_dir,
                    label_config=(ROOT / "label_config" / "image.xml").read_text())
