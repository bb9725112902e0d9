"""Start and stop the local stack without Docker: Label Studio, an S3 endpoint (moto) and the backend under gunicorn.

Used by ``python -m scripts.demo`` and by the integration test (tests/integration/). Every service runs as a child
process in its own process group, logs to ``<run dir>/logs/<name>.log`` and is stopped with SIGTERM to the whole
group (then SIGKILL after a grace period), so no grandchild (gunicorn workers, Label Studio's server) is orphaned.

Also holds ``LabelStudioAPI``, a thin client for the handful of Label Studio HTTP calls the demo and the test make
(create project, import tasks, connect the ML backend, add S3 target storage, retrieve predictions, interactive call).
Facts about those calls: /work/shared/reference/label-studio-protocol.md.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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
    ) -> ManagedProcess:
        """Start Label Studio on ``host:port`` with its sqlite data under ``data_dir``; first start ~40 s (migrations)."""
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        env = label_studio_env(credentials, data_dir, extra_env)
        argv = [str(label_studio_bin()), "start", "--no-browser", "--internal-host", self.host, "--port", str(port)]
        service = self.spawn("label-studio", argv, env, f"http://{self.host}:{port}")
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
        self, port: int, env: Mapping[str, str], timeout_s: float = 120.0, health_path: str = "/health"
    ) -> ManagedProcess:
        """Start the ML backend (``backend.wsgi:app``) under gunicorn with backend/gunicorn.conf.py on ``host:port``.

        ``env`` is the backend's full environment (see backend/settings.py); it returns once /health answers 200.
        """
        argv = [
            sys.executable, "-m", "gunicorn", "--config", str(ROOT / "backend" / "gunicorn.conf.py"),
            "--bind", f"{self.host}:{port}", "backend.wsgi:app",
        ]
        service = self.spawn("backend", argv, env, f"http://{self.host}:{port}")
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


def wait_healthy(service: ManagedProcess, path: str, timeout_s: float, interval_s: float = 0.5) -> None:
    """Poll ``service.url + path`` until it answers 2xx; raise StackError (with the log tail) on death or timeout."""
    import requests

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


# --------------------------------------------------------------------------------------------- Label Studio API
class LabelStudioAPI:
    """The Label Studio HTTP calls this project makes, authenticated with a legacy token (``Authorization: Token``)."""

    def __init__(self, url: str, token: str, timeout_s: float = 120.0) -> None:
        import requests

        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, expect: Iterable[int] = (200, 201), **kwargs: Any) -> Any:
        """One request; raises StackError with Label Studio's answer when the status is not in ``expect``."""
        reply = self.session.request(method, self.url + path, timeout=kwargs.pop("timeout", self.timeout_s), **kwargs)
        if reply.status_code not in set(expect):
            raise StackError(f"Label Studio {method} {path} -> HTTP {reply.status_code}: {reply.text[:500]}")
        if not reply.content:
            return None
        try:
            return reply.json()
        except ValueError:
            return reply.text

    # -- projects and tasks
    def create_project(self, title: str, label_config: str, **fields: Any) -> int:
        """Create a project; returns its id."""
        body = {"title": title, "label_config": label_config, **fields}
        return int(self.call("POST", "/api/projects", json=body)["id"])

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        """Import JSON tasks (each ``{"data": ..., "annotations"?: [...], "predictions"?: [...]}``); returns task ids."""
        reply = self.call("POST", f"/api/projects/{project}/import?return_task_ids=true", json=tasks)
        ids = reply.get("task_ids") or []
        if len(ids) != len(tasks):
            raise StackError(f"imported {len(tasks)} tasks, Label Studio reports ids {ids}")
        return [int(i) for i in ids]

    def upload_files(self, project: int, paths: Sequence[Path]) -> list[int]:
        """Upload image files as new tasks (``data.<first object>`` = /data/upload/...); returns task ids, in order."""
        ids: list[int] = []
        for path in paths:  # one request per file keeps the task order = the path order
            with open(path, "rb") as fh:
                reply = self.call(
                    "POST", f"/api/projects/{project}/import?return_task_ids=true", files={Path(path).name: fh}
                )
            ids += [int(i) for i in reply.get("task_ids") or []]
        if len(ids) != len(paths):
            raise StackError(f"uploaded {len(paths)} files, Label Studio created tasks {ids}")
        return ids

    def tasks(self, project: int) -> list[dict]:
        """Every task of the project, with its annotations and predictions."""
        reply = self.call("GET", f"/api/tasks?project={project}&page_size=1000&fields=all")
        return list(reply["tasks"] if isinstance(reply, dict) else reply)

    def task(self, task_id: int) -> dict:
        return self.call("GET", f"/api/tasks/{task_id}")

    def predictions(self, task_id: int) -> list[dict]:
        """The stored predictions of one task."""
        return list(self.call("GET", f"/api/predictions?task={task_id}"))

    def create_prediction(self, task_id: int, result: list[dict], model_version: str, score: float | None = None) -> int:
        body: dict[str, Any] = {"task": task_id, "result": result, "model_version": model_version}
        if score is not None:
            body["score"] = score
        return int(self.call("POST", "/api/predictions", json=body)["id"])

    def create_annotation(self, task_id: int, result: list[dict]) -> int:
        return int(self.call("POST", f"/api/tasks/{task_id}/annotations", json={"result": result})["id"])

    # -- ML backend
    def connect_ml_backend(self, project: int, url: str, title: str = "DAM", interactive: bool = True) -> int:
        """Connect the backend at ``url`` (Label Studio checks /health and /setup, and creates its /webhook)."""
        body = {"url": url, "project": project, "title": title, "is_interactive": interactive}
        return int(self.call("POST", "/api/ml", json=body)["id"])

    def ml_backend(self, ml_id: int) -> dict:
        return self.call("GET", f"/api/ml/{ml_id}")

    def retrieve_predictions(self, project: int, task_ids: Sequence[int]) -> Any:
        """Data manager action "Retrieve predictions": ONE /predict to the backend with all ``task_ids``."""
        body = {"selectedItems": {"all": False, "included": [int(t) for t in task_ids]}}
        return self.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", json=body)

    def interactive(self, ml_id: int, task_id: int, context_result: list[dict]) -> dict:
        """What the editor does after a smart keypoint/brush: returns ``{"data": {"result": [...], ...}}``."""
        body = {"task": int(task_id), "context": {"result": context_result}}
        return self.call("POST", f"/api/ml/{ml_id}/interactive-annotating", json=body)

    # -- storage
    def add_s3_target_storage(
        self,
        project: int,
        bucket: str,
        prefix: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        title: str = "annotations",
    ) -> int:
        """An S3 target (export) storage: every submitted annotation is written to ``s3://bucket/prefix/<id>``."""
        body = {
            "project": project, "title": title, "bucket": bucket, "prefix": prefix, "s3_endpoint": endpoint,
            "aws_access_key_id": access_key, "aws_secret_access_key": secret_key, "region_name": region,
            "can_delete_objects": True,
        }
        return int(self.call("POST", "/api/storages/export/s3", json=body)["id"])


def create_bucket(endpoint: str, bucket: str, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
    """Create ``bucket`` on an S3-compatible endpoint unless it exists."""
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temp file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- demo data and wiring
@dataclass(frozen=True)
class S3Target:
    """Where Label Studio's target storage exports annotations (moto locally, MinIO in compose)."""

    endpoint: str
    bucket: str = "annotations"
    prefix: str = "annotations"
    access_key: str = "demo-access-key"
    secret_key: str = "demo-secret-key"
    region: str = "us-east-1"

    def loop_env(self) -> dict[str, str]:
        """The variables scripts.pull / scripts.nightly read to reach this bucket."""
        return {
            "S3_ENDPOINT_URL": self.endpoint, "S3_BUCKET": self.bucket, "S3_PREFIX": self.prefix,
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


@dataclass
class SyntheticTask:
    """One synthetic image written to disk and its regions as Label Studio brush results (no captions)."""

    image_path: Path
    regions: list[dict]
    reference_captions: list[str]


def synthetic_tasks(label_config: str, out_dir: Path, n_tasks: int, seed: int = 7,
                    size: tuple[int, int] = (96, 72)) -> list[SyntheticTask]:
    """``n_tasks`` seeded synthetic scenes as PNG files under ``out_dir`` plus one brush region per visible object.

    Control names come from ``label_config`` (parsed by backend.label_config). Region ids are full uuid4s;
    masks are RLE with foreground 255 (backend.rle). ``size`` is (width, height) in pixels.
    """
    import uuid

    from PIL import Image

    from backend.label_config import parse_label_config
    from backend.rle import encode_rle
    from dam_model.synthetic import generate_scene

    if n_tasks < 1:
        raise ValueError("n_tasks must be >= 1")
    cfg = parse_label_config(label_config)
    if cfg.brush is None:
        raise ValueError("the label config has no BrushLabels control: nothing to hold the regions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks: list[SyntheticTask] = []
    for index in range(n_tasks):
        scene = generate_scene(seed, index, size=size)
        path = out_dir / f"{scene.scene_id}.png"
        if not path.is_file():
            tmp = path.with_name(f".{path.name}.tmp")
            Image.fromarray(scene.image).save(tmp, format="PNG")
            os.replace(tmp, path)
        regions, captions = [], []
        for obj in scene.objects:
            if not obj.mask.any():
                continue
            shape = str(obj.attributes.get("shape", ""))
            label = shape if shape in cfg.brush.labels else (cfg.brush.labels[0] if cfg.brush.labels else "object")
            regions.append({
                "id": str(uuid.uuid4()), "from_name": cfg.brush.name, "to_name": cfg.brush.to_name,
                "type": "brushlabels", "original_width": scene.width, "original_height": scene.height,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": encode_rle(obj.mask), "brushlabels": [label]},
            })
            captions.append(obj.long_caption)
        tasks.append(SyntheticTask(image_path=path, regions=regions, reference_captions=captions))
    return tasks


def backend_env(model_dir: Path, ls_url: str, ls_token: str, run_dir: Path, *, segmenter: str = "region",
                s3: S3Target | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The backend's environment for a local run on CPU: the given DAM folder, offline segmenter, files under run_dir."""
    run_dir = Path(run_dir).resolve()
    env = dict(os.environ)
    env.update({
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": ls_token,
        "DAM_MODEL": str(Path(model_dir).resolve()),
        "MODELS_ROOT": str(run_dir / "models"),
        "MODEL_POLL_SECONDS": "5",
        "DEVICE": "cpu",
        "DTYPE": "float32",
        "SEGMENTER": segmenter,
        "MEDIA_CACHE_DIR": str(run_dir / "cache" / "media"),
        "EVENTS_FILE": str(run_dir / "events" / "webhook_events.jsonl"),
        "TRAIN_LOG_DIR": str(run_dir / "logs" / "training"),
        "LOOP_WORK_ROOT": str(run_dir / "loop"),
        "INIT_MODEL": str(Path(model_dir).resolve()),
        "TORCH_NUM_THREADS": env.get("TORCH_NUM_THREADS", "2"),
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
        "LOG_LEVEL": env.get("LOG_LEVEL", "INFO"),
        "PYTHONPATH": str(ROOT),
    })
    if s3 is not None:
        env.update(s3.loop_env())
    env.update(extra or {})
    return env


@dataclass
class ProvisionedProject:
    """What ``provision_project`` created in Label Studio."""

    project_id: int
    ml_backend_id: int
    task_ids: list[int]
    storage_id: int | None = None


def provision_project(api: LabelStudioAPI, title: str, label_config: str, tasks: Sequence[SyntheticTask],
                      backend_url: str, s3: S3Target | None = None, region_model_version: str = "synthetic-masks",
                      extra_task_files: Sequence[Path] = ()) -> ProvisionedProject:
    """Create a project, upload the task images, attach their regions, connect the backend (interactive) and,
    when ``s3`` is given, add an S3 target storage.

    Regions are stored as a prediction with model_version ``region_model_version`` (a pre-annotation, as SAM 2
    automatic masks would be): Retrieve predictions then asks the backend to caption them, and the stored
    predictions of the backend carry the backend's own model_version. ``extra_task_files`` become tasks without
    any region (for NO_REGION_MODE).
    """
    project = api.create_project(title, label_config)
    task_ids = api.upload_files(project, [t.image_path for t in tasks] + list(extra_task_files))
    for task_id, task in zip(task_ids, tasks):
        if task.regions:
            api.create_prediction(task_id, task.regions, model_version=region_model_version, score=1.0)
    storage = None
    if s3 is not None:
        storage = api.add_s3_target_storage(project, s3.bucket, s3.prefix, s3.endpoint, s3.access_key,
                                            s3.secret_key, s3.region)
    ml_id = api.connect_ml_backend(project, backend_url, title="DAM captions", interactive=True)
    return ProvisionedProject(project_id=project, ml_backend_id=ml_id, task_ids=task_ids, storage_id=storage)
