"""Data-parallel training on torch.distributed: `magnet train --nproc N` spawns N
local processes; `torchrun ... -m offline train ...` works too (multi-node).

The graph is replicated per rank, BPR batches are sharded, DistributedDataParallel
all-reduces the gradients, and only rank 0 evaluates and writes the run.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

log = logging.getLogger(__name__)


def backend_for(device: str) -> str:
    """NCCL between GPUs, gloo on the CPU."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if use_cuda else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    mp.spawn(_worker, args=(nproc, _free_port(), device, fn, args), nprocs=nproc, join=True)
