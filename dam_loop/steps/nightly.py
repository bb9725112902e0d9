"""The nightly self-training loop (dam-nightly): pull -> build -> pseudo-label -> train -> evaluate -> promote, one
run at a time. The orchestrator: it calls the other steps' public run functions (training in a subprocess).

Run (docker-compose schedules exactly this)::

    python -m dam_loop.steps.nightly --work-root /data/loop --models-root /data/models [--max-steps 500]

Environment (every option also has a flag; see --help):
    S3_ENDPOINT_URL, S3_BUCKET, S3_PREFIX, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the Label Studio export
    LOOP_WORK_ROOT (snapshots, datasets, training runs, logs), MODELS_ROOT (versions/ + current.json)
    LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, MEDIA_ALLOWED_HOSTS, LOCAL_FILES_ROOT      media fetching (ls_io.media)
    INIT_MODEL (start model before the first promotion; later rounds fine-tune the serving version), VAL_FRACTION, PSEUDO_*, TRAIN_*, DEVICE
    PROMOTE_MARGIN, GATE_*, REGRESSION_MARGIN (the promotion gate, dam_loop.gate_flags), REPLAY_RATIO (training)
    REGRESSION_SET, REGRESSION_SYNTHETIC_SCENES, REGRESSION_VAL_REGIONS (the frozen regression set)
    KPI_PREDICTIONS (where the learning-from-edits KPIs find the served predictions)
    TRAIN_LAUNCHER (e.g. "accelerate launch"; default: this Python, one process)

Exit codes:
    0  a new version was promoted            10  nothing new in the bucket since the last completed run
    11 not promoted (the gate's reason)       12  the data yields no training or validation samples
    2  bad arguments / configuration         3   another run holds the lock (<work root>/nightly.lock)
    1  failure (see runs/<run id>/nightly.log)

The round: pull; KPIs of the annotators' edits (nightly_kpis: <work root>/kpis.json); build; pseudo-label (when on); train
(with replay of earlier nights' data); evaluate candidate and champion on the validation split and on the frozen
regression set (dam_loop.regression_set, made or topped up first); the promotion gate (dam_loop.gate) decides;
promote or not (exit 11, the gate's reason logged and in summary.json); the report (nightly_report).

Each run writes ``<work root>/runs/<run id>/nightly.log``, ``summary.json`` (with ``gate``: the decision, its
interval and n) and ``nightly.html`` (also copied to ``<work root>/nightly.html``). Training runs in a subprocess whose
output folder is stable for a given snapshot and configuration, so a run that died during training resumes from its
last checkpoint the next time. A run only counts as done (state.json) once it promoted or decided not to.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dam_loop.cli import (
    EXIT_BAD_ARGS,
    EXIT_NOT_BETTER,
    EXIT_NOTHING_NEW,
    EXIT_PROMOTED,
    BadArguments,
    LoopError,
    NoSamples,
    add_log_level_arg,
    add_models_root_arg,
    add_work_root_arg,
    env_bool,
    env_default,
    guard,
    setup_logging,
    step_parser,
)
from dam_loop.dataset import read_info
from dam_loop.gate import GateDecision, decide_from_metrics
from dam_loop.gate_flags import add_gate_args, gate_settings_from_args
from dam_loop.lock import FileLock
from dam_loop.models_root import champion_dir, open_store, resolve_init
from dam_loop.provenance import new_run_id, utc_iso
from dam_loop.regression_set import add_regression_args, ensure_regression_set, regression_folder
from dam_loop.steps import build, evaluate, nightly_kpis, nightly_report, promote, pseudo_label, pull, train
from dam_model.fileio import atomic_write_json, read_json
from dam_model.versions import KPIS_NAME

log = logging.getLogger("dam_loop.nightly")
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the training subprocess runs `-m dam_loop.steps.train` from here


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser("python -m dam_loop.steps.nightly", __doc__)
    add_work_root_arg(parser)
    add_models_root_arg(parser)
    pull.add_source_args(parser)
    g = parser.add_argument_group("loop")
    build.add_build_args(g)
    # Off by default: the ablation (dam_tools.pseudo_ablation) measured no gain whose interval clears 0.
    g.add_argument("--pseudo-label", action=argparse.BooleanOptionalAction, default=env_bool("PSEUDO_LABEL", False),
                   help="run the pseudo-labelling stage (env PSEUDO_LABEL; default off, see README 'Measured')")
    g.add_argument("--train-launcher", default=env_default("TRAIN_LAUNCHER", ""),
                   help='command prefix for training, e.g. "accelerate launch" (env TRAIN_LAUNCHER; default: this Python)')
    g.add_argument("--force", action="store_true", help="run even when nothing is new since the last completed run")
    g.add_argument("--version", help="name of the promoted version (default v<UTC date-time>)")
    g.add_argument("--force-promote", action="store_true",
                   help="promote whatever the gate decides (bootstrapping a first version, tests); the decision is "
                        "still computed and recorded with forced: true")
    pseudo_label.add_pseudo_args(parser)
    train.add_train_flags(parser)
    evaluate.add_eval_args(parser)
    add_gate_args(parser)
    add_regression_args(parser)
    nightly_kpis.add_kpi_args(parser)
    add_log_level_arg(parser)
    return parser


def train_command(args: argparse.Namespace, dataset: Path, init: Path | str) -> list[str]:
    """argv of the training subprocess: the launcher (default: this Python) + the train step with nightly's flags."""
    launcher = shlex.split(args.train_launcher) if args.train_launcher else [sys.executable]
    return train.command(launcher, args, dataset, init)


def run_training(argv: list[str], log_path: Path) -> Path:
    """Run training in a subprocess, stream its output into the run log, return the candidate folder."""
    log.info("train: %s", " ".join(shlex.quote(a) for a in argv))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    candidate = None
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=PACKAGE_PARENT) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            logging.getLogger("dam_loop.train.subprocess").info("%s", line)
            if line.startswith('{"candidate":'):
                candidate = json.loads(line)["candidate"]
        code = proc.wait()
    if code != 0 or candidate is None:
        if code == EXIT_BAD_ARGS:
            raise BadArguments(f"training refused its arguments (exit {code}); see {log_path}")
        raise LoopError(f"training failed with exit code {code}; see {log_path}")
    return Path(candidate)


def learning_from_edits(args: argparse.Namespace, work_root: Path, snapshot_id: str) -> dict[str, Any]:
    """The KPI step; a failure is recorded, never fatal (the KPIs describe the round, they do not gate it)."""
    try:
        record = nightly_kpis.update_kpis(work_root, snapshot_id, args.kpi_predictions, args.label_studio_url)
    except Exception as exc:  # Label Studio down, a bad answer, ...: train anyway
        log.warning("KPIs not updated: %s: %s", type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    published = None
    if args.models_root:  # beside the pointer, where the backend reads them (GET /kpis, /metrics)
        try:
            store = open_store(args.models_root)
            store.write_kpis(record)
            published = f"{str(store).rstrip('/')}/{KPIS_NAME}"
        except Exception as exc:  # the models root unreachable: the KPIs stay in the work root
            log.warning("KPIs not published to %s: %s: %s", args.models_root, type(exc).__name__, exc)
    return {"file": str(work_root / nightly_kpis.KPI_FILE), "published": published, "predictions": record["predictions"],
            **record["overall"]}


def run(args: argparse.Namespace, run_dir: Path, summary: dict[str, Any]) -> int:
    """One loop round (the caller holds the lock); fills ``summary`` as the steps finish. Returns the exit code."""
    work_root = Path(args.work_root)
    summary.update(started_at=utc_iso(), steps={})
    timings = summary.setdefault("seconds", {})
    settings = gate_settings_from_args(args)  # bad gate flags fail before any work
    summary["gate_settings"] = asdict(settings)

    def step(name: str) -> float:
        log.info("=== %s", name)
        return time.time()

    t = step("pull")
    source = pull.source_from_args(args)
    pulled = pull.pull(pull.source_client(source), source, work_root)
    summary["steps"]["pull"] = pulled.summary()
    timings["pull"] = round(time.time() - t, 2)
    state_path = work_root / "state.json"
    state = read_json(state_path) if state_path.exists() else {}
    summary["snapshot_id"] = pulled.snapshot_id
    if pulled.snapshot_id is None or (not args.force and pulled.snapshot_id == state.get("last_snapshot")):
        log.info("nothing new since snapshot %s", state.get("last_snapshot"))
        return EXIT_NOTHING_NEW

    if args.kpi_predictions != "off":
        t = step("kpis")
        summary["steps"]["kpis"] = learning_from_edits(args, work_root, pulled.snapshot_id)
        timings["kpis"] = round(time.time() - t, 2)

    t = step("build")
    dataset = build.build_dataset(work_root, pulled.snapshot_id, val_fraction=args.val_fraction,
                                  image_key=args.image_key, local_files_root=args.local_files_root)
    counts = read_info(dataset)["counts"]
    summary["steps"]["build"] = {"dataset": str(dataset), **counts}
    timings["build"] = round(time.time() - t, 2)
    n_train = counts["train"] + counts.get("video_train", 0)  # image regions + video tracks
    n_val = counts["val"] + counts.get("video_val", 0)
    if n_train == 0 or n_val == 0:
        raise NoSamples(f"dataset {dataset} has {n_train} training and {n_val} validation samples (images + videos)")

    champion = champion_dir(args.models_root)
    init = resolve_init(args.init, args.models_root)  # --init, else the champion, else INIT_MODEL
    summary["champion"] = str(champion) if champion else None
    summary["init"] = str(init)

    if args.pseudo_label and args.max_fraction > 0:
        t = step("pseudo-label")
        summary["steps"]["pseudo_label"] = pseudo_label.pseudo_label(
            dataset, champion or init, args.min_logprob, args.min_mask_score, args.max_fraction, args.device,
            args.pseudo_max_new_tokens, pseudo_label.sam2_settings(args),
        )
        timings["pseudo_label"] = round(time.time() - t, 2)

    t = step("train")
    candidate = run_training(train_command(args, dataset, init), run_dir / "nightly.log")
    summary["steps"]["train"] = {"candidate": str(candidate)}
    timings["train"] = round(time.time() - t, 2)

    t = step("evaluate")
    regression_dir = regression_folder(args, work_root)
    if regression_dir is not None:
        regression_dir = ensure_regression_set(regression_dir, dataset, args.regression_synthetic_scenes,
                                               args.regression_val_regions)
    # The champion is what serves now; before the first promotion it is the starting model.
    metrics = evaluate.evaluate(candidate, champion or init, dataset, run_dir / "eval", device=args.device,
                                max_samples=args.eval_max_samples, max_new_tokens=args.eval_max_new_tokens,
                                report_samples=args.report_samples, judge=args.judge, regression_dir=regression_dir,
                                gate_settings=settings)
    summary["steps"]["evaluate"] = {"candidate": metrics["candidate"], "champion": metrics["champion"],
                                    "score_name": metrics["score_name"], "report": str(run_dir / "eval" / "report.html"),
                                    "regression_set": str(regression_dir) if regression_dir else None,
                                    "regression_n": (metrics.get("regression") or {}).get("n", 0)}
    timings["evaluate"] = round(time.time() - t, 2)

    t = step("promote")
    decision = decide_from_metrics(metrics, settings)  # the same decision evaluate recorded in metrics.json
    code = decide_and_promote(args, decision, candidate, metrics, summary, run_dir, champion)
    timings["promote"] = round(time.time() - t, 2)

    t = step("report")
    accuracy = nightly_report.category_accuracy(metrics, summary["steps"]["promote"]["promoted"])
    summary["category_accuracy"] = accuracy
    try:
        summary["report"] = str(nightly_report.write_report(
            work_root, run_dir, summary["gate"], metrics, dataset,
            nightly_report.category_history(work_root, run_dir.name, accuracy), nightly_kpis.read_kpis(work_root),
            args.eval_max_samples))
    except Exception as exc:  # the decision is made (and maybe promoted): a broken page must not undo the round
        log.warning("nightly.html not written: %s: %s", type(exc).__name__, exc)
        summary["report"] = {"error": f"{type(exc).__name__}: {exc}"}
    timings["report"] = round(time.time() - t, 2)
    return code


def decide_and_promote(args: argparse.Namespace, decision: GateDecision, candidate: Path, metrics: dict[str, Any],
                       summary: dict[str, Any], run_dir: Path, champion: Path | None) -> int:
    """Promote when the gate says so (or --force-promote); record the decision; EXIT_PROMOTED or EXIT_NOT_BETTER."""
    record = decision.to_dict() | {"forced": bool(args.force_promote and not decision.promote)}
    summary["gate"] = record
    if not decision.promote and not args.force_promote:
        log.info("%s", decision.reason)
        summary["steps"]["promote"] = {"promoted": False, "outcome": decision.outcome, "reason": decision.reason}
        return EXIT_NOT_BETTER
    if not decision.promote:
        log.warning("--force-promote: promoting although the gate said: %s", decision.reason)
    pointer = promote.promote(
        args.models_root, candidate, metrics={"score_name": metrics["score_name"], **metrics["candidate"]},
        version=args.version, gate=record,
        provenance={"run_id": run_dir.name, "snapshot_id": summary["snapshot_id"], "evaluation": metrics,
                    "champion": str(champion) if champion else None, "gate_settings": summary["gate_settings"]},
    )
    log.info("%s", decision.reason if decision.promote else "promoted (forced)")
    summary["steps"]["promote"] = {"promoted": True, **pointer}
    return EXIT_PROMOTED


def locked_run(args: argparse.Namespace, run_dir: Path) -> int:
    """Take the lock (LockedError when another run holds it), run one round, record how it ended."""
    work_root = Path(args.work_root)
    with FileLock(work_root / "nightly.lock"):
        log.info("nightly run %s (work root %s, models root %s)", run_dir.name, work_root, args.models_root)
        summary: dict[str, Any] = {"run_id": run_dir.name}
        code = guard(lambda: run(args, run_dir, summary), "nightly run")
        if code in (EXIT_PROMOTED, EXIT_NOT_BETTER):
            atomic_write_json(work_root / "state.json", {"last_snapshot": summary["snapshot_id"], "last_run": run_dir.name,
                                                         "last_exit_code": code, "finished_at": utc_iso()})
        summary.update(exit_code=code, finished_at=utc_iso())
        atomic_write_json(run_dir / "summary.json", summary)
        log.info("nightly run %s finished with exit code %d", run_dir.name, code)
        return code


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for bad arguments, 0 for --help
        return int(exc.code or 0)
    run_dir = Path(args.work_root) / "runs" / new_run_id()
    setup_logging(args.log_level, run_dir / "nightly.log")
    return guard(lambda: locked_run(args, run_dir), "nightly run")


if __name__ == "__main__":
    raise SystemExit(main())
