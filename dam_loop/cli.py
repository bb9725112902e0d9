"""What every step's command line shares: exit codes, the LoopError family, the one ``run_main`` that turns errors
into exit codes, logging with secrets redacted, and the argparse helpers (environment defaults, shared flags).

Exit codes of every step (and of ``python -m dam_loop.steps.nightly``) are the ``EXIT_*`` constants below.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ls_io.s3 import RedactSecrets

EXIT_OK = 0  # the step did its job
EXIT_PROMOTED = EXIT_OK  # for nightly: a new version was promoted
EXIT_FAILURE = 1  # an unexpected error; details in the run log
EXIT_BAD_ARGS = 2  # invalid arguments or configuration (argparse also uses 2)
EXIT_LOCKED = 3  # another nightly run holds the lock
EXIT_NOTHING_NEW = 10  # the bucket holds nothing that was not already processed
EXIT_NOT_BETTER = 11  # a candidate was trained but the promotion gate did not promote it (dam_loop.gate)
EXIT_NO_SAMPLES = 12  # the snapshot yields no usable training or validation samples

log = logging.getLogger("dam_loop")


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


# ----------------------------------------------------------------------------------------------- running a step
def guard(fn: Callable[[], int], what: str) -> int:
    """fn()'s exit code; a LoopError becomes its exit_code with one error line, anything else EXIT_FAILURE with
    the traceback in the log."""
    try:
        return fn()
    except LoopError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("%s failed", what)
        return EXIT_FAILURE


def run_main(fn: Callable[[argparse.Namespace], int], argv: Sequence[str] | None,
             parser: argparse.ArgumentParser) -> int:
    """The ``main`` of a step: parse ``argv`` (argparse exits 2 on bad flags), log to stderr at ``--log-level`` with
    secrets redacted, then ``fn(args)`` (it prints its result and returns the exit code) under ``guard``."""
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    return guard(lambda: fn(args), parser.prog.rsplit(".", 1)[-1])  # "python -m dam_loop.steps.build" -> "build"


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


def step_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A step's parser: its module docstring as the help text, kept as written."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


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
# boto's wire logs could echo signed headers: the loop's handlers let these libraries through at WARNING and above
# only. A handler filter rather than the loggers' levels, so other handlers in the process (a test's capture, a
# server's log) still get what they ask for.
QUIET_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer")


class QuietLibraries(logging.Filter):
    """Drops records below WARNING from the QUIET_LIBRARIES loggers (and their children)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] not in QUIET_LIBRARIES


def setup_logging(level: str = "INFO", log_file: Path | None = None, extra_secrets: Iterable[str] = ()) -> None:
    """Log to stderr (and to ``log_file`` when given) with secrets redacted (ls_io.s3.RedactSecrets: the values of
    its SECRET_ENV_VARS and ``extra_secrets``). Safe to call again: replaces handlers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_loop_handler", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    filters = [QuietLibraries(), RedactSecrets(extra_secrets)]
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        for record_filter in filters:
            handler.addFilter(record_filter)
        handler._loop_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
