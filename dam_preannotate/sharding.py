"""Data parallel with an existing launcher: torchrun / accelerate launch start one process per GPU and set RANK,
WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/MASTER_PORT; several nodes via torchrun's rendezvous).

Each rank owns the tasks with `task_id % world == rank`: by id, not by position, because Label Studio's list
order can change between two ranks' requests and between runs. Ranks need no collective but two: a barrier
after every rank has snapshotted its task ids (so no rank's posting changes a filtered view while another still
lists it) and a gather of the summaries at the end, over gloo (CPU; tiny objects, works beside NCCL jobs too).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

import torch.distributed as dist

GROUP_TIMEOUT = timedelta(hours=12)  # ranks finish their shards at different times; the last gather waits


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"RANK={self.rank} WORLD_SIZE={self.world}: need 0 <= RANK < WORLD_SIZE")

    def owns(self, task_id: int) -> bool:
        return int(task_id) % self.world == self.rank


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard:
    env = os.environ if environ is None else environ
    return Shard(rank=int(env.get("RANK", "0")), world=int(env.get("WORLD_SIZE", "1")),
                 local_rank=int(env.get("LOCAL_RANK", "0")))


class ProcessGroup:
    """The ranks' process group (env:// init) when WORLD_SIZE > 1; a no-op for one process."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.active = shard.world > 1

    def __enter__(self) -> "ProcessGroup":
        if self.active and not dist.is_initialized():
            dist.init_process_group(backend="gloo", init_method="env://", rank=self.shard.rank,
                                    world_size=self.shard.world, timeout=GROUP_TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (just [obj] for one process)."""
        if not self.active:
            return [obj]
        gathered: list[Any] = [None] * self.shard.world
        dist.all_gather_object(gathered, obj)
        return gathered
