"""The demo's models: which one to serve at once, which one to train meanwhile, and how the backend gets each.

With an empty cache the demo cannot wait for the `default` tiny model (~12 minutes on 2 cores), so it
1. builds the `fast` profile in the foreground (about 1.5 minutes) and promotes it into the demo's MODELS_ROOT:
   ``versions/<v>/`` + ``current.json``, exactly what the nightly's promote step writes;
2. builds `default` (fine-tuned from `fast`) in a background process at low CPU priority;
3. promotes `default` when it is done: the backend's poller sees current.json change and hot-swaps, and the
   tasks' model_version changes, which is the product's own story (a better model, promoted, served).
A cached `default` is served at once. ``--model DIR`` serves DIR and never builds a model.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dam_loop.models_root import LocalModelStore
from dam_loop.steps.promote import promote, rollback
from dam_tools import build_tiny_model as tiny
from dam_tools.local_stack import ROOT, StackError
from dam_tools.progress import read_progress

FIRST_PROFILE = "fast"
BEST_PROFILE = "default"


@dataclass
class ModelPlan:
    """What the demo serves: ``serve`` (a model folder) as ``version`` in ``models_root``, and the profile still to
    build in the background (None: nothing better to wait for)."""

    serve: Path
    models_root: Path
    version: str | None
    background: str | None = None


def version_name(profile: str) -> str:
    """"tiny-<profile>-<8 hex of its cache key>": the same build always promotes under the same name."""
    key = tiny.cache_key(tiny.PROFILES[profile])
    return f"tiny-{profile}-{key.rsplit('-', 1)[-1][:8]}"


def own_models_root(run_dir: Path, model_dir: Path) -> Path:
    """The MODELS_ROOT of a ``--model DIR`` run: its own folder, so no pointer left by a tiny-model run outranks DIR."""
    digest = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:8]
    return Path(run_dir) / f"models-{digest}"


def promote_tiny(models_root: Path, model_dir: Path, profile: str) -> str:
    """Promote a tiny build into ``models_root`` (idempotent): a new immutable version + pointer flip, a flip back to
    an existing version, or nothing when it is already served. Returns its version name."""
    version = version_name(profile)
    store = LocalModelStore(models_root)
    pointer = store.read_pointer()
    if pointer and pointer.get("version") == version:
        return version
    if store.has_version(version):
        rollback(models_root, to=version)
        return version
    report_path = Path(model_dir).parent / "eval_report.json"
    metrics = tiny.headline_metrics(json.loads(report_path.read_text())) if report_path.is_file() else {}
    promote(models_root, Path(model_dir), metrics=metrics, version=version, provenance={"promoted_by": "dam_tools.demo"})
    return version


def plan_models(run_dir: Path, model: Path | None, progress: str) -> ModelPlan:
    """Decide (and, for an empty cache, build the first model) what the demo serves; see the module docstring."""
    run_dir = Path(run_dir)
    if model is not None:  # the user's model: served as given, nothing is built
        if not (Path(model) / "config.json").is_file():
            raise StackError(f"--model {model} is not a DAM folder (no config.json)")
        return ModelPlan(serve=Path(model), models_root=own_models_root(run_dir, Path(model)), version=None)
    models_root = run_dir / "models"
    store = LocalModelStore(models_root)
    pointer = store.read_pointer() or {}
    served = str(pointer.get("version", ""))
    if served and not served.startswith("tiny-"):  # trained in an earlier demo (Start Training): keep serving it
        return ModelPlan(serve=store.local_path(served), models_root=models_root, version=served)
    best_version = version_name(BEST_PROFILE)
    if store.has_version(best_version):  # promoted by an earlier run, even if the cache was emptied since
        promote_tiny(models_root, store.local_path(best_version), BEST_PROFILE)
        return ModelPlan(serve=store.local_path(best_version), models_root=models_root, version=best_version)
    best = tiny.cached_model(BEST_PROFILE)
    if best is not None:
        return ModelPlan(serve=best, models_root=models_root, version=promote_tiny(models_root, best, BEST_PROFILE))
    first = tiny.cached_model(FIRST_PROFILE)
    if first is None:
        print(f"==> training the first model ('{FIRST_PROFILE}' profile: about 1.5 min on 2 cores; "
              f"'{BEST_PROFILE}' follows in the background)", flush=True)
        first = tiny.ensure_tiny_model(FIRST_PROFILE, progress=progress)
    return ModelPlan(serve=first, models_root=models_root, version=promote_tiny(models_root, first, FIRST_PROFILE),
                     background=BEST_PROFILE)


def served_figures(plan: ModelPlan) -> str:
    """"colour 100 %, size 79 %, shape 31 % right on held-out scenes" for a promoted tiny model, else ""."""
    pointer = LocalModelStore(plan.models_root).read_pointer() or {}
    metrics = pointer.get("metrics") or {}
    if pointer.get("version") != plan.version or "shape_right" not in metrics:
        return ""
    parts = [f"{name} {metrics[f'{key}_right'] * 100:.0f} %" for key, name in
             (("color", "colour"), ("size", "size"), ("shape", "shape")) if f"{key}_right" in metrics]
    return ", ".join(parts) + " right on held-out scenes"


class BackgroundBuild:
    """``python -m dam_tools.build_tiny_model --profile P --progress lines`` in its own process group at low CPU
    priority (clicks on the backend stay quick), its output in ``log_path``; followed through its progress lines."""

    def __init__(self, profile: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.profile = profile
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = ["nice", "-n", "10", sys.executable, "-m", "dam_tools.build_tiny_model", "--profile", profile,
                "--progress", "lines"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, cwd=str(ROOT), env=dict(env or os.environ), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def progress(self) -> tuple[str, int, int] | None:
        """(phase, done, total) of the last progress line, or None before the first."""
        return read_progress(self.log_path)

    def poll(self) -> int | None:
        return self.process.poll()

    def result(self) -> Path:
        """The built model folder (after a 0 exit): the cache now holds it."""
        built = tiny.cached_model(self.profile)
        if built is None:
            raise StackError(f"background build of '{self.profile}' exited without a model; log {self.log_path}")
        return built

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the build's process group (its checkpoints stay: the next demo resumes it), SIGKILL after grace_s."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass
