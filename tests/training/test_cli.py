"""`python -m dam_model train` on a saved tiny model, and the training flags generated from TrainConfig."""
import argparse
import dataclasses
import json

import pytest

from dam_model.train import (TrainConfig, add_train_args, add_train_command_args, field_docs, run_train_command,
                             train, train_args_to_argv, train_config_from_args)


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


def test_flags_are_generated_from_every_train_config_field():
    parser = argparse.ArgumentParser()
    add_train_args(parser, defaults={"checkpoint_every": 50})
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"out_dir", "extra"}
    assert set(flags) == fields
    assert field_docs()["lr"] in flags["lr"].help and "(default: 0.0001)" in flags["lr"].help
    assert "(default: 50)" in flags["checkpoint_every"].help
    assert flags["dtype"].choices == ("auto", "float32", "bfloat16")
    cfg = train_config_from_args(parser.parse_args(["--max-steps", "3"]), out_dir="o")
    assert cfg.checkpoint_every == 50 and cfg.max_steps == 3 and cfg.lr == TrainConfig.lr  # the rest: TrainConfig's


def test_flags_round_trip_through_argv_and_layer_over_a_base():
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    given = ["--lr", "0.003", "--adam-betas", "0.8", "0.9", "--no-progress", "--gradient-checkpointing",
             "--lora-target-modules", "q_proj", "v_proj", "--dtype", "float32", "--max-steps", "4"]
    args = parser.parse_args(given)
    again = parser.parse_args(train_args_to_argv(args))
    assert train_config_from_args(again, out_dir="o") == train_config_from_args(args, out_dir="o")
    cfg = train_config_from_args(args, {"lr": 1.0, "seed": 9, "max_steps": 1}, out_dir="o")
    assert (cfg.lr, cfg.seed, cfg.max_steps, cfg.adam_betas, cfg.progress) == (0.003, 9, 4, (0.8, 0.9), False)
    assert cfg.lora_target_modules == ("q_proj", "v_proj") and cfg.gradient_checkpointing is True


def test_train_takes_only_the_one_sample_type(tmp_path, tiny_samples):
    row = {"image": tiny_samples[0].image, "mask": tiny_samples[0].mask, "caption": "x"}
    with pytest.raises(TypeError, match="RegionSample"):
        train(TrainConfig(out_dir=str(tmp_path), max_steps=1), [tiny_samples[0], row], init_model=str(tmp_path))
