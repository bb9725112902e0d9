"""The local demo, for machines without Docker or a GPU: ``./manage.sh demo`` (= ``python -m dam_tools.demo``).

Starts, as child processes of this one:
- Label Studio 1.23.2 from its own venv (.venv-ls), data under ``<run dir>/label-studio``;
- moto's S3 server, standing in for MinIO (the bucket receives Label Studio's exported annotations);
- the DAM backend under gunicorn on CPU, with the offline colour-region-growing segmenter for keypoints (no SAM 2
  weights needed), serving what dam_tools.demo_models plans: with an empty cache the `fast` tiny model (trained
  here in about 1.5 minutes, while Label Studio starts), then the better `default` model, trained in the background
  and promoted into the demo's MODELS_ROOT like a nightly promotion (the backend hot-swaps it; model_version
  changes and the tasks are captioned again). ``--model DIR`` serves DIR and builds nothing.
Then creates the demo project (label_config/image.xml, synthetic scenes from the models' training distribution with
brush regions, "what to try" instructions on its first screen), connects the backend in interactive mode, adds the
S3 target storage, runs "Retrieve predictions" so the tasks already show captions, prints a READY line with the URL
and the login, and waits. Ctrl-C stops every child process (no orphans).

A second run reuses the Label Studio data (and its login, kept in ``<run dir>/credentials.json``), the project and
the cached models; ``--fresh`` starts Label Studio from scratch. ``--no-wait`` (alias ``--smoke``) exits after the
setup (no background training).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

LAUNCHED = time.monotonic()  # before the heavy imports below (torch: seconds): READY counts from here

import requests  # noqa: E402

from dam_model.fileio import atomic_write_json  # noqa: E402
from dam_tools.demo_models import BackgroundBuild, ModelPlan, plan_models, promote_tiny, served_figures  # noqa: E402
from dam_tools.local_stack import (ROOT, LabelStudioCredentials, LocalStack, ManagedProcess, StackError,  # noqa: E402
                                   is_healthy, port_is_free)
from dam_tools.ls_api import LabelStudioAPI  # noqa: E402
from dam_tools.progress import default_mode, make_bar, wait_with_bar  # noqa: E402
from dam_tools.provisioning import (DEMO_TASKS, S3Target, backend_env, create_bucket, project_guide,  # noqa: E402
                                    provision_project, synthetic_tasks)
from ls_io.regions import caption_text, region_type  # noqa: E402

PROJECT_TITLE = "DAM demo: describe anything"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ls-port", type=int, default=int(os.environ.get("DEMO_LS_PORT", 8080)),
                        help="Label Studio port (env DEMO_LS_PORT; default 8080)")
    parser.add_argument("--backend-port", type=int, default=int(os.environ.get("DEMO_BACKEND_PORT", 9090)),
                        help="backend port (env DEMO_BACKEND_PORT; default 9090)")
    parser.add_argument("--s3-port", type=int, default=int(os.environ.get("DEMO_S3_PORT", 9000)),
                        help="moto S3 server port (env DEMO_S3_PORT; default 9000, MinIO's)")
    parser.add_argument("--host", default="127.0.0.1", help="address every service binds to (default 127.0.0.1)")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "demo",
                        help="Label Studio data, logs, media cache, models and loop work (default runs/demo)")
    parser.add_argument("--model", type=Path, default=None,
                        help="DAM folder to serve as it is (nothing is built); default: the tiny trained models")
    parser.add_argument("--tasks", type=int, default=DEMO_TASKS,
                        help=f"synthetic tasks in a new demo project (default {DEMO_TASKS})")
    parser.add_argument("--segmenter", choices=["region", "sam2", "none"], default="region",
                        help="keypoints -> mask: region (offline colour region growing, default), sam2 (needs SAM2_CHECKPOINT)")
    parser.add_argument("--batch", type=int, default=2,
                        help="tasks per Retrieve-predictions call (one /predict each; default 2)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="caption length cap of the demo backend, tokens (default 64: the tiny model's captions are short)")
    parser.add_argument("--fresh", action="store_true", help="delete the run dir's Label Studio data first")
    parser.add_argument("--no-wait", "--smoke", dest="no_wait", action="store_true",
                        help="exit (stopping everything) once the demo project is ready")
    parser.add_argument("--progress", choices=["bar", "lines", "off"], default=None,
                        help="progress display: bar (default on a terminal) or lines (default otherwise)")
    return parser.parse_args(argv)


def load_credentials(run_dir: Path, ls_data: Path) -> LabelStudioCredentials:
    """The demo's Label Studio login: reused from credentials.json when its data dir exists, else new."""
    path = run_dir / "credentials.json"
    if ls_data.exists() and path.is_file():
        saved = json.loads(path.read_text())
        return LabelStudioCredentials(username=saved["username"], password=saved["password"], token=saved["token"])
    if ls_data.exists() and any(ls_data.iterdir()):
        raise StackError(f"{ls_data} exists without {path}: the login is unknown; rerun with --fresh")
    username = os.environ.get("LABEL_STUDIO_USERNAME", "admin@example.com")
    password = os.environ.get("LABEL_STUDIO_PASSWORD") or f"demo-{os.urandom(6).hex()}"
    token = os.environ.get("LABEL_STUDIO_USER_TOKEN") or LabelStudioCredentials().token
    creds = LabelStudioCredentials(username=username, password=password, token=token)
    atomic_write_json(path, {"username": username, "password": password, "token": token})
    os.chmod(path, 0o600)
    return creds


def existing_project(api: LabelStudioAPI) -> dict | None:
    reply = api.call("GET", "/api/projects?page_size=100")
    projects = reply.get("results", []) if isinstance(reply, dict) else reply
    return next((p for p in projects if p.get("title") == PROJECT_TITLE), None)


def reconnect(api: LabelStudioAPI, project_id: int, backend_url: str, s3: S3Target) -> int:
    """Point an existing demo project's ML backend and S3 storage at this run's ports; returns the backend id."""
    backends = api.call("GET", f"/api/ml?project={project_id}")
    if backends:
        ml = backends[0]
        if ml.get("url") != backend_url:  # `url` must be in the PATCH body: Label Studio answers 500 without it
            api.call("PATCH", f"/api/ml/{ml['id']}", json={"url": backend_url, "is_interactive": True})
        ml_id = int(ml["id"])
    else:
        ml_id = api.connect_ml_backend(project_id, backend_url, title="DAM captions", interactive=True)
    storages = api.call("GET", f"/api/storages/export/s3?project={project_id}")
    if storages:
        api.call("PATCH", f"/api/storages/export/s3/{storages[0]['id']}", json={"s3_endpoint": s3.endpoint})
    else:
        api.add_s3_target_storage(project_id, s3.bucket, s3.prefix, s3.endpoint, s3.access_key, s3.secret_key)
    return ml_id


def run(args: argparse.Namespace) -> int:
    run_dir = args.run_dir.resolve()
    ls_data = run_dir / "label-studio"
    progress = args.progress or default_mode()
    if args.fresh:
        shutil.rmtree(ls_data, ignore_errors=True)
        (run_dir / "credentials.json").unlink(missing_ok=True)
    for name, port in (("--ls-port", args.ls_port), ("--backend-port", args.backend_port), ("--s3-port", args.s3_port)):
        if not port_is_free(port, args.host):
            raise StackError(f"port {port} ({name}) is in use: choose another with {name}")
    started = LAUNCHED
    creds = load_credentials(run_dir, ls_data)
    label_config = (ROOT / "label_config" / "image.xml").read_text()

    with LocalStack(run_dir, host=args.host, verbose=True) as stack:
        # Ctrl-C and SIGTERM both unwind through the `with`, which stops every child process group.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (nohup, &)
        print(f"==> S3 (moto) on :{args.s3_port}", flush=True)
        s3 = S3Target(endpoint=stack.start_s3(args.s3_port).url)
        create_bucket(s3.endpoint, s3.bucket, s3.access_key, s3.secret_key, s3.region)
        print(f"==> Label Studio on :{args.ls_port} (starts meanwhile; the first start migrates its database)", flush=True)
        ls = stack.start_label_studio(args.ls_port, creds, ls_data, wait=False)
        plan = plan_models(run_dir, args.model, progress)  # the first model trains while Label Studio starts
        background = None
        if plan.background and not args.no_wait:  # low CPU priority: it never slows the captions down much
            background = BackgroundBuild(plan.background, run_dir / "logs" / f"model-{plan.background}.log")
            print(f"==> training the '{plan.background}' model in the background (log {background.log_path})")
        try:
            return serve(args, stack, ls, plan, background, creds, s3, label_config, run_dir, progress, started)
        finally:
            if background is not None:
                background.stop()  # not one of the stack's services: stopped here on every way out


def serve(args: argparse.Namespace, stack: LocalStack, ls: ManagedProcess, plan: ModelPlan,
          background: BackgroundBuild | None, creds: LabelStudioCredentials, s3: S3Target, label_config: str,
          run_dir: Path, progress: str, started: float) -> int:
    """Wait for Label Studio, start the backend, open the project, caption it, print READY, then wait."""
    wait_with_bar("Label Studio starting", 45, lambda: is_healthy(ls), progress)

    print(f"==> backend on :{args.backend_port} serving {plan.version or plan.serve}", flush=True)
    env = backend_env(plan.serve, ls.url, creds.token, run_dir, segmenter=args.segmenter, s3=s3,
                      extra={"MAX_NEW_TOKENS": str(args.max_new_tokens), "MODELS_ROOT": str(plan.models_root)})
    backend = stack.start_backend(args.backend_port, env, wait=False)
    wait_with_bar("backend starting", 15, lambda: is_healthy(backend), progress, timeout_s=180)

    api = LabelStudioAPI(ls.url, creds.token)
    project_id, task_ids = open_project(api, args, label_config, run_dir, backend.url, s3)
    first_captioned = retrieve_all(api, project_id, task_ids, args.batch, progress, started)
    captioned = count_captioned(api, task_ids)
    ready_s = time.monotonic() - started
    print(f"    {captioned}/{len(task_ids)} tasks hold a captioned prediction", flush=True)
    print_banner(args, ls.url, project_id, creds, s3, run_dir, plan, backend.url)
    first = f"{first_captioned:.0f} s" if first_captioned is not None else "none"
    print(f"==> READY in {ready_s:.0f} s (first captioned task after {first}): "
          f"open {ls.url}/projects/{project_id}/data", flush=True)
    if args.no_wait:
        return 0 if captioned else 1
    return wait_forever(stack, background, plan, api, project_id, task_ids, args.batch, backend.url, progress)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def open_project(api: LabelStudioAPI, args: argparse.Namespace, label_config: str, run_dir: Path, backend_url: str,
                 s3: S3Target) -> tuple[int, list[int]]:
    """(project id, task ids) of the demo project: created with its tasks and instructions, or reconnected."""
    found = existing_project(api)
    if found is None:
        print(f"==> creating the demo project ({args.tasks} synthetic tasks)", flush=True)
        tasks = synthetic_tasks(label_config, run_dir / "media", args.tasks)
        info = provision_project(api, PROJECT_TITLE, label_config, tasks, backend_url, s3=s3, guide=project_guide())
        return info.project_id, info.task_ids
    project_id = int(found["id"])
    print(f"==> reusing the demo project {project_id}", flush=True)
    api.call("PATCH", f"/api/projects/{project_id}", json=project_guide())  # older demo projects lack the guide
    reconnect(api, project_id, backend_url, s3)
    return project_id, [int(t["id"]) for t in api.tasks(project_id)]


def retrieve_all(api: LabelStudioAPI, project_id: int, task_ids: list[int], batch: int, progress: str,
                 started: float) -> float | None:
    """Retrieve predictions, one /predict per ``batch`` tasks (each stays under Label Studio's timeout); returns the
    seconds from ``started`` until the first task held a caption (None if none did)."""
    first: float | None = None
    step = max(1, batch)
    bar = make_bar("captioning tasks", len(task_ids), progress, unit="task")
    for start in range(0, len(task_ids), step):
        chunk = task_ids[start:start + step]
        api.retrieve_predictions(project_id, chunk)
        if first is None and count_captioned(api, chunk):
            first = time.monotonic() - started
        bar.update(len(chunk))
    bar.close()
    return first


def count_captioned(api: LabelStudioAPI, task_ids: list[int]) -> int:
    """Tasks with at least one stored prediction holding a non-empty textarea."""
    count = 0
    for task_id in task_ids:
        for prediction in api.predictions(task_id):
            if any(region_type(r) == "textarea" and caption_text(r.get("value") or {})
                   for r in prediction.get("result", [])):
                count += 1
                break
    return count


def print_banner(args: argparse.Namespace, ls_url: str, project_id: int, creds: LabelStudioCredentials,
                 s3: S3Target, run_dir: Path, plan: ModelPlan, backend_url: str) -> None:
    later = (f"\n  better model   '{plan.background}' is training in the background; it is promoted and served "
             "when done" if plan.background and not args.no_wait else "")
    figures = served_figures(plan)
    figures = f"\n  its captions   {figures}" if figures else ""
    print(
        f"""
  Label Studio   {ls_url}/projects/{project_id}/data   (the project's instructions say what to try)
  login          {creds.username} / {creds.password}
  API token      {creds.token}
  ML backend     {backend_url} serving {plan.version or plan.serve}  (provenance and licences: {backend_url}/versions){figures}
  models root    {plan.models_root}{later}
  S3 (moto)      {s3.endpoint} bucket {s3.bucket}/{s3.prefix}/ (submitted annotations land here)
  logs           {run_dir / 'logs'}
  Ctrl-C stops everything.""",
        flush=True,
    )


def served_version(backend_url: str) -> str | None:
    try:
        return requests.get(backend_url + "/health", timeout=5).json().get("model_version")
    except (requests.RequestException, ValueError):
        return None


def swap_in(build: BackgroundBuild, plan: ModelPlan, api: LabelStudioAPI, project_id: int, task_ids: list[int],
            batch: int, backend_url: str, progress: str) -> None:
    """Promote the background model, wait for the backend's hot swap, caption the tasks again."""
    before = served_version(backend_url)
    version = promote_tiny(plan.models_root, build.result(), build.profile)
    print(f"\n==> promoted '{build.profile}' as {version} into {plan.models_root}", flush=True)
    wait_with_bar("backend swapping models", 10, lambda: served_version(backend_url) == version, progress,
                  timeout_s=300)
    retrieve_all(api, project_id, task_ids, batch, progress, time.monotonic())
    print(f"==> model_version {before} -> {version}: the tasks now hold its captions too (the editor's "
          "Predictions tab lists both)", flush=True)


def wait_forever(stack: LocalStack, build: BackgroundBuild | None, plan: ModelPlan, api: LabelStudioAPI,
                 project_id: int, task_ids: list[int], batch: int, backend_url: str, progress: str) -> int:
    """Sleep until Ctrl-C, following the background build (then swapping its model in); if a service dies
    meanwhile, print its log tail and exit 1."""
    bar, phase = None, None
    try:
        while True:
            time.sleep(1.0)
            for service in stack.services:
                if not service.alive():
                    print(f"{service.name} exited ({service.process.returncode}); log tail:\n{service.log_tail()}")
                    return 1
            if build is None:
                continue
            state = build.progress()
            if state is not None:
                if state[0] != phase:
                    if bar is not None:
                        bar.close()
                    phase = state[0]
                    bar = make_bar(f"background: {phase}", state[2], progress, every_s=30.0)
                bar.update(state[1] - bar.n)
            code = build.poll()
            if code is None:
                continue
            if bar is not None:
                bar.close()
            if code == 0:
                swap_in(build, plan, api, project_id, task_ids, batch, backend_url, progress)
            else:
                print(f"background build of '{build.profile}' failed ({code}); still serving {plan.version}. "
                      f"Log: {build.log_path}", flush=True)
            build = None
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        if build is not None:
            build.stop()  # its checkpoints stay: the next demo resumes the build


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; everything stopped", flush=True)
        return 130
    except StackError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
