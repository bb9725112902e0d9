"""The design card's layout exists, and the import rules of the packages hold (checked on the source, statically)."""
import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_MODEL = {"flask", "boto3", "botocore", "label_studio_sdk", "gunicorn", "backend", "scripts", "requests",
                      "dam_loop", "dam_tools", "dam_preannotate", "model_source"}
STEPS = ("pull", "build", "pseudo_label", "train", "evaluate", "promote", "nightly")
MAX_LINES = 500
MAX_ENTRY_POINT_LINES = 15


def source_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


NOT_SOURCE = {"tests", "build", "dist", "data", "models", "runs"}  # tests, build outputs, run data (see .gitignore)


def repo_sources() -> list[Path]:
    """Every Python file of the repository outside tests/, hidden folders (.git, .venv) and build or run outputs."""
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part in NOT_SOURCE or part.startswith(".") or part.endswith(".egg-info")
                             for part in p.relative_to(ROOT).parts[:-1]))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[str]:
    """Absolute names a file imports; ``from a.b import c`` counts as both a.b and a.b.c (c may be a module)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


def test_design_card_layout():
    for name in ["backend", "dam_model", "dam_loop", "dam_tools", "label_config", "scripts", "tests", "requirements.txt"]:
        assert (ROOT / name).exists(), name


def test_model_package_imports_no_web_or_storage_code():
    offenders = []
    for path in source_files("dam_model"):
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
    forbidden = {"backend", "dam_loop", "dam_tools", "scripts", "dam_model", "flask", "gunicorn", "werkzeug",
                 "dam_preannotate", "model_source"}
    offenders = {f: sorted(n & forbidden) for f, n in imported_top_names("ls_io").items() if n & forbidden}
    assert not offenders, offenders


def test_model_source_sits_between_the_model_and_its_readers():
    """model_source (an s3:// models root) is imported by the server and the bulk job, and imports only dam_model
    and ls_io of this repository: neither reader, nor the loop, the tools or a web framework."""
    forbidden = {"backend", "dam_loop", "dam_tools", "dam_preannotate", "scripts", "flask", "gunicorn", "werkzeug"}
    offenders = {f: sorted(n & forbidden) for f, n in imported_top_names("model_source").items() if n & forbidden}
    assert not offenders, offenders
    assert imported_top_names("model_source"), "model_source has modules"


def test_server_never_imports_the_loop_or_the_tools():
    forbidden = {"dam_loop", "dam_tools", "scripts"}
    offenders = {f: sorted(n & forbidden) for f, n in imported_top_names("backend").items() if n & forbidden}


def test_no_installed_package_named_scripts():
    """scripts/ holds thin entry points: not a package, not installed (a top-level `scripts` collides with others)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), "scripts") for pattern in include), include
    assert {"dam_model*", "backend*", "dam_loop*", "dam_tools*"} <= set(include)
    assert not (ROOT / "scripts" / "__init__.py").exists()
    for name, target in config["project"]["scripts"].items():
        module, _, function = target.partition(":")
        assert module.split(".")[0] in ("dam_loop", "dam_tools", "dam_preannotate") and function == "main", (name, target)
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), (name, target)


def test_entry_points_in_scripts_are_thin():
    """Each scripts/*.py only calls a package's main: a few lines, one import from dam_loop or dam_tools."""
    for path in source_files("scripts"):
        lines = path.read_text().splitlines()
        assert len(lines) <= MAX_ENTRY_POINT_LINES, f"{path.relative_to(ROOT)}: {len(lines)} lines"
        imports = [n for n in imported_modules(path)]
        assert imports and all(n.split(".")[0] in ("dam_loop", "dam_tools") for n in imports), (path.name, imports)
    assert not list((ROOT / "scripts").glob("*/")), "scripts/ has no sub-folders"


def test_loop_imports_neither_tools_nor_server():
    """Data flows S3 -> loop -> model -> promoted version -> server: the loop never reaches into the server."""
    offenders = [f"{path.relative_to(ROOT)}: {name}" for path in source_files("dam_loop") for name in imported_modules(path)
                 if name.split(".")[0] in ("dam_tools", "scripts", "backend")]
    assert not offenders, offenders


def test_server_imports_neither_loop_nor_tools():
    offenders = [f"{path.relative_to(ROOT)}: {name}" for path in source_files("backend") for name in imported_modules(path)
                 if name.split(".")[0] in ("dam_loop", "dam_tools", "scripts")]
    assert not offenders, offenders


def step_of(module: str) -> str | None:
    """The step a dam_loop.steps module belongs to: <step> itself or a helper named <step>_<part>."""
    leaf = module.split(".")[2] if module.count(".") >= 2 else ""
    owners = [s for s in STEPS if leaf == s or leaf.startswith(s + "_")]
    return max(owners, key=len) if owners else None


def test_steps_share_only_the_dataset_models_root_and_cli():
    """A step imports no other step (its own helper modules are fine); they meet in dam_loop.dataset, .models_root
    and .cli. nightly, the orchestrator, calls the other steps."""
    offenders = []
    for path in source_files("dam_loop/steps"):
        own = step_of(module_name(path))
        if own in (None, "nightly"):
            continue
        for name in imported_modules(path):
            other = step_of(name) if name.startswith("dam_loop.steps.") else None
            if other is not None and other != own:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders
    assert {p.stem for p in source_files("dam_loop/steps")} >= set(STEPS)


def test_no_source_file_over_500_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in repo_sources()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, over


def test_no_sys_path_edits():
    edits = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend)|\[|\s*[+]?=)")
    offenders = [p.relative_to(ROOT).as_posix() for p in repo_sources() if edits.search(p.read_text())]
    assert not offenders, offenders


def test_no_function_local_imports_in_the_loop_and_tools():
    """Imports sit at module top, except an optional heavy dependency deferred on purpose (its line says
    "deferred")."""
    offenders = []
    for path in source_files("dam_loop", "dam_tools", "scripts"):
        lines = path.read_text().splitlines()
        for func in ast.walk(ast.parse("\n".join(lines), filename=str(path))):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(func)
                              if isinstance(node, (ast.Import, ast.ImportFrom)) and "deferred" not in lines[node.lineno - 1]]
    assert not offenders, offenders


def test_preannotation_job_shares_only_the_model_and_the_format():
    """The bulk job captions like the server because both import dam_model and ls_io, never each other."""
    offenders = [f"{path.relative_to(ROOT)}: {name}" for path in source_files("dam_preannotate")
                 for name in imported_modules(path) if name.split(".")[0] in ("backend", "dam_loop", "dam_tools", "scripts")]
    assert not offenders, offenders
