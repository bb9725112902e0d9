"""The nightly self-training loop: pull -> build -> pseudo-label -> train -> evaluate -> promote, one run at a time.

Run (docker-compose schedules exactly this)::

    python -m scripts.nightly --work-root /data/loop --models-root /data/models [--max-steps 500]

Environment (every option also has a flag; see --help):
    S3_ENDPOINT_URL, S3_BUCKET, S3_PREFIX, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the Label Studio export
    LOOP_WORK_ROOT (snapshots, datasets, training runs, logs), MODELS_ROOT (versions/ + current.json)
    LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, MEDIA_ALLOWED_HOSTS, LOCAL_FILES_ROOT      image fetching (backend/media.py)
    INIT_MODEL (start model before the first promotion; later rounds fine-tune the serving version), PROMOTE_MARGIN, VAL_FRACTION, PSEUDO_*, TRAIN_*, DEVICE
    TRAIN_LAUNCHER (e.g. "accelerate launch"; default: this Python, one process)

Exit codes:
    0  a new version was promoted            10  nothing new in the bucket since the last completed run
    11 candidate not better than champion    12  the data yields no training or validation samples
    2  bad arguments / configuration         3   another run holds the lock (<work root>/nightly.lock)
    1  failure (see runs/<run id>/nightly.log)

Each run writes ``<work root>/runs/<run id>/nightly.log`` and ``summary.json``. Training runs in a subprocess whose
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
from pathlib import Path
from typing import Any

from scripts.loop_common import (
    EXIT_BAD_ARGS,
    EXIT_FAILURE,
    EXIT_NOT_BETTER,
    EXIT_NOTHING_NEW,
    EXIT_PROMOTED,
    BadArguments,
    FileLock,
    LoopError,
    NoSamples,
    add_log_level_arg,
    add_models_root_arg,
    add_work_root_arg,
    atomic_write_json,
    env_bool,
    env_default,
    env_float,
    fraction,
    new_run_id,
    read_json,
    setup_logging,
    utc_iso,
)

log = logging.getLogger("scripts.nightly")

TRAIN_OPTIONS = (  # nightly flags handed on to `python -m scripts.train`
    "max_steps", "epochs", "lr", "batch_size", "grad_accum_steps", "warmup_steps", "seed", "lora_rank", "trainable",
    "checkpoint_every", "log_every", "resume", "device", "dtype", "num_threads",
)


def build_parser() -> argparse.ArgumentParser:
    from scripts.evaluate import add_eval_args
    from scripts.pseudo_label import add_pseudo_args
    from scripts.pull import add_source_args
    from scripts.train import add_train_args

    parser = argparse.ArgumentParser(
        prog="python -m scripts.nightly", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_work_root_arg(parser)
    add_models_root_arg(parser)
    add_source_args(parser)
    g = parser.add_argument_group("loop")
    g.add_argument("--val-fraction", type=fraction, default=env_float("VAL_FRACTION", 0.2), help="frozen validation share (env VAL_FRACTION)")
    g.add_argument("--image-key", default=env_default("IMAGE_KEY"), help="task data key of the image (env IMAGE_KEY)")
    g.add_argument("--local-files-root", default=env_default("LOCAL_FILES_ROOT"), help="allowed root of local image paths")
    g.add_argument("--margin", type=float, default=env_float("PROMOTE_MARGIN", 0.0), help="promotion margin on the score (env PROMOTE_MARGIN)")
    g.add_argument("--pseudo-label", action=argparse.BooleanOptionalAction, default=env_bool("PSEUDO_LABEL", True),
                   help="run the pseudo-labelling stage (env PSEUDO_LABEL; default on)")
    g.add_argument("--train-launcher", default=env_default("TRAIN_LAUNCHER", ""),
                   help='command prefix for training, e.g. "accelerate launch" (env TRAIN_LAUNCHER; default: this Python)')
    g.add_argument("--force", action="store_true", help="run even when nothing is new since the last completed run")
    g.add_argument("--version", help="name of the promoted version (default v<UTC date-time>)")
    add_pseudo_args(parser)
    add_train_args(parser)
    add_eval_args(parser)
    add_log_level_arg(parser)
    return parser


def train_command(args: argparse.Namespace, dataset: Path, init: Path) -> list[str]:
    """argv of the training subprocess (module form so `accelerate launch -m` and plain Python both work)."""
    launcher = shlex.split(args.train_launcher) if args.train_launcher else [sys.executable]
    argv = launcher + ["-m", "scripts.train", "--work-root", str(args.work_root), "--models-root", str(args.models_root),
                       "--dataset", str(dataset), "--init", str(init), "--log-level", args.log_level]
    for name in TRAIN_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    if args.gradient_checkpointing is not None:
        argv.append("--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing")
    if args.no_pseudo:
        argv.append("--no-pseudo")
    return argv


def run_training(argv: list[str], log_path: Path) -> Path:
    """Run training in a subprocess, stream its output into the run log, return the candidate folder."""
    log.info("train: %s", " ".join(shlex.quote(a) for a in argv))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    candidate = None
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            logging.getLogger("scripts.train.subprocess").info("%s", line)
            if line.startswith('{"candidate":'):
                candidate = json.loads(line)["candidate"]
        code = proc.wait()
    if code != 0 or candidate is None:
        if code == EXIT_BAD_ARGS:
            raise BadArguments(f"training refused its arguments (exit {code}); see {log_path}")
        raise LoopError(f"training failed with exit code {code}; see {log_path}")
    return Path(candidate)


def run(args: argparse.Namespace, run_dir: Path) -> tuple[int, dict[str, Any]]:
    """One loop round (the caller holds the lock). Returns (exit code, summary)."""
    from scripts.build import build_dataset
    from scripts.evaluate import evaluate
    from scripts.promote import champion_dir, promote, should_promote
    from scripts.pseudo_label import pseudo_label, sam2_settings
    from scripts.pull import make_s3_client, pull, source_from_args
    from scripts.train import resolve_init

    work_root = Path(args.work_root)
    summary: dict[str, Any] = {"run_id": run_dir.name, "started_at": utc_iso(), "steps": {}}
    timings = summary.setdefault("seconds", {})

    def step(name: str) -> float:
        log.info("=== %s", name)
        return time.time()

    t = step("pull")
    source = source_from_args(args)
    pulled = pull(make_s3_client(source), source, work_root)
    summary["steps"]["pull"] = pulled.summary()
    timings["pull"] = round(time.time() - t, 2)
    state_path = work_root / "state.json"
    state = read_json(state_path) if state_path.exists() else {}
    summary["snapshot_id"] = pulled.snapshot_id
    if pulled.snapshot_id is None or (not args.force and pulled.snapshot_id == state.get("last_snapshot")):
        log.info("nothing new since snapshot %s", state.get("last_snapshot"))
        return EXIT_NOTHING_NEW, summary

    t = step("build")
    dataset = build_dataset(work_root, pulled.snapshot_id, val_fraction=args.val_fraction, image_key=args.image_key,
                            local_files_root=args.local_files_root)
    counts = read_json(dataset / "dataset.json")["counts"]
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
        summary["steps"]["pseudo_label"] = pseudo_label(
            dataset, champion or init, args.min_logprob, args.min_mask_score, args.max_fraction, args.device,
            args.pseudo_max_new_tokens, sam2_settings(args),
        )
        timings["pseudo_label"] = round(time.time() - t, 2)

    t = step("train")
    candidate = run_training(train_command(args, dataset, init), run_dir / "nightly.log")
    summary["steps"]["train"] = {"candidate": str(candidate)}
    timings["train"] = round(time.time() - t, 2)

    t = step("evaluate")
    # The champion is what serves now; before the first promotion it is the starting model.
    metrics = evaluate(candidate, champion or init, dataset, run_dir / "eval", device=args.device,
                       max_samples=args.eval_max_samples, max_new_tokens=args.eval_max_new_tokens,
                       report_samples=args.report_samples, judge=args.judge)
    summary["steps"]["evaluate"] = {"candidate": metrics["candidate"], "champion": metrics["champion"],
                                    "score_name": metrics["score_name"], "report": str(run_dir / "eval" / "report.html")}
    timings["evaluate"] = round(time.time() - t, 2)

    t = step("promote")
    cand_score, champ_score = metrics["candidate"]["score"], metrics["champion"]["score"]
    if not should_promote(cand_score, champ_score, args.margin):
        log.info("not promoted: candidate %s %.4f vs champion %.4f (margin %.4f)", metrics["score_name"], cand_score,
                 champ_score, args.margin)
        summary["steps"]["promote"] = {"promoted": False}
        return EXIT_NOT_BETTER, summary
    pointer = promote(
        args.models_root, candidate, metrics={"score_name": metrics["score_name"], **metrics["candidate"]},
        version=args.version,
        provenance={"run_id": run_dir.name, "snapshot_id": pulled.snapshot_id, "evaluation": metrics,
                    "champion": str(champion) if champion else None},
    )
    summary["steps"]["promote"] = {"promoted": True, **pointer}
    timings["promote"] = round(time.time() - t, 2)
    return EXIT_PROMOTED, summary


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for bad arguments, 0 for --help
        return int(exc.code or 0)
    work_root = Path(args.work_root)
    run_id = new_run_id()
    run_dir = work_root / "runs" / run_id
    setup_logging(args.log_level, run_dir / "nightly.log")
    lock = FileLock(work_root / "nightly.lock")
    try:
        lock.acquire()
    except LoopError as exc:
        log.error("%s", exc)
        return exc.exit_code
    code, summary = EXIT_FAILURE, {"run_id": run_id}
    try:
        log.info("nightly run %s (work root %s, models root %s)", run_id, work_root, args.models_root)
        code, summary = run(args, run_dir)
        if code in (EXIT_PROMOTED, EXIT_NOT_BETTER):
            atomic_write_json(work_root / "state.json", {"last_snapshot": summary["snapshot_id"], "last_run": run_id,
                                                         "last_exit_code": code, "finished_at": utc_iso()})
    except LoopError as exc:
        log.error("%s", exc)
        code = exc.exit_code
    except Exception:
        log.exception("nightly run failed")
        code = EXIT_FAILURE
    finally:
        summary.update(exit_code=code, finished_at=utc_iso())
        atomic_write_json(run_dir / "summary.json", summary)
        lock.release()
        log.info("nightly run %s finished with exit code %d", run_id, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
