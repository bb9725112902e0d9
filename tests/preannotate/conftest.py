"""Fixtures of the bulk job's unit tests: an in-memory Label Studio, images, a fake DAM, and a run helper."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from dam_preannotate.job import JobParts, run_job
from dam_preannotate.journal import read_records
from dam_preannotate.sharding import Shard
from dam_preannotate.summary import Summary
from pre_fakes import VERSION, FakeDAM, Images, MemoryLabelStudio, job_config


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., Summary]:
    """run(ls, model=None, images=None, shard=Shard(), **config) -> Summary of one run of the job."""

    def go(ls: MemoryLabelStudio, model: Any = None, images: Images | None = None, shard: Shard = Shard(),
           **config: Any) -> Summary:
        parts = JobParts(cfg=job_config(tmp_path, **config), ls=ls, model=model or FakeDAM(), model_version=VERSION,
                         fetcher=images or Images(), shard=shard)
        return run_job(parts)

    return go


@pytest.fixture
def journal_records(tmp_path: Path) -> Callable[[], list[dict]]:
    return lambda: read_records(tmp_path / "journal" / "project-1" / VERSION)
