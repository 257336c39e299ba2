"""Data-parallel training on torch.distributed, all of it: `magnet train --nproc N`
spawns N local processes; `torchrun ... -m offline train ...` works too (multi-node).

The graph is replicated per rank, training batches are sharded, DistributedDataParallel
all-reduces the gradients, values that must agree (the routing monitor's epoch
means) go through `sum_over_ranks`, rank 0 alone evaluates and writes the run, and
its early-stopping decision reaches the others through `decided_by_main`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from service.server import free_port

log = logging.getLogger(__name__)


def backend_for(device: str) -> str:
    """NCCL between GPUs, gloo on the CPU."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if use_cuda else "gloo"


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the data-parallel group (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def _device() -> torch.device | None:
    """Where collectives need their tensors: NCCL works on this rank's GPU, gloo on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def data_parallel(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` wrapped in DistributedDataParallel inside a group (gradients all-reduced
    at each backward), else itself."""
    if not _grouped():
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each value summed over the group's processes (the values themselves when alone)."""
    if not _grouped():
        return values
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def decided_by_main(flag: bool) -> bool:
    """Rank 0's `flag` on every process (rank 0 alone evaluates, so it alone decides)."""
    if not _grouped():
        return flag
    t = torch.tensor([float(flag)], device=_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def init_from_env(device: str) -> bool:
    """Joins the process group torchrun describes in the environment; False when
    not launched by torchrun (or with a world of one)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend=backend_for(device))
    log.info("joined process group: rank %d of %d", dist.get_rank(), dist.get_world_size())
    return True


def _worker(rank: int, world_size: int, port: int, device: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(backend=backend_for(device), rank=rank, world_size=world_size)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def launch(nproc: int, device: str, fn: Callable[..., Any], *args: Any) -> None:
    """Runs fn(*args) in nproc processes of one local process group."""
    mp.spawn(_worker, args=(nproc, free_port(), device, fn, args), nprocs=nproc, join=True)
