"""The whole loop as the scheduler runs it (`python -m dam_loop.steps.nightly` subprocesses) against a moto S3 server process:
pull -> build -> pseudo-label -> train a few steps -> evaluate -> promote, then backend.model_store serves the new
version; nothing-new exit code; rollback; a deliberately worse candidate is refused; a SIGKILLed training resumes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.model_store import ModelStore
from backend.settings import Settings
from dam_loop.dataset import load_samples
from dam_loop.steps.build import build_dataset
from dam_loop.steps.pull import S3Source, pull, source_client
from dam_model.data import read_image, read_mask
from dam_model.fileio import read_json

from .conftest import REPO, TEST_SECRET, bucket_bytes, put_objects, run_module

FAST = ["--batch-size", "2", "--checkpoint-every", "1", "--num-threads", "2", "--device", "cpu", "--log-every", "1",
        "--eval-max-new-tokens", "8", "--pseudo-max-new-tokens", "8", "--val-fraction", "0.34",
        "--regression-synthetic-scenes", "3"]  # a small regression set: these tests check the plumbing


def uncaptioned(export_factory, seed: int, task_id: int) -> dict[str, bytes]:
    """One annotation whose regions have no caption (pseudo-labelling candidates)."""
    objects = export_factory(seed, 1, fmt="annotation", prefix="ls", first_task_id=task_id)
    (key, body), = objects.items()
    annotation = json.loads(body)
    annotation["result"] = [item for item in annotation["result"] if item["type"] != "textarea"]
    return {key: json.dumps(annotation).encode()}


def nightly(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run_module("dam_loop.steps.nightly", *FAST, *args, env=env, timeout=600)


def last_summary(work: Path) -> dict:
    runs = sorted((work / "runs").iterdir())
    return read_json(runs[-1] / "summary.json")


@pytest.fixture()
def loop_env(tmp_path, s3_env, bucket, media_root, loop_start_model) -> dict[str, str]:
    return {"S3_BUCKET": bucket, "S3_PREFIX": "ls", "LOOP_WORK_ROOT": str(tmp_path / "work"),
            "MODELS_ROOT": str(tmp_path / "models"), "INIT_MODEL": str(loop_start_model),
            "LOCAL_FILES_ROOT": str(media_root), "MEDIA_CACHE_DIR": ""}


def test_nightly_round_promotes_serves_then_rolls_back(tmp_path, admin_s3, bucket, export_factory, loop_env):
    objects = export_factory(31, 5, fmt="annotation", prefix="ls")
    objects |= export_factory(32, 3, fmt="task", prefix="ls", first_task_id=100)
    objects |= uncaptioned(export_factory, 33, 200)
    objects["ls/broken"] = b'{"id": 5, "result": [tru'
    put_objects(admin_s3, bucket, objects)
    before = bucket_bytes(admin_s3, bucket)
    work, models = Path(loop_env["LOOP_WORK_ROOT"]), Path(loop_env["MODELS_ROOT"])

    # Round 1: promoted (--force-promote: a bootstrap round from a random model on a few regions must promote).
    first = nightly(loop_env, "--max-steps", "2", "--force-promote", "--pseudo-label", "--min-logprob", "-1000",
                    "--max-fraction", "0.5", "--version", "v1")
    assert first.returncode == 0, first.stderr[-3000:]
    pointer = read_json(models / "current.json")
    assert pointer["version"] == "v1" and pointer["previous"] is None and pointer["metrics"]["score_name"] == "dlc_average"
    summary = last_summary(work)
    assert summary["exit_code"] == 0
    assert [e["key"] for e in summary["steps"]["pull"]["errors"]] == ["ls/broken"]  # reported, skipped
    assert summary["steps"]["pseudo_label"]["kept"] >= 1
    dataset = Path(summary["steps"]["build"]["dataset"])
    pseudo = [json.loads(line) for line in (dataset / "pseudo.jsonl").read_text().splitlines()]
    assert pseudo and all(p["source"] == "pseudo" and p["split"] == "train" for p in pseudo)
    run_dir = work / "runs" / summary["run_id"]
    log_text = (run_dir / "nightly.log").read_text()
    assert "=== train" in log_text and "=== promote" in log_text
    assert TEST_SECRET not in log_text + first.stdout + first.stderr
    report = (run_dir / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in report and "candidate" in report
    metrics = read_json(run_dir / "eval" / "metrics.json")
    assert metrics["n_val"] >= 1 and {"bleu4", "rouge_l", "cider", "edit_effort", "dlc_average"} <= set(metrics["candidate"])
    provenance = read_json(models / "versions" / "v1" / "provenance.json")
    assert provenance["snapshot_id"] == summary["snapshot_id"] and provenance["evaluation"]["score_name"] == "dlc_average"
    assert provenance["train_config"]["max_steps"] == 2 and "git_commit" in provenance

    # The backend's model store serves the promoted version.
    store = ModelStore(Settings.from_env({}, models_root=str(models), device="cpu", dtype="float32"))
    served = store.get()
    assert served.version == "v1" and Path(served.source) == models / "versions" / "v1"
    assert served.model.describe(*_one_region(dataset), max_new_tokens=4)[0].text is not None

    # Nothing new in the bucket: distinct exit code, no new version.
    again = nightly(loop_env, "--max-steps", "2", "--force-promote")
    assert again.returncode == 10, again.stderr[-3000:]

    # New annotations: round 2 promotes v2; rollback restores v1 and the store swaps back.
    put_objects(admin_s3, bucket, export_factory(34, 2, fmt="annotation", prefix="ls", first_task_id=300))
    before |= bucket_bytes(admin_s3, bucket)
    second = nightly(loop_env, "--max-steps", "2", "--force-promote", "--no-pseudo-label", "--version", "v2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert read_json(models / "current.json")["previous"] == "v1"
    assert store.check_pointer() and store.loaded.version == "v2"
    back = run_module("dam_loop.steps.promote", "--models-root", str(models), "rollback")
    assert back.returncode == 0, back.stderr
    assert read_json(models / "current.json")["version"] == "v1"
    assert store.check_pointer() and store.loaded.version == "v1"
    assert sorted(p.name for p in (models / "versions").iterdir()) == ["v1", "v2"]

    # The source bucket is byte-identical: the loop only ever listed and read it.
    assert bucket_bytes(admin_s3, bucket) == before

    # The gate decided (forced past it: a few validation regions cannot show an improvement) and said why.
    history = [json.loads(line) for line in (models / "history.jsonl").read_text().splitlines()]
    gate = next(p for p in history if p["version"] == "v2" and not p.get("rollback"))["gate"]
    assert gate["forced"] is True and gate["outcome"] == "too_few_regions" and "min_val_regions" in gate["reason"]
    assert read_json(models / "versions" / "v2" / "provenance.json")["gate"] == gate

    # Round 2 trained on its own new annotations plus a replayed share (REPLAY_RATIO 0.2) of round 1's.
    replay = read_json(models / "versions" / "v2" / "provenance.json")["extra"]["replay"]
    assert replay["tonight"] > 0 and replay["pool"] > 0 and replay["ratio"] == 0.2
    assert replay["replayed"] == round(replay["tonight"] * 0.2 / 0.8)
    assert read_json(models / "versions" / "v1" / "provenance.json")["extra"]["replay"]["pool"] == 0  # first night


def _one_region(dataset: Path):
    row = load_samples(dataset)[0]
    return read_image(row["image_path"]), [read_mask(row["mask_path"])]


def test_worse_candidate_is_not_promoted(tmp_path, admin_s3, bucket, export_factory, loop_env, loop_champion_model):
    """Champion: the trained tiny DAM. Candidate: one step from the random start model (deliberately worse).

    The tasks carry no attribute record here, so the promotion score is CIDEr against the corrected captions
    (the DLC-style judge rewards silence, which a random model's unparsable output resembles)."""
    models = Path(loop_env["MODELS_ROOT"])
    good = run_module("dam_loop.steps.promote", "--models-root", str(models), "promote", "--candidate", str(loop_champion_model),
                      "--force", "--version", "trained")
    assert good.returncode == 0, good.stderr
    objects = export_factory(41, 6, fmt="annotation", prefix="ls", with_attributes=False)  # like real Label Studio data
    put_objects(admin_s3, bucket, objects)
    worse = nightly(loop_env, "--max-steps", "1", "--margin", "0", "--no-pseudo-label", "--init", loop_env["INIT_MODEL"],
                    "--eval-max-new-tokens", "24")
    assert worse.returncode == 11, worse.stderr[-3000:]
    summary = last_summary(Path(loop_env["LOOP_WORK_ROOT"]))
    evaluation = summary["steps"]["evaluate"]
    assert evaluation["score_name"] == "cider"
    assert evaluation["candidate"]["score"] < evaluation["champion"]["score"]
    assert read_json(models / "current.json")["version"] == "trained"
    assert sorted(p.name for p in (models / "versions").iterdir()) == ["trained"]
    # The decision counts as done: the next run has nothing new.
    assert nightly(loop_env, "--max-steps", "1").returncode == 10


def test_killed_training_resumes_from_last_checkpoint(tmp_path, admin_s3, bucket, export_factory, loop_env):
    put_objects(admin_s3, bucket, export_factory(51, 4, fmt="annotation", prefix="ls"))
    work = Path(loop_env["LOOP_WORK_ROOT"])
    source = S3Source(bucket=bucket, prefix="ls", endpoint_url=admin_s3.meta.endpoint_url)
    snapshot = pull(source_client(source), source, work).snapshot_id
    dataset = build_dataset(work, snapshot, val_fraction=0.25)
    argv = [sys.executable, "-m", "dam_loop.steps.train", "--work-root", str(work), "--dataset", str(dataset),
            "--init", loop_env["INIT_MODEL"], "--max-steps", "60", "--batch-size", "2", "--checkpoint-every", "1",
            "--num-threads", "1", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, **loop_env, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        checkpoints: list[Path] = []
        while time.time() < deadline and proc.poll() is None:
            checkpoints = sorted(work.glob("train/*/checkpoints/step-*"))
            if len(checkpoints) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be killed"
        assert len(checkpoints) >= 2, "no checkpoint appeared in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out_dir = checkpoints[0].parent.parent
    assert not (out_dir / "final").exists()
    done_steps = max(int(p.name.split("-")[1]) for p in (out_dir / "checkpoints").glob("step-*"))
    resumed = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert f"at step {done_steps}" in output, output[-2000:]
    candidate = Path(json.loads(resumed.stdout.strip().splitlines()[-1])["candidate"])
    assert candidate == out_dir / "final" and (candidate / "config.json").exists()
    assert read_json(candidate / "provenance.json")["extra"]["snapshot_id"] == snapshot
