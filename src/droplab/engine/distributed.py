"""Data parallelism with PyTorch's own engine (DistributedDataParallel under ``torchrun``).

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment)
:func:`init_distributed` starts the process group (gloo on CPU, NCCL on CUDA); the loop wraps
the model in :class:`~torch.nn.parallel.DistributedDataParallel` and only rank 0 writes files
or prints. The caller shards its training loader by rank.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def distributed_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when launched by ``torchrun``, else ``None``."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world < 2:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """True unless this is a ``torchrun`` worker of rank > 0 (which prints and writes nothing)."""
    env = distributed_env()
    return env is None or env[0] == 0


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Start the process group if launched by ``torchrun``; return ``(rank, world, device)``.

    Uses NCCL on CUDA (each process takes GPU ``LOCAL_RANK``) and gloo otherwise. Without
    ``torchrun`` this is a no-op returning ``(0, 1, device)``.
    """
    env = distributed_env()
    if env is None:
        return 0, 1, device
    rank, world, local_rank = env
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def shutdown_distributed() -> None:
    """Destroy the process group if one is running (end of a ``torchrun`` task)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` from rank ``src`` on every rank (identity without a process group)."""
    if rank_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the processes in place (no-op without a process group)."""
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
