"""Command-line flags of the promotion gate, generated from GateSettings' fields and their docs (as the training
flags are from TrainConfig), with environment defaults.

    --min-val-regions (GATE_MIN_VAL_REGIONS)    --margin (PROMOTE_MARGIN)       --confidence (GATE_CONFIDENCE)
    --n-resamples (GATE_RESAMPLES)              --gate-seed (GATE_SEED)         --regression-margin (REGRESSION_MARGIN)
    --replay-ratio (REPLAY_RATIO): a training setting; the train step adds it (add_replay_arg), the gate records it.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from dam_loop.cli import BadArguments, env_default
from dam_loop.gate import GateSettings
from dam_model.train.config import field_docs

#: field -> (flag, environment variable); PROMOTE_MARGIN keeps the name the loop always had
FLAGS: dict[str, tuple[str, str]] = {
    "min_val_regions": ("--min-val-regions", "GATE_MIN_VAL_REGIONS"),
    "margin": ("--margin", "PROMOTE_MARGIN"),
    "confidence": ("--confidence", "GATE_CONFIDENCE"),
    "n_resamples": ("--n-resamples", "GATE_RESAMPLES"),
    "seed": ("--gate-seed", "GATE_SEED"),
    "regression_margin": ("--regression-margin", "REGRESSION_MARGIN"),
    "replay_ratio": ("--replay-ratio", "REPLAY_RATIO"),
}
TRAINING_FIELDS = ("replay_ratio",)  # flags the train step owns (nightly gets them through add_train_flags)


def dest(name: str) -> str:
    """The namespace attribute of a field's flag: --gate-seed must not clash with training's --seed."""
    return FLAGS[name][0][2:].replace("-", "_")


def _add(group: Any, name: str) -> None:
    field = {f.name: f for f in dataclasses.fields(GateSettings)}[name]
    flag, env = FLAGS[name]
    doc = " ".join(field_docs(GateSettings).get(name, "").split())
    # A string default is parsed by argparse with the flag's type, so a bad environment value is a usage error.
    group.add_argument(flag, dest=dest(name), type=type(field.default), default=env_default(env, field.default),
                       help=f"{doc} (env {env}; default {field.default})")


def add_gate_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The gate's flags (all GateSettings fields but the training ones)."""
    group = parser.add_argument_group("promotion gate (dam_loop.gate)")
    for name in FLAGS:
        if name not in TRAINING_FIELDS:
            _add(group, name)
    return group


def add_replay_arg(group: Any) -> None:
    """--replay-ratio (the train step's; documented on GateSettings.replay_ratio)."""
    _add(group, "replay_ratio")


def gate_settings_from_args(args: argparse.Namespace) -> GateSettings:
    """GateSettings of the parsed flags (fields without a flag in ``args`` keep their defaults)."""
    values = {name: getattr(args, dest(name)) for name in FLAGS if hasattr(args, dest(name))}
    try:
        return GateSettings(**values)
    except ValueError as exc:
        raise BadArguments(str(exc)) from exc


def replay_ratio_argv(args: argparse.Namespace) -> list[str]:
    """--replay-ratio as command-line words, for the training subprocess."""
    return [FLAGS["replay_ratio"][0], repr(float(args.replay_ratio))]
