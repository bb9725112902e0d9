"""Step 6 of the loop (dam-promote): promote a candidate model (an immutable version folder, then ONE pointer flip),
or roll back. The models root's layout and how it is written: dam_loop.models_root.

Usage::

    python -m dam_loop.steps.promote promote --candidate DIR --metrics metrics.json [gate flags] [--version V] [--force]
    python -m dam_loop.steps.promote rollback [--to VERSION]     # default: the pointer's "previous"
    python -m dam_loop.steps.promote status

The decision is the promotion gate's (dam_loop.gate.decide on the evaluate step's per-region scores in
metrics.json; flags in dam_loop.gate_flags: --margin (env PROMOTE_MARGIN), --min-val-regions, --confidence, ...).
The decision (``GateDecision.to_dict()``: promote, outcome, reason, n, means, interval, margin, regression check)
is written into current.json and the version's provenance.json as ``gate``.

Exit codes: 0 done, 11 candidate not better (not promoted; the reason is logged), 2 bad arguments, 1 failure.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from dam_loop.cli import (
    EXIT_NOT_BETTER,
    EXIT_OK,
    BadArguments,
    add_log_level_arg,
    add_models_root_arg,
    run_main,
    step_parser,
)
from dam_loop.gate import GateDecision, decide_from_metrics
from dam_loop.gate_flags import add_gate_args, gate_settings_from_args
from dam_loop.models_root import PROVENANCE_NAME, VERSION_RE, new_version_name, open_store, version_path
from dam_loop.provenance import utc_iso
from dam_model.fileio import read_json
from dam_model.versions import with_lineage

log = logging.getLogger("dam_loop.promote")


def should_promote(candidate_score: float, champion_score: float | None, margin: float) -> bool:
    """The rule before issue 18's gate: True when there is no champion, or the candidate's average beats the
    champion's by MORE than ``margin``. Not used by the loop any more (noise alone passes it on a small validation
    split); kept as the baseline tests/loop/test_gate.py measures the gate against."""
    if champion_score is None:
        return True
    return candidate_score > champion_score + margin


def promote(
    models_root: str | Path,
    candidate_dir: Path,
    metrics: dict[str, Any] | None = None,
    version: str | None = None,
    provenance: dict[str, Any] | None = None,
    gate: GateDecision | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Copy ``candidate_dir`` to versions/<version> (immutable), then flip current.json to it. Returns the new pointer.

    ``provenance`` (merged over the candidate's own provenance.json) is written inside the version folder, completed
    with the base model, its licence and the training data (dam_model.versions.with_lineage).
    ``gate`` (the decision that let the candidate through) goes into both the provenance and the pointer.
    """
    gate_record = gate.to_dict() if isinstance(gate, GateDecision) else gate
    store = open_store(models_root)
    candidate_dir = Path(candidate_dir)
    if not (candidate_dir / "config.json").exists():
        raise BadArguments(f"{candidate_dir} is not a model folder (no config.json)")
    version = version or new_version_name()
    if not VERSION_RE.match(version):
        raise BadArguments(f"invalid version name {version!r} (letters, digits, '.', '_', '-')")
    if store.has_version(version):
        raise BadArguments(f"version {version} already exists in {store}: versions are immutable")
    own = read_json(candidate_dir / "provenance.json") if (candidate_dir / "provenance.json").exists() else {}
    full_provenance = {**own, **(provenance or {}), "version": version, "promoted_metrics": metrics or {}}
    # base model + licence and training data: inherited from the init model's own record when it has one
    init = ((own.get("train_config") or {}).get("extra") or {}).get("init_model")
    init_file = Path(init) / PROVENANCE_NAME if init else None
    init_record = read_json(init_file) if init_file is not None and init_file.is_file() else None
    full_provenance = with_lineage(full_provenance, init_record)
    if gate_record is not None:
        full_provenance["gate"] = gate_record
    store.write_version(version, candidate_dir, full_provenance)
    previous = store.read_pointer()
    pointer = {
        "version": version,
        "path": version_path(version),
        "promoted_at": utc_iso(),
        "previous": previous["version"] if previous else None,
        "metrics": metrics or {},
    }
    if gate_record is not None:
        pointer["gate"] = gate_record
    store.write_pointer(pointer)  # LAST: the one switch readers see
    log.info("promoted %s in %s (previous %s)", version, store, pointer["previous"])
    return pointer


def rollback(models_root: str | Path, to: str | None = None) -> dict[str, Any]:
    """Point current.json at ``to`` (default: the pointer's previous version). Returns the new pointer."""
    store = open_store(models_root)
    current = store.read_pointer()
    target = to or (current or {}).get("previous")
    if not target:
        raise BadArguments("nothing to roll back to: no --to and the pointer has no previous version")
    if not store.has_version(target):
        raise BadArguments(f"version {target} does not exist in {store} (have: {', '.join(store.versions()) or 'none'})")
    pointer = {
        "version": target,
        "path": version_path(target),
        "promoted_at": utc_iso(),
        "previous": current["version"] if current else None,
        "metrics": store.version_metrics(target),
        "rollback": True,
    }
    store.write_pointer(pointer)
    log.info("rolled back %s -> %s in %s", pointer["previous"], target, store)
    return pointer


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = step_parser("python -m dam_loop.steps.promote", __doc__)
    add_models_root_arg(parser)
    add_log_level_arg(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("promote", help="promote a candidate if it beats the champion")
    p.add_argument("--candidate", type=Path, required=True, help="candidate model folder (official layout)")
    p.add_argument("--metrics", type=Path, help="metrics.json of the evaluate step (candidate/champion scores)")
    p.add_argument("--version", help="version name (default v<UTC date-time>)")
    add_gate_args(p)
    p.add_argument("--force", action="store_true", help="promote whatever the gate says (the decision is still recorded)")
    r = sub.add_parser("rollback", help="point current.json at an earlier version")
    r.add_argument("--to", help="version to serve (default: the pointer's previous version)")
    sub.add_parser("status", help="print the pointer and the available versions")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    if args.command == "promote":
        metrics = read_json(args.metrics) if args.metrics else {}
        settings = gate_settings_from_args(args)
        decision = None
        if metrics:
            try:
                decision = decide_from_metrics(metrics, settings)
            except ValueError as exc:
                if not args.force:
                    raise BadArguments(f"{args.metrics}: {exc}") from exc
        elif not args.force:
            raise BadArguments("no --metrics: pass the evaluate step's metrics.json, or --force")
        if decision is not None:
            log.info("gate: %s", decision.reason)
            if not decision.promote and not args.force:
                print(json.dumps({"promoted": False, "gate": decision.to_dict()}, indent=2))
                return EXIT_NOT_BETTER
        record = (decision.to_dict() | {"forced": args.force}) if decision else None
        pointer = promote(args.models_root, args.candidate, metrics=metrics.get("candidate", {}), version=args.version,
                          gate=record)
    elif args.command == "rollback":
        pointer = rollback(args.models_root, args.to)
    else:
        store = open_store(args.models_root)
        pointer = {"current": store.read_pointer(), "versions": store.versions()}
    print(json.dumps(pointer, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_main(run_cli, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
