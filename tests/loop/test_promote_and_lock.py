"""dam_loop.steps.promote (immutable versions, pointer flipped last, rollback) and the nightly lock."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from dam_loop.cli import BadArguments, LockedError
from dam_loop.lock import FileLock
from dam_loop.steps.promote import promote, rollback, should_promote
from dam_model.fileio import read_json

from .conftest import REPO, run_module


def fake_model(folder, marker: str):
    """A stand-in model folder (promotion only copies files; the end-to-end test uses real models)."""
    (folder / "llm").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava_llama", "marker": marker}))
    (folder / "llm" / "model.safetensors").write_bytes(marker.encode() * 10)
    (folder / "provenance.json").write_text(json.dumps({"git_commit": "abc", "metrics": {"steps": 3}}))
    (folder / "checkpoints").mkdir()  # training leftovers are not promoted
    return folder


def test_promote_writes_immutable_versions_then_the_pointer(tmp_path):
    root = tmp_path / "models"
    a = fake_model(tmp_path / "a", "A")
    b = fake_model(tmp_path / "b", "B")
    p1 = promote(root, a, metrics={"score": 0.5}, version="v1", provenance={"snapshot_id": "s1"})
    assert p1 == read_json(root / "current.json")
    assert p1["version"] == "v1" and p1["path"] == "versions/v1" and p1["previous"] is None and p1["metrics"] == {"score": 0.5}
    prov = read_json(root / "versions/v1/provenance.json")
    assert prov["snapshot_id"] == "s1" and prov["git_commit"] == "abc" and prov["version"] == "v1"
    assert not (root / "versions/v1/checkpoints").exists()
    p2 = promote(root, b, metrics={"score": 0.7}, version="v2")
    assert p2["previous"] == "v1" and read_json(root / "versions/v2/config.json")["marker"] == "B"
    with pytest.raises(BadArguments, match="immutable"):
        promote(root, b, version="v1")
    assert read_json(root / "versions/v1/config.json")["marker"] == "A"  # untouched
    with pytest.raises(BadArguments, match="not a model folder"):
        promote(root, tmp_path, version="v3")
    assert not any(p.name.startswith(".staging") for p in (root / "versions").iterdir())

    back = rollback(root)
    assert read_json(root / "current.json")["version"] == "v1" and back["previous"] == "v2" and back["rollback"]
    assert back["metrics"] == {"score": 0.5}
    forward = rollback(root, to="v2")
    assert forward["version"] == "v2"
    with pytest.raises(BadArguments, match="does not exist"):
        rollback(root, to="v9")
    history = [json.loads(line) for line in (root / "history.jsonl").read_text().splitlines()]
    assert [h["version"] for h in history] == ["v1", "v2", "v1", "v2"]


def test_should_promote_margin():
    assert should_promote(0.5, None, 0.1)
    assert should_promote(0.61, 0.5, 0.1)
    assert not should_promote(0.6, 0.5, 0.1)
    assert not should_promote(0.5, 0.5, 0.0)  # a tie is not better


def gate_metrics(candidate: float, champion: float, n: int = 40) -> dict:
    """An evaluate step's metrics.json as the gate reads it: per-region scores of both models (the candidate's
    shifted by the same amount on every region, so the decision is clear)."""
    spread = [champion + 0.2 * ((i % 5) - 2) / 2 for i in range(n)]
    return {"candidate": {"score": candidate}, "champion": {"score": champion},
            "region_scores": {"val": {"champion": {f"r{i}": v for i, v in enumerate(spread)},
                                      "candidate": {f"r{i}": v + candidate - champion for i, v in enumerate(spread)}}}}


def test_promote_cli_refuses_a_worse_candidate_and_rolls_back(tmp_path):
    root = tmp_path / "models"
    a = fake_model(tmp_path / "a", "A")
    env = {"MODELS_ROOT": str(root)}
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(gate_metrics(0.4, 0.5)))
    worse = run_module("dam_loop.steps.promote", "promote", "--candidate", str(a), "--metrics", str(metrics), env=env)
    assert worse.returncode == 11 and not (root / "current.json").exists()
    metrics.write_text(json.dumps(gate_metrics(0.6, 0.5)))
    better = run_module("dam_loop.steps.promote", "promote", "--candidate", str(a), "--metrics", str(metrics), "--version", "v1", env=env)
    assert better.returncode == 0, better.stderr
    assert json.loads(better.stdout)["version"] == "v1"
    nothing = run_module("dam_loop.steps.promote", "rollback", env=env)
    assert nothing.returncode == 2 and "nothing to roll back" in nothing.stderr
    status = run_module("dam_loop.steps.promote", "status", env=env)
    assert json.loads(status.stdout)["versions"] == ["v1"]


def test_lock_refuses_a_second_holder_and_frees_on_process_death(tmp_path):
    path = tmp_path / "nightly.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from pathlib import Path; from dam_loop.lock import FileLock;"
         f"l=FileLock(Path({str(path)!r})).acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match="held by another run"):
            FileLock(path).acquire()
        # A nightly run started now exits at once with the distinct "locked" code.
        second = run_module("dam_loop.steps.nightly", "--work-root", str(tmp_path), "--bucket", "b", timeout=120)
        assert second.returncode == 3, second.stderr
        assert "held by another run" in second.stderr
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with FileLock(path):  # the kernel released the dead holder's lock
        pass


def test_promote_to_an_s3_prefix_then_rollback(tmp_path, s3_env, admin_s3, bucket):
    root = f"s3://{bucket}/dam-models"
    a = fake_model(tmp_path / "a", "A")
    b = fake_model(tmp_path / "b", "B")
    promote(root, a, metrics={"score": 0.1}, version="v1")
    pointer = promote(root, b, metrics={"score": 0.2}, version="v2")
    keys = sorted(item["Key"] for item in admin_s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert "dam-models/versions/v1/llm/model.safetensors" in keys and "dam-models/versions/v2/provenance.json" in keys
    assert not any("checkpoints" in k for k in keys)
    current = json.loads(admin_s3.get_object(Bucket=bucket, Key="dam-models/current.json")["Body"].read())
    assert current == pointer and current["previous"] == "v1"
    with pytest.raises(BadArguments, match="immutable"):
        promote(root, a, version="v1")
    assert rollback(root)["version"] == "v1"
    current = json.loads(admin_s3.get_object(Bucket=bucket, Key="dam-models/current.json")["Body"].read())
    assert current["version"] == "v1" and current["previous"] == "v2"
