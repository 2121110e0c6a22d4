"""Data parallelism under ``torchrun``: rank and world from the environment, gloo or NCCL.

Every helper is a no-op in a single process, so code written with them runs unchanged with and
without ``torchrun``::

    with dist_context() as (rank, world):
        mine = items[rank::world]
        results = all_gather_objects(work(mine))  # one entry per rank, in rank order

The backend is NCCL when CUDA is present and gloo otherwise (CPU), as ``torch.distributed``
recommends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

__all__ = [
    "all_gather_objects",
    "all_reduce_sum_",
    "barrier",
    "broadcast_object",
    "dist_context",
    "is_distributed",
    "is_main",
    "local_device",
    "rank_world",
]


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    """(rank, world size): from the process group if initialised, else from torchrun's env."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Rank 0 (the process that writes files and prints)."""
    return rank_world()[0] == 0


def local_device(device: str | torch.device = "auto") -> torch.device:
    """The device of this process: with ``"auto"`` under torchrun on GPUs, ``cuda:LOCAL_RANK``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(device)


@contextlib.contextmanager
def dist_context(backend: str | None = None) -> Iterator[tuple[int, int]]:
    """Join the process group torchrun set up (if any) for the duration of the block.

    Yields ``(rank, world)``. Outside torchrun (``WORLD_SIZE`` unset or 1) nothing is initialised.
    A group this context created is destroyed on exit, also on error.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        yield rank_world()
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    try:
        yield rank_world()
    finally:
        dist.destroy_process_group()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (returns it); unchanged in one process."""
    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every rank."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()
