"""Where and when a loop artefact was made: UTC time stamps, sortable run ids, the checkout's git commit."""
from __future__ import annotations

import datetime as dt
import secrets
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def utc_iso(moment: dt.datetime | None = None) -> str:
    return (moment or utc_now()).isoformat().replace("+00:00", "Z")


def new_run_id(prefix: str = "") -> str:
    """Sortable, unique id: ``<prefix>20261125T182900Z-1a2b3c``."""
    return f"{prefix}{utc_now().strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def git_commit(repo: Path | None = None) -> str | None:
    """The checkout's commit (with '-dirty' when tracked files changed), or None outside git."""
    repo = repo or REPO_ROOT
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
