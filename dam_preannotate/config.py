"""The job's configuration: one frozen, validated dataclass; one environment variable per field; flags generated.

Fields the backend also reads keep the backend's variable names and defaults (LABEL_STUDIO_URL, MODELS_ROOT,
DAM_MODEL, MODEL_NAME, MAX_NEW_TOKENS, CATEGORY_HINT, SEGMENTER, ...), so the compose service shares its
environment and the job serves the same model_version with the same captions. Job-only fields are PREANNOTATE_*.
Media rules (MEDIA_ALLOWED_HOSTS, MEDIA_ALLOW_PRIVATE, LOCAL_FILES_ROOT, MEDIA_MAX_*, ...) are ls_io's
MediaConfig, read from the same environment. Secrets come from the environment only: a flag would show in `ps`.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from dam_model.segmentation import SEGMENTER_KINDS
from ls_io.media import parse_env_value

SEGMENTER_CHOICES = (*SEGMENTER_KINDS, "color", "none")  # the backend's SEGMENTER values


def _opt(default: Any, doc: str, env: str | None = None, secret: bool = False) -> Any:
    """A field with its documentation (the flag's help) and, when not the upper-cased name, its variable."""
    return field(default=default, repr=not secret, metadata={"doc": doc, "env": env, "secret": secret})


@dataclass(frozen=True)
class JobConfig:
    """What to pre-annotate, with which model, and how hard to push."""

    # --- Label Studio
    label_studio_url: str = _opt("", "Label Studio's base URL, e.g. http://label-studio:8080.")
    label_studio_api_key: str = _opt("", "Legacy token or personal access token (environment only; never logged).",
                                     secret=True)
    project: int = _opt(0, "Project id whose tasks get predictions.", env="PREANNOTATE_PROJECT")
    view: int = _opt(0, "Data Manager view (tab) id: its filters select the tasks (0: every task).",
                     env="PREANNOTATE_VIEW")
    task_ids: str = _opt("", "Only these tasks: comma-separated ids.", env="PREANNOTATE_TASK_IDS")
    task_ids_file: str = _opt("", "Only these tasks: a file of ids, one a line, or a failed-tasks file (JSON lines "
                                  "with 'task') from an earlier run.", env="PREANNOTATE_TASK_IDS_FILE")
    force: bool = _opt(False, "Recompute tasks that already hold a prediction of this model_version (it is "
                              "replaced). Tasks this journal finished are never recomputed: use a new journal dir.",
                       env="PREANNOTATE_FORCE")
    # --- model (same variables as the backend)
    model: str = _opt("", "A model folder to use instead of MODELS_ROOT's promoted version.",
                      env="PREANNOTATE_MODEL")
    models_root: str = _opt("", "The backend's models root (current.json + versions/<v>), a folder or "
                                "s3://bucket/prefix; the promoted version.")
    models_cache_dir: str = _opt("", "Where a version of an s3:// MODELS_ROOT is downloaded (<dir>/<version>; as the "
                                     "backend's; empty: ~/.cache/dam-label-studio/models/<bucket>/<prefix>).")
    models_s3_endpoint_url: str = _opt("", "S3-compatible endpoint of an s3:// MODELS_ROOT (empty: S3_ENDPOINT_URL, "
                                           "else AWS); credentials from boto3's chain, as the backend's.")
    dam_model: str = _opt("nvidia/DAM-3B", "Model used when MODELS_ROOT has nothing promoted (folder or hub id).")
    model_name: str = _opt("dam", "Name in model_version when no version is promoted (as the backend's).")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N (auto: cuda:LOCAL_RANK when there is a GPU).")
    dtype: str = _opt("auto", "auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16.")
    max_new_tokens: int = _opt(256, "Caption length cap in tokens (as the backend's).")
    video_frames: int = _opt(8, "Frames sampled per video track for describe_video (as the backend's).")
    category_hint: bool = _opt(False, "Pass the region's label to DAM (as the backend's CATEGORY_HINT).")
    segmenter: str = _opt("sam2", "For rectangle and keypoint regions: sam2 | region (alias color) | none; "
                                  "built only when such a region comes.")
    sam2_config: str = _opt("sam2.1_hiera_l", "SAM 2 config name.")
    sam2_checkpoint: str = _opt("", "SAM 2 checkpoint (.pt).")
    torch_num_threads: int = _opt(0, "CPU threads for torch (0: torch's default).")
    # --- throughput
    batch_regions: int = _opt(32, "Regions per generate call, gathered across tasks (fill the accelerator).",
                              env="PREANNOTATE_BATCH_REGIONS")
    post_batch: int = _opt(50, "Tasks per predictions import request.", env="PREANNOTATE_POST_BATCH")
    fetch_workers: int = _opt(8, "Concurrent media downloads.", env="PREANNOTATE_FETCH_WORKERS")
    prefetch_tasks: int = _opt(64, "Tasks prepared (media + masks) ahead of the model.",
                               env="PREANNOTATE_PREFETCH_TASKS")
    page_size: int = _opt(100, "Tasks per Label Studio list request.", env="PREANNOTATE_PAGE_SIZE")
    request_timeout: float = _opt(120.0, "Seconds per Label Studio API request.", env="PREANNOTATE_REQUEST_TIMEOUT")
    # --- bookkeeping
    journal_dir: str = _opt("data/preannotate", "Journals live in <dir>/project-<id>/<model_version>/ (one file per "
                                                "rank); a restart with the same dir resumes.",
                            env="PREANNOTATE_JOURNAL_DIR")
    settle_seconds: float = _opt(30.0, "How long an import whose answer was lost (crash, timeout) may still land "
                                       "in Label Studio; such tasks are checked again for duplicates after it.",
                                 env="PREANNOTATE_SETTLE_SECONDS")
    progress: bool = _opt(True, "Show a progress bar on stderr.", env="PREANNOTATE_PROGRESS")
    log_level: str = _opt("INFO", "Python logging level.")

    def __post_init__(self) -> None:
        if not self.label_studio_url.startswith(("http://", "https://")):
            raise ValueError("LABEL_STUDIO_URL must be an http(s) URL")
        if not self.label_studio_api_key:
            raise ValueError("LABEL_STUDIO_API_KEY is required (environment only)")
        if self.project <= 0:
            raise ValueError("PREANNOTATE_PROJECT (--project) must be a project id")
        if sum(bool(x) for x in (self.view, self.task_ids, self.task_ids_file)) > 1:
            raise ValueError("choose one selection: a view, task ids or a task ids file")
        if self.segmenter not in SEGMENTER_CHOICES:
            raise ValueError(f"SEGMENTER={self.segmenter!r}: expected one of {', '.join(SEGMENTER_CHOICES)}")
        for name in ("batch_regions", "post_batch", "fetch_workers", "prefetch_tasks", "page_size", "max_new_tokens",
                     "video_frames"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{env_name(name)} must be positive")
        if self.settle_seconds < 0 or self.request_timeout <= 0:
            raise ValueError("PREANNOTATE_SETTLE_SECONDS must be >= 0 and PREANNOTATE_REQUEST_TIMEOUT > 0")
        self.selected_ids()  # a malformed id list fails at start, not mid-run

    def selected_ids(self) -> list[int] | None:
        """The explicit task ids (sorted, unique), or None when the selection is the project or a view."""
        if self.task_ids:
            return sorted({_task_id(part) for part in self.task_ids.split(",") if part.strip()})
        if self.task_ids_file:
            return sorted(read_task_ids_file(Path(self.task_ids_file)))
        return None

    def journal_folder(self, model_version: str) -> Path:
        return Path(self.journal_dir) / f"project-{self.project}" / model_version


def _task_id(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"not a task id: {text.strip()!r}") from None
    if value <= 0:
        raise ValueError(f"not a task id: {value}")
    return value


def read_task_ids_file(path: Path) -> set[int]:
    """Ids from a file: one id a line, or JSON lines with a "task" key (the failed-tasks file)."""
    ids = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            ids.add(_task_id(str(json.loads(line).get("task"))))
        else:
            ids.add(_task_id(line))
    return ids


def env_name(name: str) -> str:
    meta = next(f.metadata for f in fields(JobConfig) if f.name == name)
    return meta.get("env") or name.upper()


def _parse(kind: Any, raw: str, var: str) -> Any:
    if kind in ("int", int) and not raw.strip():
        return 0  # compose passes an unset option as "" (e.g. PREANNOTATE_PROJECT: ${PREANNOTATE_PROJECT:-})
    try:
        return parse_env_value(kind, raw)
    except ValueError as exc:
        raise ValueError(f"{var}={raw!r}: {exc}") from None


def config_values_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """{field: value} for every field whose variable is set."""
    env = os.environ if environ is None else environ
    values = {}
    for f in fields(JobConfig):
        var = f.metadata.get("env") or f.name.upper()
        if var in env:
            values[f.name] = _parse(f.type, env[var], var)
    if not values.get("models_s3_endpoint_url") and env.get("S3_ENDPOINT_URL"):  # the backend's fallback
        values["models_s3_endpoint_url"] = env["S3_ENDPOINT_URL"]
    return values


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """One flag per field (secrets excepted), help from the field's doc; unset flags leave the environment's value."""
    for f in fields(JobConfig):
        if f.metadata.get("secret"):
            continue
        var = f.metadata.get("env") or f.name.upper()
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['doc']} [{var}; default {f.default!r}]"
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> JobConfig:
    """Defaults < environment < flags."""
    values = config_values_from_env(environ)
    values.update({f.name: getattr(args, f.name) for f in fields(JobConfig)
                   if getattr(args, f.name, None) is not None})
    return JobConfig(**values)
