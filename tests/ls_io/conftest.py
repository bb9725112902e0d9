"""Fixtures of the ls_io tests (fake_ls and media_root come from tests/conftest.py): media settings (ls_io.MediaConfig:
the package is tested without the server)."""
from __future__ import annotations

import pytest

from ls_io.media import MediaConfig


@pytest.fixture
def make_settings(tmp_path, media_root):
    def build(**overrides) -> MediaConfig:
        return MediaConfig(**{"local_files_root": str(media_root), "media_cache_dir": str(tmp_path / "cache"),
                              **overrides})

    return build
