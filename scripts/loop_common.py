"""Small helpers shared by the self-training loop's steps (pull, build, pseudo_label, train, evaluate, promote, nightly).

Layout of the loop's working folder (``--work-root`` / ``LOOP_WORK_ROOT``, default ``./loop_work``)::

    manifest.json                 cumulative manifest of the source bucket (copy of the latest snapshot's)
    snapshots/<snapshot id>/      immutable: objects/ (raw exported JSON) + manifest.json + snapshot.json
    datasets/<snapshot id>/       samples.jsonl + images/ + masks/ + dataset.json (+ pseudo.jsonl)
    train/<snapshot id>-<cfg>/    training output and checkpoints (stable name so a killed run resumes)
    runs/<run id>/nightly.log     one log per nightly run (+ summary.json)
    state.json                    the last snapshot a nightly run finished with
    nightly.lock                  fcntl lock: one nightly run at a time

Exit codes of every step (and of ``python -m scripts.nightly``) are the ``EXIT_*`` constants below.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

# Exit codes (documented in scripts/nightly.py and the README).
EXIT_PROMOTED = 0  # the run finished; for nightly: a new version was promoted
EXIT_FAILURE = 1  # an unexpected error; details in the run log
EXIT_BAD_ARGS = 2  # invalid arguments or configuration (argparse also uses 2)
EXIT_LOCKED = 3  # another nightly run holds the lock
EXIT_NOTHING_NEW = 10  # the bucket holds nothing that was not already processed
EXIT_NOT_BETTER = 11  # a candidate was trained but did not beat the champion by the margin
EXIT_NO_SAMPLES = 12  # the snapshot yields no usable training or validation samples

# Environment variables whose values must never reach a log line.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "LABEL_STUDIO_API_KEY")

log = logging.getLogger("scripts.loop")


class LoopError(RuntimeError):
    """A step failed for a reason worth one clear line (bad input, missing snapshot, ...)."""

    exit_code = EXIT_FAILURE


class BadArguments(LoopError, ValueError):
    """Arguments or configuration are invalid."""

    exit_code = EXIT_BAD_ARGS


class NoSamples(LoopError):
    """The data yields no usable training or validation samples."""

    exit_code = EXIT_NO_SAMPLES


class LockedError(LoopError):
    """Another process holds the lock."""

    exit_code = EXIT_LOCKED


# ----------------------------------------------------------------------------------------------- arguments
def env_default(name: str, default: Any = None) -> Any:
    """The value of environment variable ``name`` when set and non-empty, else ``default``."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = env_default(name)
    try:
        return float(value) if value is not None else default
    except ValueError as exc:
        raise BadArguments(f"environment variable {name}={value!r} is not a number") from exc


def env_int(name: str, default: int | None) -> int | None:
    value = env_default(name)
    try:
        return int(value) if value is not None else default
    except ValueError as exc:
        raise BadArguments(f"environment variable {name}={value!r} is not an integer") from exc


def env_bool(name: str, default: bool = False) -> bool:
    value = env_default(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def add_work_root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-root",
        type=Path,
        default=Path(env_default("LOOP_WORK_ROOT", "loop_work")),
        help="the loop's working folder: snapshots, datasets, training runs, logs (env LOOP_WORK_ROOT; default ./loop_work)",
    )


def add_models_root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-root",
        default=env_default("MODELS_ROOT", "models"),
        help="where promoted versions and current.json live: a folder or s3://bucket/prefix (env MODELS_ROOT)",
    )


def add_log_level_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default=env_default("LOG_LEVEL", "INFO"), help="logging level (env LOG_LEVEL)")


# ----------------------------------------------------------------------------------------------- logging
class RedactSecrets(logging.Filter):
    """Replace the values of secret environment variables by '***' in every record (defence in depth)."""

    def __init__(self, extra_secrets: Iterable[str] = ()) -> None:
        super().__init__()
        values = [os.environ.get(name, "") for name in SECRET_ENV_VARS] + list(extra_secrets)
        # Very short values would mangle ordinary words; real keys are long.
        self.secrets = sorted({v for v in values if v and len(v) >= 8}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            redacted = message
            for value in self.secrets:
                redacted = redacted.replace(value, "***")
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def setup_logging(level: str = "INFO", log_file: Path | None = None, extra_secrets: Iterable[str] = ()) -> None:
    """Log to stderr (and to ``log_file`` when given) with secrets redacted. Safe to call again: replaces handlers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_loop_handler", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact = RedactSecrets(extra_secrets)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(redact)
        handler._loop_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # boto's wire logs could echo signed headers: keep them quiet.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ----------------------------------------------------------------------------------------------- files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder + os.replace (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def latest_dataset_dir(work_root: Path) -> Path:
    """The dataset folder of the latest pulled snapshot (``<work root>/datasets/<snapshot id>``)."""
    manifest = Path(work_root) / "manifest.json"
    if not manifest.exists():
        raise BadArguments("no --dataset and no pulled snapshot in the work root")
    return Path(work_root) / "datasets" / read_json(manifest)["snapshot_id"]


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file ([] when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def utc_iso(moment: _dt.datetime | None = None) -> str:
    return (moment or utc_now()).isoformat().replace("+00:00", "Z")


def new_run_id(prefix: str = "") -> str:
    """Sortable, unique id: ``<prefix>20261125T182900Z-1a2b3c``."""
    return f"{prefix}{utc_now().strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def git_commit(repo: Path | None = None) -> str | None:
    """The checkout's commit (with '-dirty' when tracked files changed), or None outside git."""
    repo = repo or Path(__file__).resolve().parent.parent
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


# ----------------------------------------------------------------------------------------------- lock
class FileLock:
    """An exclusive, non-blocking fcntl lock on ``path``; released on close or when the process dies (even SIGKILL).

    >>> with FileLock(Path("loop_work/nightly.lock")):
    ...     ...  # raises LockedError at once if another process holds it
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = self.path.read_text(errors="replace").strip() if self.path.exists() else ""
                raise LockedError(f"{self.path} is held by another run ({holder or 'unknown holder'})") from exc
            raise
        # Record who holds it (informational only; the lock itself is the flock).
        os.ftruncate(fd, 0)
        os.write(fd, f"pid={os.getpid()} since={utc_iso()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
