"""Data-parallel training over several processes (torchrun / accelerate launch: WORLD_SIZE > 1).

The model is wrapped in torch's DistributedDataParallel, which averages gradients over the ranks during the backward
pass of the last micro-batch of a step (the earlier ones run under `no_sync`). Everything else the ranks agree on goes
through `DistributedContext`: rank 0 alone touches files and hands its results (or its failure) to every rank.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dam_model.modeling import DescribeAnythingModel
from dam_model.train.config import TrainConfig

# Rank 0 writes checkpoints (DAM-3B: weights + Adam moments, tens of GB) while the others wait in a collective: a
# generous timeout. A crashed rank is still noticed at once: the launcher stops the others.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=1)


@dataclass
class DistributedContext:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed).

    `on_main(fn)` runs fn on rank 0 only (file writes, resume look-ups) and hands its result, or its exception, to
    every rank, so a failure on rank 0 stops all ranks instead of leaving them waiting.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """fn() on rank 0; every rank returns its result (it must be picklable) or raises its error."""
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as err:  # the other ranks learn of it (as text: not every error pickles)
                error = err
                box[0] = ("error", f"{type(err).__name__}: {err}")
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if error is not None:
            raise error
        if status == "error":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sums of a list of floats over all ranks."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a float over all ranks."""
        return self.sum([value], device)[0] / self.world_size

    def gather(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def resolve_device(cfg: TrainConfig, local_rank: int | None = None) -> torch.device:
    """The training device. With several processes (local_rank given) a GPU run uses cuda:LOCAL_RANK."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if local_rank is not None and device.type == "cuda":
        if device.index is not None and device.index != local_rank:
            raise ValueError(f"device {cfg.device!r} with several processes: each rank trains on cuda:LOCAL_RANK "
                             "(pass device 'auto' or 'cuda', and pick GPUs with CUDA_VISIBLE_DEVICES)")
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(cfg: TrainConfig) -> tuple[DistributedContext, torch.device]:
    """(context, device) of this process. WORLD_SIZE > 1 (set by torchrun / accelerate launch, with RANK,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) starts the default process group when the caller has not: backend nccl
    for CUDA (device cuda:LOCAL_RANK), gloo for CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    initialized = dist.is_available() and dist.is_initialized()
    if world <= 1 and not (initialized and dist.get_world_size() > 1):
        return DistributedContext(), resolve_device(cfg)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = resolve_device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not initialized:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    ctx = DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                             owns_group=not initialized)
    return ctx, device


def close_distributed(ctx: DistributedContext) -> None:
    """Leave the process group if this run created it."""
    if ctx.owns_group:
        dist.destroy_process_group()


def wrap_model(model: DescribeAnythingModel, ctx: DistributedContext,
               device: torch.device) -> DescribeAnythingModel | DistributedDataParallel:
    """The module the training steps call: the model itself in one process, else DistributedDataParallel around it
    (which also copies rank 0's parameters and buffers to every rank, whatever each one loaded)."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        # A batch without focal rows leaves the context provider unused, and the official checkpoint carries
        # parameters the forward never reads: DDP must look for unused parameters (a parameter unused on every rank
        # keeps grad None, as in one process, so AdamW skips it there too).
        find_unused_parameters=True,
        forward_sync_buffers=False,  # the buffers (rotary tables) never change in training: synced once, here
        gradient_as_bucket_view=True,  # the gradients live in DDP's buckets: no second copy of them
    )


def accumulating(module: DescribeAnythingModel | DistributedDataParallel, last_micro: bool) -> ContextManager:
    """Context of one micro-batch's forward + backward: gradients are averaged over ranks only on the step's last."""
    if isinstance(module, DistributedDataParallel) and not last_micro:
        return module.no_sync()
    return contextlib.nullcontext()
