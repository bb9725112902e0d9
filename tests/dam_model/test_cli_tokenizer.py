"""The `python -m dam_model` command line, the tokenizer trainer and the prompt encoders."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dam_model.__main__ import COMMANDS, build_parser, main


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "dam_model", "--help"], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2])).stdout
    for name in COMMANDS:
        assert name in out
    describe = build_parser()._subparsers._group_actions[0].choices["describe"].format_help()
    for option in ("--model", "--image", "--mask", "--video", "--masks", "--query", "--max-new-tokens",
                   "--temperature", "--top-p", "--seed", "--device", "--dtype", "--no-stream", "--json"):
        assert option in describe


def test_describe_image_streams_and_json(fixture_dir, expected, capsys):
    inputs = fixture_dir / "inputs"
    args = ["describe", "--model", str(fixture_dir / "model"), "--image", str(inputs / "imgA.png"),
            "--mask", str(inputs / "imgA_mask_small.png"), "--max-new-tokens", "12"]
    assert main(args + ["--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["token_ids"] == expected["imgA_small__official_get_description_ids"].tolist()
    assert main(args) == 0
    assert capsys.readouterr().out.rstrip("\n") == record["text"]


def test_describe_video_from_a_file(fixture_dir, tmp_path, capsys):
    import av

    inputs = fixture_dir / "inputs"
    frames = [np.asarray(Image.open(inputs / f"video_frame{i}.png").convert("RGB")) for i in range(8)]
    h, w = frames[0].shape[:2]
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        for frame in frames:
            packet = stream.encode(av.VideoFrame.from_ndarray(frame[: h - h % 2, : w - w % 2], format="rgb24"))
            container.mux(packet)
        container.mux(stream.encode())
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(8):
        m = np.asarray(Image.open(inputs / f"video_mask{i}.png"))[: h - h % 2, : w - w % 2]
        Image.fromarray(m).save(masks / f"{i:03d}.png")
    code = main(["describe", "--model", str(fixture_dir / "model"), "--video", str(video), "--masks", str(masks),
                 "--max-new-tokens", "6", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert len(record["token_ids"]) == 6 and record["confidence"] <= 0


def test_describe_rejects_bad_input(fixture_dir, capsys):
    inputs = fixture_dir / "inputs"
    code = main(["describe", "--model", str(fixture_dir / "model"), "--image", str(inputs / "imgA.png"),
                 "--mask", str(inputs / "imgB_mask_small.png")])
    assert code == 2 and "differs from image size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["describe"])  # --model is required


def test_train_tokenizer_round_trip(tmp_path):
    from dam_model.prompt import IGNORE_INDEX, IMAGE_TOKEN_ID, encode_training_example
    from dam_model.tokenizer import load_tokenizer, train_tokenizer

    texts = ["A small red cup on a wooden table.", "Two dogs run across the green grass."] * 20
    tok = load_tokenizer(train_tokenizer(texts, 300, tmp_path / "tok"))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert type(tok).__name__ == "LlamaTokenizer" and tok.legacy is False
    assert len(tok) <= 300
    ids = tok("A small red cup.").input_ids
    assert ids[0] == 1 and tok.decode(ids, skip_special_tokens=True) == "A small red cup."
    assert tok.decode(tok("Zebra ünïcode 42").input_ids, skip_special_tokens=True) == "Zebra ünïcode 42"  # bytes
    input_ids, labels = encode_training_example(tok, "<image>\nDescribe the masked region in detail.", "A red cup.")
    assert input_ids.count(IMAGE_TOKEN_ID) == 1 and input_ids[-1] == 2
    answer = [t for t, lab in zip(input_ids, labels) if lab != IGNORE_INDEX]
    assert tok.decode(answer, skip_special_tokens=True) == "A red cup." and answer[-1] == 2
    assert labels[: input_ids.index(IMAGE_TOKEN_ID) + 1] == [IGNORE_INDEX] * (input_ids.index(IMAGE_TOKEN_ID) + 1)
    with pytest.raises(ValueError):
        train_tokenizer([], 300, tmp_path / "empty")
