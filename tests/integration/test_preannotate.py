"""The bulk job against a real Label Studio 1.23.2 (and the real backend, for its model_version): 201 tasks, the
job SIGKILLed mid-run and restarted; every task ends with exactly one prediction of the serving version, the
journal shows that finished tasks were not computed again, and the task whose image answers 404 is reported
failed and holds no prediction. Tiny ci model on CPU, small images (speed matters here, not caption quality)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from dam_preannotate.journal import read_records
from dam_tools.benchmarks.preannotate import FolderServer, job_env, scene_tasks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
N_TASKS = 200


def posted(records: list[dict], run: str | None = None) -> set[int]:
    batches = {r["batch"] for r in records if r["event"] == "posted"}
    return {t for r in records if r["event"] == "intent" and r["batch"] in batches and run in (None, r["run"])
            for t in r["tasks"]}


def wait_for_kill_point(journal: Path, process: subprocess.Popen, at_least: int, at_most: int,
                        timeout: float) -> int:
    """Poll the journal until `at_least` tasks are posted AND an import is in flight (an intent without its
    answer: the window between "sent to Label Studio" and "journaled as posted"); past `at_most` posted tasks, any
    moment will do. Returns the number of tasks posted then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the job finished before it could be killed"
        files = list(journal.rglob("journal-rank0.jsonl"))
        if files:
            records = read_records(files[0].parent)
            count = len(posted(records))
            answered = {r["batch"] for r in records if r["event"] == "posted"}
            in_flight = any(r["event"] == "intent" and r["batch"] not in answered for r in records)
            if (count >= at_least and in_flight) or count >= at_most:
                return count
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} tasks posted after {timeout} s")


def test_a_killed_job_restarts_to_exactly_one_prediction_per_task(stack, trained_dam_dir, tmp_path):
    serving = requests.get(stack.backend.url + "/health", timeout=10).json()["model_version"]
    (tmp_path / "images").mkdir()
    with FolderServer(tmp_path / "images") as images:
        tasks = scene_tasks(stack.label_config, tmp_path / "images", images.url, N_TASKS, size=(128, 96))
        broken = {"data": {"image": f"{images.url}/missing.png", "regions": tasks[0]["data"]["regions"]}}
        project = stack.api.create_project("bulk pre-annotation", stack.label_config)
        task_ids = stack.api.import_tasks(project, tasks + [broken])
        broken_id = task_ids[-1]

        journal = tmp_path / "journal"
        env = job_env(stack.ls.url, stack.credentials.token, trained_dam_dir, stack.run_dir / "models", journal,
                      {"TORCH_NUM_THREADS": "2", "PREANNOTATE_SETTLE_SECONDS": "1"})
        cmd = [sys.executable, "-m", "dam_preannotate", "--project", str(project), "--post-batch", "10",
               "--batch-regions", "8", "--page-size", "50"]
        logs = tmp_path / "job-1.log"
        with open(logs, "wb") as log:
            first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                killed_at = wait_for_kill_point(journal, first, at_least=30, at_most=120, timeout=180)
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=30)
        assert first.returncode == -signal.SIGKILL

        second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 3, f"expected one failed task:\n{second.stdout}\n{second.stderr[-4000:]}"

    predictions = stack.api.call("GET", f"/api/predictions?project={project}")
    per_task = Counter(p["task"] for p in predictions)
    assert {p["model_version"] for p in predictions} == {serving}, "the job must write the backend's version"
    assert broken_id not in per_task, "the failed task must hold no prediction"
    assert set(per_task) == set(task_ids[:-1]) and set(per_task.values()) == {1}, \
        {t: n for t, n in per_task.items() if n != 1}

    folder = journal / f"project-{project}" / serving
    records = read_records(folder)
    runs = [r["run"] for r in records if r["event"] == "start"]
    assert len(runs) == 2
    finished_first = posted(records, runs[0])
    assert len(finished_first) >= killed_at and len(finished_first) < N_TASKS
    answered = {r["batch"] for r in records if r["event"] == "posted"}
    unanswered = {r["batch"] for r in records if r["event"] == "intent" and r["run"] == runs[0]} - answered
    reconciled = {r["batch"] for r in records if r["event"] == "reconciled" and r["run"] == runs[1]}
    assert unanswered == reconciled, "an import killed in flight must be checked against Label Studio on restart"
    recovered = {t for r in records if r["event"] == "reconciled" for t in r["found"]}
    recomputed = {t for r in records if r["event"] == "intent" and r["run"] == runs[1] for t in r["tasks"]}
    assert not recomputed & (finished_first | recovered), "a finished task was computed again"
    assert recomputed | finished_first | recovered == set(task_ids[:-1])

    failed = [json.loads(line) for line in (folder / "failed-rank0.jsonl").read_text().splitlines()]
    assert [row["task"] for row in failed] == [broken_id] and "404" in failed[0]["reason"]
    assert "failed 1: media_not_found 422 x1" in second.stdout and f"task {broken_id}:" in second.stdout
