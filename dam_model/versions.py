"""Layout of a promoted-models root: the names its writer (dam_loop/models_root.py) and its reader (backend/model_store.py) agree on.

A models root is a local folder or ``s3://bucket/prefix``; under it::

    versions/<version>/     official DAM folder layout + provenance.json (written LAST: its presence marks a
                            finished upload); never modified once written
    current.json            {"version", "path": "versions/<version>", "promoted_at", "previous", "metrics"}

Also the one rule for WHICH version a local models root serves and under what name (`served_model`,
`folder_version`): the backend's model store and the bulk pre-annotation job both call it, so the model_version
the job stores is exactly the one the backend reports (Label Studio skips tasks by that string).

No boto3, no network: it lives in the model package so that the writer and the readers can share it without
importing each other (an s3:// root is read by model_source/s3.py, for the backend and the job).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

POINTER_NAME = "current.json"
VERSIONS_DIR = "versions"
PROVENANCE_NAME = "provenance.json"
# The learning-from-edits KPIs the nightly publishes beside the pointer (dam_loop.steps.nightly_kpis); the backend
# serves them at GET /kpis and in /metrics.
KPIS_NAME = "kpis.json"
# Files a version folder must hold to be complete (provenance.json is uploaded after every other file).
REQUIRED_FILES = ("config.json", PROVENANCE_NAME)
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_S3_URL = re.compile(r"^s3://([^/]+)/?(.*)$")


def version_path(version: str) -> str:
    """The pointer's "path" of a version, relative to the models root: "versions/<version>"."""
    return f"{VERSIONS_DIR}/{version}"


def is_s3_url(root: str) -> bool:
    return str(root).startswith("s3://")


def parse_s3_url(url: str) -> tuple[str, str]:
    """"s3://bucket/a/b" -> ("bucket", "a/b/"); "s3://bucket" -> ("bucket", ""). ValueError otherwise."""
    match = _S3_URL.match(str(url))
    if not match or not match.group(1):
        raise ValueError(f"not an s3:// URL: {url}")
    prefix = match.group(2).strip("/")
    return match.group(1), f"{prefix}/" if prefix else ""


def parse_pointer(data: Any, where: str) -> tuple[str, str]:
    """(version, path) of a decoded current.json. ValueError when a field is missing or not a string."""
    if not isinstance(data, dict) or not isinstance(data.get("version"), str) or not isinstance(data.get("path"), str):
        raise ValueError(f"{where} needs string 'version' and 'path'")
    return data["version"], data["path"]


def folder_version(name: str, source: str) -> str:
    """"<name>-<8 hex>": hash of a model folder's json files and weight files (names, sizes, mtimes), or of the
    hub id when `source` is not a local folder. The version of a model served without a promotion pointer."""
    folder = Path(source)
    digest = hashlib.sha256()
    if folder.is_dir():
        for item in sorted(folder.rglob("*")):
            if not item.is_file():
                continue
            rel = item.relative_to(folder).as_posix()
            if item.suffix == ".json" or item.name.endswith(".index.json"):
                digest.update(rel.encode() + b"\0" + item.read_bytes())
            elif item.suffix in {".safetensors", ".bin", ".model"}:
                digest.update(f"{rel}\0{item.stat().st_size}\0{int(item.stat().st_mtime)}".encode())
    else:
        digest.update(source.encode())
    return f"{name}-{digest.hexdigest()[:8]}"


def read_local_pointer(root: str | Path) -> tuple[str, Path, bytes] | None:
    """(version, version folder, raw bytes) of `<root>/current.json`, or None when it is absent. ValueError when
    malformed, OSError when unreadable. A relative pointer path is taken from the root."""
    path = Path(root) / POINTER_NAME
    if not path.is_file():
        return None
    raw = path.read_bytes()
    version, rel = parse_pointer(json.loads(raw), str(path))
    folder = Path(rel)
    return version, folder if folder.is_absolute() else path.parent / folder, raw


def served_model(models_root: str, default_source: str, model_name: str) -> tuple[str, str]:
    """(model_version, source) a backend with MODELS_ROOT=`models_root` (local or empty), DAM_MODEL=`default_source`
    and MODEL_NAME=`model_name` serves: the promoted version when current.json exists, else the default model under
    its folder_version. Errors reading the pointer propagate (the caller decides whether to fall back)."""
    pointer = read_local_pointer(models_root) if models_root and not is_s3_url(models_root) else None
    if pointer is not None:
        return pointer[0], str(pointer[1])
    return folder_version(model_name, default_source), default_source


# ------------------------------------------------------------------------------------------- provenance and licences
# What the model cards say; recorded in every version's provenance.json (base_model) and shown by the backend.
# nvidia/DAM-3B and nvidia/DAM-3B-Video: "NVIDIA Noncommercial License" (their Hugging Face model cards).
# SAM 2.1: facebookresearch/sam2 README, "The SAM 2 model checkpoints, SAM 2 demo code (front-end and back-end),
# and SAM 2 training code are licensed under Apache 2.0".
NVIDIA_NONCOMMERCIAL = {"licence": "NVIDIA Noncommercial License",
                        "licence_url": "https://huggingface.co/nvidia/DAM-3B/blob/main/LICENSE"}
KNOWN_BASE_MODELS: dict[str, dict[str, str]] = {
    "nvidia/DAM-3B": {**NVIDIA_NONCOMMERCIAL, "model_card": "https://huggingface.co/nvidia/DAM-3B"},
    "nvidia/DAM-3B-Video": {**NVIDIA_NONCOMMERCIAL, "model_card": "https://huggingface.co/nvidia/DAM-3B-Video"},
}
SAM2_LICENCE = {"licence": "Apache-2.0", "licence_url": "https://github.com/facebookresearch/sam2/blob/main/LICENSE",
                "source": "facebookresearch/sam2 README: the SAM 2 model checkpoints are licensed under Apache 2.0"}
PROJECT_LICENCE = {"licence": "MIT", "licence_url": "LICENSE (this repository)"}
UNKNOWN_LICENCE = "unknown: not a model this project knows; check its model card"


def tiny_base_model(profile: str, cache_key: str) -> dict[str, str]:
    """The base-model record of a tiny DAM built here (dam_tools.build_tiny_model): no pretrained weights."""
    return {"id": f"tiny-dam/{profile}", **PROJECT_LICENCE, "cache_key": cache_key,
            "built_from": "random initialisation, trained on synthetic scenes (dam_model.synthetic)"}


def base_model_of(init: str | None, init_provenance: dict[str, Any] | None = None) -> dict[str, str]:
    """The base model of a model fine-tuned from ``init`` (a hub id or a folder).

    A folder that records its own base model passes it on (lineage survives any number of fine-tunings); a known hub
    id gets its model card's licence; anything else is named with an unknown licence rather than guessed.
    """
    inherited = (init_provenance or {}).get("base_model")
    if isinstance(inherited, dict) and inherited.get("id"):
        return dict(inherited)
    name = str(init or "").rstrip("/")
    if name in KNOWN_BASE_MODELS:
        return {"id": name, **KNOWN_BASE_MODELS[name]}
    return {"id": name or "unknown", "licence": UNKNOWN_LICENCE}


def segmenter_record(segmenter: str, sam2_model: str = "", sam2_checkpoint: str = "") -> dict[str, str]:
    """The segmenter a backend serves and its licence (SAM 2.1 checkpoints: Apache-2.0; region growing: ours)."""
    if segmenter != "sam2":
        return {"id": segmenter, **(PROJECT_LICENCE if segmenter in {"region", "color"} else {"licence": "none"})}
    return {"id": sam2_checkpoint or sam2_model, **SAM2_LICENCE}


def with_lineage(record: dict[str, Any], init_provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """``record`` (a version's provenance) completed with ``base_model`` and ``training_data`` when it lacks them:
    the base model from its init model (train_config.extra.init_model), the data from its snapshot id and counts."""
    out = dict(record)
    extra = (out.get("train_config") or {}).get("extra") or out.get("extra") or {}
    if "base_model" not in out and extra.get("profile") and extra.get("cache_key") and not extra.get("init_model"):
        out["base_model"] = tiny_base_model(extra["profile"], extra["cache_key"])  # a tiny build of an older format
    if "base_model" not in out:
        out["base_model"] = base_model_of(extra.get("init_model"), init_provenance)
    if "training_data" not in out:
        out["training_data"] = {k: v for k, v in (("snapshot_id", out.get("snapshot_id") or extra.get("snapshot_id")),
                                                  ("dataset", extra.get("dataset")),
                                                  ("counts", extra.get("dataset_counts"))) if v}
    return out


def version_info(provenance: dict[str, Any] | None, source: str = "") -> dict[str, Any]:
    """What the backend shows about the served model: version, base model + licence, training data, the metrics that
    promoted it. Without a provenance.json (a hub id or a bare folder) the base model is the source itself."""
    record = with_lineage(provenance or {"extra": {"init_model": source}})
    if provenance is None:
        record["base_model"] = base_model_of(source)
    keys = ("version", "base_model", "training_data", "promoted_metrics", "created_at", "git_commit")
    return {k: record[k] for k in keys if k in record}
