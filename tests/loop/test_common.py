"""dam_loop.cli: secret redaction in logs; dam_model.fileio: atomic writes."""
from __future__ import annotations

import logging

from dam_loop.cli import setup_logging
from dam_model.fileio import atomic_write_json, read_json


def test_secrets_never_reach_the_log_file(tmp_path, monkeypatch):
    secret = "s3cr3t-value-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    log_file = tmp_path / "run.log"
    setup_logging("INFO", log_file)
    try:
        logging.getLogger("dam_loop.test").info("connecting with %s to /data/demo", secret)
    finally:
        setup_logging("WARNING")  # detach the file handler
    text = log_file.read_text()
    assert secret not in text and "connecting with *** to /data/demo" in text


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
