"""Command-line flags of training, generated once from TrainConfig, and the `python -m dam_model train` command.

Every command that trains (this one, the loop's train step, the nightly that forwards to it) calls:

    add_train_args(parser, defaults={"checkpoint_every": 50})   # one flag per TrainConfig field, help = its doc
    cfg = train_config_from_args(args, out_dir=..., extra=...)  # TrainConfig from the flags the user gave
    argv = train_args_to_argv(args)                             # the same flags, to hand on to a subprocess

A flag the user did not give stays None in the namespace (unless `defaults` names a value), so TrainConfig's own
default applies; out_dir and extra are not flags: the calling command decides where to write and what to record.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from dam_model.data import Sample, from_row
from dam_model.train.config import TrainConfig, field_docs
from dam_model.train.data import synthetic_training_samples
from dam_model.train.loop import train

NOT_FLAGS = ("out_dir", "extra")


def train_flag_names() -> list[str]:
    """TrainConfig fields that are command-line flags (`--lr`, `--max-steps`, ...), in declaration order."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_FLAGS]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argparse_kwargs(hint: Any) -> dict[str, Any]:
    """add_argument keywords for a field's type: bool -> --x/--no-x, Literal -> choices, tuple -> nargs."""
    if typing.get_origin(hint) in (Union, types.UnionType):  # X | None: the flag parses X
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": args}
    if origin is tuple:
        return {"type": args[0], "nargs": "+" if args[-1] is Ellipsis else len(args)}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"TrainConfig field type {hint!r} has no command-line form: extend _argparse_kwargs")


def add_train_args(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> argparse._ArgumentGroup:
    """One flag per TrainConfig field (but out_dir and extra), typed and documented from the field. `defaults`
    replaces TrainConfig's default of the fields it names for this command (e.g. {"checkpoint_every": 50})."""
    defaults = dict(defaults or {})
    unknown = set(defaults) - set(train_flag_names())
    if unknown:
        raise ValueError(f"defaults for unknown training flags: {sorted(unknown)}")
    hints = typing.get_type_hints(TrainConfig)
    docs = field_docs(TrainConfig)
    config_defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    group = parser.add_argument_group("training (dam_model.train.TrainConfig)")
    for name in train_flag_names():
        shown = defaults.get(name, config_defaults[name])
        if isinstance(shown, tuple):
            shown = " ".join(map(str, shown))
        help_text = f"{docs[name]} (default: {shown})".replace("%", "%%")
        group.add_argument(_flag(name), dest=name, default=defaults.get(name), help=help_text,
                           **_argparse_kwargs(hints[name]))
    return group


def train_args_given(args: argparse.Namespace) -> dict[str, Any]:
    """{field: value} of the training flags that have a value (given, or a default of add_train_args)."""
    return {name: getattr(args, name) for name in train_flag_names() if getattr(args, name, None) is not None}


def train_config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None,
                           **overrides: Any) -> TrainConfig:
    """The TrainConfig of parsed flags. Precedence: TrainConfig's defaults < `base` (say, a JSON file's fields) <
    the flags < `overrides` (out_dir, extra, ...). Raises ValueError / TypeError for a bad config."""
    return TrainConfig.from_dict({**(base or {}), **train_args_given(args), **overrides})


def train_args_to_argv(args: argparse.Namespace) -> list[str]:
    """The training flags that have a value, as command-line words (to forward them to a training subprocess)."""
    argv: list[str] = []
    for name, value in train_args_given(args).items():
        if isinstance(value, bool):
            argv.append(_flag(name) if value else "--no-" + _flag(name)[2:])
        elif isinstance(value, (list, tuple)):
            argv += [_flag(name), *map(str, value)]
        else:
            argv += [_flag(name), str(value)]
    return argv


# -- python -m dam_model train -----------------------------------------------------------------------------------------
def load_manifest(path: str | Path) -> list[Sample]:
    """Samples of a JSON-lines manifest in dam_model.data's row format (pixel paths relative to the manifest)."""
    path = Path(path)
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            samples.append(from_row(json.loads(line), path.parent))
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"{path}:{number}: {err}") from err
    return samples


def add_train_command_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m dam_model train`: what to train and where, then every training flag."""
    parser.add_argument("--init", required=True, help="DAM checkpoint folder to start from")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, metrics.jsonl, final/)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="JSONL manifest of dam_model.data rows (kind image: image, mask; kind video: "
                                     "frames, masks; caption[, short_caption]), paths relative to the manifest")
    data.add_argument("--synthetic", type=int, metavar="N", help="train on N synthetic scenes (dam_model.synthetic)")
    parser.add_argument("--val-data", help="JSONL manifest of validation samples")
    parser.add_argument("--synthetic-seed", type=int, default=0, help="seed of the synthetic scenes")
    parser.add_argument("--config", help="JSON file with TrainConfig fields (command-line flags override it)")
    add_train_args(parser)


def run_train_command(args: argparse.Namespace) -> int:
    """Entry of `python -m dam_model train`; returns the exit code."""
    base = json.loads(Path(args.config).read_text()) if args.config else {}
    try:
        cfg = train_config_from_args(args, base, out_dir=args.out)
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    samples = (load_manifest(args.data) if args.data
               else synthetic_training_samples(args.synthetic_seed, args.synthetic))
    val = load_manifest(args.val_data) if args.val_data else None
    final = train(cfg, samples, val, init_model=args.init)
    print(f"model written to {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a DAM on image regions and video tracks")
    add_train_command_args(parser)
    return run_train_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
