"""The bulk job (dam_preannotate) vs Label Studio's "Retrieve predictions", on the same tasks, in one run.

A real Label Studio 1.23.2 (LABEL_STUDIO_BIN), the backend under gunicorn and the job, all on this machine's CPU
with the ci-profile tiny DAM (greedy, MAX_NEW_TOKENS=24). Two projects get the same N synthetic scenes (2-5 brush
regions each, served over HTTP from a local folder):
- retrieve: the Data Manager action retrieve_tasks_predictions on all N tasks, as a user who selects them and
  clicks "Retrieve predictions": Label Studio sends them to /predict in one call and stores the answers;
- job: `python -m dam_preannotate --project <other>` as a subprocess.
Both are timed with their model already loaded: the retrieve from the action's request to its answer (the backend
was warmed by a 2-task retrieve), the job from the start of its run (journal, task listing, fetching, captioning,
imports, final checks) to its end, as its journal's "end" record says. The job's whole process (Python imports and
model load, a fixed ~10-20 s that a 20,000-task project amortises) is printed too.
ratio = job tasks/s / retrieve tasks/s, both with the model loaded.

The scene helpers (`scene_tasks`, `FolderServer`) are shared with tests/integration/test_preannotate.py.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from dam_model.synthetic import generate_scene
from ls_io.label_config import parse_label_config
from ls_io.rle import encode_rle
from dam_tools.build_tiny_model import ensure_tiny_model
from dam_tools.local_stack import LabelStudioCredentials, LocalStack, free_port
from dam_tools.ls_api import LabelStudioAPI
from dam_tools.provisioning import backend_env

ROOT = Path(__file__).resolve().parents[2]
MAX_NEW_TOKENS = "24"


class FolderServer:
    """A folder over HTTP on 127.0.0.1 (a stand-in for the image host a project's URLs point at)."""

    def __init__(self, folder: Path) -> None:
        handler = partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FolderServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # thousands of GETs: keep the output readable
        pass


def scene_tasks(label_config: str, out_dir: Path, base_url: str, n: int, size: tuple[int, int],
                seed: int = 17) -> list[dict[str, Any]]:
    """`n` Label Studio tasks {"data": {"image": <url>, "regions": [brush items]}}: seeded synthetic scenes as PNG
    files in `out_dir`, one brush region per visible object (2-5), region data imported with the task."""
    cfg = parse_label_config(label_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = []
    for index in range(n):
        scene = generate_scene(seed, index, size=size)
        name = f"{scene.scene_id}.png"
        if not (out_dir / name).is_file():
            Image.fromarray(scene.image).save(out_dir / name)
        regions = [{"id": str(uuid.uuid4()), "from_name": cfg.brush.name, "to_name": cfg.obj.name,
                    "type": "brushlabels", "original_width": scene.width, "original_height": scene.height,
                    "image_rotation": 0,
                    "value": {"format": "rle", "rle": encode_rle(obj.mask), "brushlabels": [cfg.brush.labels[0]]}}
                   for obj in scene.objects if obj.mask.any()]
        tasks.append({"data": {cfg.obj.value_key: f"{base_url}/{name}", "regions": regions}})
    return tasks


def job_env(ls_url: str, token: str, model_dir: Path, models_root: Path, journal_dir: Path,
            extra: dict[str, str] | None = None) -> dict[str, str]:
    """The job's environment for a local CPU run against the backend's model settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": token, "DAM_MODEL": str(model_dir),
                "MODELS_ROOT": str(models_root), "DEVICE": "cpu", "DTYPE": "float32", "SEGMENTER": "none",
                "MAX_NEW_TOKENS": MAX_NEW_TOKENS, "MEDIA_ALLOW_PRIVATE": "true", "PREANNOTATE_PROGRESS": "false",
                "PREANNOTATE_JOURNAL_DIR": str(journal_dir), "OMP_WAIT_POLICY": "PASSIVE",
                "PYTHONPATH": str(ROOT)})
    env.update(extra or {})
    return env


def end_record(journal_dir: Path) -> dict[str, Any]:
    """The last "end" record of any journal under `journal_dir` (the job's own timing and counts)."""
    ends = [json.loads(line) for path in sorted(journal_dir.rglob("journal-rank*.jsonl"))
            for line in path.read_text().splitlines() if '"event":"end"' in line]
    return ends[-1]


def run(args) -> float:
    n = int(os.environ.get("PREANNOTATE_BENCH_TASKS", "200"))
    model_dir = ensure_tiny_model("ci")
    label_config = (ROOT / "label_config" / "image.xml").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        (run_dir / "images").mkdir()
        with LocalStack(run_dir) as services, FolderServer(run_dir / "images") as images:
            credentials = LabelStudioCredentials()
            ls = services.start_label_studio(free_port(), credentials, run_dir / "label-studio")
            api = LabelStudioAPI(ls.url, credentials.token, timeout_s=900)
            env = backend_env(model_dir, ls.url, credentials.token, run_dir, segmenter="none",
                              extra={"MAX_NEW_TOKENS": MAX_NEW_TOKENS, "MODEL_POLL_SECONDS": "0",
                                     "MEDIA_ALLOW_PRIVATE": "true", "LOG_LEVEL": "WARNING",
                                     "OMP_WAIT_POLICY": "PASSIVE"})
            backend = services.start_backend(free_port(), env)
            tasks = scene_tasks(label_config, run_dir / "images", images.url, n, size=(384, 288))
            regions = sum(len(t["data"]["regions"]) for t in tasks)
            retrieve_project = api.create_project("retrieve", label_config)
            retrieve_ids = api.import_tasks(retrieve_project, tasks)
            job_project = api.create_project("job", label_config)
            api.import_tasks(job_project, tasks)
            api.connect_ml_backend(retrieve_project, backend.url, interactive=False)
            # warm-up (model loaded, first requests paid), then its predictions go so every task is timed below
            api.retrieve_predictions(retrieve_project, retrieve_ids[:2])
            for prediction in api.call("GET", f"/api/predictions?project={retrieve_project}"):
                api.call("DELETE", f"/api/predictions/{prediction['id']}", expect=(204,))
            start = time.perf_counter()
            api.retrieve_predictions(retrieve_project, retrieve_ids)
            t_retrieve = time.perf_counter() - start
            stored = api.call("GET", f"/api/predictions?project={retrieve_project}")
            assert len(stored) == n, f"retrieve stored {len(stored)} predictions for {n} tasks"

            journal = run_dir / "journal"
            cmd = [sys.executable, "-m", "dam_preannotate", "--project", str(job_project)]
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                                  env=job_env(ls.url, credentials.token, model_dir, run_dir / "models", journal,
                                              {"TORCH_NUM_THREADS": "2"}))
            t_job = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"the job failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
            summary = end_record(journal)["summary"]
            stored = api.call("GET", f"/api/predictions?project={job_project}")
            assert len(stored) == n, f"the job stored {len(stored)} predictions for {n} tasks"
    retrieve_rate, job_rate, process_rate = n / t_retrieve, n / summary["seconds"], n / t_job
    print(done.stdout.strip())
    print(f"{n} tasks, {regions} regions, 384x288, tiny DAM, CPU ({os.cpu_count()} cores), "
          f"MAX_NEW_TOKENS={MAX_NEW_TOKENS}")
    print(f"retrieve predictions (LS -> backend /predict, {n} tasks in one call): {t_retrieve:.1f} s, "
          f"{retrieve_rate:.2f} tasks/s, {regions / t_retrieve:.1f} regions/s")
    print(f"job: {summary['seconds']:.1f} s, {job_rate:.2f} tasks/s, {regions / summary['seconds']:.1f} regions/s, "
          f"{summary['model_calls']} model calls")
    print(f"job, whole process (imports and model load included): {t_job:.1f} s, {process_rate:.2f} tasks/s "
          f"(ratio {process_rate / retrieve_rate:.2f})")
    return job_rate / retrieve_rate
