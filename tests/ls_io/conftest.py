"""Fixtures of the ls_io tests: a fake Label Studio server, images on disk, and media settings (ls_io.MediaConfig:
the package is tested without the server)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fake_label_studio import FakeLabelStudio, png_bytes, scene
from ls_io.media import MediaConfig


@pytest.fixture
def fake_ls():
    servers: list[FakeLabelStudio] = []

    def start(**kw) -> FakeLabelStudio:
        server = FakeLabelStudio(**kw)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def media_root(tmp_path) -> Path:
    root = tmp_path / "media"
    (root / "images").mkdir(parents=True)
    (root / "images" / "img1.png").write_bytes(png_bytes(scene()))
    return root


@pytest.fixture
def make_settings(tmp_path, media_root):
    def build(**overrides) -> MediaConfig:
        return MediaConfig(**{"local_files_root": str(media_root), "media_cache_dir": str(tmp_path / "cache"),
                              **overrides})

    return build
