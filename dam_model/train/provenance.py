"""What made a trained model: the code version, the git commit, the config and metrics, saved beside its weights."""
from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

from dam_model.train.config import TrainConfig

_TRAIN_DIR = Path(__file__).resolve().parent
_AUGMENT_SOURCE = _TRAIN_DIR.parent / "augment.py"


def training_code_version() -> str:
    """Hash of the training package's and the prompt augmentation's sources (part of the tiny model's cache key)."""
    digest = hashlib.sha256()
    for path in sorted(_TRAIN_DIR.glob("*.py")) + [_AUGMENT_SOURCE]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_commit() -> str | None:
    """HEAD of the repository holding this code, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_TRAIN_DIR, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(cfg: TrainConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """The provenance.json record of a final model."""
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "training_code_version": training_code_version(),
        "train_config": cfg.to_dict(),
        "metrics": metrics,
        **({"extra": cfg.extra} if cfg.extra else {}),
    }
