"""The README's configuration reference and docker-compose.yml stay in step with the environment variables the
code reads (collected from the source, so a new variable without documentation fails here). Static and fast."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV_HELPERS = {"env_default", "env_int", "env_float", "env_bool", "getenv"}
# read by the code but set by the platform, not by users
NOT_USER_SETTINGS = {"WORLD_SIZE"}


def env_vars_read(path: Path) -> set[str]:
    """Names passed to env_default/env_int/.../os.getenv, os.environ.get(...) and os.environ[...] in one file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            on_environ = isinstance(func, ast.Attribute) and "environ" in ast.unparse(func.value)
            if name in ENV_HELPERS or (on_environ and name == "get"):  # setdefault/pop write, not read
                found.add(str(node.args[0].value))
        elif isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
            if isinstance(node.slice, ast.Constant):
                found.add(str(node.slice.value))
    return {n for n in found if re.fullmatch(r"[A-Z][A-Z0-9_]+", n)}


def backend_settings_vars() -> set[str]:
    """Field names of backend.settings.Settings and backend.batching.BatchingSettings, upper-cased (each is an
    environment variable)."""
    names: set[str] = set()
    for module, class_name in (("settings.py", "Settings"), ("batching_types.py", "BatchingSettings")):
        tree = ast.parse((ROOT / "backend" / module).read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
        names |= {n.target.id.upper() for n in cls.body
                  if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return names - {"EXTRA"}


def code_vars() -> set[str]:
    found = backend_settings_vars()
    for folder in ("backend", "scripts", "dam_model", "dam_loop", "dam_tools", "ls_io"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= env_vars_read(path)
    return found - NOT_USER_SETTINGS


def test_collector_sees_known_variables():
    names = code_vars()
    wanted = {"DAM_MODEL", "SEGMENTER", "WORKERS", "S3_BUCKET", "LABEL_STUDIO_BIN", "QUEUE_MAX_REGIONS"}
    assert wanted <= names, sorted(names)


def test_readme_documents_every_environment_variable():
    readme = (ROOT / "README.md").read_text()
    missing = sorted(n for n in code_vars() if not re.search(rf"`{n}`", readme))
    assert not missing, f"README.md lacks (as `NAME`): {missing}"


def test_compose_sets_every_backend_variable():
    compose = (ROOT / "docker-compose.yml").read_text()
    wanted = backend_settings_vars() | env_vars_read(ROOT / "backend" / "gunicorn.conf.py")
    missing = sorted(n for n in wanted if not re.search(rf"^\s+{n}:", compose, flags=re.M))
    assert not missing, f"docker-compose.yml's backend lacks: {missing}"


def test_compose_environment_entries_are_commented():
    """Under every `environment:` block, each run of `NAME: value` lines follows a comment and is at most
    MAX_PER_COMMENT long (so a comment cannot stand for a whole block)."""
    max_per_comment = 4
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    offenders, in_env, run_length, commented = [], False, 0, False
    for line in lines:
        stripped = line.strip()
        if stripped == "environment:":
            in_env, run_length, commented = True, 0, False
            continue
        if in_env and line and not line.startswith(" " * 6):
            in_env = False
        if not in_env or not stripped:
            continue
        if stripped.startswith("#"):
            commented, run_length = True, 0
        elif re.match(r"[A-Z][A-Z0-9_]+:", stripped):
            run_length += 1
            if not commented or run_length > max_per_comment:
                offenders.append(stripped.split(":")[0])
    assert not offenders, f"environment entries without a comment close above them: {offenders}"
