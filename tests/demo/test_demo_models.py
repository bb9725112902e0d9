"""dam_tools.demo_models: what the demo serves at once, what it trains in the background, how each is promoted (and
that ``--model DIR`` builds nothing); every promoted version carries its provenance."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dam_loop.models_root import LocalModelStore
from dam_model.versions import PROVENANCE_NAME
from dam_tools import build_tiny_model as btm
from dam_tools import demo, demo_models
from dam_tools.local_stack import StackError


def no_build(*args, **kwargs):
    raise AssertionError("this plan must not build a model")


@pytest.fixture
def forbid_builds(monkeypatch):
    monkeypatch.setattr(btm, "build", no_build)
    monkeypatch.setattr(btm, "ensure_tiny_model", no_build)


def fake_build(root: Path, profile: str, random_dam_dir: Path) -> Path:
    """A cache-like build folder (model/ + eval_report.json) holding the random tiny DAM."""
    target = root / btm.cache_key(btm.PROFILES[profile])
    shutil.copytree(random_dam_dir, target / "model")
    record = {"base_model": {"id": f"tiny-dam/{profile}", "licence": "MIT"},
              "training_data": {"kind": "synthetic", "seed": 1000}}
    (target / "model" / PROVENANCE_NAME).write_text(json.dumps(record))
    report = {"average": 0.8, "positive": 0.6, "negative": 1.0, "appearance_right": 0.95, "num_regions": 10,
              "positive_outcomes": {"shape": {"correct": 0.95, "not_mentioned": 0.0, "wrong": 0.05}}}
    (target / "eval_report.json").write_text(json.dumps(report))
    return target / "model"


def test_model_dir_is_served_as_given_and_nothing_is_built(tmp_path, random_dam_dir, forbid_builds):
    plan = demo_models.plan_models(tmp_path / "run", random_dam_dir, progress="off")
    assert plan.serve == random_dam_dir and plan.background is None and plan.version is None
    # its own models root: a pointer left there by a tiny-model run cannot outrank DIR
    assert plan.models_root != tmp_path / "run" / "models" and plan.models_root.parent == tmp_path / "run"
    assert not plan.models_root.exists()


def test_model_dir_must_be_a_dam_folder(tmp_path, forbid_builds):
    with pytest.raises(StackError, match="not a DAM folder"):
        demo_models.plan_models(tmp_path, tmp_path, progress="off")


def test_empty_cache_builds_the_fast_model_and_plans_default_in_the_background(tmp_path, random_dam_dir,
                                                                              monkeypatch):
    built = []

    def ensure(profile, progress="off"):
        built.append((profile, progress))
        return fake_build(tmp_path / "cache", profile, random_dam_dir)

    monkeypatch.setattr(btm, "cached_model", lambda profile: None)
    monkeypatch.setattr(btm, "ensure_tiny_model", ensure)
    plan = demo_models.plan_models(tmp_path / "run", None, progress="lines")
    assert built == [("fast", "lines")]
    assert plan.background == "default" and plan.version == demo_models.version_name("fast")
    pointer = LocalModelStore(plan.models_root).read_pointer()
    assert pointer["version"] == plan.version and pointer["metrics"]["appearance_right"] == 0.95


def test_cached_default_is_served_at_once_and_promotion_is_idempotent(tmp_path, random_dam_dir, monkeypatch,
                                                                     forbid_builds):
    best = fake_build(tmp_path / "cache", "default", random_dam_dir)
    monkeypatch.setattr(btm, "cached_model", lambda profile: best if profile == "default" else None)
    run = tmp_path / "run"
    plan = demo_models.plan_models(run, None, progress="off")
    assert plan.background is None and plan.version == demo_models.version_name("default")
    store = LocalModelStore(plan.models_root)
    assert store.versions() == [plan.version]
    assert demo_models.plan_models(run, None, progress="off").version == plan.version  # no second version
    assert store.versions() == [plan.version]


def test_background_model_is_promoted_over_the_fast_one(tmp_path, random_dam_dir, monkeypatch):
    root = tmp_path / "models"
    fast = fake_build(tmp_path / "cache", "fast", random_dam_dir)
    best = fake_build(tmp_path / "cache", "default", random_dam_dir)
    first = demo_models.promote_tiny(root, fast, "fast")
    second = demo_models.promote_tiny(root, best, "default")
    pointer = LocalModelStore(root).read_pointer()
    assert pointer["version"] == second and pointer["previous"] == first
    assert demo_models.promote_tiny(root, fast, "fast") == first  # back to an existing version: a pointer flip
    assert LocalModelStore(root).read_pointer()["version"] == first


def test_a_model_trained_in_the_demo_keeps_being_served(tmp_path, random_dam_dir, forbid_builds):
    root = tmp_path / "run" / "models"
    LocalModelStore(root).write_version("v20261207-120000", random_dam_dir, {"version": "v20261207-120000"})
    LocalModelStore(root).write_pointer({"version": "v20261207-120000", "path": "versions/v20261207-120000",
                                         "promoted_at": "2026-12-07T12:00:00Z", "previous": None, "metrics": {}})
    plan = demo_models.plan_models(tmp_path / "run", None, progress="off")
    assert plan.version == "v20261207-120000" and plan.background is None


def test_every_promoted_version_carries_its_provenance(tmp_path, random_dam_dir):
    root = tmp_path / "models"
    for profile in ("fast", "default"):
        demo_models.promote_tiny(root, fake_build(tmp_path / "cache", profile, random_dam_dir), profile)
    store = LocalModelStore(root)
    for version in store.versions():
        record = json.loads((store.local_path(version) / PROVENANCE_NAME).read_text())
        assert record["version"] == version
        assert record["base_model"]["id"].startswith("tiny-dam/") and record["base_model"]["licence"] == "MIT"
        assert record["training_data"]["kind"] == "synthetic"
        assert record["promoted_metrics"]["score"] == 0.8


def test_swap_in_promotes_the_background_model_and_captions_again(tmp_path, random_dam_dir, monkeypatch):
    root = tmp_path / "models"
    first = demo_models.promote_tiny(root, fake_build(tmp_path / "cache", "fast", random_dam_dir), "fast")
    best = fake_build(tmp_path / "cache", "default", random_dam_dir)

    class Build:
        profile = "default"

        def result(self):
            return best

    class API:
        retrieved: list = []

        def retrieve_predictions(self, project, task_ids):
            self.retrieved.append(list(task_ids))

        def predictions(self, task_id):
            return []

    served = iter([first, first, demo_models.version_name("default")])
    monkeypatch.setattr(demo, "served_version", lambda url: next(served))
    plan = demo_models.ModelPlan(serve=best, models_root=root, version=first, background="default")
    api = API()
    demo.swap_in(Build(), plan, api, 1, [1, 2, 3], 2, "http://backend", "off")
    assert LocalModelStore(root).read_pointer()["version"] == demo_models.version_name("default")
    assert api.retrieved == [[1, 2], [3]]


def test_banner_figures_of_the_served_tiny_model(tmp_path, random_dam_dir):
    root = tmp_path / "models"
    version = demo_models.promote_tiny(root, fake_build(tmp_path / "cache", "fast", random_dam_dir), "fast")
    plan = demo_models.ModelPlan(serve=random_dam_dir, models_root=root, version=version)
    assert demo_models.served_figures(plan) == "shape 95 % right on held-out scenes"
    assert demo_models.served_figures(demo_models.ModelPlan(random_dam_dir, tmp_path / "none", None)) == ""
