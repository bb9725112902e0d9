"""Every environment the project installs is locked, and drift from a lock is caught where it happens."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "locks"
CHECK = LOCKS / "check_lock.py"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)")


def pins(path: Path) -> dict[str, str]:
    """{normalized name: version} of every `name==version` line of a requirements or lock file."""
    out = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            out[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return out


def run_check(python: str | Path, lock: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), str(CHECK), str(lock)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("inputs, lock", [
    ("requirements.txt", "runtime.txt"),
    ("requirements-dev.txt", "dev.txt"),
    ("requirements-label-studio.in", "label-studio.txt"),
])
def test_every_input_pin_is_in_its_lock_at_the_same_version(inputs, lock):
    """Editing requirements*.txt without `./manage.sh lock` leaves a lock that disagrees: caught here."""
    wanted, locked = pins(ROOT / inputs), pins(LOCKS / lock)
    assert wanted, f"{inputs} pins nothing"
    stale = {name: (version, locked.get(name)) for name, version in wanted.items() if locked.get(name) != version}
    assert not stale, f"{lock} is stale for {stale}: run ./manage.sh lock"


def test_locks_are_generated_by_the_documented_command():
    for lock in ("runtime.txt", "dev.txt", "label-studio.txt"):
        head = (LOCKS / lock).read_text().splitlines()[:3]
        assert any("./manage.sh lock" in line for line in head), f"{lock} was not written by ./manage.sh lock"


def test_the_dev_lock_ships_the_runtime_lock_unchanged():
    """The tests run exactly the versions the Docker image installs."""
    runtime, dev = pins(LOCKS / "runtime.txt"), pins(LOCKS / "dev.txt")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_label_studio_lock_holds_a_sentry_sdk_that_label_studio_1_23_2_can_start_with():
    locked = pins(LOCKS / "label-studio.txt")
    assert locked["label-studio"] == "1.23.2"
    assert int(locked["sentry-sdk"].split(".")[0]) < 3, "sentry-sdk 3 rejects send_default_pii: Label Studio exits"


def test_docker_image_installs_the_runtime_lock():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "pip install -r locks/runtime.txt" in dockerfile
    assert "check_lock.py locks/runtime.txt" in dockerfile
    assert "pip install -r requirements.txt" not in dockerfile


def test_this_venv_matches_the_dev_lock():
    """The interpreter running the tests holds exactly locks/dev.txt (manage.sh installs it)."""
    result = run_check(sys.executable, LOCKS / "dev.txt")
    assert result.returncode == 0, result.stderr


def test_label_studio_venv_matches_its_lock():
    binary = os.environ.get("LABEL_STUDIO_BIN")
    if not binary:
        pytest.skip("LABEL_STUDIO_BIN is not set (./manage.sh test sets it)")
    python = Path(binary).parent / "python"
    result = run_check(python, LOCKS / "label-studio.txt")
    assert result.returncode == 0, result.stderr


def test_check_lock_names_a_version_that_differs(tmp_path):
    """A lock that pins an installed package at another version fails, naming the package and both versions."""
    locked = pins(LOCKS / "dev.txt")
    text = (LOCKS / "dev.txt").read_text().replace(f"numpy=={locked['numpy']}", "numpy==0.0.1")
    drifted = tmp_path / "drifted.txt"
    drifted.write_text(text)
    result = run_check(sys.executable, drifted)
    assert result.returncode == 1
    assert f"numpy: installed {locked['numpy']}, locked 0.0.1" in result.stderr


def test_check_lock_names_a_missing_and_an_unlocked_package(tmp_path):
    lines = [line for line in (LOCKS / "dev.txt").read_text().splitlines() if not line.startswith("tqdm==")]
    lines.append("not-a-real-package-xyz==1.0")
    edited = tmp_path / "edited.txt"
    edited.write_text("\n".join(lines) + "\n")
    result = run_check(sys.executable, edited)
    assert result.returncode == 1
    assert "missing   not-a-real-package-xyz==1.0" in result.stderr
    assert "unlocked  tqdm==" in result.stderr
