"""Start and stop the local stack without Docker: Label Studio, an S3 endpoint (moto) and the backend under gunicorn.

Used by ``python -m dam_tools.demo`` and by the integration test (tests/integration/). Every service runs as a child
process in its own process group, logs to ``<run dir>/logs/<name>.log`` and is stopped with SIGTERM to the whole
group (then SIGKILL after a grace period), so no grandchild (gunicorn workers, Label Studio's server) is orphaned.

The Label Studio HTTP calls are in dam_tools.ls_api; the demo project and the services' environments in
dam_tools.provisioning.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import requests

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LS_BIN = ROOT / ".venv-ls" / "bin" / "label-studio"


class StackError(RuntimeError):
    """A service failed to start, died, or an API call to it failed; the message says which and why."""


# --------------------------------------------------------------------------------------------- small helpers
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def make_legacy_token() -> str:
    """A Label Studio legacy API token: 40 lowercase hex characters."""
    return secrets.token_hex(20)


def label_studio_bin() -> Path:
    """The ``label-studio`` executable: env LABEL_STUDIO_BIN, else ./.venv-ls/bin/label-studio (./manage.sh installs it)."""
    path = Path(os.environ.get("LABEL_STUDIO_BIN") or DEFAULT_LS_BIN)
    if not path.is_file():
        raise StackError(f"Label Studio executable not found at {path}: run ./manage.sh demo (or set LABEL_STUDIO_BIN)")
    return path


@dataclass(frozen=True)
class LabelStudioCredentials:
    """The admin account Label Studio creates at its first start (env LABEL_STUDIO_USERNAME/PASSWORD/USER_TOKEN)."""

    username: str = "admin@example.com"
    password: str = "dam-demo-password"
    token: str = field(default_factory=make_legacy_token)

    def __post_init__(self) -> None:
        if len(self.token) != 40 or any(c not in "0123456789abcdef" for c in self.token):
            raise ValueError("a Label Studio legacy token must be 40 lowercase hex characters")
        if "@" not in self.username:
            raise ValueError("LABEL_STUDIO_USERNAME must be an e-mail address")


@dataclass
class ManagedProcess:
    """One child service: its process (a group leader), log file and base URL."""

    name: str
    process: subprocess.Popen
    log_path: Path
    url: str

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the service's log (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------- the stack
class LocalStack:
    """Owns the child services of one run; a context manager that stops them all on exit.

    ``run_dir`` receives ``logs/``; each ``start_*`` method returns once the service answers its health check.
    """

    def __init__(self, run_dir: Path, host: str = "127.0.0.1", verbose: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.host = host
        self.verbose = verbose
        self.log_dir = self.run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.services: list[ManagedProcess] = []

    # -- lifecycle
    def __enter__(self) -> "LocalStack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str], url: str, cwd: Path = ROOT) -> ManagedProcess:
        """Start ``argv`` in a new session (its own process group) with output to ``logs/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - the child keeps writing after this returns
        try:
            process = subprocess.Popen(
                list(argv), cwd=str(cwd), env=dict(env), stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log_file.close()  # the child holds its own descriptor
        service = ManagedProcess(name=name, process=process, log_path=log_path, url=url)
        self.services.append(service)
        return service

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop every service, newest first: SIGTERM to its process group, SIGKILL after ``grace_s`` seconds."""
        for service in reversed(self.services):
            started = time.monotonic()
            _stop_group(service.process, grace_s)
            if self.verbose:
                print(f"    stopped {service.name} ({time.monotonic() - started:.1f} s)", flush=True)
        self.services.clear()

    # -- services
    def start_label_studio(
        self,
        port: int,
        credentials: LabelStudioCredentials,
        data_dir: Path,
        extra_env: Mapping[str, str] | None = None,
        timeout_s: float = 600.0,
        wait: bool = True,
    ) -> ManagedProcess:
        """Start Label Studio on ``host:port`` with its sqlite data under ``data_dir``; first start ~40 s (migrations).

        wait=False returns at once (the caller does other work meanwhile, then polls ``is_healthy``)."""
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        env = label_studio_env(credentials, data_dir, extra_env)
        argv = [str(label_studio_bin()), "start", "--no-browser", "--internal-host", self.host, "--port", str(port)]
        service = self.spawn("label-studio", argv, env, f"http://{self.host}:{port}")
        if wait:
            wait_healthy(service, "/health", timeout_s)
        return service

    def start_s3(self, port: int, timeout_s: float = 60.0) -> ManagedProcess:
        """Start moto's S3 server (stands in for MinIO) on ``host:port``; state is in memory only."""
        env = dict(os.environ)
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)]
        service = self.spawn("s3", argv, env, f"http://{self.host}:{port}")
        wait_healthy(service, "/moto-api/", timeout_s)
        return service

    def start_backend(
        self, port: int, env: Mapping[str, str], timeout_s: float = 120.0, health_path: str = "/health",
        wait: bool = True,
    ) -> ManagedProcess:
        """Start the ML backend (``backend.wsgi:app``) under gunicorn with backend/gunicorn.conf.py on ``host:port``.

        ``env`` is the backend's full environment (see backend/settings.py); it returns once /health answers 200
        (at once with wait=False).
        """
        argv = [
            sys.executable, "-m", "gunicorn", "--config", str(ROOT / "backend" / "gunicorn.conf.py"),
            "--bind", f"{self.host}:{port}", "backend.wsgi:app",
        ]
        service = self.spawn("backend", argv, env, f"http://{self.host}:{port}")
        if wait:
            wait_healthy(service, health_path, timeout_s)
        return service


def label_studio_env(
    credentials: LabelStudioCredentials, data_dir: Path, extra_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment Label Studio needs to start unattended and to reach loopback services.

    - USERNAME/PASSWORD/USER_TOKEN create the admin and its legacy token at the first start;
      the legacy token is refused (401) unless LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true.
    - ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false let it call a backend / S3 on 127.0.0.1.
    - LATEST_VERSION_CHECK=false: no call to PyPI at start (offline machines, CI).
    - ML_TIMEOUT_PREDICT=300 (unless set): seconds Label Studio waits for /predict (its default is 100).
    """
    env = dict(os.environ)
    # our venv's variables must not leak into Label Studio's own interpreter
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(key, None)
    env.update(
        {
            "LABEL_STUDIO_USERNAME": credentials.username,
            "LABEL_STUDIO_PASSWORD": credentials.password,
            "LABEL_STUDIO_USER_TOKEN": credentials.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            # Label Studio abandons a /predict after 100 s by default; CPU captioning of a batch can take longer.
            "ML_TIMEOUT_PREDICT": env.get("ML_TIMEOUT_PREDICT", "300"),
        }
    )
    env.update(extra_env or {})
    return env


def is_healthy(service: ManagedProcess, path: str = "/health") -> bool:
    """True when ``service.url + path`` answers 2xx now; StackError (with the log tail) when the service died."""
    if not service.alive():
        raise StackError(f"{service.name} exited with code {service.process.returncode}; "
                         f"log {service.log_path}:\n{service.log_tail()}")
    try:
        return requests.get(service.url + path, timeout=2).ok
    except requests.RequestException:
        return False


def wait_healthy(service: ManagedProcess, path: str, timeout_s: float, interval_s: float = 0.5) -> None:
    """Poll ``service.url + path`` until it answers 2xx; raise StackError (with the log tail) on death or timeout."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if not service.alive():
            raise StackError(
                f"{service.name} exited with code {service.process.returncode} before it was healthy; "
                f"log {service.log_path}:\n{service.log_tail()}"
            )
        try:
            reply = requests.get(service.url + path, timeout=2)
            if reply.ok:
                return
            last_error = f"HTTP {reply.status_code}"
        except requests.RequestException as exc:
            last_error = type(exc).__name__
        time.sleep(interval_s)
    raise StackError(
        f"{service.name} not healthy at {service.url}{path} after {timeout_s:.0f} s ({last_error}); "
        f"log {service.log_path}:\n{service.log_tail()}"
    )


def _stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group led by ``process``; SIGKILL it if it is still there after ``grace_s``."""
    if process.poll() is not None:
        _kill_group(process.pid, signal.SIGKILL)  # a leader that died may leave children in its group
        return
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(process.pid, signal.SIGKILL)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
