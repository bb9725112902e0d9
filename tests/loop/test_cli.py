"""dam_loop.cli.run_main maps what a step raises to its exit code; the training flags nightly forwards parse back to
the same values in the train step (generated once from TrainConfig by dam_model.train, plus the loop's own flags in
dam_loop.steps.train)."""
from __future__ import annotations

import argparse

import pytest

from dam_loop.cli import EXIT_BAD_ARGS, EXIT_FAILURE, EXIT_NO_SAMPLES, EXIT_OK, NoSamples, add_log_level_arg, run_main
from dam_loop.steps import nightly, train


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dam_loop.steps.example")
    add_log_level_arg(p)
    return p


def raising(exc: Exception):
    def fn(args: argparse.Namespace) -> int:
        raise exc
    return fn


def test_run_main_maps_errors_to_exit_codes(caplog):
    assert run_main(lambda args: EXIT_OK, [], parser()) == EXIT_OK
    assert run_main(raising(NoSamples("no rows")), [], parser()) == EXIT_NO_SAMPLES
    assert "no rows" in caplog.text and "Traceback" not in caplog.text  # one clear line
    assert run_main(raising(ZeroDivisionError("boom")), [], parser()) == EXIT_FAILURE
    assert "example failed" in caplog.text and "ZeroDivisionError" in caplog.text  # the traceback is logged
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses unknown flags with 2
        run_main(lambda args: EXIT_OK, ["--nope"], parser())
    assert exit_info.value.code == EXIT_BAD_ARGS


@pytest.mark.parametrize("argv", [
    [],
    ["--max-steps", "7", "--lr", "3e-05", "--trainable", "llm", "--gradient-checkpointing", "--no-pseudo", "--val-loss"],
    ["--no-gradient-checkpointing", "--no-progress", "--checkpoint-every", "5", "--dtype", "float32", "--init", "x"],
])
def test_nightly_forwards_every_training_flag(argv):
    nightly_args = nightly.build_parser().parse_args(argv)
    command = nightly.train_command(nightly_args, "DATASET", "INIT")
    train_args = train.build_parser().parse_args(command[command.index(train.MODULE) + 1:])
    flags = argparse.ArgumentParser()
    train.add_train_flags(flags)
    for name in vars(flags.parse_args([])):
        expected = "INIT" if name == "init" else getattr(nightly_args, name)
        assert getattr(train_args, name) == expected, name
    assert train.train_config(train_args) == train.train_config(nightly_args)
