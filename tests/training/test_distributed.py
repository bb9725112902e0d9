"""Data-parallel training: two gloo processes on CPU equal one process with the same global batch, rank 0 alone
writes, and a killed two-process run resumes from its checkpoint to the same weights."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from dam_model.train import TrainConfig, list_checkpoints, synthetic_video_training_samples, train

WORLD = 2
FIELDS = dict(max_steps=3, batch_size=1, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=2, keep_last=3,
              num_threads=1, progress=False, seed=7, train_vision=True, device="cpu")


class Killed(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, init_dir: str, out_dirs: list[str], fields: dict, samples: list, kill_at: int,
            report_dir: str) -> None:
    """One rank of a torchrun-like launch (the environment torchrun / accelerate launch set)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), OMP_WAIT_POLICY="PASSIVE")
    torch.set_num_threads(1)
    steps: list[int] = []

    def on_step(step: int, loss: float) -> None:
        steps.append(step)
        if step == kill_at:
            raise Killed

    # Each rank gets its own out_dir: rank 0's is the run's folder, rank 1's must stay untouched.
    cfg = TrainConfig(out_dir=out_dirs[rank], **fields)
    final = None
    try:
        final = str(train(cfg, samples, init_model=init_dir, on_step=on_step))
    except Killed:
        pass
    report = {"rank": rank, "steps": steps, "final": final,
              "process_group_left": torch.distributed.is_initialized()}
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps(report))


def _launch(*args, timeout: float = 600) -> None:
    """torch.multiprocessing.spawn with a deadline (a hung collective must fail the test, not block it)."""
    import torch.multiprocessing as mp

    context = mp.start_processes(_worker, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.time() + timeout
    try:
        while not context.join(timeout=5):
            if time.time() > deadline:
                raise TimeoutError(f"the {WORLD} training processes did not finish in {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _reports(report_dir: Path) -> list[dict]:
    return [json.loads((report_dir / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _losses(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["last_loss"] for r in rows if "last_loss" in r}


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from dam_model.modeling import DescribeAnythingModel

    return DescribeAnythingModel.from_pretrained(folder, device="cpu", dtype=torch.float32).state_dict()


@pytest.fixture(scope="module")
def mixed_samples(tiny_samples):
    """Three image regions and two video tracks (a global batch of 4 mixes both kinds)."""
    videos = synthetic_video_training_samples(3, 2, num_frames=4, size=(64, 48))[:2]
    assert len(videos) == 2
    return list(tiny_samples[:3]) + videos


@pytest.fixture(scope="module")
def video_model_dir(tiny_tokenizer, tmp_path_factory):
    from dam_model.config import DAMConfig
    from dam_model.modeling import DescribeAnythingModel

    torch.manual_seed(0)
    config = DAMConfig.tiny(vocab_size=len(tiny_tokenizer), num_video_frames=2)
    folder = tmp_path_factory.mktemp("dist-model") / "model"
    DescribeAnythingModel.from_config(config, tokenizer=tiny_tokenizer).save_pretrained(folder)
    return folder


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path, mixed_samples, video_model_dir,
                                                                         monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    # One process: batch_size 1 x grad_accum 4 = the global batch of 2 ranks x batch_size 1 x grad_accum 2.
    single = train(TrainConfig(out_dir=str(tmp_path / "single"), grad_accum_steps=WORLD * 2, **FIELDS),
                   mixed_samples, init_model=str(video_model_dir))

    run, idle = tmp_path / "ddp", tmp_path / "rank1-out"
    out_dirs = [str(run), str(idle)]
    fields = dict(FIELDS, grad_accum_steps=2)
    reports = tmp_path / "reports"
    reports.mkdir()
    # A first launch is killed after step 2 (its checkpoint is in place), a second resumes and finishes.
    _launch(_free_port(), str(video_model_dir), out_dirs, fields, mixed_samples, 2, str(reports))
    assert [r["steps"] for r in _reports(reports)] == [[1, 2], [1, 2]]
    assert [step for step, _ in list_checkpoints(run)] == [2]
    state = torch.load(run / "checkpoints" / "step-00000002" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == WORLD and len(state["rng_ranks"]) == WORLD

    with pytest.raises(ValueError, match="written by 2 process"):  # resume needs the same world size
        train(TrainConfig(out_dir=str(run), grad_accum_steps=2, **FIELDS), mixed_samples,
              init_model=str(video_model_dir))

    _launch(_free_port(), str(video_model_dir), out_dirs, fields, mixed_samples, -1, str(reports))
    for report in _reports(reports):
        assert report["steps"] == [3], report  # resumed at step 2 on both ranks
        assert report["final"] == str(run / "final")  # every rank returns rank 0's final folder
        assert not report["process_group_left"]
    assert not idle.exists(), "rank 1 wrote into its out_dir"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "final", "metrics.jsonl"]
    assert [step for step, _ in list_checkpoints(run)] == [2, 3]

    metrics = json.loads((run / "final" / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD and metrics["global_batch_size"] == 4
    assert metrics["train_video_samples"] == 2
    expected, got = _losses(tmp_path / "single"), _losses(run)
    assert sorted(got) == [1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step

    reference, trained = _state(single), _state(run / "final")
    assert reference.keys() == trained.keys()
    worst = max(float((reference[k] - trained[k]).abs().max()) for k in reference)
    assert worst < 1e-5, worst
    start = _state(video_model_dir)
    assert max(float((start[k] - trained[k]).abs().max()) for k in start) > 1e-4  # it did train
