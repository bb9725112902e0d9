"""Every environment variable the backend reads, typed and documented, in one place.

`Settings.from_env()` reads os.environ (or a mapping given by tests); unknown values raise ValueError
with the variable's name, so a typo fails at start-up rather than at the first request.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from dam_model.versions import parse_s3_url
from ls_io.media import MediaConfig, parse_env_value

_MEDIA = MediaConfig()  # the media defaults are ls_io's (the loop reads media with the same rules)


_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")

# field -> variable read when the field's own variable is unset (the same fallback dam_loop/models_root.py applies)
_ENV_FALLBACKS = {"models_s3_endpoint_url": "S3_ENDPOINT_URL"}


@dataclass(frozen=True)
class Settings:
    """Backend configuration. Field name == environment variable name (upper-cased)."""

    # --- Label Studio connection (media download) ---
    label_studio_url: str = _MEDIA.label_studio_url
    """Base URL of Label Studio (e.g. http://label-studio:8080); /data/upload and /data/local-files URLs resolve against it."""
    label_studio_api_key: str = _MEDIA.label_studio_api_key
    """Legacy token (40 hex chars, sent as "Token <t>") or a personal access token (a JWT refresh token,
    exchanged at /api/token/refresh/ for a 5-minute "Bearer" access token). Sent only to the Label Studio host."""

    # --- Auth ---
    basic_auth_user: str = ""
    """HTTP Basic user; with BASIC_AUTH_PASS set, every route but the webhook (and /health when HEALTH_PUBLIC) needs it."""
    basic_auth_pass: str = ""
    """HTTP Basic password (compared in constant time)."""
    health_public: bool = False
    """Serve GET /health and / without auth (for container health checks). Label Studio sends auth there anyway."""
    webhook_secret: str = ""
    """Shared secret for POST /webhook, passed as ?token=<secret> in the webhook URL (Label Studio's webhook has no
    auth header). Empty: the webhook falls back to basic auth (or is open when basic auth is off)."""

    # --- Model ---
    dam_model: str = "nvidia/DAM-3B"
    """DAM served when MODELS_ROOT has no current.json: a local folder (official layout) or a hub id."""
    models_root: str = ""
    """Folder holding current.json + versions/<v>/ written by the loop's promote step, or s3://bucket/prefix (a new version
    is downloaded into MODELS_CACHE_DIR, then swapped in); polled for new versions."""
    models_cache_dir: str = ""
    """Local cache of versions downloaded from an s3:// MODELS_ROOT (<dir>/<version>; one folder per MODELS_ROOT).
    Empty: ~/.cache/dam-label-studio/models/<bucket>/<prefix> (XDG_CACHE_HOME respected)."""
    models_s3_endpoint_url: str = ""
    """S3-compatible endpoint of an s3:// MODELS_ROOT (MinIO: http://minio:9000). Empty: S3_ENDPOINT_URL, else AWS.
    Credentials: boto3's chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), never logged."""
    model_poll_seconds: float = 30.0
    """How often the promoted-model pointer is checked (0 disables polling)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    dtype: str = "auto"
    """auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16."""
    max_new_tokens: int = 256
    """Caption length cap in tokens."""
    category_hint: bool = False
    """Pass the region's label to DAM: "Describe the masked region (a {label}) in detail." """
    video_frames: int = 8
    """Frames sampled per video region for describe_video (DAM's video checkpoints use 8)."""
    torch_num_threads: int = 0
    """CPU threads of torch's operators (0: torch's default, one per core). On CPU with a small model, 1 leaves the
    other cores to the request threads (the local stack's default: see README "Many annotators at once")."""

    # --- Segmentation ---
    segmenter: str = "sam2"
    """sam2 (SAM 2 checkpoint), region (colour region growing, offline demo; alias color) or none (no smart tools:
    rectangles become box masks, keypoints are refused)."""
    sam2_model: str = "facebook/sam2.1-hiera-large"
    """SAM 2.1 by hub id (facebook/sam2.1-hiera-tiny/-small/-base-plus/-large), loaded through sam2's own hub table
    into the Hugging Face cache on first use (HF_HUB_OFFLINE=1 afterwards). SAM2_CHECKPOINT, when set, wins."""
    sam2_config: str = "sam2.1_hiera_l"
    """SAM 2 config name of SAM2_CHECKPOINT (sam2.1_hiera_t/_s/_b+/_l or an alias such as large)."""
    sam2_checkpoint: str = ""
    """Path to a local SAM 2 checkpoint (.pt); empty: SAM2_MODEL from the hub."""
    no_region_mode: str = "skip"
    """skip: a task without regions gets no prediction ([]); auto: SAM 2 automatic masks, each described."""
    auto_max_masks: int = 16
    """Cap on automatic masks per image (NO_REGION_MODE=auto)."""
    auto_min_area: int = 256
    """Smallest automatic mask kept, in pixels."""

    # --- Media ---
    media_cache_dir: str = _MEDIA.media_cache_dir
    """On-disk media cache (file name = sha256 of the URL)."""
    media_allowed_hosts: str = _MEDIA.media_allowed_hosts
    """Comma-separated host names allowed for plain http(s) URLs; empty = any public host; '*' = any host."""
    media_allow_private: bool = _MEDIA.media_allow_private
    """Allow http(s) media on private, loopback and link-local addresses (off: SSRF protection)."""
    local_files_root: str = _MEDIA.local_files_root
    """Plain local paths (and file://) are read only under this folder; empty disables local paths."""
    media_max_bytes: int = _MEDIA.media_max_bytes
    """Largest media download, bytes (images; videos get VIDEO_MAX_BYTES)."""
    video_max_bytes: int = _MEDIA.video_max_bytes
    """Largest video download, bytes."""
    media_max_pixels: int = _MEDIA.media_max_pixels
    """Largest image, pixels (PIL decompression-bomb guard)."""
    media_timeout: float = _MEDIA.media_timeout
    """Seconds per media HTTP request."""
    image_cache_items: int = _MEDIA.image_cache_items
    """Decoded images kept in memory (LRU by URL): interactive clicks on one image decode it once. 0 disables."""

    # --- Training hook ---
    events_file: str = "data/events/webhook_events.jsonl"
    """Webhook events are appended here, one JSON object a line."""
    train_command: str = "python -m dam_loop.steps.nightly"
    """Launched out of process on START_TRAINING (never two at once)."""
    train_log_dir: str = "data/logs"
    """Where the training job's log goes."""

    # --- Server ---
    warm_up_on_start: bool = True
    """Start loading the model in the background as soon as the worker starts (else at /setup or first /predict)."""
    max_request_bytes: int = 256 * 1024 * 1024
    """Largest request body (interactive payloads grow with every accepted mask); larger: 413."""
    max_json_depth: int = 64
    """Deepest nesting of a request body's JSON (Label Studio's payloads nest about 8 deep); deeper: 400."""
    max_tasks_per_request: int = 10000
    """Most tasks in one /predict (Label Studio sends every selected task at once); more: 400."""
    max_context_regions: int = 1000
    """Most items in an interactive request's context.result; more: 400."""
    max_batch_requests: int = 2
    """Batch /predict requests served at once per worker; one more gets 503 with Retry-After (0: no limit).
    Interactive requests are never refused for it: an annotator is waiting."""
    retry_after_seconds: int = 5
    """The Retry-After of a 503 for an overloaded worker."""
    model_name: str = "dam"
    """Name used in model_version when serving DAM_MODEL directly."""
    log_level: str = "INFO"
    """Python logging level."""

    def __post_init__(self) -> None:
        if self.no_region_mode not in {"skip", "auto"}:
            raise ValueError(f"NO_REGION_MODE={self.no_region_mode!r}: expected skip or auto")
        if self.segmenter not in {"sam2", "region", "color", "none"}:
            raise ValueError(f"SEGMENTER={self.segmenter!r}: expected sam2, region (alias color) or none")
        for name in ("auto_max_masks", "video_frames", "max_new_tokens", "media_max_bytes", "media_max_pixels",
                     "max_json_depth", "max_tasks_per_request", "max_context_regions", "retry_after_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.upper()} must be positive")
        if self.models_root_is_s3:
            try:
                parse_s3_url(self.models_root)
            except ValueError as exc:
                raise ValueError(f"MODELS_ROOT: {exc}") from None
        if self.segmenter == "sam2" and not self.sam2_checkpoint and not _HUB_ID.fullmatch(self.sam2_model):
            raise ValueError(f"SAM2_MODEL={self.sam2_model!r} is not a hub id (owner/name); set it or SAM2_CHECKPOINT")
        if self.max_batch_requests < 0:
            raise ValueError("MAX_BATCH_REQUESTS must be >= 0 (0: no limit)")
        if self.model_poll_seconds < 0:
            raise ValueError("MODEL_POLL_SECONDS must be >= 0")
        if self.torch_num_threads < 0:
            raise ValueError("TORCH_NUM_THREADS must be >= 0 (0: torch's default)")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def allowed_hosts(self) -> set[str]:
        return {h.strip().lower() for h in self.media_allowed_hosts.split(",") if h.strip()}

    @property
    def models_root_is_s3(self) -> bool:
        return self.models_root.startswith("s3://")

    @property
    def models_root_path(self) -> Path | None:
        """The local models folder (None when MODELS_ROOT is empty or an s3:// URL)."""
        return Path(self.models_root) if self.models_root and not self.models_root_is_s3 else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build from environment variables (upper-case field names); `overrides` win (tests)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None:
                continue
            try:
                values[f.name] = parse_env_value(f.type, raw)  # the one reading, the bulk job's too
            except ValueError as exc:
                raise ValueError(f"{f.name.upper()}={raw!r}: {exc}") from None
        for name, fallback in _ENV_FALLBACKS.items():
            if not values.get(name) and env.get(fallback):  # unset or empty (compose's ${VAR:-})
                values[name] = env[fallback]
        values.update(overrides)
        return cls(**values)

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked (safe to log)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in {"label_studio_api_key", "basic_auth_pass", "webhook_secret"} and v:
                v = "***"
            out[f.name.upper()] = v
        return out
