"""MODELS_ROOT=s3://bucket/prefix for the job, against a real moto S3 server process: the job resolves current.json
with the backend's reader (model_source.s3), downloads and loads that version, and writes the model_version the
backend serves for the same root (Label Studio skips tasks by that string)."""
from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import pytest

from backend.model_store import ModelStore
from backend.settings import Settings
from dam_loop.steps.promote import promote
from dam_preannotate.config import JobConfig, add_config_args, config_from_args
from dam_preannotate.job import JobParts, run_job
from dam_preannotate.models import choose_model, load_model
from dam_model.versions import PROVENANCE_NAME
from model_source.s3 import ModelSourceError
from pre_fakes import Images, MemoryLabelStudio, job_config, make_tasks

KEY = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def root(monkeypatch, moto_endpoint) -> str:
    """A fresh bucket on the moto server; credentials from boto3's chain, as the backend and the loop read them."""
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "job-test-key-id", "AWS_SECRET_ACCESS_KEY": "job-test-secret-value",
                        "AWS_DEFAULT_REGION": "us-east-1", "S3_ENDPOINT_URL": moto_endpoint}.items():
        monkeypatch.setenv(name, value)
    for name in ("MODELS_S3_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE", "MODELS_ROOT"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"job-models-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/dam-models"


def job_cfg(root: str, cache: Path, dam_model: Path, endpoint: str) -> JobConfig:
    """The job's configuration from the environment the compose service shares with the backend."""
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    env = {"LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": KEY, "PREANNOTATE_PROJECT": "3",
           "MODELS_ROOT": root, "MODELS_CACHE_DIR": str(cache), "S3_ENDPOINT_URL": endpoint,
           "DAM_MODEL": str(dam_model)}
    return config_from_args(parser.parse_args([]), env)


def backend_store(root: str, cache: Path, dam_model: Path, endpoint: str) -> ModelStore:
    return ModelStore(Settings(models_root=root, models_cache_dir=str(cache), models_s3_endpoint_url=endpoint,
                               dam_model=str(dam_model), model_poll_seconds=0, warm_up_on_start=False))


def test_the_job_loads_the_promoted_version_of_an_s3_root_under_the_backends_name(tmp_path, root, moto_endpoint,
                                                                                   random_dam_dir):
    cfg = job_cfg(root, tmp_path / "job-cache", random_dam_dir, moto_endpoint)
    assert cfg.models_s3_endpoint_url == moto_endpoint, "S3_ENDPOINT_URL is the fallback, as for the backend"
    backend = backend_store(root, tmp_path / "backend-cache", random_dam_dir, moto_endpoint)

    # Nothing promoted yet: DAM_MODEL under its folder hash, as the backend serves it.
    nothing = choose_model(cfg)
    assert nothing.source == str(random_dam_dir) and nothing.version == backend.wanted().version

    promote(root, random_dam_dir, metrics={"score": 0.1}, version="v1")
    choice = choose_model(cfg)
    assert choice.version == "v1" == backend.wanted().version
    assert Path(choice.source) == tmp_path / "job-cache" / "v1"
    for path in random_dam_dir.rglob("*"):
        if path.is_file() and path.name != PROVENANCE_NAME:
            rel = path.relative_to(random_dam_dir)
            assert (Path(choice.source) / rel).read_bytes() == path.read_bytes(), rel
    assert sorted(p.name for p in (tmp_path / "job-cache").iterdir()) == ["v1"], "no temp folder is left behind"

    # The job loads that version and its predictions carry the backend's model_version.
    model = load_model(choice, "cpu", "float32")
    assert type(model).__name__ == "DescribeAnythingModel"
    ls = MemoryLabelStudio(make_tasks([1, 2]))
    summary = run_job(JobParts(cfg=job_config(tmp_path, max_new_tokens=4), ls=ls, model=model,
                               model_version=choice.version, fetcher=Images()))
    assert summary.done == 2 and not summary.failed
    assert {p["model_version"] for p in ls.predictions.values()} == {backend.get().version} == {"v1"}

    # A new promotion is the job's next version; the cached v1 is kept (a rollback needs no download).
    promote(root, random_dam_dir, metrics={"score": 0.2}, version="v2")
    assert choose_model(cfg).version == "v2" == backend.wanted().version
    assert sorted(p.name for p in (tmp_path / "job-cache").iterdir()) == ["v1", "v2"]


def test_an_unreachable_or_broken_s3_root_stops_the_job_or_falls_back_as_the_backend(tmp_path, root, moto_endpoint,
                                                                                   random_dam_dir):
    import boto3

    dead = job_cfg(root, tmp_path / "cache", random_dam_dir, "http://127.0.0.1:9")
    with pytest.raises(ModelSourceError, match="cannot read") as info:
        choose_model(dead)
    assert "job-test-secret-value" not in str(info.value)

    bucket = root[len("s3://"):].split("/", 1)[0]
    admin = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    admin.put_object(Bucket=bucket, Key="dam-models/current.json", Body=b'{"version": "v9"}')  # no "path"
    cfg = job_cfg(root, tmp_path / "cache", random_dam_dir, moto_endpoint)
    backend = backend_store(root, tmp_path / "backend-cache", random_dam_dir, moto_endpoint)
    assert choose_model(cfg).version == backend.wanted().version and choose_model(cfg).source == str(random_dam_dir)

    admin.put_object(Bucket=bucket, Key="dam-models/current.json",
                     Body=b'{"version": "v9", "path": "versions/v9"}')  # promoted but never uploaded
    with pytest.raises(ModelSourceError, match="version v9 is missing"):
        choose_model(cfg)
