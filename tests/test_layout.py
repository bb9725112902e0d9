"""The design card's layout exists and the model package stays free of web/storage imports."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_MODEL = {"flask", "boto3", "botocore", "label_studio_sdk", "gunicorn", "backend", "scripts", "requests"}


def test_design_card_layout():
    for name in ["backend", "dam_model", "label_config", "scripts", "tests", "requirements.txt"]:
        assert (ROOT / name).exists(), name


def test_model_package_imports_no_web_or_storage_code():
    offenders = []
    for path in (ROOT / "dam_model").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_MODEL]
    assert not offenders, offenders


def imported_top_names(folder: str) -> dict[str, set[str]]:
    """{file: top-level names of absolute imports, wherever they sit in the file} for every .py under `folder`."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_label_studio_format_package_stays_neutral():
    """ls_io (the Label Studio format, once) is imported by the server and the loop, and imports neither."""
    forbidden = {"backend", "dam_loop", "dam_tools", "scripts", "dam_model", "flask", "gunicorn", "werkzeug"}
    offenders = {f: sorted(n & forbidden) for f, n in imported_top_names("ls_io").items() if n & forbidden}
    assert not offenders, offenders


def test_server_never_imports_the_loop_or_the_tools():
    forbidden = {"dam_loop", "dam_tools", "scripts"}
    offenders = {f: sorted(n & forbidden) for f, n in imported_top_names("backend").items() if n & forbidden}
    assert not offenders, offenders
