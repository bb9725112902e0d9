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


def test_boto_debug_stays_out_of_the_loop_log_without_touching_other_handlers(tmp_path):
    """The loop's handlers drop botocore's DEBUG lines (they could echo signed headers); the logger itself keeps its
    level, so another handler in the process (a test's capture, the server's log) still gets them."""
    log_file = tmp_path / "run.log"
    level_before = logging.getLogger("botocore").level
    setup_logging("DEBUG", log_file)
    try:
        logging.getLogger("botocore.endpoint").debug("Sending http request: signed headers")
        logging.getLogger("botocore.endpoint").warning("a retry warning")
        logging.getLogger("dam_loop.test").debug("a loop debug line")
        assert logging.getLogger("botocore").level == level_before
    finally:
        setup_logging("WARNING")  # detach the file handler
    text = log_file.read_text()
    assert "signed headers" not in text and "a retry warning" in text and "a loop debug line" in text


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
