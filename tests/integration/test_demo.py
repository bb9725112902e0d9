"""`python -m dam_tools.demo --smoke`: the local main command sets everything up (real Label Studio, moto, gunicorn),
captions the demo project, then stops every process it started. ~1-2 min (Label Studio's first start)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dam_tools.local_stack import free_port, port_is_free

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_demo_smoke_captions_the_project_and_leaves_nothing_running(tmp_path: Path, trained_dam_dir: Path):
    ports = [free_port() for _ in range(3)]
    argv = [sys.executable, "-m", "dam_tools.demo", "--smoke", "--fresh", "--tasks", "2", "--batch", "2",
            "--model", str(trained_dam_dir), "--run-dir", str(tmp_path / "demo"),
            "--ls-port", str(ports[0]), "--backend-port", str(ports[1]), "--s3-port", str(ports[2])]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "2/2 tasks hold a captioned prediction" in output, output[-4000:]
    assert f"http://127.0.0.1:{ports[0]}/projects/" in output
    assert re.search(r"==> READY in \d+ s \(first captioned task after \d+ s\)", output), output[-4000:]
    assert "building tiny model" not in output and "training the" not in output  # --model DIR builds nothing
    assert (tmp_path / "demo" / "credentials.json").is_file()
    for port in ports:  # every service was stopped with the demo
        assert port_is_free(port), f"port {port} still in use after the demo exited"
