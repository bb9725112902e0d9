"""dam_loop.steps.train and dam_loop.steps.evaluate on a built dataset with image regions AND video tracks: training takes the
video train split, evaluation captions video_val with describe_video (judged: the tasks carry attributes), and
`accelerate launch -m dam_loop.steps.train` runs two data-parallel processes (gloo on CPU)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dam_loop.cli import EXIT_PROMOTED
from dam_loop.dataset import load_samples, load_video_samples, split_for
from dam_loop.steps import train as train_step
from dam_loop.steps.evaluate import evaluate
from dam_loop.steps.train import default_out_dir
from dam_model.fileio import atomic_write_bytes, read_json
from dam_model.modeling import DescribeAnythingModel
from dam_model.synthetic import generate_video
from ls_io.video_io import video_bytes

from .conftest import REPO, put_objects
from .test_build_video import N_FRAMES, WIDTH, HEIGHT, keyframe, percent_box, pull_and_build, video_annotation

TRACK = "5c0d8f5e-4a9b-4c3e-9f1d-7b2a6e8c4d10"


def _task_ids() -> tuple[int, int]:
    """A task id of each split (val_fraction 0.5), so both splits hold a video track."""
    train_id = next(t for t in range(9000, 9100) if split_for(t, 0.5) == "train")
    val_id = next(t for t in range(9000, 9100) if split_for(t, 0.5) == "val")
    return train_id, val_id


@pytest.fixture()
def mixed_dataset(tmp_path, admin_s3, bucket, export_factory, media_root):
    """Synthetic image annotations + one video track in a train task and one in a val task (with attributes)."""
    objects = export_factory(5, 4, prefix="ls")
    for n, task_id in enumerate(_task_ids()):
        clip = generate_video(6, n, num_frames=N_FRAMES, size=(WIDTH, HEIGHT), num_objects=1)
        atomic_write_bytes(media_root / "videos" / f"clip{n}.mkv", video_bytes(clip.frames))
        obj = clip.objects[0]
        keys = [keyframe(1, percent_box(obj.masks[0])), keyframe(N_FRAMES, percent_box(obj.masks[-1]))]
        annotation = video_annotation(7000 + n, task_id, [(TRACK, keys, obj.long_caption)], {TRACK: obj.attributes},
                                      url=f"videos/clip{n}.mkv")
        objects[f"ls/{7000 + n}"] = json.dumps(annotation).encode()
    put_objects(admin_s3, bucket, objects)
    dataset = pull_and_build(tmp_path / "work", admin_s3, bucket, val_fraction=0.5)
    assert [len(load_video_samples(dataset, split)) for split in ("train", "val")] == [1, 1]
    assert load_samples(dataset, "train") and load_samples(dataset, "val")
    return dataset


def test_training_takes_video_tracks_and_evaluation_describes_them(tmp_path, mixed_dataset, loop_start_model,
                                                                   monkeypatch):
    out = tmp_path / "run"
    code = train_step.main(["--work-root", str(tmp_path / "work"), "--models-root", str(tmp_path / "models"),
                            "--dataset", str(mixed_dataset), "--init", str(loop_start_model), "--out", str(out),
                            "--max-steps", "2", "--batch-size", "4", "--device", "cpu", "--num-threads", "2",
                            "--val-loss", "--no-progress", "--lr", "1e-3"])
    assert code == EXIT_PROMOTED
    final = out / "final"
    metrics = read_json(final / "metrics.json")
    n_train = len(load_samples(mixed_dataset, "train"))
    assert metrics["train_samples"] == n_train + 1 and metrics["train_video_samples"] == 1
    assert np.isfinite(metrics["val_loss"]) and metrics["world_size"] == 1
    assert read_json(final / "provenance.json")["extra"]["video_samples"] == 1

    calls = []
    original = DescribeAnythingModel.describe_video

    def spy(self, frames, masks, **kwargs):
        calls.append((len(frames), len(masks), kwargs.get("temperature")))
        return original(self, frames, masks, **kwargs)

    monkeypatch.setattr(DescribeAnythingModel, "describe_video", spy)
    report = evaluate(final, loop_start_model, mixed_dataset, tmp_path / "eval", device="cpu", max_new_tokens=8)
    assert calls == [(8, 8, 0.0)] * 2  # champion and candidate, the track's 8 frames and masks, greedy
    n_val_images = len(load_samples(mixed_dataset, "val", include_pseudo=False))
    assert report["n_val"] == n_val_images + 1 and report["n_val_video"] == 1
    kinds = [s["kind"] for s in report["per_sample"]]
    assert kinds == ["image"] * n_val_images + ["video"]
    video = report["candidate"]["video"]
    assert video["dlc_regions"] == 1 and "cider" in video  # the judge ran on the track's attributes
    assert report["candidate"]["dlc_regions"] == n_val_images + 1  # pooled with the image regions
    assert "dlc" in report["per_sample"][-1]["candidate"]
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "Video tracks alone (1)" in page and 'alt="video track video-' in page


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_launch_trains_with_two_processes(tmp_path, mixed_dataset, loop_start_model):
    """The documented multi-GPU command, here on CPU (--multi_gpu makes accelerate use torch.distributed.run
    without GPUs; --device cpu makes the ranks use gloo)."""
    work = tmp_path / "work"
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "dam_loop.steps.train",
            "--work-root", str(work), "--models-root", str(tmp_path / "models"), "--dataset", str(mixed_dataset),
            "--init", str(loop_start_model), "--max-steps", "2", "--batch-size", "2", "--checkpoint-every", "1",
            "--device", "cpu", "--num-threads", "1", "--no-progress"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE", HF_HOME=str(tmp_path / "hf"))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"candidate":')]
    assert len(lines) == 1, proc.stdout  # rank 0 alone reports
    final = Path(json.loads(lines[0])["candidate"])
    metrics = read_json(final / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["global_batch_size"] == 4 and metrics["train_video_samples"] == 1
    assert sorted(p.name for p in (final.parent / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert "data parallel: 2 processes" in proc.stdout
    assert final.parent.parent == work / "train" and final.parent.name.startswith(mixed_dataset.name)
    # The default output folder depends on the number of processes (a checkpoint resumes only with as many);
    # one process keeps the name it had before multi-process training existed.
    config = read_json(final / "train_config.json")
    names = {n: default_out_dir(work, mixed_dataset, loop_start_model, config, n) for n in (1, 2, 4)}
    assert len(set(names.values())) == 3
    assert names[1] == default_out_dir(work, mixed_dataset, loop_start_model, config)
