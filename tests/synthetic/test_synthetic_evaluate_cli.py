"""`python -m dam_model evaluate` (run_evaluate): judging a captions file and captioning with a real tiny DAM."""
from __future__ import annotations

import argparse
import json

import pytest

from dam_model.evaluation import add_evaluate_arguments, run_evaluate
from dam_model.synthetic import generate_scene


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return run_evaluate(parser.parse_args(argv))


def test_captions_file_by_scene_reference_and_by_attributes(tmp_path, capsys):
    lines = []
    for index in range(3):
        scene = generate_scene(21, index, size=(64, 64))
        for obj in scene.objects:
            lines.append({"seed": 21, "index": index, "object_id": obj.object_id, "caption": obj.long_caption})
    scene = generate_scene(21, 0, size=(64, 64))
    lines.append({"caption": "a large green star", "attributes": scene.objects[0].attributes, "reference": "x"})
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert _run(["--captions", str(path), "--size", "64x64", "--json", "--regions"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_regions"] == len(lines)
    assert len(report["regions"]) == len(lines) and report["regions"][-1]["recognized"] in (True, False)
    perfect = len(lines) - 1
    assert report["negative"] <= 1.0 and report["positive"] < 1.0
    assert report["positive"] >= perfect / len(lines) - 1e-9  # every reference caption scores 1
    assert set(report["caption_metrics"]) == {"bleu4", "rouge_l", "cider_d", "edit_effort_word", "edit_effort_char"}


def test_bad_captions_file_is_a_value_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"caption": "a red circle"}) + "\n")
    with pytest.raises(ValueError, match="attributes"):
        _run(["--captions", str(path)])
    with pytest.raises(ValueError, match="--size"):
        _run(["--captions", str(path), "--size", "big"])


def test_model_path_captions_held_out_scenes_with_a_tiny_dam(tmp_path, capsys):
    """End to end on a randomly initialised tiny DAM (no weights needed): the pipeline runs and reports."""
    import torch

    from dam_model.config import DAMConfig
    from dam_model.modeling import DescribeAnythingModel
    from dam_model.synthetic import generate_dataset, iter_region_samples
    from dam_model.tokenizer import load_tokenizer, train_tokenizer

    torch.set_num_threads(2)
    texts = [s.caption for s in iter_region_samples(generate_dataset(0, 60, size=(64, 64)))]
    train_tokenizer(texts, 448, tmp_path / "tok")
    torch.manual_seed(0)
    model = DescribeAnythingModel.from_config(DAMConfig.tiny(), tokenizer=load_tokenizer(tmp_path / "tok"))
    model.save_pretrained(tmp_path / "model")
    saved = tmp_path / "captions.jsonl"
    assert _run(["--model", str(tmp_path / "model"), "--seed", "5", "--n", "2", "--size", "64x64",
                 "--max-new-tokens", "8", "--json", "--save-captions", str(saved)]) == 0
    report = json.loads(capsys.readouterr().out)
    regions = sum(len(generate_scene(5, i, size=(64, 64)).objects) for i in range(2))
    assert report["num_regions"] == regions and 0.0 <= report["average"] <= 1.0
    records = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(records) == regions and all(isinstance(r["caption"], str) for r in records)
    # the saved captions can be judged again, giving the same report
    assert _run(["--captions", str(saved), "--size", "64x64", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["average"] == report["average"] and again["caption_metrics"] == report["caption_metrics"]
