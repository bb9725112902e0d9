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
