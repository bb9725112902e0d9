"""Which model the job runs and the model_version it writes: the backend's rule (dam_model.versions), so Label
Studio's skip logic treats the job's predictions and the backend's alike.

- `--model DIR`: that folder; its version is the backend's name for it: "<v>" for a models root's
  versions/<v> folder (what a backend serving it as the promoted version reports), else MODEL_NAME-<hash>
  (what a backend with DAM_MODEL=DIR reports);
- else MODELS_ROOT's current.json (the promoted version), else DAM_MODEL, as the backend. A malformed pointer
  falls back to DAM_MODEL with a warning, as the backend does. An s3:// MODELS_ROOT is read with the backend's own
  reader (model_source.s3.S3Models): the promoted version is downloaded (atomically, once) into MODELS_CACHE_DIR/<v>
  and named <v>; an unreachable bucket stops the job (the backend answers 503 then).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from dam_model.modeling import DescribeAnythingModel
from dam_model.segmentation import VideoSegmenter, build_segmenter
from dam_model.versions import POINTER_NAME, VERSION_RE, VERSIONS_DIR, folder_version, is_s3_url, served_model
from model_source.s3 import S3Models

from .config import JobConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    version: str
    source: str
    origin: str  # where the choice came from, for the log


def choose_model(cfg: JobConfig) -> ModelChoice:
    if cfg.model:
        folder = Path(cfg.model)
        if folder.parent.name == VERSIONS_DIR and VERSION_RE.match(folder.name):
            return ModelChoice(folder.name, str(folder), "--model (a promoted version folder)")
        return ModelChoice(folder_version(cfg.model_name, cfg.model), cfg.model, "--model")
    if is_s3_url(cfg.models_root):
        return choose_s3_model(cfg)
    try:
        version, source = served_model(cfg.models_root, cfg.dam_model, cfg.model_name)
    except (OSError, ValueError) as exc:
        log.warning("promoted-model pointer unreadable (%s); using DAM_MODEL as the backend does", exc)
        return ModelChoice(folder_version(cfg.model_name, cfg.dam_model), cfg.dam_model, "DAM_MODEL")
    origin = "DAM_MODEL" if source == cfg.dam_model else "MODELS_ROOT/current.json"
    return ModelChoice(version, source, origin)


def choose_s3_model(cfg: JobConfig, client: Any = None) -> ModelChoice:
    """The promoted version of an s3:// MODELS_ROOT, downloaded into the cache (the backend's reader and cache
    layout); DAM_MODEL when nothing is promoted or the pointer is malformed, as the backend. ModelSourceError when
    the bucket cannot be read or the version is missing or incomplete."""
    source = S3Models(cfg.models_root, cfg.models_cache_dir or None, cfg.models_s3_endpoint_url or None, client=client)
    try:
        promoted = source.promoted()
    except ValueError as exc:
        log.warning("promoted-model pointer unreadable (%s); using DAM_MODEL as the backend does", exc)
        promoted = None
    if promoted is None:
        return ModelChoice(folder_version(cfg.model_name, cfg.dam_model), cfg.dam_model, "DAM_MODEL")
    _, version, path = promoted
    folder = source.ensure_local(version, path)
    return ModelChoice(version, str(folder), f"{source.url}{POINTER_NAME}")


def resolve_device(device: str, local_rank: int) -> str:
    """'auto' -> this rank's GPU (cuda:LOCAL_RANK) when there is one, else 'cpu'."""
    if device != "auto":
        return device
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def load_model(choice: ModelChoice, device: str, dtype: str) -> DescribeAnythingModel:
    model = DescribeAnythingModel.from_pretrained(choice.source, device=device, dtype=dtype)
    model.eval()
    return model


class LazySegmenter:
    """The segmenter for rectangle and keypoint regions, built on first use and shared by the media threads
    (one call at a time: SAM 2's image cache is not thread-safe). Calling it returns None for SEGMENTER=none."""

    def __init__(self, kind: str, sam2_config: str, sam2_checkpoint: str, device: str,
                 factory: Callable[[], Any] | None = None) -> None:
        self.kind = "region" if kind == "color" else kind
        self.sam2_config, self.sam2_checkpoint, self.device = sam2_config, sam2_checkpoint, device
        self.factory = factory
        self.lock = threading.Lock()
        self._segmenter: Any = None
        self._built = False

    def _build(self) -> Any:
        if self.factory is not None:
            return self.factory()
        if self.kind == "none":
            return None
        if self.kind == "region":
            return build_segmenter("region")
        if not self.sam2_checkpoint:
            raise ValueError("SEGMENTER=sam2 needs SAM2_CHECKPOINT (or set SEGMENTER=region or none)")
        dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        return build_segmenter("sam2", config_name=self.sam2_config, checkpoint=self.sam2_checkpoint,
                               device=self.device, dtype=dtype)

    def __call__(self) -> Any:
        with self.lock:
            if not self._built:
                self._segmenter = self._build()
                self._built = True
        return None if self._segmenter is None else self

    def predict(self, image: Any, **prompts: Any) -> Any:
        with self.lock:
            return self._segmenter.predict(image, **prompts)

    def video(self) -> "LockedVideoSegmenter | None":
        """The segmenter for video tracks when it follows objects through a clip (SAM 2), else None: the tracks'
        own boxes are then the masks, as the backend does without a video segmenter."""
        self()
        return LockedVideoSegmenter(self) if isinstance(self._segmenter, VideoSegmenter) else None


class LockedVideoSegmenter:
    """A LazySegmenter's track_video, one call at a time (the media threads share one SAM 2)."""

    def __init__(self, lazy: LazySegmenter) -> None:
        self.lazy = lazy

    def track_video(self, frames: Any, prompts: Any, **kw: Any) -> Any:
        with self.lazy.lock:
            return self.lazy._segmenter.track_video(frames, prompts, **kw)
