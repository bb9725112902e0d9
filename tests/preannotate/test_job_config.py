"""JobConfig: one variable per field, flags generated from it (secrets excepted), validated at start; the API key
never reaches a log line; the job's model_version is the backend's for the same model."""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields
from pathlib import Path

import pytest

from backend.model_store import ModelStore
from backend.settings import Settings
from dam_preannotate.cli import build_parser, main, setup_logging
from dam_preannotate.config import JobConfig, add_config_args, config_from_args, env_name
from dam_preannotate.models import choose_model

KEY = "0123456789abcdef0123456789abcdef01234567"
ENV = {"LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": KEY, "PREANNOTATE_PROJECT": "3"}


def parse(argv, env=ENV) -> JobConfig:
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    return config_from_args(parser.parse_args(argv), env)


def test_every_field_has_a_doc_a_variable_and_all_but_the_secret_a_flag():
    flags = {a.dest for a in build_parser()._actions}
    for f in fields(JobConfig):
        assert f.metadata["doc"], f.name
        assert (f.name in flags) != f.metadata["secret"], f.name
    assert env_name("project") == "PREANNOTATE_PROJECT" and env_name("models_root") == "MODELS_ROOT"


def test_environment_then_flags():
    cfg = parse([], {**ENV, "PREANNOTATE_BATCH_REGIONS": "32", "PREANNOTATE_FORCE": "true", "MAX_NEW_TOKENS": "64"})
    assert (cfg.project, cfg.batch_regions, cfg.force, cfg.max_new_tokens) == (3, 32, True, 64)
    cfg = parse(["--batch-regions", "8", "--no-force", "--project", "4"],
                {**ENV, "PREANNOTATE_BATCH_REGIONS": "32", "PREANNOTATE_FORCE": "true"})
    assert (cfg.project, cfg.batch_regions, cfg.force) == (4, 8, False)


@pytest.mark.parametrize("env, message", [
    ({**ENV, "LABEL_STUDIO_API_KEY": ""}, "LABEL_STUDIO_API_KEY"),
    ({**ENV, "PREANNOTATE_PROJECT": "0"}, "PREANNOTATE_PROJECT"),
    ({**ENV, "PREANNOTATE_VIEW": "2", "PREANNOTATE_TASK_IDS": "1,2"}, "one selection"),
    ({**ENV, "PREANNOTATE_TASK_IDS": "1,x"}, "not a task id"),
    ({**ENV, "PREANNOTATE_BATCH_REGIONS": "0"}, "PREANNOTATE_BATCH_REGIONS"),
    ({**ENV, "SEGMENTER": "magic"}, "SEGMENTER"),
    ({**ENV, "PREANNOTATE_FORCE": "maybe"}, "PREANNOTATE_FORCE"),
])
def test_bad_settings_fail_at_start_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        parse([], env)


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_api_key_is_never_shown(monkeypatch, capsys, restore_logging):
    cfg = parse([])
    assert KEY not in repr(cfg)
    setup_logging(cfg, rank=0)
    logging.getLogger("dam_preannotate.test").warning("calling with token %s", KEY)
    assert KEY not in capsys.readouterr().err
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PREANNOTATE_TASK_IDS", f"1,{KEY}")
    assert main([]) == 2
    assert KEY not in capsys.readouterr().err


def test_the_job_names_its_model_as_the_backend_does(tmp_path, random_dam_dir):
    backend = ModelStore(Settings(dam_model=str(random_dam_dir), models_root=str(tmp_path / "models"),
                                  model_poll_seconds=0, warm_up_on_start=False))
    job = parse([], {**ENV, "DAM_MODEL": str(random_dam_dir), "MODELS_ROOT": str(tmp_path / "models")})
    assert choose_model(job).version == backend.model_version  # nothing promoted: DAM_MODEL's hash

    version = tmp_path / "models" / "versions" / "v-2024-01-01"
    version.mkdir(parents=True)
    (tmp_path / "models" / "current.json").write_text(json.dumps({"version": version.name,
                                                                  "path": f"versions/{version.name}"}))
    assert choose_model(job).version == backend.wanted().version == "v-2024-01-01"
    assert choose_model(job).source == str(version)
    assert choose_model(parse(["--model", str(version)])).version == "v-2024-01-01"
    assert choose_model(parse(["--model", str(random_dam_dir)])).version.startswith("dam-")


def test_the_readme_documents_every_variable_of_the_job():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [env_name(f.name) for f in fields(JobConfig) if f"`{env_name(f.name)}`" not in readme]
    assert not missing, f"README.md lacks {missing}"
