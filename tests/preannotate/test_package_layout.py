"""dam_preannotate is a job beside the server: it imports neither the server, the loop, the tools nor scripts,
keeps its imports at the top of its modules, and no file over 500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dam_preannotate"
FORBIDDEN = {"backend", "dam_loop", "dam_tools", "scripts", "flask", "gunicorn"}


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_the_job_imports_no_server_loop_tools_or_scripts():
    offenders = {}
    for path in modules():
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        if names & FORBIDDEN:
            offenders[path.name] = sorted(names & FORBIDDEN)
    assert not offenders, offenders


def test_imports_sit_at_the_top_and_files_stay_small():
    for path in modules():
        text = path.read_text()
        assert len(text.splitlines()) < 500, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}: import inside {node.name}()"
