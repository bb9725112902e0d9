"""Webhook events are recorded cheaply; START_TRAINING launches the fine-tune job out of process."""
from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import BackendError

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


class TrainingJobs:
    """Append-only event log plus at most one running training subprocess."""

    def __init__(self, events_file: str, train_command: str, log_dir: str, cwd: Path = REPO_ROOT) -> None:
        self.events_file = Path(events_file)
        command = shlex.split(train_command)
        if command and command[0] == "python":
            command[0] = sys.executable  # the server's own interpreter (its venv)
        self.command = command
        self.log_dir = Path(log_dir)
        self.cwd = cwd
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def record(self, event: str, data: dict[str, Any]) -> None:
        """Append {received_at, action, project, task, annotation} as one JSON line (no model work)."""
        annotation = data.get("annotation") if isinstance(data.get("annotation"), dict) else {}
        task = data.get("task") if isinstance(data.get("task"), dict) else {}
        project = data.get("project")
        line = {
            "received_at": time.time(),
            "action": event,
            "project": project.get("id") if isinstance(project, dict) else project,
            "task": task.get("id", annotation.get("task")),
            "annotation": annotation.get("id"),
        }
        try:
            self.events_file.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, open(self.events_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, separators=(",", ":")) + "\n")
        except OSError as exc:  # a full or read-only disk: say so, the worker keeps serving
            raise BackendError(f"webhook event could not be recorded: {type(exc).__name__}", status=503) from None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> dict[str, Any]:
        """Launch the training command unless one is running; returns at once."""
        with self._lock:
            if self.running():
                return {"status": "already_running", "pid": self._proc.pid}  # type: ignore[union-attr]
            if not self.command:
                raise BackendError("training is not configured: TRAIN_COMMAND is empty", status=503)
            log_path = self.log_dir / f"train-{time.strftime('%Y%m%dT%H%M%S')}.log"
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                with open(log_path, "ab") as log_fh:
                    self._proc = subprocess.Popen(
                        self.command, cwd=self.cwd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=True, env=os.environ.copy(),
                    )
            except OSError as exc:  # TRAIN_COMMAND missing or not executable: a configuration error, named
                log.error("training could not start (%s): %s", self.command[:1], exc)
                raise BackendError(f"training could not start: {type(exc).__name__} (check TRAIN_COMMAND)",
                                   status=503) from None
            log.info("training started (pid %d), log %s", self._proc.pid, log_path)
            return {"status": "started", "pid": self._proc.pid, "log": str(log_path)}

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the running job (tests); its return code, or None."""
        if self._proc is None:
            return None
        return self._proc.wait(timeout)
