"""How the build step fetches a task's image or video: through the backend's media fetcher, with its URL rules
(Label Studio uploads and local-files with LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY, cloud URIs presigned by Label
Studio, http(s) under MEDIA_ALLOWED_HOSTS, local paths under LOCAL_FILES_ROOT).

This module moves to ls_io (issue 14): ls_io.media replaces backend.media here at merge.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from backend.media import MediaFetcher
from backend.settings import Settings

ImageFetcher = Callable[[str, Any], np.ndarray]  # (url or path, task id) -> HxWx3 uint8 RGB
# (url or path, task id, scratch folder) -> a local video file; remote media may be written into the scratch
# folder, which build_dataset deletes when it ends.
VideoFetcher = Callable[[str, Any, Path], Path]


def media_fetcher(local_files_root: str | None = None) -> MediaFetcher:
    overrides = {"local_files_root": str(local_files_root)} if local_files_root else {}
    return MediaFetcher(Settings.from_env(**overrides))


def default_fetcher(local_files_root: str | None = None) -> ImageFetcher:
    """Images through the media fetcher (the URL rules in the module docstring)."""
    fetcher = media_fetcher(local_files_root)

    def fetch(url: str, task_id: Any = None) -> np.ndarray:
        return fetcher.load_image(url, task_id if isinstance(task_id, int) else None)

    return fetch


def default_video_fetcher(local_files_root: str | None = None) -> VideoFetcher:
    """Videos with the same URL rules as images (and the backend's VIDEO_MAX_BYTES cap): a local path (under
    LOCAL_FILES_ROOT) is used in place; other media are downloaded into the scratch folder."""
    fetcher = media_fetcher(local_files_root)

    def fetch(url: str, task_id: Any, scratch: Path) -> Path:
        task = task_id if isinstance(task_id, int) else None
        kind, _ = fetcher.resolve_url(url, task)
        if kind == "local":
            return Path(fetcher.fetch_path(url, task))
        data = fetcher.fetch_bytes(url, task, max_bytes=fetcher.settings.video_max_bytes)
        scratch.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=scratch, prefix="video-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return Path(name)

    return fetch
