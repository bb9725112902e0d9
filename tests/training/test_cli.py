"""`python -m dam_model train` (add_train_command_args / run_train_command) on a saved tiny model."""
import argparse
import json

from dam_model.train import add_train_command_args, run_train_command


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_train_command_args(parser)
    return parser.parse_args(argv)


def test_train_subcommand_fine_tunes_a_saved_model(tmp_path, make_model, capsys):
    init = tmp_path / "init"
    make_model().save_pretrained(init)
    out = tmp_path / "run"
    args = _parse(["--init", str(init), "--out", str(out), "--synthetic", "2", "--synthetic-seed", "4",
                   "--max-steps", "2", "--batch-size", "2", "--num-threads", "2", "--checkpoint-every", "1",
                   "--no-progress"])
    assert run_train_command(args) == 0
    assert f"model written to {out / 'final'}" in capsys.readouterr().out
    config = json.loads((out / "final" / "train_config.json").read_text())
    assert config["max_steps"] == 2 and config["batch_size"] == 2
    assert (out / "checkpoints" / "step-00000002" / "trainer_state.pt").is_file()


def test_train_subcommand_rejects_bad_config(tmp_path, make_model, capsys):
    args = _parse(["--init", str(tmp_path), "--out", str(tmp_path / "o"), "--synthetic", "1", "--lr", "-1",
                   "--max-steps", "1"])
    assert run_train_command(args) == 2
    assert "lr must be > 0" in capsys.readouterr().err
