"""Fixtures of the backend tests: settings, apps over a fake DAM/segmenter, a fake Label Studio server, images on
disk. The tiny random DAM is the
session fixture `random_dam_dir` of tests/conftest.py."""
from __future__ import annotations

import pytest
import torch

from backend.settings import Settings
from bk_helpers import FakeDAM, FakeSegmenter
from dam_model.synthetic import generate_dataset, iter_region_samples

torch.set_num_threads(2)


@pytest.fixture
def make_settings(tmp_path, media_root):
    def build(**overrides):
        base = dict(
            local_files_root=str(media_root),
            media_cache_dir=str(tmp_path / "cache"),
            events_file=str(tmp_path / "events.jsonl"),
            train_log_dir=str(tmp_path / "logs"),
            warm_up_on_start=False,
            model_poll_seconds=0,
            dam_model=str(tmp_path / "no-model"),
        )
        base.update(overrides)
        return Settings(**base)

    return build


@pytest.fixture
def fake_dam() -> FakeDAM:
    return FakeDAM()


@pytest.fixture
def fake_seg() -> FakeSegmenter:
    return FakeSegmenter()


@pytest.fixture
def make_app(make_settings, fake_dam, fake_seg):
    """Factory: an app over the fake DAM/segmenter (pass settings overrides, or loader=..., segmenter=...)."""
    from backend.app import create_app

    def build(loader=None, segmenter="fake", **overrides):
        if segmenter is None:
            overrides.setdefault("segmenter", "none")
        settings = make_settings(**overrides)
        seg_factory = (lambda: fake_seg) if segmenter == "fake" else (lambda: segmenter) if segmenter is not None else None
        return create_app(settings, loader=loader or (lambda src, dev, dt: fake_dam), segmenter_factory=seg_factory)

    return build


@pytest.fixture
def client(make_app):
    return make_app().test_client()


@pytest.fixture(scope="module")
def regions():
    """16 (image, mask) regions of 6 synthetic scenes: the scheduler tests' real-model inputs."""
    return [(s.image, s.mask) for s in list(iter_region_samples(generate_dataset(seed=21, n=6)))[:16]]
