"""Compare the running interpreter's installed distributions with a lock file written by `./manage.sh lock`.

    python locks/check_lock.py locks/dev.txt          # exit 0: same versions; 1: drift, one line per difference

Runs inside every venv the project makes, Label Studio's included, so it imports nothing from the project: the
standard library, plus `packaging` (pip's vendored copy where the venv has no packaging of its own) to evaluate the
lock's environment markers. A local version label (torch 2.14.1+cu130) matches its public version (2.14.1), as in
pip's own `==`.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.markers import Marker
except ModuleNotFoundError:  # a bare venv: pip always carries a copy
    from pip._vendor.packaging.markers import Marker

# Installed by `python -m venv` / pip itself or by the project's editable install, never listed in a lock.
NOT_LOCKED = {"pip", "setuptools", "wheel", "dam-label-studio"}
LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)\s*(?:;\s*(.+))?$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    return version.split("+", 1)[0]


def read_lock(path: Path) -> dict[str, str]:
    """{normalized name: version} of the lock's lines whose markers hold for this interpreter."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = LOCK_LINE.match(line)
        if match is None:
            raise SystemExit(f"{path}:{number}: not a `name==version` pin: {raw!r}")
        name, _extras, version, marker = match.groups()
        if marker is None or Marker(marker).evaluate():
            pins[normalize(name)] = version
    return pins


def installed() -> dict[str, str]:
    return {normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def differences(locked: dict[str, str], present: dict[str, str]) -> list[str]:
    problems = []
    for name, version in sorted(locked.items()):
        have = present.get(name)
        if have is None:
            problems.append(f"missing   {name}=={version}")
        elif public_version(have) != public_version(version):
            problems.append(f"different {name}: installed {have}, locked {version}")
    for name in sorted(set(present) - set(locked) - NOT_LOCKED):
        problems.append(f"unlocked  {name}=={present[name]} is installed but not in the lock")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    lock = Path(argv[0])
    problems = differences(read_lock(lock), installed())
    for line in problems:
        print(f"{lock}: {line}", file=sys.stderr)
    if problems:
        print(f"{lock}: {len(problems)} difference(s) between {sys.prefix} and the lock", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
