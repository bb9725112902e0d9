"""The gate's wiring without a model: its flags, the promote step deciding from metrics.json, replay in the train
step, the frozen regression set, and the KPI step reading predictions from Label Studio's API (a fake session)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dam_loop.cli import EXIT_NOT_BETTER, BadArguments
from dam_loop.dataset import DatasetWriter, pixels_hash, read_info
from dam_loop.gate import GateSettings, decide_from_metrics, region_score
from dam_loop.gate_flags import add_gate_args, gate_settings_from_args
from dam_loop.regression_set import REGRESSION_SEED, SYNTHETIC, VALIDATION, ensure_regression_set, load_regression_rows
from dam_loop.steps import nightly_kpis
from dam_loop.steps.promote import main as promote_main
from dam_loop.steps.train_replay import mix_replay, replay_seed, split_tonight
from dam_loop.steps.nightly import build_parser as nightly_parser
from dam_model.data import read_mask
from dam_model.fileio import read_json
from dam_model.synthetic import SHAPES, generate_dataset

from .test_gate import PROJECT_AFTER, PROJECT_BEFORE, simulate_round
from .test_kpis import annotation, annotation_object, prediction
from .test_promote_and_lock import fake_model


# ----------------------------------------------------------------------------------------------- flags
def test_gate_flags_come_from_the_settings_and_the_environment(monkeypatch):
    monkeypatch.setenv("PROMOTE_MARGIN", "0.01")
    monkeypatch.setenv("GATE_MIN_VAL_REGIONS", "50")
    args = nightly_parser().parse_args(["--replay-ratio", "0.3", "--regression-margin", "0.05"])
    assert gate_settings_from_args(args) == GateSettings(margin=0.01, min_val_regions=50, replay_ratio=0.3,
                                                         regression_margin=0.05)
    assert "(env PROMOTE_MARGIN; default 0.0)" in " ".join(nightly_parser().format_help().split())
    with pytest.raises(BadArguments, match="margin"):
        gate_settings_from_args(nightly_parser().parse_args(["--margin", "-1"]))


# ----------------------------------------------------------------------------------------------- promote
def metrics_file(tmp_path: Path, champion: dict, candidate: dict) -> Path:
    per_sample = [{"id": k, "champion": {"edit_effort": 1 - champion[k]}, "candidate": {"edit_effort": 1 - candidate[k]}}
                  for k in champion]
    metrics = {"candidate": {"score": 0.6}, "champion": {"score": 0.5}, "per_sample": per_sample,
               "region_scores": {"val": {"champion": champion, "candidate": candidate}}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    return path


def test_promote_step_decides_with_the_gate(tmp_path, capsys):
    models = tmp_path / "models"
    model = fake_model(tmp_path / "candidate", "C")
    same = metrics_file(tmp_path, *simulate_round(1, 80, PROJECT_BEFORE, PROJECT_BEFORE))
    code = promote_main(["--models-root", str(models), "promote", "--candidate", str(model), "--metrics", str(same)])
    assert code == EXIT_NOT_BETTER and not (models / "current.json").exists()
    answer = json.loads(capsys.readouterr().out)
    assert answer["promoted"] is False and answer["gate"]["n"] == 80

    better = metrics_file(tmp_path, *simulate_round(2, 141, PROJECT_BEFORE, PROJECT_AFTER))
    code = promote_main(["--models-root", str(models), "promote", "--candidate", str(model), "--metrics", str(better),
                         "--version", "v1"])
    assert code == 0
    pointer = read_json(models / "current.json")
    assert pointer["gate"]["promote"] and pointer["gate"]["outcome"] == "promoted" and pointer["gate"]["n"] == 141
    assert pointer["gate"]["ci_low"] > 0 and not pointer["gate"]["forced"]
    assert read_json(models / "versions" / "v1" / "provenance.json")["gate"] == pointer["gate"]
    with pytest.raises(SystemExit):  # argparse refuses a margin that is not a number
        promote_main(["promote", "--candidate", str(model), "--margin", "x"])


def test_region_scores_fall_back_to_edit_effort_without_attributes():
    assert region_score({"dlc": {"positive": 1.0, "negative": 0.5}, "edit_effort": 0.9}) == 0.75
    assert region_score({"edit_effort": 0.25}) == 0.75
    with pytest.raises(ValueError, match="region_scores"):
        decide_from_metrics({"per_sample": []})


# ----------------------------------------------------------------------------------------------- replay
def rows(n: int, snapshot: str | None, source: str = "human") -> list[dict]:
    return [{"id": f"{snapshot}-{source}-{i}", "object_snapshot": snapshot, "source": source} for i in range(n)]


def test_replay_mixes_earlier_nights_at_the_ratio():
    tonight, pool = split_tonight(rows(40, "s2") + rows(10, "s2", "pseudo") + rows(300, "s1") + rows(5, None), "s2")
    assert len(tonight) == 55 and len(pool) == 300
    mixed, info = mix_replay(tonight, pool, 0.2, replay_seed(0, "s2"))
    assert info["replayed"] == round(55 * 0.2 / 0.8) == 14 and info["share"] == pytest.approx(14 / 69, abs=1e-3)
    assert mixed[:55] == tonight and len({r["id"] for r in mixed[55:]}) == 14
    assert mix_replay(tonight, pool, 0.2, replay_seed(0, "s2"))[0] == mixed  # seeded: a resumed run trains the same
    assert mix_replay(tonight, pool, 0.2, replay_seed(0, "s3"))[0] != mixed  # another night replays other rows
    assert mix_replay(tonight, pool, 0.0, [0])[0] == tonight


def test_a_small_pool_is_repeated_and_an_empty_night_trains_on_the_pool():
    tonight, pool = rows(30, "s2"), rows(4, "s1")
    mixed, info = mix_replay(tonight, pool, 0.5, [0])
    assert info["replayed"] == 30 and info["replayed_unique"] == 4 and len(mixed) == 60
    only_pool, info = mix_replay([], pool, 0.2, [0])
    assert only_pool == pool and "earlier data only" in info["note"]
    assert mix_replay(tonight, [], 0.2, [0])[0] == tonight
    with pytest.raises(ValueError):
        mix_replay(tonight, pool, 1.0, [0])


# ----------------------------------------------------------------------------------------------- regression set
def small_dataset(folder: Path, seed: int, n_scenes: int) -> Path:
    """A dataset folder whose every region is a human validation row (no model involved)."""
    writer = DatasetWriter(folder)
    samples = []
    for scene in generate_dataset(seed, n_scenes):
        image_rel = f"images/{pixels_hash(scene.image)[:16]}.png"
        writer.write_image(image_rel, scene.image)
        for index, obj in enumerate(scene.objects):
            sample_id = f"s{seed}-{scene.index}-{index}"
            writer.write_mask(f"masks/{sample_id}.png", obj.mask)
            samples.append({"kind": "image", "id": sample_id, "image": image_rel, "mask": f"masks/{sample_id}.png",
                            "caption": obj.long_caption, "split": "val", "source": "human", "category": "object",
                            "task_id": scene.index, "attributes": obj.attributes})
    return writer.commit(samples, [], [], {"snapshot_id": folder.name, "counts": {"val": len(samples)}})


def test_the_regression_set_is_frozen_and_topped_up(tmp_path):
    folder = tmp_path / "regression_set"
    first = small_dataset(tmp_path / "datasets" / "night1", 70, 1)  # 5 regions
    assert ensure_regression_set(folder, first, synthetic_scenes=0, val_regions=0) is None  # nothing to hold
    ensure_regression_set(folder, first, synthetic_scenes=12, val_regions=9)
    rows_one = load_regression_rows(folder)
    synthetic = [r for r in rows_one if r["source"] == SYNTHETIC]
    validation = [r for r in rows_one if r["source"] == VALIDATION]
    assert len(synthetic) == sum(len(s.objects) for s in generate_dataset(REGRESSION_SEED, 12))
    assert {r["category"] for r in synthetic} == set(SHAPES)  # every benchmark category, whatever the night holds
    assert len(validation) == 5 and all(r["split"] == "regression" and r["id"].startswith("val-") for r in validation)
    masks_before = {r["id"]: read_mask(r["mask_path"]) for r in rows_one}

    # A later night: the validation part is topped up to 9, nothing that was in it changes.
    later = small_dataset(tmp_path / "datasets" / "night2", 71, 2)  # 7 regions
    ensure_regression_set(folder, later, synthetic_scenes=12, val_regions=9)
    rows_two = load_regression_rows(folder)
    assert sum(r["source"] == VALIDATION for r in rows_two) == 9
    kept = {r["id"]: r for r in rows_two}
    for row in rows_one:
        assert {k: v for k, v in kept[row["id"]].items()} == row
        assert np.array_equal(read_mask(kept[row["id"]]["mask_path"]), masks_before[row["id"]])
    info = read_info(folder)
    assert info["counts"] == {"samples": len(rows_two), SYNTHETIC: len(synthetic), VALIDATION: 9}
    assert [s["source"] for s in info["sources"]] == [SYNTHETIC, VALIDATION, VALIDATION]
    stamp = info["updated_at"]
    ensure_regression_set(folder, later, synthetic_scenes=12, val_regions=9)  # full: not rewritten
    assert read_info(folder)["updated_at"] == stamp


# ----------------------------------------------------------------------------------------------- KPIs from the API
class FakeReply:
    def __init__(self, body, status=200):
        self.status_code, self._body = status, body

    def json(self):
        return self._body


class FakeLabelStudio:
    """requests.Session stand-in answering GET /api/predictions/?task=N from a dict."""

    def __init__(self, stored: dict[int, list[dict]]):
        self.stored, self.calls = stored, []

    def get(self, url, params=None, headers=None, timeout=None, allow_redirects=True):
        assert url.endswith("/api/predictions/") and headers == {"Authorization": "Token secret-token"}
        self.calls.append(params["task"])
        return FakeReply(self.stored.get(params["task"], []))


def snapshot(work: Path, snapshot_id: str, objects: dict[str, tuple[dict, str]]) -> None:
    """A pulled snapshot's manifest: {key: (export object, id of the snapshot that downloaded it)}."""
    entries = {}
    for key, (body, downloaded_by) in objects.items():
        path = work / "snapshots" / downloaded_by / "objects" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body))
        entries[key] = {"file": f"snapshots/{downloaded_by}/objects/{key}", "snapshot": downloaded_by}
    (work / "snapshots" / snapshot_id).mkdir(parents=True, exist_ok=True)
    (work / "snapshots" / snapshot_id / "manifest.json").write_text(json.dumps({"objects": entries}))


def test_kpis_read_the_served_predictions_from_label_studio(tmp_path):
    work = tmp_path / "work"
    one = annotation_object(annotation(11, 1, {"a": "a red square", "b": "a blue circle, edited"}, parent=101), 1)
    two = annotation_object(annotation(12, 2, {"c": "a green star"}, parent=102), 2)
    stored = {1: [prediction(101, 1, "v1", {"a": "a red square", "b": "a blue circle"})],
              2: [prediction(102, 2, "v2", {"c": "a green star"})]}
    fake = FakeLabelStudio(stored)
    api = nightly_kpis.PredictionsAPI("http://ls.test", "secret-token", work / "kpis" / "predictions", session=fake)
    snapshot(work, "s1", {"ls/11": (one, "s1"), "ls/12": (two, "s1")})
    record = nightly_kpis.update_kpis(work, "s1", "auto", api=api)
    assert record == read_json(work / "kpis.json")
    assert record["by_model_version"]["v1"]["accepted"] == 1 and record["by_model_version"]["v1"]["edited"] == 1
    assert record["by_model_version"]["v1"]["acceptance_rate"] == 0.5
    assert record["by_model_version"]["v1"]["mean_edit_distance"] > 0
    assert record["by_model_version"]["v2"]["acceptance_rate"] == 1.0
    assert record["predictions"]["tasks_from_api"] == 2 and sorted(fake.calls) == [1, 2]

    # Next night: only task 2's object changed; task 1's predictions come from the cache.
    snapshot(work, "s2", {"ls/11": (one, "s1"), "ls/12": (two, "s2")})
    nightly_kpis.update_kpis(work, "s2", "auto", api=api)
    assert sorted(fake.calls) == [1, 2, 2]
    assert nightly_kpis.update_kpis(work, "s2", "export", api=None)["overall"]["accepted"] == 0  # nothing served known
