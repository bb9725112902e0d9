"""dam_tools.build_tiny_model: cache key, cache hit without training, `latest` link; caption/eval helpers."""
import dataclasses
import json

import pytest

from dam_model.synthetic import generate_dataset
from dam_tools import build_tiny_model as btm


def test_cache_key_depends_on_profile_and_training_code(monkeypatch):
    ci = btm.PROFILES["ci"]
    key = btm.cache_key(ci)
    assert key.startswith("ci-") and key == btm.cache_key(ci)
    assert btm.cache_key(dataclasses.replace(ci, train_scenes=ci.train_scenes + 1)) != key
    monkeypatch.setattr("dam_model.train.training_code_version", lambda: "changed")
    assert btm.cache_key(ci) != key


def test_cached_build_is_reused_without_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAM_CACHE_DIR", str(tmp_path))
    profile = btm.PROFILES["ci"]
    target = tmp_path / "tiny-dam" / btm.cache_key(profile)
    (target / "model").mkdir(parents=True)
    (target / "build.json").write_text(json.dumps({"cache_key": target.name}))

    def no_training(*args, **kwargs):
        raise AssertionError("a cached build must not train")

    monkeypatch.setattr("dam_model.train.train", no_training)
    assert btm.build(profile) == target / "model"
    assert "cached" in capsys.readouterr().out
    link = tmp_path / "tiny-dam" / "latest-ci"
    assert link.is_symlink() and link.resolve() == target.resolve()


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
