"""dam_tools.build_tiny_model: cache key, cache hit without training, `latest` link; caption/eval helpers."""
import dataclasses
import json

import pytest
import torch

from dam_model.synthetic import generate_dataset
from dam_tools import build_tiny_model as btm
from dam_tools.progress import read_progress


def test_cache_key_depends_on_profile_and_training_code(monkeypatch):
    ci = btm.PROFILES["ci"]
    key = btm.cache_key(ci)
    assert key.startswith("ci-") and key == btm.cache_key(ci)
    assert btm.cache_key(dataclasses.replace(ci, train_scenes=ci.train_scenes + 1)) != key
    monkeypatch.setattr("dam_model.train.training_code_version", lambda: "changed")
    assert btm.cache_key(ci) != key


def cached_build(tmp_path, monkeypatch, profile):
    """A cache (DAM_CACHE_DIR under tmp_path) that holds a finished build of `profile`; its folder."""
    monkeypatch.setenv("DAM_CACHE_DIR", str(tmp_path))
    target = tmp_path / "tiny-dam" / btm.cache_key(profile)
    (target / "model").mkdir(parents=True)
    (target / "build.json").write_text(json.dumps({"cache_key": target.name}))
    return target


def test_cached_build_is_reused_without_training(tmp_path, monkeypatch, capsys):
    profile = btm.PROFILES["ci"]
    target = cached_build(tmp_path, monkeypatch, profile)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached build must not train")

    monkeypatch.setattr("dam_model.train.train", no_training)
    assert btm.build(profile) == target / "model"
    assert "cached" in capsys.readouterr().out
    link = tmp_path / "tiny-dam" / "latest-ci"
    assert link.is_symlink() and link.resolve() == target.resolve()


def test_a_build_leaves_the_callers_torch_threads_as_they_were(tmp_path, monkeypatch):
    """Builds train at 2 threads; a server or a bench that set 1 thread keeps it after asking for the tiny model."""
    cached_build(tmp_path, monkeypatch, btm.PROFILES["ci"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        btm.build(btm.PROFILES["ci"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_unknown_profile_is_rejected():
    with pytest.raises(SystemExit):
        btm.main(["--profile", "huge"])


def test_greedy_captions_and_report_on_both_paths(tiny_samples, make_model):
    model = make_model()
    samples = tiny_samples[:3]
    regions = [o.attributes for s in generate_dataset(5, 4, size=(64, 64)) for o in s.objects][:3]
    for global_only in (False, True):
        report = btm.evaluate_model(model, samples, regions, max_new_tokens=4, global_only=global_only)
        assert report["num_regions"] == 3
        assert 0.0 <= report["average"] <= 1.0
        assert len(report["examples"]) == 3


def test_demo_profiles_caption_only_appearance_and_ci_is_untouched():
    profiles = btm.PROFILES
    assert profiles["fast"].synthetic == {"caption_style": "appearance"} and profiles["fast"].init_profile is None
    assert profiles["default"].synthetic == {"caption_style": "appearance"}
    assert profiles["default"].init_profile == "fast"  # the demo serves fast, then promotes default built on it
    assert profiles["ci"].synthetic == {} and profiles["ci"].init_profile is None  # the tests' model keeps its key
    assert profiles["fast"].train["max_steps"] < profiles["ci"].train["max_steps"]


def test_cached_model_never_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("DAM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(btm, "build", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    assert btm.cached_model("fast") is None
    target = tmp_path / "tiny-dam" / btm.cache_key(btm.PROFILES["fast"])
    (target / "model").mkdir(parents=True)
    (target / "build.json").write_text("{}")
    assert btm.cached_model("fast") == target / "model"


def test_a_build_records_lineage_and_reports_progress_lines(tmp_path, capsys):
    micro = dataclasses.replace(
        btm.PROFILES["fast"], name="micro",
        train={**btm.PROFILES["fast"].train, "max_steps": 2, "checkpoint_every": 0, "warmup_steps": 0},
        train_scenes=2, eval_scenes=1, vocab_size=400)
    model_dir = btm.build(micro, out=tmp_path / "micro", progress="lines")
    record = json.loads((model_dir / "provenance.json").read_text())
    assert record["base_model"]["id"] == "tiny-dam/micro" and record["base_model"]["licence"] == "MIT"
    assert record["training_data"] == {"kind": "synthetic", "generator_version": 2, "seed": 1000, "scenes": 2,
                                       "caption_style": "appearance"}
    assert 0.0 <= record["heldout_metrics"]["appearance_right"] <= 1.0
    out = capsys.readouterr().out
    for phase in ("scenes 2/2", "train-micro 2/2", "captions"):
        assert f"progress {phase}" in out
    (tmp_path / "log").write_text(out)
    assert read_progress(tmp_path / "log")[0] == "captions"
