"""Data parallel: rank r owns the tasks with id % world == r (no overlap, no gap, whatever the list order), and two
real gloo processes (torch.distributed, init via env as torchrun does) shard a task list, each journaling its own
share, and gather one summary."""
from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dam_preannotate.job import JobParts, run_job
from dam_preannotate.journal import replay
from dam_preannotate.sharding import ProcessGroup, Shard, shard_from_env
from dam_preannotate.summary import Summary
from pre_fakes import VERSION, FakeDAM, Images, MemoryLabelStudio, job_config, make_tasks

WORLD = 2
TASK_IDS = [3, 4, 7, 8, 9, 15, 16, 23, 42, 43, 57, 58, 61, 100, 101, 102, 205]


def test_two_ranks_split_any_id_list_with_no_overlap_and_no_gap():
    ids = list(range(1, 1001)) + [10**9 + 7]
    shuffled = random.Random(0).sample(ids, len(ids))  # the list order may change between ranks: it does not matter
    shares = [{i for i in shuffled if Shard(rank, WORLD).owns(i)} for rank in range(WORLD)]
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(ids)
    assert abs(len(shares[0]) - len(shares[1])) <= 1


def test_the_shard_comes_from_the_launchers_environment():
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Shard(3, 8, 1)
    assert shard_from_env({}) == Shard(0, 1, 0)
    with pytest.raises(ValueError):
        shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, tmp: str) -> None:
    """One rank of a torchrun-like launch: the environment torchrun sets, then what the CLI does."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    shard = shard_from_env()
    ls = MemoryLabelStudio(make_tasks(TASK_IDS))  # each process sees the same project
    with ProcessGroup(shard) as group:
        assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
        parts = JobParts(cfg=job_config(Path(tmp)), ls=ls, model=FakeDAM(), model_version=VERSION, fetcher=Images(),
                         shard=shard, barrier=group.barrier)
        summary = run_job(parts)
        total = Summary.merge(group.all_gather(summary))
    report = {"stored": sorted(ls.of_version()), "done": summary.done, "total_done": total.done,
              "total_selected": total.selected}
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(report))


def test_two_gloo_processes_shard_the_tasks_and_journal_their_own_share(tmp_path):
    context = mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):  # a hung collective must fail the test, not block it
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish in time")
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    stored = [set(r["stored"]) for r in reports]
    assert not stored[0] & stored[1], "a task was captioned by both ranks"
    assert stored[0] | stored[1] == set(TASK_IDS), "a task was captioned by no rank"
    assert all(t % WORLD == rank for rank in range(WORLD) for t in stored[rank])
    assert all(r["total_done"] == r["total_selected"] == len(TASK_IDS) for r in reports)

    folder = tmp_path / "journal" / "project-1" / VERSION
    assert sorted(p.name for p in folder.glob("journal-rank*.jsonl")) == ["journal-rank0.jsonl", "journal-rank1.jsonl"]
    for rank in range(WORLD):  # each rank's file holds its own share, and only it
        lines = (folder / f"journal-rank{rank}.jsonl").read_text().splitlines()
        intents = [json.loads(line) for line in lines if '"event":"intent"' in line]
        assert {t for r in intents for t in r["tasks"]} == stored[rank]
    assert replay(folder).done == set(TASK_IDS)
